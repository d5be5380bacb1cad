"""Loading our checkpoints without re-downloading anything, and finding a category's latest run."""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins import TorchCheckpointIO

from stfpm.errors import CheckpointError, STFPMError
from stfpm.model.lightning_model import CHECKPOINT_KEY, STFPM
from stfpm.reporting.atomic import atomic_write_bytes

CHECKPOINT_NAMES = ("best.ckpt", "last.ckpt")


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
    """The raw checkpoint dictionary, or a one-line error; only tensors and plain types are unpickled."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"cannot read checkpoint {path}: not a PyTorch checkpoint file (truncated or another format?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"cannot read checkpoint {path}: it holds objects other than tensors and plain values, "
            "so it was not written by this project"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {reason[:200]}") from exc


def require_ours(checkpoint: Any, path: Path) -> None:
    """Refuse checkpoints that this project did not write (another model, a bare state_dict...)."""
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint or "hyper_parameters" not in checkpoint:
        raise CheckpointError(f"{path} is not an STFPM checkpoint written by this project")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> STFPM:
    """Rebuild the model a checkpoint was trained with and load its weights and thresholds.

    The architecture comes from the checkpoint's hyperparameters; the teacher's weights come from the
    checkpoint itself, so nothing is downloaded and an offline machine can test and predict.
    """
    path = Path(path).expanduser()
    checkpoint = read_checkpoint(path)
    require_ours(checkpoint, path)
    hparams = dict(checkpoint.get("hyper_parameters", {}))
    recorded_weights = hparams.get("teacher_weights")
    try:
        model = STFPM.from_hparams({**hparams, "teacher_weights": None})  # weights are in the state_dict: no download
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except (RuntimeError, TypeError, KeyError, STFPMError) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {path} does not match its recorded architecture: {reason[:200]}") from exc
    model.hparams["teacher_weights"] = recorded_weights  # keep the record of where the teacher came from
    model.on_load_checkpoint(checkpoint)
    model.checkpoint_path = str(path)  # type: ignore[assignment]  # a plain attribute, for messages
    return model.to(map_location).eval()


def find_latest_checkpoint(output_dir: str | Path, category: str) -> Path:
    """The best (else last) checkpoint of the highest-numbered run ``<output_dir>/<category>/version_N``."""
    category_dir = Path(output_dir) / category
    runs = sorted(
        (p for p in category_dir.glob("version_*") if re.fullmatch(r"version_\d+", p.name)),
        key=lambda p: int(p.name.split("_")[1]),
        reverse=True,
    )
    for run in runs:
        for name in CHECKPOINT_NAMES:
            if (run / "checkpoints" / name).is_file():
                return run / "checkpoints" / name
    raise CheckpointError(
        f"no trained run of category {category!r} under {category_dir}; "
        f"train one with `python train.py --category {category}` or pass --checkpoint PATH"
    )


def find_latest_run(output_dir: str | Path) -> Path:
    """The checkpoint (best, else last) of the most recently trained run of any category under ``output_dir``:
    the run whose newest checkpoint file was written last."""
    root = Path(output_dir)
    runs = [p for p in root.glob("*/version_*") if re.fullmatch(r"version_\d+", p.name)] if root.is_dir() else []
    newest: tuple[float, Path] | None = None
    for run in runs:
        files = [run / "checkpoints" / name for name in CHECKPOINT_NAMES if (run / "checkpoints" / name).is_file()]
        if files:
            stamp = max(f.stat().st_mtime for f in files)
            if newest is None or stamp > newest[0]:
                newest = (stamp, files[0])
    if newest is None:
        raise CheckpointError(
            f"no trained run under {root}; train one with `python train.py --category NAME` "
            "(or pass --checkpoint PATH, --category NAME, --runs-dir DIR)"
        )
    return newest[1]


def describe_run(checkpoint: Path) -> str:
    """One line naming a run: its folder, checkpoint and when it was written."""
    import datetime

    stamp = datetime.datetime.fromtimestamp(checkpoint.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return f"{run} ({checkpoint.name}, written {stamp})"


def list_trained_categories(output_dir: str | Path) -> list[str]:
    """Categories under ``output_dir`` that have at least one run with a checkpoint."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("version_*/checkpoints/*.ckpt")))
