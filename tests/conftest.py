"""Shared fixtures: a tiny synthetic MVTec-layout category and one real (tiny) training run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("PL_DISABLE_FORK", "1")

TINY = dict(image_size=64, n_train=10, n_test_good=4, n_test_per_defect=2)
TRAIN_ARGS = [
    "--backbone", "resnet18", "--teacher-weights", "random", "--image-size", "64", "--batch-size", "4",
    "--epochs", "2", "--num-workers", "0", "--accelerator", "cpu", "--log-every-n-steps", "1",
]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A read-only-by-convention synthetic dataset root holding category ``tiny``."""
    from stfpm.tools.synthetic import make_synthetic_category

    root = tmp_path_factory.mktemp("data")
    make_synthetic_category(root, "tiny", **TINY)
    return root


@pytest.fixture()
def data_copy(tiny_data, tmp_path) -> Path:
    """A private copy of the dataset root that a test may alter."""
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    return root


@pytest.fixture(scope="session")
def trained_run(tiny_data, tmp_path_factory) -> dict[str, Path]:
    """`train.py` run once for the whole session on the tiny category; returns its paths."""
    from stfpm.cli.train import main

    runs = tmp_path_factory.mktemp("runs")
    assert main(["--category", "tiny", "--data-root", str(tiny_data), "--output-dir", str(runs), *TRAIN_ARGS]) == 0
    run_dir = runs / "tiny" / "version_0"
    return {"runs": runs, "run_dir": run_dir, "checkpoint": run_dir / "checkpoints" / "best.ckpt", "data": tiny_data}
