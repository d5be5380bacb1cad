"""Reading and writing checkpoints: loading one without downloading anything, and writing them atomically."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins import TorchCheckpointIO

from stfpm.core.errors import CheckpointError, STFPMError, one_line
from stfpm.core.files import atomic_write_bytes
from stfpm.model import checkpoint_format
from stfpm.model.lightning_model import STFPM


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic on every file system: the bytes go to a temporary file in the
    checkpoint's own folder, then replace the old file in one rename. (Lightning's own writer stages the file in
    the system's temporary folder and moves it, which is a copy, not a rename, when that folder is on another
    disk: a crash during the copy would leave a truncated checkpoint as the only copy.)"""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(Path(path), buffer.getvalue())


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dictionary, checked to be ours and upgraded to the current format, or a one-line error; only
    tensors and plain types are unpickled."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"cannot read checkpoint {path}: not a PyTorch checkpoint file (truncated or another format?)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"cannot read checkpoint {path}: it holds objects other than tensors and plain values, "
            "so it was not written by this project"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {one_line(exc, first_line=True, limit=200)}") from exc
    checkpoint_format.require_ours(checkpoint, path)
    try:
        return checkpoint_format.upgrade(checkpoint)
    except (KeyError, TypeError, ValueError, STFPMError) as exc:
        raise CheckpointError(f"cannot upgrade checkpoint {path}: {one_line(exc, limit=200)}") from exc


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> STFPM:
    """Rebuild the model a checkpoint was trained with and load its weights and thresholds.

    The architecture comes from the checkpoint's hyperparameters; the teacher's weights come from the
    checkpoint itself, so nothing is downloaded and an offline machine can test and predict.
    """
    path = Path(path).expanduser()
    checkpoint = read_checkpoint(path)
    try:
        model = STFPM(checkpoint_format.settings(checkpoint), load_teacher=False)
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except (RuntimeError, TypeError, KeyError, STFPMError) as exc:
        reason = one_line(exc, first_line=True, limit=200)
        raise CheckpointError(f"checkpoint {path} does not match its recorded architecture: {reason}") from exc
    model.run_info = checkpoint_format.run_info(checkpoint)
    model.calibration_scores = checkpoint_format.calibration_scores(checkpoint)
    model.checkpoint_path = str(path)  # type: ignore[assignment]  # a plain attribute, for messages
    return model.to(map_location).eval()
