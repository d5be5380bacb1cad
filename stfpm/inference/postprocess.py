"""From a fused anomaly map to what a user looks at: source-size maps, binary masks, heatmaps.

:class:`Postprocessor` is the one place where a map becomes a verdict and a mask; test.py's visual report,
predict.py's writer and the importable :class:`stfpm.inference.predictor.Predictor` all use it, so a mask means the
same thing everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from stfpm.inference.thresholding import ThresholdPolicy
from stfpm.reporting.render import heatmap_scale, overlay


def resize_map(anomaly_map: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resize one map [H,W] (or a batch [B,H,W]) to ``size`` = (height, width)."""
    if tuple(anomaly_map.shape[-2:]) == tuple(size):
        return anomaly_map
    batch = anomaly_map.reshape(-1, 1, *anomaly_map.shape[-2:]).float()
    out = F.interpolate(batch, size=tuple(size), mode="bilinear", align_corners=False)
    return out.reshape(*anomaly_map.shape[:-2], *size)


def remove_small_blobs(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Drop 8-connected components of a bool mask with fewer than ``min_area`` pixels."""
    if min_area <= 1 or not mask.any():
        return mask
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False  # background
    return keep[labels]


def binary_mask(anomaly_map: np.ndarray, threshold: float, min_area: int = 0) -> np.ndarray:
    """A uint8 mask with exactly 0 (normal) and 255 (defect): pixels whose score is >= ``threshold``."""
    if math.isnan(threshold):
        raise ValueError("the pixel threshold is undefined (NaN); pass one explicitly")
    mask = remove_small_blobs(anomaly_map >= threshold, min_area)
    return mask.astype(np.uint8) * 255


def to_numpy(anomaly_map: Tensor) -> np.ndarray:
    """A float32 numpy copy of a map, wherever it lives."""
    return anomaly_map.detach().to("cpu", torch.float32).numpy()


@dataclass
class Prediction:
    """The verdict on one image, at the image's own resolution."""

    score: float  # the image score (by default the mean of the top 1% of the map of the coarser levels)
    is_anomalous: bool  # score >= image threshold
    anomaly_map: np.ndarray  # float32 [H, W]
    mask: np.ndarray  # uint8 [H, W], exactly 0 or 255 (pixel >= pixel threshold)

    @property
    def defect_area_fraction(self) -> float:
        """Share of the image's pixels marked as defect."""
        return float((self.mask > 0).mean())


class Postprocessor:
    """Model output of one image -> :class:`Prediction` at its source size, under one threshold policy."""

    def __init__(self, policy: ThresholdPolicy, min_defect_area: int) -> None:
        if min_defect_area < 0:
            raise ValueError(f"min_defect_area must be >= 0, got {min_defect_area}")
        self.policy = policy.require_defined()
        self.min_defect_area = int(min_defect_area)

    def __call__(self, anomaly_map: Tensor, score: float, source_size: tuple[int, int]) -> Prediction:
        """Resize the map [h,w] bilinearly to ``source_size`` (height, width), then threshold it."""
        full = to_numpy(resize_map(anomaly_map, (int(source_size[0]), int(source_size[1]))))
        mask = binary_mask(full, self.policy.pixel, self.min_defect_area)
        return Prediction(float(score), self.policy.is_anomalous(score), full, mask)

    def heatmap(self, image_rgb: np.ndarray, prediction: Prediction) -> np.ndarray:
        """The map coloured on a scale where the pixel threshold sits mid-way, blended over the image."""
        return overlay(image_rgb, prediction.anomaly_map, heatmap_scale(self.policy.pixel, prediction.anomaly_map))
