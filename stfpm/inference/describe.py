"""A trained model described for a report: its run (category, checkpoint, images) and its settings."""

from __future__ import annotations

from pathlib import Path

from stfpm.inference.thresholding import ThresholdPolicy
from stfpm.model.lightning_model import STFPM

NOT_RECORDED = "not recorded (a checkpoint of an earlier version)"


def run_facts(model: STFPM, checkpoint: str | Path | None, policy: ThresholdPolicy, network: str
              ) -> list[tuple[str, str]]:
    """Labelled lines: the run, the model's settings, what ran the network (``torch 32-true``, ``openvino int8``,
    ...), and the thresholds in use with where they came from."""
    info = model.run_info
    calibrated_image, calibrated_pixel = model.thresholds
    facts = [
        ("category", info.get("category", "not recorded")),
        ("checkpoint", str(checkpoint) if checkpoint else "given in Python"),
        ("training images", info.get("train_images", NOT_RECORDED)),
        ("validation images", info.get("validation_images", NOT_RECORDED)),
        ("thresholds fitted on", info.get("calibrated_on", NOT_RECORDED)),
        *model.settings.facts(),
        ("network run by", network),
        ("thresholds in use", f"image {policy.image:.6g}, pixel {policy.pixel:.6g} ({policy.source})"),
        ("calibrated thresholds", f"image {calibrated_image:.6g}, pixel {calibrated_pixel:.6g}"),
    ]
    return facts
