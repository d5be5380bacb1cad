"""Cross-fitted calibration: every good training image gets an out-of-sample map.

The good training images are cut into K folds; K students are trained, each on the images outside one fold, and
each maps its fold. The level maps of all N images then go through the one calibration step
(:func:`stfpm.model.calibrate.calibrate`) of the student that ships, trained on all N images: its thresholds and
reference map rest on N out-of-sample images instead of the validation split's fifth. A finished fold's maps are
kept in the run folder (``cross_fit/``), so a resumed run trains only the folds that did not finish.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor

from stfpm.core.errors import ConfigError
from stfpm.core.files import atomic_write_bytes
from stfpm.core.layout import Run
from stfpm.data.datamodule import MVTecDataModule
from stfpm.data.mvtec import split_folds
from stfpm.data.settings import DataSettings
from stfpm.inference.engine import TRAINING_DEVICES, build_trainer
from stfpm.inference.settings import DeviceSettings
from stfpm.model.lightning_model import STFPM
from stfpm.model.settings import ModelSettings
from stfpm.training.callbacks import FirstInterruptStops
from stfpm.training.settings import TrainerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Folds:
    """What the K students are trained with: their number, the checked good training images and the run's settings."""

    count: int
    images: list[Path]
    data: DataSettings
    model: ModelSettings  # the shipped student's, its input resolved
    trainer: TrainerSettings
    devices: DeviceSettings
    keep_students: bool = False  # keep the trained students in ``students`` (studies of an ensemble of them)
    students: list[STFPM] = field(default_factory=list)

    def levels(self, run: Run) -> list[Tensor]:
        """The out-of-fold level maps of every image (fold by fold), training the folds not yet finished."""
        count = self.count
        parts = split_folds(self.images, count, self.trainer.seed)
        collected = []
        for k, fold in enumerate(parts, start=1):
            cache = run.fold_maps(k, count)
            levels = _cached(cache, fold)
            if levels is None:
                rank_zero_info(f"cross-fit: student {k} of {count}, trained on {len(self.images) - len(fold)} images, "
                               f"maps the {len(fold)} others")
                inside = set(fold)
                levels, first = self._fit_fold(k, [p for p in self.images if p not in inside], fold)
                if first:
                    _save(cache, fold, levels)
            collected.append(levels)
        return [torch.cat(level) for level in zip(*collected)]

    def _fit_fold(self, k: int, train: list[Path], fold: list[Path]) -> tuple[list[Tensor], bool]:
        """Train fold ``k``'s student on ``train``; its maps of ``fold``, and whether this is the first process."""
        t = self.trainer
        pl.seed_everything(t.seed + k, workers=True, verbose=False)
        model = STFPM(self.model)
        model.warned_few = model.warned_dominated = True  # said once, of the N images the shipped student rests on
        transform = model.preprocessing()
        interrupt = FirstInterruptStops()
        trainer = build_trainer(
            self.devices, TRAINING_DEVICES, **t.length(len(train), self.data.batch_size), logger=False,
            enable_checkpointing=False, callbacks=[interrupt], num_sanity_val_steps=0, enable_model_summary=False,
        )
        trainer.fit(model, datamodule=MVTecDataModule(self.data, transform, t.seed, split=(train, [])))
        if interrupt.pressed:
            raise KeyboardInterrupt
        trainer.validate(model, datamodule=MVTecDataModule(self.data, transform, t.seed, split=([], fold)),
                         verbose=False)
        if model.validation_levels is None:
            raise ConfigError(f"cross-fit: fold {k} gave no maps")
        if self.keep_students:
            self.students.append(model)
        return model.validation_levels, trainer.is_global_zero


def _cached(path: Path, fold: list[Path]) -> list[Tensor] | None:
    """A finished fold's level maps, when they are of these images."""
    if not path.is_file():
        return None
    record = torch.load(path, map_location="cpu", weights_only=True)
    if record.get("images") != [str(p) for p in fold]:
        log.warning("cross-fit: %s is of other images; the fold is trained again", path)
        return None
    return list(record["levels"])


def _save(path: Path, fold: list[Path], levels: list[Tensor]) -> None:
    buffer = io.BytesIO()
    torch.save({"images": [str(p) for p in fold], "levels": levels}, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
