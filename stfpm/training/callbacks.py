"""The callbacks of a training run: Ctrl-C handling and the two checkpoints."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

log = logging.getLogger(__name__)


class FirstInterruptStops(Callback):
    """A first Ctrl-C ends training after the current step (then thresholds are calibrated and a checkpoint
    saved, as at any other stop); a second one aborts at once. Single process only: under DDP, every process
    would have to agree on the step, so Ctrl-C keeps Lightning's immediate shutdown there."""

    def __init__(self) -> None:
        self._previous: Any = None
        self._installed = False
        self.pressed = False  # training was stopped by a Ctrl-C

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or trainer.world_size > 1 or threading.current_thread() is not threading.main_thread():
            return
        pressed = False
        owner = os.getpid()  # data-loading workers forked from here inherit the handler: they ignore the signal

        def handler(signum: int, frame: object) -> None:
            nonlocal pressed
            if os.getpid() != owner:
                return
            if pressed:
                raise KeyboardInterrupt
            pressed = self.pressed = True
            log.warning("Ctrl-C: training stops after this step, then calibrates and saves (Ctrl-C again to abort now)")
            trainer.should_stop = True

        self._previous = signal.signal(signal.SIGINT, handler)
        self._installed = True

    def _restore(self) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()


def checkpoint_callbacks(folder: Path, metric: str, has_val: bool) -> tuple[ModelCheckpoint, list[Callback]]:
    """best.ckpt (the lowest ``metric``; every epoch's weights without validation) and last.ckpt.

    last.ckpt holds the newest weights after every epoch, for --resume. Not ``save_last=True`` on the monitored
    checkpoint: since Lightning 2.6 that writes last.ckpt only in epochs where the monitored metric improved. Two
    unmonitored ModelCheckpoints would share one state key, hence ``save_last`` on the best one without validation.
    """
    best = ModelCheckpoint(dirpath=folder, filename="best", monitor=metric if has_val else None, mode="min",
                           save_last=not has_val)
    callbacks: list[Callback] = [best]
    if has_val:
        callbacks.append(ModelCheckpoint(dirpath=folder, filename="last", monitor=None, save_top_k=1,
                                         enable_version_counter=False))
    return best, callbacks
