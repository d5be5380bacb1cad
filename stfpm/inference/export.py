"""Export a trained model for deployment without this package: TorchScript, torch.export or ONNX.

The exported network takes RGB images already resized to the training size, as floats in [0, 1]
([B,3,H,W]); ImageNet normalisation is built in. It returns the anomaly maps [B,1,H,W] and image scores [B],
computed by the same :meth:`STFPMModel.predict` as test.py and predict.py. The normalisation is the data
pipeline's own :class:`~stfpm.data.io.Normalize`; the resize is left to the deployment and stated exactly in the
JSON file beside the network, with the thresholds (a :class:`~stfpm.inference.thresholding.ThresholdPolicy`) and the
model's settings.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from stfpm import __version__
from stfpm.core.errors import STFPMError, one_line
from stfpm.core.files import atomic_write_text, publish
from stfpm.data.io import Normalize
from stfpm.inference.settings import EXPORT_FORMATS
from stfpm.inference.thresholding import ThresholdPolicy
from stfpm.model.lightning_model import STFPM
from stfpm.model.torch_model import STFPMModel

log = logging.getLogger(__name__)

class DeployableSTFPM(nn.Module):
    """Normalisation followed by the STFPM forward pass: images in [0, 1] -> (maps, scores)."""

    def __init__(self, model: STFPMModel, normalize: Normalize) -> None:
        super().__init__()
        self.model = model
        self.normalize = normalize

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.predict(self.normalize(images))


def deployable(model: STFPM) -> DeployableSTFPM:
    """The exportable network of a trained Lightning model, in eval mode on the CPU."""
    return DeployableSTFPM(model.model, model.preprocessing().normalize).cpu().eval()


def network_key(model: STFPM) -> str:
    """A digest of what the exported network computes: this package's version, the model's settings and every weight
    and buffer. A retrained or recalibrated checkpoint has another key, so a runtime never runs a stale export."""
    digest = hashlib.sha256(__version__.encode())
    digest.update(json.dumps(model.settings.as_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def metadata(model: STFPM, fmt: str, policy: ThresholdPolicy | None = None) -> dict:
    """What a deployment needs besides the network; thresholds: ``policy``, else the calibrated ones. The model's
    settings are recorded as the checkpoint records them, by section."""
    transform = model.preprocessing()
    height, width = transform.size
    policy = policy or ThresholdPolicy(*model.thresholds)
    tiled = model.model.tiler is not None
    return {
        "format": fmt,
        "input": f"float32 RGB [B,3,{height},{width}] in [0, 1] (resized, not normalised)",
        "resize": transform.resize,
        "outputs": [f"anomaly_maps [B,1,{height},{width}]", "image_scores [B]"],
        "decision": "image anomalous if image_score >= image_threshold; pixel defective if map >= pixel_threshold",
        "tiling": "inside the network: feed the whole resized image" if tiled else None,
        "reference_normalization_in_use": model.model.reference.in_use,
        **policy.as_dict(),
        **model.model.promise,
        "settings": {name: section for name, section in model.settings.as_dict().items() if name != "optimizer"},
        "category": model.run_info.get("category"),
        "model_key": network_key(model),
    }


def export(model: STFPM, output: Path, fmt: str = "exported_program", policy: ThresholdPolicy | None = None) -> Path:
    """Write the network to ``output`` and its metadata (thresholds: ``policy``, else calibrated) beside it."""
    if fmt not in EXPORT_FORMATS:
        raise STFPMError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    net = deployable(model)
    example = torch.rand(2, 3, *model.preprocessing().size)
    output.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        if fmt == "torchscript":
            with warnings.catch_warnings():
                # the input size is fixed, so sizes derived from it (--score-fraction's pixel count) are constants
                warnings.filterwarnings("ignore", "Converting a tensor to a Python integer", torch.jit.TracerWarning)
                traced = torch.jit.trace(net, example)
            torch.jit.save(traced, str(output))
        elif fmt == "exported_program":
            program = torch.export.export(net, (example,), dynamic_shapes=({0: batch},))
            torch.export.save(program, str(output))
        else:
            _export_onnx(net, example, output, batch)
    json_path = output.with_name(output.name + ".json")
    atomic_write_text(json_path, json.dumps(metadata(model, fmt, policy), indent=2) + "\n")
    return output


def export_beside(model: STFPM, output: Path, fmt: str = "onnx") -> Path:
    """:func:`export` with the calibrated thresholds, written elsewhere in ``output``'s folder and moved into place,
    network first and metadata last: a process that finds the metadata finds a complete network."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".export.") as tmp:
        written = export(model, Path(tmp) / output.name, fmt)
        publish(written, output)
        publish(written.with_name(written.name + ".json"), output.with_name(output.name + ".json"))
    return output


def _export_onnx(net: nn.Module, example: Tensor, output: Path, batch) -> None:
    try:
        # one file (no external weights) up to ONNX's 2 GB limit, which every backbone here stays under; the
        # exporter's progress lines go to the log, not to the command's output
        with contextlib.redirect_stdout(io.StringIO()) as progress:
            torch.onnx.export(
                net, (example,), str(output), input_names=["images"], output_names=["anomaly_maps", "image_scores"],
                dynamic_shapes=({0: batch},), dynamo=True, external_data=False,
            )
        log.debug("%s", progress.getvalue())
    except ImportError as exc:
        raise STFPMError(f"ONNX export needs extra packages ({exc}); pip install onnx onnxscript") from exc
    except Exception as exc:  # the exporter's own errors have no common type
        raise STFPMError(f"the ONNX export failed: {one_line(exc, first_line=True, limit=300)}") from exc
