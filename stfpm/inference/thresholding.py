"""Decision thresholds calibrated on held-out normal images only.

Rule: the image threshold is the ``image_quantile`` quantile of the image scores of the validation normals,
the pixel threshold the ``pixel_quantile`` quantile of all their anomaly-map pixels. The image quantile is
either read off the scores (``empirical``) or from a Gumbel distribution fitted to them (``gumbel``, the law of
a maximum, which an image score is): with few validation images the empirical 0.99 quantile is simply their
maximum, which a new good image exceeds with probability about 1/(n+1), far above the promised 1%. No test label is ever
involved, so the thresholds are available to any user who has only defect-free photos. With the defaults
(0.99 / 0.999) about 1% of normal parts would be flagged and about 0.1% of normal pixels would be white in a
mask, if the validation images are representative; raise the quantiles (up to 1.0 = the maximum seen) for
fewer false alarms, lower them for more sensitivity.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from stfpm.errors import STFPMError


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


CALIBRATIONS = ("empirical", "gumbel")

_EULER_GAMMA = 0.5772156649015329


def gumbel_threshold(values: Tensor | np.ndarray, quantile: float) -> float:
    """The ``quantile`` of a Gumbel (maximum) distribution fitted to ``values`` by the method of moments.

    Falls back to the empirical quantile with fewer than 3 values, and never returns less than it, so a
    poor fit cannot promise fewer false alarms than the data already show.
    """
    array = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    array = array.reshape(-1).astype(np.float64)
    empirical = quantile_threshold(array, quantile)
    if array.size < 3 or quantile >= 1.0:
        return empirical
    beta = float(np.std(array, ddof=1)) * math.sqrt(6.0) / math.pi
    mu = float(np.mean(array)) - _EULER_GAMMA * beta
    fitted = mu - beta * math.log(-math.log(quantile)) if quantile > 0 else -math.inf
    return max(fitted, empirical)


def few_images_warning(n: int, quantile: float, method: str) -> str | None:
    """Why ``n`` validation images cannot keep the promise of the ``quantile`` (None when they can)."""
    if method != "empirical" or not 0 < quantile < 1 or n >= 1 / (1 - quantile):
        return None
    return (
        f"only {n} validation images: their {quantile:.3g} quantile is about their maximum, which roughly 1 good part "
        f"in {n + 1} will exceed (not {100 * (1 - quantile):.2g}%); add training images, raise --val-fraction or use "
        "--calibration gumbel"
    )


def calibrate(
    image_scores: Tensor,
    anomaly_maps: Tensor,
    image_quantile: float,
    pixel_quantile: float,
    method: str = "empirical",
) -> tuple[float, float]:
    """(image threshold, pixel threshold) from the scores and maps of normal validation images."""
    if method not in CALIBRATIONS:
        raise ValueError(f"unknown calibration {method!r}; choose one of {', '.join(CALIBRATIONS)}")
    image_rule = gumbel_threshold if method == "gumbel" else quantile_threshold
    return (
        image_rule(image_scores, image_quantile),
        quantile_threshold(anomaly_maps.to(torch.float32), pixel_quantile),
    )


@dataclass(frozen=True)
class ThresholdPolicy:
    """The decision rule applied everywhere (test.py's operating point, predict.py, :class:`Predictor`, export).

    An image is anomalous when its score >= ``image``; a pixel is a defect when its map value >= ``pixel``.
    ``source`` says where each value came from, for reports. Build one with :meth:`resolve`.
    """

    image: float
    pixel: float
    source: str = "calibrated"

    @classmethod
    def resolve(
        cls,
        calibrated: tuple[float, float],
        image: float | None = None,
        pixel: float | None = None,
        results_json: str | Path | None = None,
    ) -> ThresholdPolicy:
        """Explicit values first, then the F1-optimal ones of a test.py ``results.json``, then ``calibrated``
        (the checkpoint's, fitted on validation normals), each chosen per threshold."""
        chosen: dict[str, tuple[float, str]] = {}
        f1 = _f1_thresholds(Path(results_json)) if results_json else None
        for kind, explicit, stored, index in (("image", image, calibrated[0], 0), ("pixel", pixel, calibrated[1], 1)):
            if explicit is not None:
                chosen[kind] = (float(explicit), "explicit")
            elif f1 is not None:
                chosen[kind] = (f1[index], f"F1-optimal from {results_json}")
            else:
                chosen[kind] = (float(stored), "calibrated")
        sources = {chosen["image"][1], chosen["pixel"][1]}
        source = sources.pop() if len(sources) == 1 else f"image {chosen['image'][1]}, pixel {chosen['pixel'][1]}"
        return cls(chosen["image"][0], chosen["pixel"][0], source)

    def or_else(self, image: float | None, pixel: float | None, source: str) -> ThresholdPolicy:
        """This policy with each undefined (NaN) threshold replaced by the given one, e.g. test.py's F1-optimal
        thresholds for its panels when a checkpoint has no calibrated ones."""
        def pick(own: float, other: float | None) -> tuple[float, bool]:
            if other is None or math.isnan(other) or not math.isnan(own):
                return own, False
            return float(other), True

        (new_image, a), (new_pixel, b) = pick(self.image, image), pick(self.pixel, pixel)
        return ThresholdPolicy(new_image, new_pixel, f"{self.source}, else {source}" if a or b else self.source)

    @property
    def defined(self) -> bool:
        """Whether both thresholds are numbers (a model trained without validation images has none)."""
        return not (math.isnan(self.image) or math.isnan(self.pixel))

    def require_defined(self) -> ThresholdPolicy:
        """This policy, or a one-line error saying how to supply the missing thresholds."""
        if not self.defined:
            raise STFPMError(
                "this checkpoint has no calibrated thresholds (trained without validation images); "
                "pass --threshold and --image-threshold, or --thresholds-from a results.json of test.py"
            )
        return self

    def is_anomalous(self, score: float) -> bool:
        """The image verdict."""
        return bool(score >= self.image)

    def as_dict(self) -> dict[str, Any]:
        return {"image_threshold": self.image, "pixel_threshold": self.pixel, "threshold_source": self.source}


def _f1_thresholds(path: Path) -> tuple[float, float]:
    """The (image, pixel) F1-optimal thresholds that test.py wrote into a results.json."""
    try:
        results = json.loads(path.read_text())
        values = (results["image_f1_threshold"], results["pixel_f1_threshold"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise STFPMError(f"cannot read F1-optimal thresholds from {path}: {exc}") from exc
    if any(v is None or not isinstance(v, (int, float)) or math.isnan(v) for v in values):
        raise STFPMError(f"{path} has no defined F1-optimal thresholds")
    return float(values[0]), float(values[1])
