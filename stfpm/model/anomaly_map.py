"""From teacher/student features to the fused anomaly map and the image score.

One module, :class:`AnomalyMapGenerator`, owns every step after the networks: per-level maps, fusion, optional
Gaussian smoothing and the image score. The model's ``predict`` (test.py, predict.py, the export) and the
threshold calibration all go through it, so a setting changes every path at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stfpm.errors import ConfigError
from stfpm.model.tiling import Tiler

NORMALIZATIONS = ("none", "reference")
"""``reference``: the fused map divided, position by position, by the mean map of the validation normals (plus
its overall mean, which keeps quiet regions from being amplified): on aligned parts, positions that are always
hard for the student (edges, fixtures) stop dominating the map, so a defect elsewhere stands out."""

MIN_REFERENCE_IMAGES = 20
"""The reference normalization needs the validation maps of at least this many images' worth
(:func:`effective_image_count`), else it leaves the map as it is. The mean of a few maps is dominated by any one of
them: a rare kind of normal part seen once in validation then scores, against the others, tens of times higher than
the test parts, and the calibrated threshold stands above every defect. Measured on battery_weld (docs/recipe_study.md):
7 validation images at 256 px and 20 at 128 px, both after 100 epochs, averaged 1.5 and about 3 images' worth and
flagged 0 and 1% of the defects; bsdata's 110 validation images average 27 to 68 images' worth, and the reference
helps there."""


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


def reference_is_uniform(reference: Tensor) -> bool:
    """Whether a stored reference map is the uniform one that leaves maps as they are (see ``fit_reference``)."""
    return bool((reference == 0.5).all())


def effective_image_count(maps: Tensor) -> float:
    """How many images the mean of ``maps`` [N,1,H,W] (non-negative) effectively averages: at each position
    ``(sum_i m_i)^2 / sum_i m_i^2`` (N when every image contributes alike, 1 when one image holds it all), and the
    median over positions."""
    maps = maps.float().flatten(start_dim=1)
    total, squares = maps.sum(dim=0), maps.pow(2).sum(dim=0)
    count = torch.where(squares > 0, total.pow(2) / squares.clamp_min(1e-30), float(len(maps)))
    return float(count.median())


FUSIONS = ("product", "sum")
"""``product``: the official fusion, levels multiplied. ``sum``: each level divided by its mean on the
validation normals (so every level weighs the same), then added; a defect seen clearly by one level alone
then still shows, where the product needs all levels to agree."""


def layer_anomaly_maps(teacher_features: list[Tensor], student_features: list[Tensor]) -> list[Tensor]:
    """Per level ``0.5 * ||t_hat - s_hat||^2`` over channels (= 1 - cosine similarity), shape [B,1,h,w]."""
    maps = []
    for t, s in zip(teacher_features, student_features):
        t_hat = F.normalize(t.float(), dim=1)
        s_hat = F.normalize(s.float(), dim=1)
        maps.append(0.5 * (t_hat - s_hat).pow(2).sum(dim=1, keepdim=True))
    return maps


def gaussian_kernel(sigma: float) -> Tensor:
    """A normalised 1-D Gaussian truncated at 4 sigma (radius ``int(4 sigma + 0.5)``, as scipy's default)."""
    radius = max(1, int(4.0 * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def image_scores(maps: Tensor, top_fraction: float = 0.0) -> Tensor:
    """Image-level anomaly score, shape [B]: the maximum of each map (``top_fraction`` 0, the paper's), or the
    mean of its ``top_fraction`` share of highest pixels (at least one), which one hot pixel cannot decide."""
    flat = maps.flatten(start_dim=1)
    if top_fraction <= 0:
        return flat.amax(dim=1)
    k = max(1, int(top_fraction * flat.shape[1] + 0.5))  # a constant for the export: the map size is fixed
    return flat.topk(k, dim=1).values.mean(dim=1)


class AnomalyMapGenerator(nn.Module):
    """Per-level maps -> fused map at the input size -> optional normalization and Gaussian smoothing -> image score
    (its max, or the mean of its top ``score_fraction`` of pixels).

    ``score_levels`` (default: all) are the levels whose fused map gives the image score; the map itself, and so
    the masks and the pixel threshold, always fuse every level. A score from a subset of levels comes from its own
    fused map, normalized by its own reference (``score_reference``) and smoothed alike.

    ``level_scale`` holds one factor per level applied before fusion; it stays 1 for the product fusion (a
    constant factor would not change any ranking) and is set from the validation normals for ``sum``
    (:meth:`fit_level_scale`). It is a buffer, so it travels with checkpoints and exports.
    """

    def __init__(
        self,
        num_levels: int,
        fusion: str = "product",
        sigma: float = 0.0,
        tiler: Tiler | None = None,
        normalization: str = "none",
        size: tuple[int, int] | None = None,
        score_fraction: float = 0.0,
        score_levels: str | Sequence[int] = "all",
    ) -> None:
        super().__init__()
        if not 0.0 <= score_fraction < 1.0:
            raise ValueError(f"score fraction must be in [0, 1), got {score_fraction}")
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown map normalization {normalization!r}; choose one of {', '.join(NORMALIZATIONS)}")
        if normalization == "reference" and size is None:
            raise ValueError("the reference normalization needs the input size")
        if not (sigma >= 0 and math.isfinite(sigma)):
            raise ValueError(f"smoothing sigma must be >= 0, got {sigma}")
        self.levels = tuple(range(num_levels))
        self.score_levels = resolve_score_levels(score_levels, num_levels)
        self.fusion = fusion
        self.sigma = float(sigma)
        self.score_fraction = float(score_fraction)
        self.level_scale: Tensor
        self.kernel: Tensor
        self.register_buffer("level_scale", torch.ones(num_levels))
        self.register_buffer("kernel", gaussian_kernel(sigma) if sigma > 0 else torch.ones(1), persistent=False)
        self.tiler = tiler
        self.normalization = normalization
        self.reference: Tensor
        self.score_reference: Tensor
        self.reference_image_count = math.nan  # effective_image_count of the last fitted validation maps
        if normalization == "reference":
            assert size is not None
            self.register_buffer("reference", torch.ones(1, 1, *size))
            if self.separate_score:
                self.register_buffer("score_reference", torch.ones(1, 1, *size))

    @property
    def separate_score(self) -> bool:
        """Whether the image score comes from other levels than the map."""
        return self.score_levels != self.levels

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # checkpoints written before per-level scaling existed hold no level_scale: they used the product, scale 1
        state_dict.setdefault(prefix + "level_scale", torch.ones_like(self.level_scale))
        for name in ("reference", "score_reference"):
            if hasattr(self, name):
                state_dict.setdefault(prefix + name, torch.ones_like(getattr(self, name)))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def fuse(self, layer_maps: Sequence[Tensor], size: tuple[int, int], levels: Sequence[int] | None = None) -> Tensor:
        """Upsample each level's map bilinearly to ``size`` and fuse them; [B,1,H,W]. ``layer_maps`` are those of
        ``levels`` (default: every level), which ``sum``'s per-level factors are looked up by."""
        levels = range(len(layer_maps)) if levels is None else levels
        fused: Tensor | None = None
        for level, layer_map in zip(levels, layer_maps):
            up = F.interpolate(layer_map.float(), size=size, mode="bilinear", align_corners=False)
            if self.fusion == "sum":
                up = up * self.level_scale[level]
                fused = up if fused is None else fused + up
            else:
                fused = up if fused is None else fused * up
        assert fused is not None, "no feature level"
        return fused

    def smooth(self, maps: Tensor) -> Tensor:
        """Separable Gaussian blur of [B,1,H,W] maps (reflect padding); identity when sigma is 0."""
        if self.sigma <= 0:
            return maps
        k = self.kernel.to(maps.dtype)
        radius = (k.numel() - 1) // 2
        # reflect padding cannot exceed the map: on a map smaller than the kernel, a shortened kernel is used,
        # renormalised so that a constant map stays constant
        pad_h, pad_w = min(radius, maps.shape[-2] - 1), min(radius, maps.shape[-1] - 1)
        k_w, k_h = k[radius - pad_w: radius + pad_w + 1], k[radius - pad_h: radius + pad_h + 1]
        out = F.conv2d(F.pad(maps, (pad_w, pad_w, 0, 0), mode="reflect"), (k_w / k_w.sum()).view(1, 1, 1, -1))
        return F.conv2d(F.pad(out, (0, 0, pad_h, pad_h), mode="reflect"), (k_h / k_h.sum()).view(1, 1, -1, 1))

    def fused(self, layer_maps: Sequence[Tensor], size: tuple[int, int], levels: Sequence[int] | None = None) -> Tensor:
        """The fused maps [B,1,H,W] of ``levels`` (default: every level) at the input ``size``, tiles stitched back,
        before normalization and smoothing; ``layer_maps`` hold every level.

        With a tiler, ``layer_maps`` hold the T tiles of each image (B*T rows): they are fused at the tile size.
        """
        if levels is not None:
            layer_maps = [layer_maps[i] for i in levels]
        if self.tiler is None:
            return self.fuse(layer_maps, size, levels)
        return self.tiler.merge(self.fuse(layer_maps, self.tiler.tile_size, levels))

    def _reference_of(self, levels: Sequence[int]) -> Tensor | None:
        """The stored reference map of the fused map of ``levels`` (None without the reference normalization)."""
        if self.normalization == "none":
            return None
        return self.reference if tuple(levels) == self.levels else self.score_reference

    def normalize(self, maps: Tensor, reference: Tensor | None = None) -> Tensor:
        """The ``reference`` normalization of fused maps (identity for ``none``); ``reference`` overrides the
        stored one (calibration normalizes each validation image by the mean of the others)."""
        if self.normalization == "none":
            return maps
        ref = self.reference if reference is None else reference
        return maps / (ref + ref.mean())

    def finished(self, layer_maps: Sequence[Tensor], size: tuple[int, int], levels: Sequence[int] | None = None) -> Tensor:
        """Maps [B,1,H,W] of ``levels`` (default: every level): fused, normalized by their reference, smoothed."""
        levels = self.levels if levels is None else tuple(levels)
        return self.smooth(self.normalize(self.fused(layer_maps, size, levels), self._reference_of(levels)))

    def forward(self, layer_maps: Sequence[Tensor], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Anomaly maps [B,1,H,W] at the input ``size`` (every level) and image scores [B] (``score_levels``)."""
        maps = self.finished(layer_maps, size)
        score_maps = self.finished(layer_maps, size, self.score_levels) if self.separate_score else maps
        return maps, self.score(score_maps)

    def score(self, maps: Tensor) -> Tensor:
        """Image scores [B] of finished maps [B,1,H,W]."""
        return image_scores(maps, self.score_fraction)

    @property
    def rows_per_image(self) -> int:
        """How many rows of the level maps belong to one image (its tiles, or 1)."""
        return 1 if self.tiler is None else self.tiler.num_tiles

    @torch.no_grad()
    def fit_level_scale(self, layer_maps: Sequence[Tensor]) -> None:
        """Set the per-level factors from the level maps of normal validation images (``sum`` fusion only)."""
        if self.fusion != "sum":
            return
        for level, layer_map in enumerate(layer_maps):
            mean = float(layer_map.float().mean())
            self.level_scale[level] = 1.0 / mean if mean > 0 else 1.0

    @torch.no_grad()
    def fit(self, layer_maps: Sequence[Tensor], size: tuple[int, int], chunk: int = 64) -> tuple[Tensor, Tensor]:
        """Fit everything decided from the validation normals to their level maps (every level, N images): the
        per-level factors and the reference maps. Returns their maps [N,1,H,W] and image scores [N] as held-out
        images get them: under the reference normalization each image is normalized by the mean of the *others*
        (a new part is not in the reference), so thresholds taken from them keep their promise."""
        self.fit_level_scale(layer_maps)
        branches = [self.levels, self.score_levels] if self.separate_score else [self.levels]
        step = chunk * self.rows_per_image  # whole images only: their tiles are stitched together
        fused = [
            torch.cat([self.fused([lv[i: i + step] for lv in layer_maps], size, levels)
                       for i in range(0, len(layer_maps[0]), step)])
            for levels in branches
        ]
        held_out = self.fit_reference(*fused)
        finished = []
        for levels, maps in zip(branches, fused):
            if held_out:
                total = maps.sum(dim=0, keepdim=True)
                maps = torch.cat([self.normalize(maps[i: i + 1], (total - maps[i: i + 1]) / (len(maps) - 1))
                                  for i in range(len(maps))])
            else:
                maps = self.normalize(maps, self._reference_of(levels))
            finished.append(torch.cat([self.smooth(maps[i: i + chunk]) for i in range(0, len(maps), chunk)]))
        return finished[0], self.score(finished[-1])

    @torch.no_grad()
    def fit_reference(self, fused_maps: Tensor, score_maps: Tensor | None = None) -> bool:
        """Set the reference map to the mean of the fused maps [N,1,H,W] of the validation normals (and the score's
        reference to the mean of ``score_maps``, the fused maps of ``score_levels``); True when maps are normalized
        by them. When either averages fewer than :data:`MIN_REFERENCE_IMAGES` images' worth
        (:func:`effective_image_count`), both references are made uniform (0.5, so that ``map / (R + mean(R))`` is
        the map itself) and False is returned."""
        if self.normalization != "reference":
            return False
        pairs = [(self.reference, fused_maps)]
        if self.separate_score:
            assert score_maps is not None, "the score's fused maps are needed too"
            pairs.append((self.score_reference, score_maps))
        self.reference_image_count = min(effective_image_count(maps) for _, maps in pairs)
        use = self.reference_image_count >= MIN_REFERENCE_IMAGES
        for reference, maps in pairs:
            if use:
                reference.copy_(maps.float().mean(dim=0, keepdim=True))
            else:
                reference.fill_(0.5)
        return use

    @property
    def reference_in_use(self) -> bool:
        """Whether maps are divided by a reference map (False also when too few validation images left it uniform)."""
        return self.normalization == "reference" and not reference_is_uniform(self.reference)

    def extra_repr(self) -> str:
        return (f"fusion={self.fusion}, sigma={self.sigma}, normalization={self.normalization}, "
                f"score_fraction={self.score_fraction}, score_levels={list(self.score_levels)}")


def anomaly_map(teacher_features: list[Tensor], student_features: list[Tensor], size: tuple[int, int]) -> Tensor:
    """The official fused anomaly map [B,1,H,W] of a batch: levels multiplied, no smoothing."""
    generator = AnomalyMapGenerator(len(teacher_features)).to(teacher_features[0].device)
    return generator(layer_anomaly_maps(teacher_features, student_features), size)[0]


def fuse_anomaly_maps(layer_maps: list[Tensor], size: tuple[int, int]) -> Tensor:
    """The official fusion of per-level maps: bilinear upsampling to ``size``, then the product."""
    return AnomalyMapGenerator(len(layer_maps)).to(layer_maps[0].device).fuse(layer_maps, size)
