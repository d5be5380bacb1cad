"""The run folder, as one object: where train.py writes a run and where test.py and predict.py find it.

::

    <runs>/<category>/version_<N>/
        checkpoints/best.ckpt, checkpoints/last.ckpt
        cross_fit/fold-<k>-of-<K>.pt      (the out-of-sample maps of a finished fold, --calibration cross-fit)
        config.yaml, metrics.csv, TensorBoard events, data_problems_train.json     (train.py)
        results.json/.csv/.md, data_problems_test.json, images/                     (test.py)
"""

from __future__ import annotations

import datetime
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from stfpm.core.errors import CheckpointError

log = logging.getLogger(__name__)

CHECKPOINT_NAMES = ("best.ckpt", "last.ckpt")
_VERSION = re.compile(r"version_(\d+)")


@dataclass(frozen=True)
class Run:
    """One run's folder and the files in it."""

    folder: Path

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> Run:
        """The run a checkpoint belongs to: the folder above ``checkpoints/``, else the checkpoint's own folder."""
        path = Path(checkpoint)
        return cls(path.parent.parent if path.parent.name == "checkpoints" else path.parent)

    @property
    def version(self) -> int | None:
        """N of ``version_N``, or None for a folder outside the layout."""
        match = _VERSION.fullmatch(self.folder.name)
        return int(match.group(1)) if match else None

    @property
    def checkpoints(self) -> Path:
        return self.folder / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def config(self) -> Path:
        return self.folder / "config.yaml"

    def fold_maps(self, fold: int, count: int) -> Path:
        """Where cross-fitting keeps the out-of-sample maps of fold ``fold`` of ``count`` once it is finished."""
        return self.folder / "cross_fit" / f"fold-{fold}-of-{count}.pt"

    def problems(self, stage: str) -> Path:
        """Where the data pre-flight of ``stage`` (train, test) saves its full list."""
        return self.folder / f"data_problems_{stage}.json"

    def checkpoint(self) -> Path | None:
        """best.ckpt, else last.ckpt, else None."""
        for name in CHECKPOINT_NAMES:
            if (self.checkpoints / name).is_file():
                return self.checkpoints / name
        return None

    def describe(self, checkpoint: Path) -> str:
        """One line naming the run: its folder, checkpoint and when it was written."""
        stamp = datetime.datetime.fromtimestamp(checkpoint.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
        return f"{self.folder} ({checkpoint.name}, written {stamp})"


@dataclass(frozen=True)
class Runs:
    """The runs folder (train.py's ``--output-dir``, test.py's and predict.py's ``--runs-dir``)."""

    root: Path

    def category(self, category: str) -> list[Run]:
        """The runs of a category, newest version first."""
        folder = self.root / category
        runs = [Run(p) for p in folder.glob("version_*")] if folder.is_dir() else []
        return sorted((r for r in runs if r.version is not None), key=lambda r: r.version or 0, reverse=True)

    def latest_checkpoint(self, category: str) -> Path:
        """The best (else last) checkpoint of the highest-numbered run of ``category``."""
        for run in self.category(category):
            checkpoint = run.checkpoint()
            if checkpoint is not None:
                return checkpoint
        raise CheckpointError(
            f"no trained run of category {category!r} under {self.root / category}; "
            f"train one with `python train.py --category {category}` or pass --checkpoint PATH"
        )

    def latest_of_any(self) -> Path:
        """The checkpoint (best, else last) of the run of any category whose newest checkpoint was written last."""
        newest: tuple[float, Path] | None = None
        for category in self.trained_categories():
            for run in self.category(category):
                files = [run.checkpoints / n for n in CHECKPOINT_NAMES if (run.checkpoints / n).is_file()]
                stamp = max((f.stat().st_mtime for f in files), default=None)
                if stamp is not None and (newest is None or stamp > newest[0]):
                    newest = (stamp, files[0])
        if newest is None:
            raise CheckpointError(
                f"no trained run under {self.root}; train one with `python train.py --category NAME` "
                "(or pass --checkpoint PATH, --category NAME, --runs-dir DIR)"
            )
        return newest[1]

    def trained_categories(self) -> list[str]:
        """Categories with at least one run holding a checkpoint."""
        if not self.root.is_dir():
            return []
        folders = [p for p in self.root.iterdir() if p.is_dir()]
        return sorted(p.name for p in folders if any(r.checkpoint() for r in self.category(p.name)))

    def resolve(self, checkpoint: str | Path | None, category: str | None) -> Path:
        """``checkpoint``, else the latest run of ``category``, else the latest run of any category (said in a line)."""
        if checkpoint:
            return Path(checkpoint).expanduser()
        found = self.latest_checkpoint(category) if category else self.latest_of_any()
        which = f"the latest run of {category}" if category else "the latest run"
        log.info("using %s, %s", which, Run.of_checkpoint(found).describe(found))
        return found
