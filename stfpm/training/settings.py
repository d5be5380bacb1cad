"""The trainer section of train.py: the run's length, seed, output and resumption."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from stfpm.core.options import Section, duration, integer, option

CHECKPOINT_METRICS = ("val_loss", "val_map_mean")


@dataclass(frozen=True)
class TrainerSettings(Section):
    name = "trainer"
    about = "train.py: length, seed, output, resumption"

    epochs: int = option(100, "training epochs", kind=int, check=integer(1))
    min_steps: int = option(50, "train at least this many optimizer steps: an epoch of few images is few steps, so "
                            "--epochs is raised to reach them (0: --epochs as given)", kind=int, check=integer(0))
    max_steps: int = option(-1, "stop after N optimizer steps (-1: no limit)", kind=int,
                            check=(lambda v: isinstance(v, int) and not isinstance(v, bool) and (v == -1 or v >= 1),
                                   "-1 (no limit) or an integer >= 1"))
    max_time: str | None = option(None, "stop after this much training time, DD:HH:MM:SS (e.g. 00:08:00:00)", kind=str,
                                  check=duration())
    seed: int = option(0, "seeds the split, the initialisation and the data order", kind=int, check=integer(0, 2**32 - 1))
    deterministic: bool = option(False, "deterministic algorithms on GPU (slower; CPU runs are reproducible without it)",
                                 kind=bool)
    output_dir: str = option("runs", "runs go to OUTPUT_DIR/<category>/version_N/", kind=str, path="folder")
    log_every_n_steps: int = option(10, "logging interval, in steps", kind=int, check=integer(1))
    val_every_n_epochs: int = option(1, "validate (best checkpoint, thresholds) every N epochs; the final weights are "
                                     "always validated, so last.ckpt's thresholds match them", kind=int, check=integer(1))
    resume: str | None = option(None, "checkpoint to resume training from (e.g. a run's last.ckpt)", kind=str,
                                path="file")
    checkpoint_metric: str = option("val_loss", "best.ckpt has the lowest: val_loss (ours) or val_map_mean (mean "
                                    "validation anomaly map, the official code's)", choices=CHECKPOINT_METRICS)

    def epochs_for(self, images: int, batch_size: int) -> int:
        """The epochs a student trained on ``images`` runs: ``epochs``, raised to reach ``min_steps`` optimizer steps
        (of one process)."""
        steps = math.ceil(images / batch_size) if images > 0 else 0
        if not self.min_steps or not steps:
            return self.epochs
        return max(self.epochs, math.ceil(self.min_steps / steps))

    def length(self, images: int, batch_size: int) -> dict[str, Any]:
        """The Trainer's arguments for the length and determinism of a student trained on ``images`` (every student
        of a run alike)."""
        return {"max_epochs": self.epochs_for(images, batch_size), "max_steps": self.max_steps,
                "max_time": self.max_time, "deterministic": True if self.deterministic else None}
