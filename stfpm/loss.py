"""The STFPM training loss."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def layer_loss(teacher: Tensor, student: Tensor) -> Tensor:
    """Loss of one pyramid level.

    Features are L2-normalised along channels; the squared difference is summed over channels and averaged over
    batch and positions. Averaging over the batch (the official code sums over it) makes the loss, and so the
    effective step size, independent of the batch size.
    """
    t = F.normalize(teacher.float(), dim=1)
    s = F.normalize(student.float(), dim=1)
    return (t - s).pow(2).sum(dim=1).mean()


def stfpm_loss(teacher_features: list[Tensor], student_features: list[Tensor]) -> Tensor:
    """Sum of :func:`layer_loss` over the pyramid levels."""
    if len(teacher_features) != len(student_features):
        raise ValueError(f"{len(teacher_features)} teacher levels but {len(student_features)} student levels")
    return sum(layer_loss(t, s) for t, s in zip(teacher_features, student_features))  # type: ignore[return-value]
