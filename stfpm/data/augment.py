"""Light augmentation of the normal training images, on batches of normalized tensors.

Teacher and student see the same augmented image, so the student learns to follow the teacher over small
changes of position and lighting that a production line produces anyway, instead of only over the few
training photos. Nothing here creates a defect-like pattern: no flips, no cut-outs, no noise.

The random draws depend only on the generator passed in, which training seeds from (seed, step, rank), so a
resumed run augments exactly as an unbroken one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

AUGMENTATIONS = ("none", "light")

MAX_SHIFT = 0.04
"""Largest translation, as a share of each side."""
MAX_ROTATION_DEG = 3.0
MAX_SCALE = 0.04
"""Largest zoom in or out, as a share of the size."""
MAX_BRIGHTNESS = 0.08
"""Largest brightness offset, in [0, 1] pixel units."""
MAX_CONTRAST = 0.08
"""Largest relative contrast change around each image's mean."""


def _uniform(n: int, bound: float, generator: torch.Generator, device: torch.device) -> Tensor:
    return (torch.rand(n, generator=generator, device=device) * 2 - 1) * bound


def light_augment(
    images: Tensor, mean: Sequence[float], std: Sequence[float], generator: torch.Generator
) -> Tensor:
    """Each image of the batch ``[N, 3, H, W]`` (normalized with ``mean``/``std``) slightly shifted, rotated,
    zoomed (reflected at the borders) and re-lit; returned normalized the same way."""
    n, device = len(images), images.device
    angle = _uniform(n, math.radians(MAX_ROTATION_DEG), generator, device)
    scale = 1 + _uniform(n, MAX_SCALE, generator, device)
    shift = torch.stack([_uniform(n, 2 * MAX_SHIFT, generator, device) for _ in range(2)], dim=1)
    brightness = _uniform(n, MAX_BRIGHTNESS, generator, device).view(n, 1, 1, 1)
    contrast = 1 + _uniform(n, MAX_CONTRAST, generator, device).view(n, 1, 1, 1)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    moved = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    m = torch.tensor(mean, dtype=images.dtype, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=device).view(1, -1, 1, 1)
    pixels = moved * s + m
    centre = pixels.mean(dim=(1, 2, 3), keepdim=True)
    pixels = ((pixels - centre) * contrast + centre + brightness).clamp(0, 1)
    return (pixels - m) / s
