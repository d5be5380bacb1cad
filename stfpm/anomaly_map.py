"""From teacher/student features to the fused anomaly map and the image score."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def layer_anomaly_maps(teacher_features: list[Tensor], student_features: list[Tensor]) -> list[Tensor]:
    """Per level ``0.5 * ||t_hat - s_hat||^2`` over channels (= 1 - cosine similarity), shape [B,1,h,w]."""
    maps = []
    for t, s in zip(teacher_features, student_features):
        t_hat = F.normalize(t.float(), dim=1)
        s_hat = F.normalize(s.float(), dim=1)
        maps.append(0.5 * (t_hat - s_hat).pow(2).sum(dim=1, keepdim=True))
    return maps


def fuse_anomaly_maps(layer_maps: list[Tensor], size: tuple[int, int]) -> Tensor:
    """Upsample every level's map bilinearly to ``size`` and multiply them, as the official code does."""
    fused = torch.ones((layer_maps[0].shape[0], 1, *size), dtype=torch.float32, device=layer_maps[0].device)
    for layer_map in layer_maps:
        fused = fused * F.interpolate(layer_map, size=size, mode="bilinear", align_corners=False)
    return fused


def anomaly_map(teacher_features: list[Tensor], student_features: list[Tensor], size: tuple[int, int]) -> Tensor:
    """The fused anomaly map [B,1,H,W] of a batch."""
    return fuse_anomaly_maps(layer_anomaly_maps(teacher_features, student_features), size)


def image_scores(maps: Tensor) -> Tensor:
    """Image-level anomaly score: the maximum of each map, shape [B]."""
    return maps.flatten(start_dim=1).amax(dim=1)
