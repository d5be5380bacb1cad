"""Importable inference API: load a checkpoint once, then score images from memory.

>>> from stfpm.inference import Predictor
>>> predictor = Predictor.from_checkpoint("runs/carpet/version_0/checkpoints/best.ckpt", device="cuda")
>>> result = predictor.predict(PIL.Image.open("part.png"))
>>> result.score, result.is_anomalous, result.mask.shape  # mask: uint8 0/255 at the source size

predict.py is built on this class, and the anomaly maps come from the same model code as test.py's.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from stfpm.checkpoint import load_checkpoint
from stfpm.data import ImageTransform, load_image
from stfpm.errors import STFPMError
from stfpm.lightning_model import STFPM
from stfpm.postprocess import binary_mask, resize_map, to_numpy

ImageInput = Union[Image.Image, np.ndarray, str, Path]


@dataclass
class Prediction:
    """The verdict on one image, at the image's own resolution."""

    score: float  # max of the anomaly map
    is_anomalous: bool  # score >= image threshold
    anomaly_map: np.ndarray  # float32 [H, W]
    mask: np.ndarray  # uint8 [H, W], exactly 0 or 255 (pixel >= pixel threshold)

    @property
    def defect_area_fraction(self) -> float:
        """Share of the image's pixels marked as defect."""
        return float((self.mask > 0).mean())


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto``/None picks CUDA when available, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise STFPMError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise STFPMError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return resolved


_PRECISIONS = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}


class Predictor:
    """A trained model on one device with its preprocessing and decision thresholds."""

    def __init__(
        self,
        model: STFPM,
        device: str | torch.device | None = "auto",
        image_threshold: float | None = None,
        pixel_threshold: float | None = None,
        min_defect_area: int = 0,
        precision: str = "32",
    ) -> None:
        if precision not in _PRECISIONS:
            raise STFPMError(f"unknown precision {precision!r}; choose one of {', '.join(_PRECISIONS)}")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        hp = model.hparams
        self.transform = ImageTransform(hp["image_size"], hp["mean"], hp["std"])
        stored_image, stored_pixel = model.thresholds
        self.image_threshold = stored_image if image_threshold is None else float(image_threshold)
        self.pixel_threshold = stored_pixel if pixel_threshold is None else float(pixel_threshold)
        if math.isnan(self.image_threshold) or math.isnan(self.pixel_threshold):
            raise STFPMError(
                "this checkpoint has no calibrated thresholds (trained without validation images); "
                "pass --threshold and --image-threshold (or image_threshold=/pixel_threshold=)"
            )
        self.min_defect_area = min_defect_area
        self.dtype = _PRECISIONS[precision]

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs) -> "Predictor":
        """Load a checkpoint written by train.py (see :class:`Predictor` for the keyword arguments)."""
        return cls(load_checkpoint(path), **kwargs)

    def _autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @torch.inference_mode()
    def anomaly_maps(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        """Maps [B,H,W] and scores [B] of a preprocessed batch [B,3,H,W], on the predictor's device."""
        with self._autocast():
            maps, scores = self.model.model.predict(batch.to(self.device, non_blocking=True))
        return maps[:, 0].float(), scores.float()

    def postprocess(self, anomaly_map: Tensor, score: float, source_size: tuple[int, int]) -> Prediction:
        """Resize one map to its source size (height, width), then threshold it."""
        full = to_numpy(resize_map(anomaly_map, source_size))
        mask = binary_mask(full, self.pixel_threshold, self.min_defect_area)
        return Prediction(float(score), bool(score >= self.image_threshold), full, mask)

    def predict_batch(self, batch: Tensor, source_sizes: Sequence[tuple[int, int]]) -> list[Prediction]:
        """Predictions for a preprocessed batch whose images had the given (height, width) sizes."""
        maps, scores = self.anomaly_maps(batch)
        return [self.postprocess(m, s, size) for m, s, size in zip(maps, scores.tolist(), source_sizes)]

    def predict(self, images: ImageInput | Sequence[ImageInput]) -> Prediction | list[Prediction]:
        """Score one image (PIL, numpy HxW/HxWxC uint8, or a path) or a list of them."""
        single = isinstance(images, (Image.Image, np.ndarray, str, Path))
        items = [images] if single else list(images)
        pils = [load_image(i) if isinstance(i, (str, Path)) else i for i in items]
        sizes = [(p.height, p.width) if isinstance(p, Image.Image) else tuple(p.shape[:2]) for p in pils]
        batch = torch.stack([self.transform(p) for p in pils])
        results = self.predict_batch(batch, sizes)
        return results[0] if single else results
