"""Shared fixtures: a tiny synthetic MVTec-layout category, one real (tiny) training run, and a headless Chromium
for the report tests when one can be had (Debian: `apt-get install chromium chromium-driver`; where
``STFPM_REQUIRE_BROWSER=1``, as CI sets it after installing the browser, a missing browser fails those tests
instead of skipping them)."""

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
    "--calibration", "holdout", "--min-steps", "0",
]
"""Tiny, fast training runs of exactly --epochs; thresholds from the validation split (the cross-fit tests ask for
theirs)."""


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


FORMAT_1_OPTIONS = (
    "backbone", "student_backbone", "layers", "teacher_weights", "image_size", "mean", "std", "lr", "momentum",
    "weight_decay", "image_threshold_quantile", "pixel_threshold_quantile", "calibration", "map_fusion", "map_sigma",
    "tile_size", "tile_overlap", "hard_fraction", "map_normalization", "lr_schedule", "augment", "score_fraction",
    "student_init", "score_levels",
)
"""The hyperparameters a checkpoint of format 1 held, flat, under these names (the last version of that format)."""
FORMAT_1_BUFFERS = {
    "model.reference.level_scale": "model.anomaly_map.level_scale",
    "model.reference.reference": "model.anomaly_map.reference",
    "model.reference.score_reference": "model.anomaly_map.score_reference",
    "model.image_threshold": "image_threshold",
    "model.pixel_threshold": "pixel_threshold",
}
"""Where format 1 kept the fitted buffers: the map generator held the map's, the Lightning module the thresholds."""


def as_format_1(checkpoint: dict) -> dict:
    """A checkpoint of today's format written out as format 1 did: flat hyperparameters, the old buffer names and
    ``format_version`` 1."""

    old = as_format_2(checkpoint)
    by_name = {name: value for section in old["hyper_parameters"].values() for name, value in section.items()}
    old["hyper_parameters"] = {name: by_name[name] for name in FORMAT_1_OPTIONS}
    old["hyper_parameters"]["mean"], old["hyper_parameters"]["std"] = tuple(by_name["mean"]), tuple(by_name["std"])
    old["state_dict"] = {FORMAT_1_BUFFERS.get(k, k): v for k, v in old["state_dict"].items()}
    old["stfpm"] = {**old["stfpm"], "format_version": 1}
    return old


FORMAT_3_BUFFERS = ("model.image_threshold_promise", "model.image_threshold_support")
"""The buffers format 3 added: the image threshold's promise and support."""


def as_format_2(checkpoint: dict) -> dict:
    """A checkpoint of today's format written out as format 2 did: the calibration section with
    ``image_threshold_quantile`` (1 - the target) and ``calibration`` naming the tail model, no promise."""
    import copy

    old = copy.copy(checkpoint)
    hyper = {name: dict(section) for name, section in checkpoint["hyper_parameters"].items()}
    calibration = hyper["calibration"]
    hyper["calibration"] = {
        "image_threshold_quantile": 1.0 - calibration["target_false_alarms"],
        "pixel_threshold_quantile": calibration["pixel_threshold_quantile"],
        "calibration": "gumbel" if calibration["tail"] == "gumbel" else "empirical",
    }
    old["hyper_parameters"] = hyper
    old["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in FORMAT_3_BUFFERS}
    old["stfpm"] = {k: v for k, v in checkpoint["stfpm"].items() if k != "calibration_scores"} | {"format_version": 2}
    return old


@pytest.fixture(scope="session")
def format_1(tiny_data, tmp_path_factory) -> dict[str, Path]:
    """A run with every fitted buffer of the map (MobileNetV2 at 32 px, two levels, sum fusion, the image score from
    the coarser level, the reference normalization asked for), its last.ckpt also written in format 1."""
    import torch

    from stfpm.cli.train import main

    runs = tmp_path_factory.mktemp("format1")
    args = ["--category", "tiny", "--data-root", str(tiny_data), "--output-dir", str(runs), "--backbone", "mobilenet_v2",
            "--layers", "features.3", "features.6", "--teacher-weights", "random", "--image-size", "32",
            "--batch-size", "4", "--epochs", "1", "--num-workers", "0", "--accelerator", "cpu", "--map-fusion", "sum",
            "--calibration", "holdout", "--min-steps", "0"]
    assert main(args) == 0
    current = runs / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    old = runs / "format1.ckpt"
    torch.save(as_format_1(torch.load(current, map_location="cpu", weights_only=True)), old)
    return {"current": current, "format_1": old}


BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)


def _missing(reason: str):
    if os.environ.get("STFPM_REQUIRE_BROWSER") == "1":
        pytest.fail(f"STFPM_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(f"{reason}: install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver) "
                "and the dev extras (selenium)")


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium driven through chromedriver, recording the console."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed")
    binary = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    driver_path = next((shutil.which(d) for d in DRIVERS if shutil.which(d)), None)
    if not binary or not driver_path:
        _missing("no Chromium and chromedriver on PATH")
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not look for drivers or report statistics online
    os.environ.setdefault("SE_AVOID_STATS", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1600", "--disable-extensions", "--no-first-run", "--disable-sync",
                     "--disable-background-networking", "--disable-component-update", "--no-default-browser-check",
                     "--host-resolver-rules=MAP * ~NOTFOUND"):  # the pages must need no network: none is reachable
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(options=options, service=Service(driver_path))
    except Exception as exc:  # a browser that cannot start (no display libraries, a sandbox refusal...)
        _missing(f"Chromium did not start ({str(exc).splitlines()[0]})")
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
