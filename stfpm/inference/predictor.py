"""Importable inference API: load a checkpoint once, then score images from memory.

>>> from stfpm.inference.predictor import Predictor
>>> predictor = Predictor.from_checkpoint("runs/carpet/version_0/checkpoints/best.ckpt", device="cuda")
>>> result = predictor.predict(PIL.Image.open("part.png"))
>>> result.score, result.is_anomalous, result.mask.shape  # mask: uint8 0/255 at the source size
>>> fast = Predictor.from_checkpoint("best.ckpt", runtime="openvino", precision="int8")  # only the network changes

An in-process, single-device view of the engine that test.py and predict.py run through Lightning: the same
preprocessing (``STFPM.preprocessing``), the same model call (``STFPM.predict_step``) and the same
:class:`~stfpm.inference.postprocess.Postprocessor` with its :class:`~stfpm.inference.thresholding.ThresholdPolicy`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from stfpm.core.errors import STFPMError
from stfpm.data import load_image
from stfpm.data.io import upright
from stfpm.inference.folder import FolderSummary, predict_folder
from stfpm.inference.postprocess import Postprocessor, Prediction
from stfpm.inference.runtime import attach, network_label
from stfpm.inference.settings import (
    DeviceSettings,
    EngineSettings,
    PostprocessSettings,
    PredictSettings,
    RuntimeSettings,
    ThresholdSettings,
    autocast_dtype,
    resolve_precision,
)
from stfpm.inference.thresholding import ThresholdPolicy
from stfpm.model.checkpoint import load_checkpoint
from stfpm.model.lightning_model import STFPM

__all__ = ["Prediction", "Predictor", "resolve_device"]

ImageInput = Image.Image | np.ndarray | str | Path


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto``/None picks CUDA when available, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise STFPMError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise STFPMError(f"device {device!r} requested but CUDA is not available; use the CPU (device='cpu')")
    return resolved


class Predictor:
    """A trained model on one device with its preprocessing, decision thresholds and postprocessing; ``runtime``
    (``torch``, ``onnxruntime``, ``openvino``) and ``precision`` say what runs the network (see
    :mod:`stfpm.inference.runtime`), ``batch_sizes`` the batch sizes an exported network is prepared for."""

    def __init__(
        self,
        model: STFPM,
        device: str | torch.device | None = "auto",
        image_threshold: float | None = None,
        pixel_threshold: float | None = None,
        min_defect_area: int = 0,
        precision: str = "32-true",
        thresholds_from: str | Path | None = None,
        runtime: str = "torch",
        runtime_model: str | Path | None = None,
        batch_sizes: Sequence[int] = (1,),
    ) -> None:
        self.runtime = RuntimeSettings(runtime, None if runtime_model is None else str(runtime_model))
        exported = runtime != "torch"
        self.device = resolve_device("cpu" if exported and device in (None, "auto") else device)
        asked = DeviceSettings(accelerator="gpu" if self.device.type == "cuda" else self.device.type, precision=precision)
        runs_on = attach(model, self.runtime, asked, batch_sizes)
        self.network = network_label(model, runs_on)  # what runs the network, in words
        self.precision = resolve_precision(runs_on.precision, runs_on.accelerator)
        self.dtype = autocast_dtype(self.precision)
        self.model = model.to(self.device)
        self.model.prepare_for_inference()
        self.transform = model.preprocessing()
        self.thresholds = ThresholdSettings(pixel_threshold, image_threshold, None if thresholds_from is None
                                            else str(thresholds_from))
        self.postprocessor = Postprocessor(ThresholdPolicy.of(self.thresholds, model.thresholds), min_defect_area)

    @property
    def image_threshold(self) -> float:
        return self.postprocessor.policy.image

    @property
    def pixel_threshold(self) -> float:
        return self.postprocessor.policy.pixel

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: Any) -> Predictor:
        """Load a checkpoint written by train.py (see :class:`Predictor` for the keyword arguments)."""
        return cls(load_checkpoint(path), **kwargs)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @torch.inference_mode()
    def anomaly_maps(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        """Maps [B,H,W] and scores [B] (on the CPU) of a preprocessed batch [B,3,H,W]."""
        with self._autocast():
            out = self.model.predict_step({"image": batch.to(self.device, non_blocking=True)}, 0)
        return out["anomaly_map"], out["score"]

    def predict_batch(self, batch: Tensor, source_sizes: Sequence[tuple[int, int]]) -> list[Prediction]:
        """Predictions for a preprocessed batch whose images had the given (height, width) sizes."""
        maps, scores = self.anomaly_maps(batch)
        return [self.postprocessor(m, s, size) for m, s, size in zip(maps, scores.tolist(), source_sizes)]

    def predict_folder(self, input: str | Path, output: str | Path, **options: Any) -> FolderSummary:
        """predict.py on a folder (or file) with this model, device, precision and thresholds: masks, heatmaps and
        predictions.csv under ``output``; ``options`` are predict.py's (``resume=True``, ``heatmap_format="png"``,
        ``batch_size=8``, ...)."""
        engine_options = {k: options.pop(k) for k in EngineSettings.names() if k in options}
        on_gpu = self.device.type == "cuda"
        devices = DeviceSettings(accelerator="gpu" if on_gpu else self.device.type,
                                 devices=[self.device.index or 0] if on_gpu else 1, precision=self.precision)
        settings = PredictSettings(**{**options, "input": str(input), "output": str(output)})
        return predict_folder(settings, EngineSettings(**engine_options), devices, self.thresholds, self.model,
                              PostprocessSettings(self.postprocessor.min_defect_area))

    def predict(self, images: ImageInput | Sequence[ImageInput]) -> Prediction | list[Prediction]:
        """Score one image (PIL, numpy HxW/HxWxC uint8, or a path) or a list of them; files and PIL images are
        taken upright, as their EXIF orientation says."""
        single = isinstance(images, (Image.Image, np.ndarray, str, Path))
        items: list[ImageInput] = [images] if single else list(images)  # type: ignore[list-item, arg-type]
        pils = [load_image(i) if isinstance(i, (str, Path)) else upright(i) if isinstance(i, Image.Image) else i
                for i in items]
        sizes = [(p.height, p.width) if isinstance(p, Image.Image) else (p.shape[0], p.shape[1]) for p in pils]
        batch = torch.stack([self.transform(p) for p in pils])
        results = self.predict_batch(batch, sizes)
        return results[0] if single else results
