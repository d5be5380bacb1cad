"""What the map takes from the validation normals: the per-level scales of the ``sum`` fusion and the reference maps
of the ``reference`` normalization. Buffers, so they travel with checkpoints and exports; fitted by the calibration
(:mod:`stfpm.model.calibrate`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

NORMALIZATIONS = ("none", "reference")
"""``reference``: the fused map divided, position by position, by the mean map of the validation normals (plus
its overall mean, which keeps quiet regions from being amplified): on aligned parts, positions that are always
hard for the student (edges, fixtures) stop dominating the map, so a defect elsewhere stands out."""

MIN_REFERENCE_IMAGES = 20
"""The reference normalization needs the validation maps of at least this many images' worth
(:func:`effective_image_count`), else it leaves the map as it is. The mean of a few maps is dominated by any one of
them: a rare kind of normal part seen once in validation then scores, against the others, tens of times higher than
the test parts, and the calibrated threshold stands above every defect (docs/recipe_study.md)."""


def effective_image_count(maps: Tensor) -> float:
    """How many images the mean of ``maps`` [N,1,H,W] (non-negative) effectively averages: at each position
    ``(sum_i m_i)^2 / sum_i m_i^2`` (N when every image contributes alike, 1 when one image holds it all), and the
    median over positions."""
    maps = maps.float().flatten(start_dim=1)
    total, squares = maps.sum(dim=0), maps.pow(2).sum(dim=0)
    count = torch.where(squares > 0, total.pow(2) / squares.clamp_min(1e-30), float(len(maps)))
    return float(count.median())


def reference_is_uniform(reference: Tensor) -> bool:
    """Whether a stored reference map is the uniform one that leaves maps as they are (see ``fit``)."""
    return bool((reference == 0.5).all())


def normalized(maps: Tensor, reference: Tensor) -> Tensor:
    """Fused maps divided by a reference map plus its mean."""
    return maps / (reference + reference.mean())


class ReferenceNormalizer(nn.Module):
    """The fitted statistics of the map. ``level_scale`` holds one factor per level applied before fusion; it stays
    1 for the product fusion (a constant factor would not change any ranking) and is set from the validation
    normals for ``sum``. With ``reference``, ``reference`` is the validation normals' mean fused map and
    ``score_reference`` that of the score's levels (when they differ from the map's)."""

    def __init__(self, num_levels: int, normalization: str, size: tuple[int, int], separate_score: bool) -> None:
        super().__init__()
        self.levels = tuple(range(num_levels))
        self.enabled = normalization == "reference"
        self.separate_score = separate_score
        self.level_scale: Tensor
        self.register_buffer("level_scale", torch.ones(num_levels))
        self.reference: Tensor
        self.score_reference: Tensor
        self.image_count = math.nan  # effective_image_count of the last fitted validation maps
        if self.enabled:
            self.register_buffer("reference", torch.ones(1, 1, *size))
            if separate_score:
                self.register_buffer("score_reference", torch.ones(1, 1, *size))

    def reference_of(self, levels: Sequence[int]) -> Tensor | None:
        """The stored reference map of the fused map of ``levels`` (None without the reference normalization)."""
        if not self.enabled:
            return None
        return self.reference if tuple(levels) == self.levels else self.score_reference

    def forward(self, maps: Tensor, levels: Sequence[int]) -> Tensor:
        """Fused maps of ``levels`` normalized by their reference (as they are without the normalization)."""
        reference = self.reference_of(levels)
        return maps if reference is None else normalized(maps, reference)

    @torch.no_grad()
    def fit_level_scale(self, layer_maps: Sequence[Tensor]) -> None:
        """Set the per-level factors of the ``sum`` fusion from the level maps of normal validation images."""
        for level, layer_map in enumerate(layer_maps):
            mean = float(layer_map.float().mean())
            self.level_scale[level] = 1.0 / mean if mean > 0 else 1.0

    @torch.no_grad()
    def fit(self, fused_maps: Tensor, score_maps: Tensor | None = None) -> bool:
        """Set the reference map to the mean of the fused maps [N,1,H,W] of the validation normals (and the score's
        reference to the mean of ``score_maps``); True when maps are normalized by them. When either averages fewer
        than :data:`MIN_REFERENCE_IMAGES` images' worth, both references are made uniform (0.5, so that
        ``map / (R + mean(R))`` is the map itself) and False is returned."""
        if not self.enabled:
            return False
        pairs = [(self.reference, fused_maps)]
        if self.separate_score:
            assert score_maps is not None, "the score's fused maps are needed too"
            pairs.append((self.score_reference, score_maps))
        self.image_count = min(effective_image_count(maps) for _, maps in pairs)
        use = self.image_count >= MIN_REFERENCE_IMAGES
        for reference, maps in pairs:
            if use:
                reference.copy_(maps.float().mean(dim=0, keepdim=True))
            else:
                reference.fill_(0.5)
        return use

    @property
    def in_use(self) -> bool:
        """Whether maps are divided by a reference map (False also when too few validation images left it uniform)."""
        return self.enabled and not reference_is_uniform(self.reference)
