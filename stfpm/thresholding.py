"""Decision thresholds calibrated on held-out normal images only.

Rule: the image threshold is the ``image_quantile`` quantile of the image scores of the validation normals,
the pixel threshold the ``pixel_quantile`` quantile of all their anomaly-map pixels. No test label is ever
involved, so the thresholds are available to any user who has only defect-free photos. With the defaults
(0.99 / 0.999) about 1% of normal parts would be flagged and about 0.1% of normal pixels would be white in a
mask, if the validation images are representative; raise the quantiles (up to 1.0 = the maximum seen) for
fewer false alarms, lower them for more sensitivity.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def quantile_threshold(values: Tensor | np.ndarray, quantile: float) -> float:
    """The ``quantile`` of ``values`` (any shape), computed exactly with numpy's linear interpolation.

    numpy is used because ``torch.quantile`` refuses inputs above 16M elements, which a validation set of
    256x256 maps reaches quickly.
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"threshold quantile must be in [0, 1], got {quantile}")
    array = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    array = array.reshape(-1)
    if array.size == 0:
        return float("nan")
    return float(np.quantile(array, quantile))


def calibrate(
    image_scores: Tensor, anomaly_maps: Tensor, image_quantile: float, pixel_quantile: float
) -> tuple[float, float]:
    """(image threshold, pixel threshold) from the scores and maps of normal validation images."""
    return (
        quantile_threshold(image_scores, image_quantile),
        quantile_threshold(anomaly_maps.to(torch.float32), pixel_quantile),
    )
