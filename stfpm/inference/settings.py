"""Options of running a trained model: devices and precision (every command), batching (test.py, predict.py), the
decision thresholds, folder prediction and export."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from stfpm.core.errors import ConfigError
from stfpm.core.options import Section, finite, integer, option
from stfpm.data.settings import DEFAULT_WORKERS, WORKERS_SHOWN

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "32", "bf16", "16", "auto", "int8")
"""Lightning's precision names, the one vocabulary of every command and of :class:`Predictor`; ``auto`` and ``int8``
(OpenVINO's quantised network, :mod:`stfpm.inference.runtime`) are ours (:func:`resolve_precision`)."""

_AUTOCAST = {"32-true": None, "32": None, "bf16-mixed": torch.bfloat16, "bf16": torch.bfloat16,
             "16-mixed": torch.float16, "16": torch.float16}


def has_bf16(accelerator: str) -> bool:
    """Whether the device computes in bfloat16 natively: a CUDA GPU that supports it, or a processor with AVX512-BF16
    or AMX instructions (Linux's /proc/cpuinfo; elsewhere assumed not)."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto``: bf16-mixed where the device computes in bfloat16 natively, else 32-true; any other name as given."""
    if precision != "auto":
        return precision
    return "bf16-mixed" if has_bf16(accelerator.lower()) else "32-true"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast type of a mixed precision (None: full precision); a one-line error for a precision that runs
    the weights themselves in another type, which only Lightning's Trainer does."""
    if precision not in _AUTOCAST:
        raise ConfigError(f"precision {precision!r} is not available here; choose one of {', '.join(_AUTOCAST)}")
    return _AUTOCAST[precision]


def parse_devices(value: Any) -> Any:
    """``auto``, a device count (``2``) or a list of device indices (``0,1``), as the Trainer expects."""
    if isinstance(value, bool):
        raise ConfigError(f"--devices must be auto, a count (2) or indices (0,1), got {value!r}")
    if isinstance(value, (int, list)):
        return value
    text = str(value).strip()
    try:
        if "," in text:
            return [int(v) for v in text.split(",") if v.strip()]
        return int(text) if text.lstrip("-").isdigit() else text
    except ValueError:
        raise ConfigError(f"--devices must be auto, a count (2) or indices (0,1), got {value!r}") from None


@dataclass(frozen=True)
class DeviceSettings(Section):
    name = "devices"
    about = "every command that runs the model: Lightning's devices and precision"

    accelerator: str = option("auto", "cpu, gpu, mps, auto, ...", kind=str)
    devices: str | int | list[int] | None = option(
        None, "a count (2), indices (0,1) or auto", kind=str, normalize=parse_devices,
        check=(lambda v: isinstance(v, (str, int, list)) and not isinstance(v, bool), "auto, a count (2) or indices (0,1)"),
        shown_default="auto for train.py, 1 for test.py and predict.py")
    strategy: str = option("auto", "auto, ddp, ... (ddp splits the images over --devices)", kind=str)
    num_nodes: int = option(1, "machines taking part (with --strategy ddp)", kind=int, check=integer(1))
    precision: str = option("32-true", "32-true, bf16-mixed, 16-mixed, ... (Lightning's), auto: bf16-mixed where "
                            "the processor or GPU computes in bfloat16 natively, else 32-true, or int8 (--runtime "
                            "openvino only)", choices=PRECISIONS)

    def one_device(self) -> str:
        """The single device an in-process model runs on (:class:`Predictor`, the service): ``cuda:N`` (the first
        of ``--devices``), ``cpu``, or ``auto``."""
        accelerator = self.accelerator.lower()
        if accelerator in ("gpu", "cuda"):
            return f"cuda:{self.devices[0] if isinstance(self.devices, list) and self.devices else 0}"
        return "cpu" if accelerator == "cpu" else "auto"


@dataclass(frozen=True)
class EngineSettings(Section):
    name = "engine"
    about = "test.py and predict.py: batching and loading"

    batch_size: int = option(16, "images per forward pass", kind=int, check=integer(1))
    num_workers: int = option(DEFAULT_WORKERS, "image decoding processes", kind=int, check=integer(0),
                              shown_default=WORKERS_SHOWN)


@dataclass(frozen=True)
class ThresholdSettings(Section):
    name = "thresholds"
    about = "test.py, predict.py and export: the decision thresholds (default: the checkpoint's calibrated ones)"

    threshold: float | None = option(None, "pixel threshold: a map value >= it is a defect pixel", kind=float,
                                     check=finite())
    image_threshold: float | None = option(None, "image threshold: a score >= it is an anomalous image", kind=float,
                                           check=finite())
    thresholds_from: str | None = option(None, "results.json of test.py: use its F1-optimal thresholds", kind=str,
                                         path="file")


HEATMAP_FORMATS = ("jpg", "png", "none")


@dataclass(frozen=True)
class PredictSettings(Section):
    name = "predict"
    about = "predict.py: what to predict and what to write"

    checkpoint: str | None = option(None, "checkpoint written by train.py", kind=str)
    category: str | None = option(None, "use the latest run of this category (default: the latest run of any)", kind=str)
    runs_dir: str = option("runs", "where train.py wrote its runs", kind=str)
    input: str | None = option(None, "an image file or a folder (searched recursively)", kind=str)
    output: str = option("predictions", "output folder (mirrors the input's sub-folders)", kind=str, path="folder")
    overwrite: bool = option(False, "replace existing outputs", kind=bool, group="existing")
    resume: bool = option(False, "continue an interrupted run: skip images whose outputs are complete", kind=bool,
                          group="existing")
    heatmap_format: str = option("jpg", "heatmap files: jpg (about 13x faster to write and 6x smaller than png), "
                                 "png (lossless) or none", choices=HEATMAP_FORMATS)
    save_raw: bool = option(False, "also write the float32 anomaly map as .npy", kind=bool)
    json: bool = option(False, "also write predictions.json", kind=bool)
    report: bool = option(True, "write report.html in --output: counts, thresholds, score histogram, the images "
                          "(anomalous first) linking to their files", kind=bool, negatable=True)


@dataclass(frozen=True)
class PostprocessSettings(Section):
    name = "postprocess"
    about = "predict.py and stfpm-serve: from anomaly map to defect mask"

    min_defect_area: int = option(0, "drop mask blobs smaller than N pixels (of the source image)", kind=int,
                                  check=integer(0))


RUNTIMES = ("torch", "onnxruntime", "openvino")


@dataclass(frozen=True)
class RuntimeSettings(Section):
    name = "runtime"
    about = "test.py, predict.py and stfpm-serve: what runs the network (decoding, resizing, thresholds and masks stay ours)"

    runtime: str = option("torch", "torch (the PyTorch model), onnxruntime or openvino: the exported ONNX network, "
                          "built beside the checkpoint on first use; openvino runs --precision 32-true, bf16-mixed or "
                          "int8 (quantised on the run's validation images)", choices=RUNTIMES)
    runtime_model: str | None = option(None, "the exported network to run instead of the one beside the checkpoint: "
                                       "an .onnx of stfpm-export --format onnx, or an INT8 .xml written by "
                                       "--runtime openvino --precision int8; refused if made from another checkpoint",
                                       kind=str, path="file")


EXPORT_FORMATS = ("exported_program", "torchscript", "onnx")


@dataclass(frozen=True)
class ExportSettings(Section):
    name = "export"
    about = "stfpm-export, scripts/export.py"

    checkpoint: str | None = option(None, "checkpoint written by train.py", kind=str)
    output: str | None = option(None, "file to write (metadata goes to OUTPUT.json)", kind=str)
    format: str = option("exported_program", "exported_program (torch.export, .pt2), torchscript (deprecated by "
                         "PyTorch) or onnx", choices=EXPORT_FORMATS)
