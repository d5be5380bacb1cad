"""The one calibration step: everything decided from out-of-sample good images, and nothing from test labels.
Training calls it after every validation epoch (``holdout``) or once on the cross-fitted maps of every training
image (``cross-fit``); test.py, predict.py, the service and the export read what it stored in the model (and so in
every checkpoint).

It fits the map's statistics (:class:`~stfpm.model.reference.ReferenceNormalizer`), scores the images as held-out
images get scored, and sets the thresholds. The image threshold is set for ``target_false_alarms``, the share of good
parts it may flag: with n scores, the k-th smallest is exceeded by a new good part with probability (n+1-k)/(n+1)
(a conformal bound), so n scores support at best 1/(n+1). Below that, a tail model may extrapolate (``tail``), or the
threshold is the highest score and the promise 1/(n+1). The checkpoint records the promise and its support n. The
pixel threshold is the ``pixel_threshold_quantile`` of all the images' map pixels.
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
    from stfpm.model.settings import CalibrationSettings, ModelSettings
    from stfpm.model.torch_model import STFPMModel

CALIBRATIONS = ("auto", "holdout", "cross-fit")
"""Where the out-of-sample scores of good images come from: the validation split (``holdout``), or every good
training image scored by a student trained without it (``cross-fit``, :mod:`stfpm.training.cross_fit`); ``auto``
cross-fits when the validation split is too small to support the target rate (:func:`cross_fits`)."""
TAILS = ("none", "gumbel", "pareto")
"""How the image threshold goes beyond the highest out-of-sample score when the target rate asks for it: it does
not (``none``: the promise is what the scores support), or it follows a Gumbel law fitted to all of them, or a
generalised Pareto law fitted to their upper half."""

_EULER_GAMMA = 0.5772156649015329


def quantile_threshold(values: Tensor | np.ndarray, quantile: float) -> float:
    """The ``quantile`` of ``values`` (any shape), computed exactly with numpy's linear interpolation.

    numpy is used because ``torch.quantile`` refuses inputs above 16M elements, which a validation set of
    256x256 maps reaches quickly.
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"threshold quantile must be in [0, 1], got {quantile}")
    array = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    if array.size == 0:
        return float("nan")
    return float(np.quantile(array.reshape(-1), quantile))  # in the values' precision, as the buffers store it


def _array(values: Tensor | np.ndarray) -> np.ndarray:
    array = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    return array.reshape(-1).astype(np.float64)


def supported_rate(count: int) -> float:
    """The lowest false-alarm rate ``count`` out-of-sample scores support without a tail model: a new good part
    exceeds the highest of them with probability 1/(n+1)."""
    return 1.0 / (count + 1) if count > 0 else 1.0


def conformal_threshold(values: Tensor | np.ndarray, target: float) -> tuple[float, float]:
    """(threshold, promise): the k-th smallest of n scores, k the smallest with (n+1-k)/(n+1) <= ``target``, which
    a new score from the same law exceeds with probability exactly (n+1-k)/(n+1), the promise. When even the
    highest score cannot promise ``target`` (n+1 < 1/target), it is the threshold and the promise 1/(n+1)."""
    array = np.sort(_array(values))
    promise = conformal_promise(array.size, target)
    if array.size == 0:
        return math.nan, promise
    k = round(array.size + 1 - promise * (array.size + 1))
    return float(array[k - 1]), promise


def gumbel_quantile(values: Tensor | np.ndarray, target: float) -> float:
    """The score a Gumbel (maximum) law fitted to ``values`` by the method of moments exceeds with probability
    ``target`` (NaN with fewer than 3 values)."""
    array = _array(values)
    if array.size < 3:
        return math.nan
    beta = float(np.std(array, ddof=1)) * math.sqrt(6.0) / math.pi
    mu = float(np.mean(array)) - _EULER_GAMMA * beta
    return mu - beta * math.log(-math.log(1.0 - target))


def pareto_quantile(values: Tensor | np.ndarray, target: float) -> float:
    """The score exceeded with probability ``target`` under a generalised Pareto law fitted, by probability-weighted
    moments (Hosking and Wallis, 1987), to the excesses of the upper half of ``values`` over their median (NaN with
    fewer than 8 values)."""
    array = np.sort(_array(values))
    n = array.size
    if n < 8:
        return math.nan
    upper = array[n // 2:]
    threshold = float(array[n // 2 - 1])
    excess = upper - threshold
    m = excess.size
    a0 = float(excess.mean())
    a1 = float(np.sum(excess * (m - np.arange(1, m + 1)) / (m - 1)) / m)
    if a0 <= 0 or a0 - 2 * a1 <= 0:
        return math.nan
    shape = a0 / (a0 - 2 * a1) - 2  # Hosking's k: > 0 a bounded tail, < 0 a heavy one
    scale = 2 * a0 * a1 / (a0 - 2 * a1)
    beyond = target * n / m  # the exceedance probability asked of the fitted law
    if beyond >= 1:
        return float(np.quantile(array, 1.0 - target))
    if abs(shape) < 1e-6:
        return threshold - scale * math.log(beyond)
    return threshold + scale / shape * (1.0 - beyond ** shape)


_TAIL_QUANTILES = {"gumbel": gumbel_quantile, "pareto": pareto_quantile}


@dataclass(frozen=True)
class ImageThreshold:
    """The image threshold, the false-alarm rate it is set for (the promise) and the number of out-of-sample good
    scores it rests on (the support)."""

    value: float
    promise: float
    support: int
    extrapolated: bool  # set beyond the highest score by the tail model


def image_threshold(scores: Tensor | np.ndarray, settings: CalibrationSettings) -> ImageThreshold:
    """The image threshold for ``settings.target_false_alarms`` from the out-of-sample scores of good images:
    their conformal threshold (:func:`conformal_threshold`) where they support the target; else, with a tail model,
    its quantile at the target (never below the highest score); else the highest score, promising 1/(n+1)."""
    target = settings.target_false_alarms
    value, promise = conformal_threshold(scores, target)
    support = int(_array(scores).size)
    if support and promise > target + 1e-12 and settings.tail in _TAIL_QUANTILES:
        fitted = _TAIL_QUANTILES[settings.tail](scores, target)
        if math.isfinite(fitted):
            return ImageThreshold(max(fitted, value), target, support, True)
    return ImageThreshold(value, promise, support, False)


def cross_fits(settings: CalibrationSettings, validation_images: int) -> bool:
    """Whether training cross-fits: asked for, or ``auto`` and the validation split (``validation_images``) is
    too small to support the target rate."""
    if settings.calibration != "auto":
        return settings.calibration == "cross-fit"
    return supported_rate(validation_images) > settings.target_false_alarms + 1e-12


def cross_fit_students(settings: ModelSettings, validation_images: int, has_validation: bool) -> int:
    """How many students a run cross-fits (0: it calibrates on its validation split, if it has one); ``auto``
    cross-fits only runs that have a validation split (``--val-fraction`` > 0)."""
    calibration = settings.calibration
    wanted = calibration.calibration == "cross-fit" or (has_validation and cross_fits(calibration, validation_images))
    return calibration.folds if wanted else 0


def promise_report(promise: float, support: int) -> str | None:
    """The image threshold's promise in a sentence (None when the checkpoint does not record one)."""
    if not support or not math.isfinite(promise):
        return None
    return (f"the image threshold is set to flag {100 * promise:.2g}% of good parts, from {support} out-of-sample "
            "good images")


def promise_note(promise: float, support: int, target: float, source: str) -> str | None:
    """What a user should know about a promise that differs from the target, or None."""
    if support == 0 or promise <= target + 1e-12:
        return None
    return (f"the image threshold rests on {support} out-of-sample good scores ({source}): it can promise "
            f"at best {100 * promise:.2g}% false alarms (1/(n+1)), not the {100 * target:.2g}% asked "
            "(--target-false-alarms); add good images, or extrapolate with --tail gumbel or pareto")


def conformal_promise(count: int, target: float) -> float:
    """The promise of :func:`conformal_threshold` with ``count`` scores."""
    if count <= 0:
        return math.nan
    k = min(max(math.ceil((count + 1) * (1.0 - target) - 1e-9), 1), count)
    return (count + 1 - k) / (count + 1)


def few_images_warning(count: int, model: STFPMModel, source: str = "validation images") -> str | None:
    """What ``count`` out-of-sample good images are too few for (the target rate, without a tail model; when asked
    for, the reference normalization), or None."""
    settings, problems = model.settings.calibration, []
    target = settings.target_false_alarms
    note = promise_note(conformal_promise(count, target), count, target, source) if settings.tail == "none" else None
    if note:
        problems.append(note)
    if model.reference.enabled and count < MIN_REFERENCE_IMAGES:
        problems.append(f"only {count} {source}: the reference normalization needs at least "
                        f"{MIN_REFERENCE_IMAGES}, so the map is left as it is (--map-normalization none)")
    return "; ".join(problems) or None


@dataclass(frozen=True)
class Calibrated:
    """What one calibration found (the thresholds and the promise are stored in the model too)."""

    image: ImageThreshold
    pixel_threshold: float
    scores: list[float]  # the out-of-sample image scores of good images the thresholds rest on
    map_mean: float  # mean of their maps: the official code's model-selection criterion
    dominated: bool  # the reference normalization was asked for, but a few images dominate the mean map
    reference_image_count: float

    @property
    def images(self) -> int:
        return self.image.support


@torch.no_grad()
def held_out_maps(model: STFPMModel, layer_maps: list[Tensor], chunk: int = 64) -> tuple[Tensor, Tensor]:
    """Fit the map's statistics to the level maps of N out-of-sample normals (every level) and return their maps
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
    """The calibration step: fit the map's statistics and the thresholds to the level maps of out-of-sample good
    images (the validation split, or every training image cross-fitted), and store them in ``model``, so that each
    checkpoint carries thresholds, and their promise, that match its own weights."""
    maps, scores = held_out_maps(model, layer_maps, chunk)
    maps, scores = maps[:, 0].cpu(), scores.float().cpu()
    image = image_threshold(scores, model.settings.calibration)
    pixel_thr = quantile_threshold(maps.to(torch.float32), model.settings.calibration.pixel_threshold_quantile)
    model.image_threshold.fill_(image.value)
    model.pixel_threshold.fill_(pixel_thr)
    model.image_threshold_promise.fill_(image.promise)
    model.image_threshold_support.fill_(image.support)
    reference = model.reference
    dominated = reference.enabled and not reference.in_use and len(maps) >= MIN_REFERENCE_IMAGES
    return Calibrated(image, pixel_thr, scores.tolist(), float(maps.double().mean()), dominated,
                      reference.image_count)
