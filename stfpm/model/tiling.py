"""Overlapping tiles for inputs much larger than the network's natural size.

With tiling, an image is resized to the (large) input size as usual, cut into overlapping tiles of the tile
size, and every tile goes through teacher and student on its own, in training, validation, test, predict and
the export alike. The per-tile anomaly maps are stitched back to the input size, averaging where tiles
overlap, before smoothing and scoring. So a 1024x2560 scan keeps its fine detail while the networks see
parts at the scale they were trained on.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``length``, about ``overlap`` of a tile shared by
    neighbours; the last tile is aligned to the end, so every pixel is covered and no tile is padded."""
    if tile > length:
        raise ValueError(f"tile size {tile} is larger than the input side {length}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"tile overlap must be in [0, 1), got {overlap}")
    stride = max(1, round(tile * (1.0 - overlap)))
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


class Tiler(nn.Module):
    """Cuts [B,C,H,W] batches into [B*T,C,h,w] tiles and stitches [B*T,1,h,w] maps back to [B,1,H,W]."""

    def __init__(self, size: tuple[int, int], tile: tuple[int, int], overlap: float) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        self.tile = (int(tile[0]), int(tile[1]))
        self.overlap = float(overlap)
        ys = tile_starts(self.size[0], self.tile[0], overlap)
        xs = tile_starts(self.size[1], self.tile[1], overlap)
        self.positions = [(y, x) for y in ys for x in xs]
        coverage = torch.zeros(1, 1, *self.size)
        for y, x in self.positions:
            coverage[..., y: y + self.tile[0], x: x + self.tile[1]] += 1
        self.coverage: Tensor
        self.register_buffer("coverage", coverage, persistent=False)

    @property
    def num_tiles(self) -> int:
        return len(self.positions)

    def split(self, images: Tensor) -> Tensor:
        """[B,C,H,W] -> [B*T,C,h,w], the T tiles of each image consecutive."""
        if tuple(images.shape[-2:]) != self.size:
            raise ValueError(f"tiler expects inputs of {self.size}, got {tuple(images.shape[-2:])}")
        h, w = self.tile
        tiles = [images[..., y: y + h, x: x + w] for y, x in self.positions]
        return torch.stack(tiles, dim=1).flatten(0, 1)

    def merge(self, maps: Tensor) -> Tensor:
        """[B*T,1,h,w] -> [B,1,H,W], overlapping tiles averaged."""
        h, w = self.tile
        per_image = maps.reshape(-1, self.num_tiles, *maps.shape[1:])
        out = maps.new_zeros(per_image.shape[0], maps.shape[1], *self.size)
        for t, (y, x) in enumerate(self.positions):
            out[..., y: y + h, x: x + w] += per_image[:, t]
        return out / self.coverage.to(out.dtype)

    def extra_repr(self) -> str:
        return f"size={self.size}, tile={self.tile}, overlap={self.overlap}, tiles={self.num_tiles}"
