"""What runs the network at inference: the PyTorch model itself, or its exported ONNX network in ONNX Runtime or
OpenVINO (fp32, bf16, or INT8 quantised by NNCF on the run's validation images).

Only the network changes: decoding, resizing, normalisation, map upsampling, thresholds and masks stay the one
implementation of :class:`~stfpm.inference.predictor.Predictor`, predict.py, test.py and the service, which call
:func:`attach` on the model they loaded. The export is built on first use in ``CHECKPOINT.exports/`` beside the
checkpoint and named by :func:`~stfpm.inference.export.network_key`, so a changed checkpoint is never served by a
stale export; a network given with ``--runtime-model`` must carry the same key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from stfpm.core.errors import ConfigError, DataError, STFPMError
from stfpm.core.files import atomic_write_text, publish
from stfpm.data.mvtec import ImageFolderDataset
from stfpm.inference.export import export_beside, network_key
from stfpm.inference.settings import DeviceSettings, RuntimeSettings, has_bf16, resolve_precision
from stfpm.model.lightning_model import STFPM

log = logging.getLogger(__name__)

OPENVINO_PRECISIONS = {"32-true": "f32", "32": "f32", "bf16-mixed": "bf16", "bf16": "bf16", "int8": "int8"}
"""--precision -> what OpenVINO runs (``int8``: the NNCF-quantised network, its other operations in the processor's
best type)."""
INT8_FORMAT = "openvino int8"
CALIBRATION_SUBSET = 300
"""Validation images NNCF sees at most when it quantises (its own default)."""


class ExportInput:
    """Normalised images [B,3,H,W] (what the data pipeline gives) -> the export's input: the same images in [0, 1]
    as float32 numpy, since the export normalises by itself (exact up to float rounding)."""

    def __init__(self, model: STFPM) -> None:
        normalize = model.preprocessing().normalize
        self.mean, self.std = normalize.mean.view(1, 3, 1, 1).clone(), normalize.std.view(1, 3, 1, 1).clone()

    def __call__(self, images: Tensor) -> np.ndarray:
        return (images.detach().float().cpu() * self.std + self.mean).contiguous().numpy()


class ExportedNetwork:
    """An exported network behind the model's call: normalised images [B,3,H,W] -> (maps [B,1,H,W], scores [B]) on
    the CPU."""

    def __init__(self, model: STFPM, run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], label: str,
                 describe: str) -> None:
        self.inputs, self.run, self.label, self.describe = ExportInput(model), run, label, describe

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        maps, scores = self.run(self.inputs(images))
        return torch.from_numpy(np.asarray(maps, np.float32)), torch.from_numpy(np.asarray(scores, np.float32))

    def __repr__(self) -> str:
        return self.describe


def attach(model: STFPM, settings: RuntimeSettings, devices: DeviceSettings, batch_sizes: Sequence[int] = ()
           ) -> DeviceSettings:
    """Make ``model`` run its network in ``settings.runtime`` at ``devices.precision``, prepared for ``batch_sizes``;
    returns the devices its Trainer (or :class:`Predictor`) then runs on: unchanged for torch, the CPU at 32-true for
    an exported network, whose runtime does the arithmetic in its own precision."""
    settings.check_paths()
    precision = resolve_precision(devices.precision, devices.accelerator)
    if settings.runtime == "torch":
        if precision == "int8":
            raise ConfigError("--precision int8 is OpenVINO's quantised network: add --runtime openvino")
        if settings.runtime_model:
            raise ConfigError("--runtime-model is an exported network: add --runtime onnxruntime or openvino")
        model.network = None
        return devices
    if devices.accelerator.lower() not in ("auto", "cpu"):
        raise ConfigError(f"--runtime {settings.runtime} runs on the CPU; drop --accelerator {devices.accelerator}")
    model.network = (_onnxruntime(model, settings, precision, devices.precision) if settings.runtime == "onnxruntime"
                     else _openvino(model, settings, precision, devices.precision, batch_sizes))
    log.info("network: %r", model.network)
    return dataclasses.replace(devices, accelerator="cpu", precision="32-true")


def runtime_label(settings: RuntimeSettings, devices: DeviceSettings) -> str:
    """What runs the network, in words: ``torch 32-true``, ``openvino int8``, ..."""
    precision = resolve_precision(devices.precision, devices.accelerator)
    if settings.runtime == "onnxruntime":
        precision = "32-true"
    elif settings.runtime == "openvino":
        precision = _openvino_precision(precision, devices.precision)
    return f"{settings.runtime} {_SHORT_NAMES.get(precision, precision)}"


def network_label(model: STFPM, devices: DeviceSettings) -> str:
    """What runs ``model``'s network, in words, once :func:`attach` has run (``devices``: the ones it returned)."""
    if isinstance(model.network, ExportedNetwork):
        return model.network.label
    return runtime_label(RuntimeSettings(), devices)


_SHORT_NAMES = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}
"""Lightning's short precision names and the long ones they stand for."""


def _onnxruntime(model: STFPM, settings: RuntimeSettings, precision: str, asked: str) -> ExportedNetwork:
    if precision not in ("32-true", "32") and asked != "auto":
        raise ConfigError(f"--runtime onnxruntime runs 32-true only here, not --precision {precision}; use "
                          "--runtime openvino for bf16-mixed or int8")
    ort = _library("onnxruntime", "--runtime onnxruntime")
    path = _network_file(model, settings, ".onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = session.run(None, {name: images})
        return maps, scores

    return ExportedNetwork(model, run, "onnxruntime 32-true", f"onnxruntime {ort.__version__} 32-true, {path}")


def _openvino_precision(precision: str, asked: str) -> str:
    if asked == "auto":
        return "bf16-mixed" if has_bf16("cpu") else "32-true"
    if precision not in OPENVINO_PRECISIONS:
        raise ConfigError(f"--runtime openvino runs --precision 32-true, bf16-mixed or int8, not {precision}")
    return _SHORT_NAMES.get(precision, precision)


def _openvino(model: STFPM, settings: RuntimeSettings, precision: str, asked: str,
              batch_sizes: Sequence[int]) -> ExportedNetwork:
    ov = _library("openvino", "--runtime openvino")
    precision = _openvino_precision(precision, asked)
    if precision == "int8":
        path, config = _int8_network(model, settings, ov), {}
    else:
        path = _network_file(model, settings, ".onnx")
        config = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[precision]}
    run = _OpenVINORun(ov.Core(), path, config, model.preprocessing().size)
    for size in batch_sizes:
        run.compile(size)
    return ExportedNetwork(model, run, f"openvino {precision}", f"openvino {ov.__version__} {precision}, {path}")


class _OpenVINORun:
    """The network compiled for the batch sizes the caller expects (a static shape runs faster on the CPU than a
    dynamic one, measured up to 1.2x), and once for any other size."""

    def __init__(self, core: Any, path: Path, config: dict[str, str], size: tuple[int, int]) -> None:
        self.core, self.path, self.config, self.size = core, path, config, size
        self.compiled: dict[int | None, Any] = {}

    def compile(self, batch: int | None) -> Any:
        if batch not in self.compiled:
            network = self.core.read_model(str(self.path))
            if batch is not None:
                network.reshape({network.inputs[0].get_any_name(): [batch, 3, *self.size]})
            self.compiled[batch] = self.core.compile_model(network, "CPU", self.config)
        return self.compiled[batch]

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        size = images.shape[0]
        result = (self.compiled.get(size) or self.compile(None))([images])
        return result[0], result[1]


def _library(module: str, needed_by: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise STFPMError(f"{needed_by} needs {module}: pip install 'stfpm[runtimes]' (or pip install {module})") from exc


def exports_folder(model: STFPM) -> Path:
    """Where a model's exports live: ``CHECKPOINT.exports/`` beside its checkpoint, else the user's cache."""
    checkpoint = getattr(model, "checkpoint_path", None)
    if checkpoint:
        folder = Path(checkpoint).with_name(Path(checkpoint).name + ".exports")
        if os.access(folder if folder.exists() else folder.parent, os.W_OK):
            return folder
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stfpm" / "exports"
    return cache


def _network_file(model: STFPM, settings: RuntimeSettings, suffix: str, key: str | None = None) -> Path:
    """The ONNX network of ``model`` (whose :func:`network_key` is ``key``): the one given (checked to be of this
    model), else the one beside the checkpoint, exported now if missing."""
    key = key or network_key(model)
    if settings.runtime_model:
        return _checked(Path(settings.runtime_model).expanduser(), key, model, "onnx")
    path = exports_folder(model) / f"{key[:16]}{suffix}"
    if not path.with_name(path.name + ".json").is_file():
        log.info("exporting the network for --runtime %s to %s (once per checkpoint)", settings.runtime, path)
        export_beside(model, path, "onnx")
    return path


def _checked(path: Path, key: str, model: STFPM, fmt: str) -> Path:
    meta_path = path.with_name(path.name + ".json")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--runtime-model {path} has no readable metadata {meta_path.name} beside it (write it with "
                          "stfpm-export --format onnx, or let the runtime export the checkpoint itself)") from exc
    if meta.get("format") != fmt:
        raise ConfigError(f"--runtime-model {path} is of format {meta.get('format')}; this runtime and precision "
                          f"run format {fmt}")
    if meta.get("model_key") != key:
        raise ConfigError(f"--runtime-model {path} was exported from another model than "
                          f"{getattr(model, 'checkpoint_path', 'this one')} (or by another version of this package); "
                          "export it again, or drop --runtime-model")
    return path


def _int8_network(model: STFPM, settings: RuntimeSettings, ov: Any) -> Path:
    """The NNCF-quantised OpenVINO network (.xml with its .bin), calibrated on the run's validation images only."""
    key = network_key(model)
    if settings.runtime_model:
        return _checked(Path(settings.runtime_model).expanduser(), key, model, INT8_FORMAT)
    path = exports_folder(model) / f"{key[:16]}.int8.xml"
    if path.with_name(path.name + ".json").is_file():
        return path
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # NNCF's import: "no CUDA runtime"
    nncf = _library("nncf", "--precision int8")
    images = calibration_images(model)
    source = _network_file(model, dataclasses.replace(settings, runtime_model=None), ".onnx", key)
    log.info("quantising to INT8 on %d of the images the thresholds were fitted on -> %s (once per checkpoint)",
             min(len(images), CALIBRATION_SUBSET), path)
    dataset, inputs = ImageFolderDataset(images, model.preprocessing()), ExportInput(model)
    samples = nncf.Dataset(list(range(len(dataset))), lambda i: inputs(dataset[i]["image"].unsqueeze(0)))
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bar
        quantised = nncf.quantize(ov.Core().read_model(str(source)), samples,
                                  subset_size=min(len(images), CALIBRATION_SUBSET))
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".int8.") as tmp:
        written = Path(tmp) / path.name
        ov.save_model(quantised, str(written))
        publish(written.with_suffix(".bin"), path.with_suffix(".bin"))
        publish(written, path)
    meta = json.loads(source.with_name(source.name + ".json").read_text())
    calibrated_on = f"{len(images)} validation images of the run (the images its thresholds were fitted on)"
    atomic_write_text(path.with_name(path.name + ".json"), json.dumps(
        {**meta, "format": INT8_FORMAT, "calibrated_on": calibrated_on}, indent=2) + "\n")
    return path


def calibration_images(model: STFPM) -> list[Path]:
    """The good images the checkpoint's thresholds were fitted on (its validation images, or under cross-fitting its
    training images), as train.py recorded them; a one-line error when they are not recorded or not on this
    machine."""
    info = model.run_info
    names = info.get("calibration_images")
    if not names:
        raise DataError("this checkpoint does not record its validation images (train it again with this version), "
                        "so it cannot be quantised to INT8; give --runtime-model an INT8 network of it instead")
    root = Path(str(info.get("data_root", ""))) / str(info.get("category", ""))
    images = [root / n for n in names]
    missing = [p for p in images if not p.is_file()]
    if missing:
        raise DataError(f"INT8 quantisation calibrates on the run's {len(images)} validation images, and {len(missing)} "
                        f"are not on this machine (e.g. {missing[0]}); quantise where the training data is, then pass "
                        "the .xml with --runtime-model")
    return images
