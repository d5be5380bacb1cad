"""The STFPM training loss."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def layer_loss(teacher: Tensor, student: Tensor, hard_fraction: float = 1.0) -> Tensor:
    """Loss of one pyramid level.

    Features are L2-normalised along channels; the squared difference is summed over channels and averaged over
    batch and positions, exactly as the official code does. With ``hard_fraction`` < 1 only the hardest positions
    count: the average runs over the ``hard_fraction`` share of positions (of the whole batch) with the largest
    difference, so training time goes where the student still fails instead of where it is already right.
    """
    t = F.normalize(teacher.float(), dim=1)
    s = F.normalize(student.float(), dim=1)
    distance = (t - s).pow(2).sum(dim=1)
    if hard_fraction >= 1.0:
        return distance.mean()
    k = max(1, round(hard_fraction * distance.numel()))
    return distance.flatten().topk(k, sorted=False).values.mean()


def stfpm_loss(teacher_features: list[Tensor], student_features: list[Tensor], hard_fraction: float = 1.0) -> Tensor:
    """Sum of :func:`layer_loss` over the pyramid levels."""
    if len(teacher_features) != len(student_features):
        raise ValueError(f"{len(teacher_features)} teacher levels but {len(student_features)} student levels")
    if not 0.0 < hard_fraction <= 1.0:
        raise ValueError(f"hard_fraction must be in (0, 1], got {hard_fraction}")
    return sum(  # type: ignore[return-value]
        layer_loss(t, s, hard_fraction) for t, s in zip(teacher_features, student_features)
    )
