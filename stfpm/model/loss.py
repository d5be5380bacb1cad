"""The STFPM training loss."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def layer_loss(teacher: Tensor, student: Tensor, fraction: float) -> Tensor:
    """Loss of one pyramid level.

    Features are L2-normalised along channels; the squared difference is summed over channels and averaged over
    batch and positions, exactly as the official code does. With ``fraction`` < 1 only the hardest positions
    count: the average runs over the ``fraction`` share of positions (of the whole batch) with the largest
    difference, so training time goes where the student still fails instead of where it is already right.
    """
    t = F.normalize(teacher.float(), dim=1)
    s = F.normalize(student.float(), dim=1)
    distance = (t - s).pow(2).sum(dim=1)
    if fraction >= 1.0:
        return distance.mean()
    k = max(1, round(fraction * distance.numel()))
    return distance.flatten().topk(k, sorted=False).values.mean()


def stfpm_loss(teacher_features: list[Tensor], student_features: list[Tensor], fraction: float) -> Tensor:
    """Sum of :func:`layer_loss` over the pyramid levels (``fraction`` 1: the paper's loss)."""
    if len(teacher_features) != len(student_features):
        raise ValueError(f"{len(teacher_features)} teacher levels but {len(student_features)} student levels")
    return sum(  # type: ignore[return-value]
        layer_loss(t, s, fraction) for t, s in zip(teacher_features, student_features)
    )
