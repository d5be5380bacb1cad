"""From teacher/student features to the fused anomaly map and the image score, without any fitted state.

Per-level maps -> bilinear upsampling to the input size and fusion -> tiles stitched back -> normalization by the
fitted reference (:mod:`stfpm.model.reference`) -> optional Gaussian smoothing -> image score. The model's
``predict`` (test.py, predict.py, the export) and the calibration (:mod:`stfpm.model.calibrate`) both go through
:class:`AnomalyMap`, so a setting changes every path at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stfpm.core.errors import ConfigError
from stfpm.model.tiling import Tiler

if TYPE_CHECKING:
    from stfpm.model.reference import ReferenceNormalizer
    from stfpm.model.settings import MapSettings

FUSIONS = ("product", "sum")
"""``product``: the official fusion, levels multiplied. ``sum``: each level divided by its mean on the
validation normals (so every level weighs the same), then added; a defect seen clearly by one level alone
then still shows, where the product needs all levels to agree."""

SCORE_LEVELS = ("all", "coarser")
"""Which pyramid levels the image score is fused from (the map and its masks always fuse every level): ``all`` (the
paper's), ``coarser`` (every level but the finest), or explicit indices of ``--layers`` (0 the finest). After long
training the finest level's map of normal parts carries rare hot spots (texture, dust) that one image's maximum
picks up, and the image threshold flags good parts more often than it promises; the coarser levels do not
(docs/recipe_study.md)."""


def resolve_score_levels(spec: str | Sequence[int], num_levels: int) -> tuple[int, ...]:
    """The sorted level indices of a ``score_levels`` setting: ``all``, ``coarser`` (the finest level dropped, when
    there is more than one) or indices; a one-line error for an index the model lacks."""
    if isinstance(spec, str):
        if spec not in SCORE_LEVELS:
            raise ConfigError(f"--score-levels {spec!r}: pass {' or '.join(SCORE_LEVELS)}, or level indices (0 the finest)")
        return tuple(range(1 if spec == "coarser" and num_levels > 1 else 0, num_levels))
    levels = tuple(sorted({int(i) for i in spec}))
    if not levels or levels[0] < 0 or levels[-1] >= num_levels:
        raise ConfigError(f"--score-levels {' '.join(str(i) for i in spec)}: the model has {num_levels} levels "
                          f"(--layers), indices 0 (the finest) to {num_levels - 1}")
    return levels


def layer_anomaly_maps(teacher_features: list[Tensor], student_features: list[Tensor]) -> list[Tensor]:
    """Per level ``0.5 * ||t_hat - s_hat||^2`` over channels (= 1 - cosine similarity), shape [B,1,h,w]."""
    maps = []
    for t, s in zip(teacher_features, student_features):
        t_hat = F.normalize(t.float(), dim=1)
        s_hat = F.normalize(s.float(), dim=1)
        maps.append(0.5 * (t_hat - s_hat).pow(2).sum(dim=1, keepdim=True))
    return maps


def fuse(
    layer_maps: Sequence[Tensor], size: tuple[int, int], fusion: str, levels: Sequence[int], scale: Tensor | None
) -> Tensor:
    """Upsample each level's map bilinearly to ``size`` and fuse them; [B,1,H,W]. ``layer_maps`` are those of
    ``levels``; ``sum`` multiplies each by its level's ``scale`` first."""
    fused: Tensor | None = None
    for level, layer_map in zip(levels, layer_maps):
        up = F.interpolate(layer_map.float(), size=size, mode="bilinear", align_corners=False)
        if fusion == "sum":
            assert scale is not None, "the sum fusion needs its per-level scale"
            up = up * scale[level]
            fused = up if fused is None else fused + up
        else:
            fused = up if fused is None else fused * up
    assert fused is not None, "no feature level"
    return fused


def gaussian_kernel(sigma: float) -> Tensor:
    """A normalised 1-D Gaussian truncated at 4 sigma (radius ``int(4 sigma + 0.5)``, as scipy's default)."""
    radius = max(1, int(4.0 * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def smooth(maps: Tensor, kernel: Tensor | None) -> Tensor:
    """Separable Gaussian blur of [B,1,H,W] maps with a 1-D ``kernel`` (reflect padding); None: identity."""
    if kernel is None:
        return maps
    k = kernel.to(maps.dtype)
    radius = (k.numel() - 1) // 2
    # reflect padding cannot exceed the map: on a map smaller than the kernel, a shortened kernel is used,
    # renormalised so that a constant map stays constant
    pad_h, pad_w = min(radius, maps.shape[-2] - 1), min(radius, maps.shape[-1] - 1)
    k_w, k_h = k[radius - pad_w: radius + pad_w + 1], k[radius - pad_h: radius + pad_h + 1]
    out = F.conv2d(F.pad(maps, (pad_w, pad_w, 0, 0), mode="reflect"), (k_w / k_w.sum()).view(1, 1, 1, -1))
    return F.conv2d(F.pad(out, (0, 0, pad_h, pad_h), mode="reflect"), (k_h / k_h.sum()).view(1, 1, -1, 1))


def image_scores(maps: Tensor, top_fraction: float) -> Tensor:
    """Image-level anomaly score, shape [B]: the maximum of each map (``top_fraction`` 0, the paper's), or the
    mean of its ``top_fraction`` share of highest pixels (at least one), which one hot pixel cannot decide."""
    flat = maps.flatten(start_dim=1)
    if top_fraction <= 0:
        return flat.amax(dim=1)
    k = max(1, int(top_fraction * flat.shape[1] + 0.5))  # a constant for the export: the map size is fixed
    return flat.topk(k, dim=1).values.mean(dim=1)


class AnomalyMap(nn.Module):
    """The map settings applied: fusion of the levels (tiles stitched back), normalization by a fitted reference,
    smoothing, and the image score from ``score_levels`` (the map itself always fuses every level; a score from a
    subset of levels comes from its own fused map, normalized by its own reference and smoothed alike).

    It holds no fitted state: the per-level scales and reference maps come from a
    :class:`~stfpm.model.reference.ReferenceNormalizer` passed in.
    """

    def __init__(self, settings: MapSettings, num_levels: int, tiler: Tiler | None) -> None:
        super().__init__()
        self.settings = settings
        self.levels = tuple(range(num_levels))
        self.score_levels = resolve_score_levels(settings.score_levels, num_levels)
        self.tiler = tiler
        self.kernel: Tensor | None
        sigma = float(settings.map_sigma)
        self.register_buffer("kernel", gaussian_kernel(sigma) if sigma > 0 else None, persistent=False)

    @property
    def separate_score(self) -> bool:
        """Whether the image score comes from other levels than the map."""
        return self.score_levels != self.levels

    @property
    def branches(self) -> list[tuple[int, ...]]:
        """The level sets fused: every level, then the score's when they differ."""
        return [self.levels, self.score_levels] if self.separate_score else [self.levels]

    @property
    def sums_levels(self) -> bool:
        """Whether the levels are added (each scaled by a factor fitted on the normals) rather than multiplied."""
        return self.settings.map_fusion == "sum"

    @property
    def rows_per_image(self) -> int:
        """How many rows of the level maps belong to one image (its tiles, or 1)."""
        return 1 if self.tiler is None else self.tiler.num_tiles

    def fused(self, layer_maps: Sequence[Tensor], size: tuple[int, int], levels: Sequence[int], scale: Tensor) -> Tensor:
        """The fused maps [B,1,H,W] of ``levels`` at the input ``size``, tiles stitched back, before normalization
        and smoothing; ``layer_maps`` hold every level (with a tiler, the T tiles of each image: B*T rows)."""
        chosen = [layer_maps[i] for i in levels]
        fusion = self.settings.map_fusion
        if self.tiler is None:
            return fuse(chosen, size, fusion, levels, scale)
        return self.tiler.merge(fuse(chosen, self.tiler.tile, fusion, levels, scale))

    def smooth(self, maps: Tensor) -> Tensor:
        return smooth(maps, self.kernel)

    def score(self, maps: Tensor) -> Tensor:
        """Image scores [B] of finished maps [B,1,H,W]."""
        return image_scores(maps, self.settings.score_fraction)

    def forward(
        self, layer_maps: Sequence[Tensor], size: tuple[int, int], reference: ReferenceNormalizer
    ) -> tuple[Tensor, Tensor]:
        """Anomaly maps [B,1,H,W] at the input ``size`` (every level) and image scores [B] (``score_levels``)."""
        finished = [self.smooth(reference(self.fused(layer_maps, size, levels, reference.level_scale), levels))
                    for levels in self.branches]
        return finished[0], self.score(finished[-1])

    def extra_repr(self) -> str:
        s = self.settings
        return (f"fusion={s.map_fusion}, sigma={s.map_sigma}, normalization={s.map_normalization}, "
                f"score_fraction={s.score_fraction}, score_levels={list(self.score_levels)}")
