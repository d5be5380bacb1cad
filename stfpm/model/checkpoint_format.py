"""What this project writes into a checkpoint besides Lightning's own keys, and the one migration of older ones.

Lightning's ``hyper_parameters`` hold :meth:`ModelSettings.as_dict` (options by section); the ``stfpm`` record holds
the format version, the package version and the run (category, data root). A checkpoint of an earlier format is
upgraded in place by :func:`upgrade`, step by step from its ``format_version``, before anything reads it: loading
for test.py and predict.py, and ``--resume`` (Lightning calls ``on_load_checkpoint`` before it loads the weights).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from stfpm import __version__
from stfpm.core.errors import CheckpointError
from stfpm.model.settings import CalibrationSettings, ModelSettings

KEY = "stfpm"
FORMAT_VERSION = 3
RUN_FIELDS = ("category", "data_root", "train_images", "validation_images", "calibrated_on", "calibration_images")
OFFICIAL_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "official.yaml"


def stamp(checkpoint: dict[str, Any], run_info: dict[str, Any], calibration_scores: list[float]) -> None:
    """Mark a checkpoint being saved as ours, of the current format, with its run and the out-of-sample good image
    scores its image threshold rests on."""
    checkpoint[KEY] = {"format_version": FORMAT_VERSION, "package_version": __version__, **run_info,
                       "calibration_scores": list(calibration_scores)}


def calibration_scores(checkpoint: dict[str, Any]) -> list[float]:
    """The out-of-sample good image scores a checkpoint's image threshold rests on (none before format 3)."""
    return [float(v) for v in checkpoint.get(KEY, {}).get("calibration_scores", [])]


def require_ours(checkpoint: Any, path: Path) -> None:
    """Refuse checkpoints that this project did not write (another model, a bare state_dict...), and those of a
    newer format than this version reads."""
    if not isinstance(checkpoint, dict) or KEY not in checkpoint or "hyper_parameters" not in checkpoint:
        raise CheckpointError(f"{path} is not an STFPM checkpoint written by this project")
    version = checkpoint[KEY].get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer version of this project (checkpoint format {version}, "
                              f"this one reads up to {FORMAT_VERSION}); update the package")


def run_info(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The run a checkpoint records (category, data root, image counts, the images its thresholds were fitted on)."""
    return {k: v for k, v in checkpoint.get(KEY, {}).items() if k in RUN_FIELDS}


def settings(checkpoint: dict[str, Any]) -> ModelSettings:
    """The model settings of an upgraded checkpoint."""
    return ModelSettings.from_dict(checkpoint["hyper_parameters"])


def upgrade(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Bring a checkpoint of any earlier format to :data:`FORMAT_VERSION`, in place; returns it."""
    record = checkpoint.setdefault(KEY, {})
    version = record.get("format_version", 1)
    while version < FORMAT_VERSION:
        _STEPS[version](checkpoint)
        version += 1
        record["format_version"] = version
    return checkpoint


def _from_format_1(checkpoint: dict[str, Any]) -> None:
    """Format 1: flat hyperparameters, each option under its name; an option missing from them did not exist yet,
    so the model was trained and calibrated with its value in the paper's recipe. The map's fitted buffers lived in
    the map generator, the thresholds in the Lightning module."""
    flat = dict(checkpoint["hyper_parameters"])
    for section in ModelSettings.SECTIONS:
        flat = {**flat, **section.earlier(flat)}
    recipe = {k: v for section in yaml.safe_load(OFFICIAL_RECIPE.read_text()).values() for k, v in section.items()}
    nested: dict[str, dict[str, Any]] = {}
    for section in ModelSettings.SECTIONS:
        nested[section.name] = {n: flat[n] if n in flat else recipe[n] for n in section.names() if n in flat or n in recipe}
    checkpoint["hyper_parameters"] = nested
    state = checkpoint["state_dict"]
    moves = {"model.anomaly_map.level_scale": "model.reference.level_scale",
             "model.anomaly_map.reference": "model.reference.reference",
             "model.anomaly_map.score_reference": "model.reference.score_reference",
             "image_threshold": "model.image_threshold", "pixel_threshold": "model.pixel_threshold"}
    for old, new in moves.items():
        if old in state:
            state[new] = state.pop(old)
    levels = ModelSettings.from_dict(nested).resolved().networks.layers or ()
    state.setdefault("model.reference.level_scale", torch.ones(len(levels)))  # before per-level scaling existed
    if nested["map"].get("map_normalization") == "reference" and "model.reference.reference" not in state:
        state["model.reference.reference"] = torch.ones(1, 1, *ModelSettings.from_dict(nested).input.size)


def _from_format_2(checkpoint: dict[str, Any]) -> None:
    """Format 2: the image threshold was the ``image_threshold_quantile`` of the validation split's scores, read off
    them or from a Gumbel law (``calibration``), and no promise was recorded (NaN: unknown)."""
    hyper = checkpoint["hyper_parameters"]
    section = CalibrationSettings.earlier(hyper.get("calibration", {}))
    section.setdefault("calibration", "holdout")
    hyper["calibration"] = section
    state = checkpoint["state_dict"]
    state.setdefault("model.image_threshold_promise", torch.tensor(math.nan))
    state.setdefault("model.image_threshold_support", torch.tensor(0))


_STEPS: dict[int, Callable[[dict[str, Any]], None]] = {1: _from_format_1, 2: _from_format_2}
