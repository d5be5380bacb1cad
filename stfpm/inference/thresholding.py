"""The decision thresholds in use: explicit ones, the F1-optimal ones of a test.py results.json, or those the
calibration (:mod:`stfpm.model.calibrate`) stored in the checkpoint."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stfpm.core.errors import STFPMError
from stfpm.inference.settings import ThresholdSettings


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

    @classmethod
    def of(cls, settings: ThresholdSettings, calibrated: tuple[float, float]) -> ThresholdPolicy:
        """The policy a command's threshold options ask for."""
        return cls.resolve(calibrated, settings.image_threshold, settings.threshold, settings.thresholds_from)

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
