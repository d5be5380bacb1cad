"""Running a trained model: the engine (a Trainer from typed device settings), the threshold policy,
postprocessing, folder prediction (predict.py's work), the in-process :class:`Predictor`, and export.

``from stfpm.inference import Predictor`` is the importable API; it is loaded lazily, so the modules of this
package can import each other without a cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stfpm.inference.postprocess import Prediction
    from stfpm.inference.predictor import Predictor

__all__ = ["Prediction", "Predictor"]


def __getattr__(name: str) -> Any:
    if name == "Predictor":
        from stfpm.inference.predictor import Predictor

        return Predictor
    if name == "Prediction":
        from stfpm.inference.postprocess import Prediction

        return Prediction
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
