"""The data section of train.py: which images, how they are split and loaded."""

from __future__ import annotations

import os
from dataclasses import dataclass

from stfpm.core.options import Section, integer, number, option

DEFAULT_DATA_ROOT = "./data/mvtec_anomaly_detection"
"""Where scripts/download_mvtec.py puts MVTec AD by default, and where train.py looks for it."""

DEFAULT_WORKERS = min(4, os.cpu_count() or 1)
WORKERS_SHOWN = "min(4, CPUs)"


@dataclass(frozen=True)
class DataSettings(Section):
    name = "data"
    about = "train.py: the dataset, its split and loading"

    category: str | None = option(None, "category folder name under --data-root, or `all`", kind=str)
    data_root: str = option(DEFAULT_DATA_ROOT, "dataset root in MVTec AD layout", kind=str)
    batch_size: int = option(32, "training images per step", kind=int, check=integer(1))
    num_workers: int = option(DEFAULT_WORKERS, "data loading processes", kind=int, check=integer(0),
                              shown_default=WORKERS_SHOWN)
    val_fraction: float = option(0.2, "share of train/good held out for best-model selection and thresholds",
                                 kind=float, check=number(0, 1, high_open=True))
    strict: bool = option(False, "stop on any unreadable image instead of leaving it out with a warning", kind=bool)
