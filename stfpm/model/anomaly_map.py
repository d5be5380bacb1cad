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
    """Per-level maps -> fused map at the input size -> optional Gaussian smoothing -> image score (its max, or
    the mean of its top ``score_fraction`` of pixels).

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
        if normalization == "reference":
            assert size is not None
            self.register_buffer("reference", torch.ones(1, 1, *size))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # checkpoints written before per-level scaling existed hold no level_scale: they used the product, scale 1
        state_dict.setdefault(prefix + "level_scale", torch.ones_like(self.level_scale))
        if self.normalization == "reference":
            state_dict.setdefault(prefix + "reference", torch.ones_like(self.reference))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def fuse(self, layer_maps: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        """Upsample every level's map bilinearly to ``size`` and fuse them; [B,1,H,W]."""
        fused: Tensor | None = None
        for level, layer_map in enumerate(layer_maps):
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

    def fused(self, layer_maps: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        """The fused maps [B,1,H,W] at the input ``size``, tiles stitched back, before normalization and smoothing.

        With a tiler, ``layer_maps`` hold the T tiles of each image (B*T rows): they are fused at the tile size.
        """
        if self.tiler is None:
            return self.fuse(layer_maps, size)
        return self.tiler.merge(self.fuse(layer_maps, self.tiler.tile_size))

    def normalize(self, maps: Tensor, reference: Tensor | None = None) -> Tensor:
        """The ``reference`` normalization of fused maps (identity for ``none``); ``reference`` overrides the
        stored one (calibration normalizes each validation image by the mean of the others)."""
        if self.normalization == "none":
            return maps
        ref = self.reference if reference is None else reference
        return maps / (ref + ref.mean())

    def forward(self, layer_maps: Sequence[Tensor], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Anomaly maps [B,1,H,W] at the input ``size`` and image scores [B]: fused, normalized, smoothed."""
        maps = self.smooth(self.normalize(self.fused(layer_maps, size)))
        return maps, self.score(maps)

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
    def fit_reference(self, fused_maps: Tensor) -> bool:
        """Set the reference map to the mean of the fused maps [N,1,H,W] of the validation normals; True when the
        maps are normalized by it. When they average fewer than :data:`MIN_REFERENCE_IMAGES` images' worth
        (:func:`effective_image_count`), the reference is made uniform (0.5, so that ``map / (R + mean(R))`` is the
        map itself) and False is returned."""
        if self.normalization != "reference":
            return False
        if effective_image_count(fused_maps) < MIN_REFERENCE_IMAGES:
            self.reference.fill_(0.5)
            return False
        self.reference.copy_(fused_maps.float().mean(dim=0, keepdim=True))
        return True

    @property
    def reference_in_use(self) -> bool:
        """Whether maps are divided by a reference map (False also when too few validation images left it uniform)."""
        return self.normalization == "reference" and not reference_is_uniform(self.reference)

    def extra_repr(self) -> str:
        return (f"fusion={self.fusion}, sigma={self.sigma}, normalization={self.normalization}, "
                f"score_fraction={self.score_fraction}")


def anomaly_map(teacher_features: list[Tensor], student_features: list[Tensor], size: tuple[int, int]) -> Tensor:
    """The official fused anomaly map [B,1,H,W] of a batch: levels multiplied, no smoothing."""
    generator = AnomalyMapGenerator(len(teacher_features)).to(teacher_features[0].device)
    return generator(layer_anomaly_maps(teacher_features, student_features), size)[0]


def fuse_anomaly_maps(layer_maps: list[Tensor], size: tuple[int, int]) -> Tensor:
    """The official fusion of per-level maps: bilinear upsampling to ``size``, then the product."""
    return AnomalyMapGenerator(len(layer_maps)).to(layer_maps[0].device).fuse(layer_maps, size)
