"""Light augmentation of the normal training images: bounded, seeded, and used by training only."""

from __future__ import annotations

import math

import torch

from stfpm.data.augment import MAX_BRIGHTNESS, MAX_ROTATION_DEG, MAX_SCALE, MAX_SHIFT, light_augment
from stfpm.data.io import IMAGENET_MEAN, IMAGENET_STD

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _augment(pixels: torch.Tensor, seed: int) -> torch.Tensor:
    """``pixels`` in [0, 1] -> augmented pixels in [0, 1] (normalized on the way, as in training)."""
    out = light_augment((pixels - MEAN) / STD, IMAGENET_MEAN, IMAGENET_STD, torch.Generator().manual_seed(seed))
    return out * STD + MEAN


def test_same_generator_seed_same_augmentation_and_images_differ() -> None:
    pixels = torch.rand(6, 3, 48, 64)
    a, b, c = _augment(pixels, 1), _augment(pixels, 1), _augment(pixels, 2)
    assert a.shape == pixels.shape and a.dtype == pixels.dtype
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, pixels)
    # each image of the batch gets its own draw
    same = _augment(pixels[:1].expand(6, -1, -1, -1).contiguous(), 1)
    assert not torch.allclose(same[0], same[1])


def test_lighting_change_is_bounded() -> None:
    """A uniform grey part stays uniform (geometry changes nothing) and its level moves by the bounds at most."""
    level = 0.5
    out = _augment(torch.full((32, 3, 16, 16), level), 0)
    flat = out.flatten(1)
    assert torch.allclose(flat, flat[:, :1], atol=1e-5)
    change = (flat[:, 0] - level).abs()
    assert change.max() <= MAX_BRIGHTNESS + 1e-5  # the contrast scales around the image's own mean
    assert change.max() > 0


def test_a_point_moves_by_at_most_the_geometric_bounds() -> None:
    size = 65
    pixels = torch.zeros(64, 3, size, size)
    pixels[:, :, 40, 20] = 1.0  # a bright dot off the centre
    out = _augment(pixels, 3).mean(dim=1)
    centre = (size - 1) / 2
    radius = math.hypot(40 - centre, 20 - centre)
    bound = radius * (math.radians(MAX_ROTATION_DEG) + MAX_SCALE) + MAX_SHIFT * size + 2  # +2: interpolation
    moved = 0
    for image in out:
        y, x = divmod(int(image.argmax()), size)
        distance = math.hypot(y - 40, x - 20)
        assert distance <= bound, distance
        moved += distance >= 1
    assert moved > len(out) // 2
