"""The one calibration step: everything decided from the held-out normal validation images, and nothing from test
labels. Training calls it after every validation epoch; test.py, predict.py, the service and the export read what it
stored in the model (and so in every checkpoint).

It fits the map's statistics (:class:`~stfpm.model.reference.ReferenceNormalizer`), scores the validation images as
held-out images get scored, and sets the thresholds: the image threshold is the ``image_threshold_quantile`` of the
validation image scores, read off the scores (``empirical``) or from a Gumbel law fitted to them (``gumbel``, the
law of a maximum, which an image score is); the pixel threshold is the ``pixel_threshold_quantile`` of all their map
pixels. With the defaults (0.99 / 0.999) about 1% of normal parts are flagged and about 0.1% of normal pixels are
white in a mask, if the validation images are representative. With few validation images the empirical 0.99
quantile is simply their maximum, which a new good image exceeds with probability about 1/(n+1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from stfpm.model.reference import MIN_REFERENCE_IMAGES, normalized

if TYPE_CHECKING:
    from stfpm.model.settings import CalibrationSettings
    from stfpm.model.torch_model import STFPMModel

CALIBRATIONS = ("empirical", "gumbel")

_EULER_GAMMA = 0.5772156649015329


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


def thresholds(image_scores: Tensor, anomaly_maps: Tensor, settings: CalibrationSettings) -> tuple[float, float]:
    """(image threshold, pixel threshold) from the scores and maps of normal validation images."""
    image_rule = gumbel_threshold if settings.calibration == "gumbel" else quantile_threshold
    return (
        image_rule(image_scores, settings.image_threshold_quantile),
        quantile_threshold(anomaly_maps.to(torch.float32), settings.pixel_threshold_quantile),
    )


def few_images_warning(count: int, model: STFPMModel) -> str | None:
    """What ``count`` validation images are too few for (the image-threshold quantile; when asked for, the
    reference normalization), or None."""
    settings, reference = model.settings.calibration, model.reference.enabled
    quantile, problems = settings.image_threshold_quantile, []
    if settings.calibration == "empirical" and 0 < quantile < 1 and count < 1 / (1 - quantile):
        problems.append(
            f"only {count} validation images: their {quantile:.3g} quantile is about their maximum, which roughly 1 "
            f"good part in {count + 1} will exceed (not {100 * (1 - quantile):.2g}%); add training images, raise "
            "--val-fraction or use --calibration gumbel")
    if reference and count < MIN_REFERENCE_IMAGES:
        problems.append(f"only {count} validation images: the reference normalization needs at least "
                        f"{MIN_REFERENCE_IMAGES}, so the map is left as it is (--map-normalization none)")
    return "; ".join(problems) or None


@dataclass(frozen=True)
class Calibrated:
    """What one calibration found (the thresholds themselves are stored in the model)."""

    image_threshold: float
    pixel_threshold: float
    images: int  # validation images
    map_mean: float  # mean of their maps: the official code's model-selection criterion
    dominated: bool  # the reference normalization was asked for, but a few images dominate the mean map
    reference_image_count: float


@torch.no_grad()
def held_out_maps(model: STFPMModel, layer_maps: list[Tensor], chunk: int = 64) -> tuple[Tensor, Tensor]:
    """Fit the map's statistics to the level maps of N validation normals (every level) and return their maps
    [N,1,H,W] and image scores [N] as held-out images get them: under the reference normalization each image is
    normalized by the mean of the *others* (a new part is not in the reference), so thresholds taken from them keep
    their promise."""
    generator, reference, size = model.anomaly_map, model.reference, model.size
    if generator.sums_levels:
        reference.fit_level_scale(layer_maps)
    step = chunk * generator.rows_per_image  # whole images only: their tiles are stitched together
    fused = [
        torch.cat([generator.fused([lv[i: i + step] for lv in layer_maps], size, levels, reference.level_scale)
                   for i in range(0, len(layer_maps[0]), step)])
        for levels in generator.branches
    ]
    held_out = reference.fit(*fused)
    finished = []
    for levels, maps in zip(generator.branches, fused):
        if held_out:
            total = maps.sum(dim=0, keepdim=True)
            maps = torch.cat([normalized(maps[i: i + 1], (total - maps[i: i + 1]) / (len(maps) - 1))
                              for i in range(len(maps))])
        else:
            maps = reference(maps, levels)
        finished.append(torch.cat([generator.smooth(maps[i: i + chunk]) for i in range(0, len(maps), chunk)]))
    return finished[0], generator.score(finished[-1])


@torch.no_grad()
def calibrate(model: STFPMModel, layer_maps: list[Tensor], chunk: int = 64) -> Calibrated:
    """The calibration step: fit the map's statistics and the thresholds to the level maps of validation normals,
    and store them in ``model``, so that each checkpoint carries thresholds that match its own weights."""
    maps, scores = held_out_maps(model, layer_maps, chunk)
    maps = maps[:, 0].cpu()
    image_thr, pixel_thr = thresholds(scores.cpu(), maps, model.settings.calibration)
    model.image_threshold.fill_(image_thr)
    model.pixel_threshold.fill_(pixel_thr)
    reference = model.reference
    dominated = reference.enabled and not reference.in_use and len(maps) >= MIN_REFERENCE_IMAGES
    return Calibrated(image_thr, pixel_thr, len(maps), float(maps.double().mean()), dominated, reference.image_count)
