"""Checkpoints of earlier formats are upgraded by one migration: a checkpoint in the layout of the version before the
option sections (format 1, conftest's ``format_1``) predicts exactly what the same weights predict in today's format,
resumes, and a checkpoint of a newer format is refused."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch

from conftest import TRAIN_ARGS
from stfpm.cli import run
from stfpm.cli.predict import main as predict_main
from stfpm.cli.train import main as train_main
from stfpm.core.errors import CheckpointError
from stfpm.model import checkpoint_format
from stfpm.model.checkpoint import load_checkpoint, read_checkpoint
from stfpm.model.settings import CalibrationSettings


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as handle:
        return {row["path"]: row for row in csv.DictReader(handle)}


def test_a_format_1_checkpoint_predicts_exactly_what_its_weights_predict_today(format_1, tiny_data, tmp_path) -> None:
    for name in ("format_1", "current"):
        argv = ["--checkpoint", str(format_1[name]), "--input", str(tiny_data / "tiny" / "test"), "--output",
                str(tmp_path / name), "--num-workers", "0", "--accelerator", "cpu"]
        assert predict_main(argv) == 0
    # every score and decision, digit for digit
    assert _rows(tmp_path / "format_1" / "predictions.csv") == _rows(tmp_path / "current" / "predictions.csv")


def test_the_migration_nests_the_options_and_moves_the_fitted_buffers(format_1) -> None:
    FORMAT_1 = format_1["format_1"]
    raw = torch.load(FORMAT_1, map_location="cpu", weights_only=True)
    assert raw[checkpoint_format.KEY]["format_version"] == 1 and "map_fusion" in raw["hyper_parameters"]
    upgraded = read_checkpoint(FORMAT_1)
    assert upgraded[checkpoint_format.KEY]["format_version"] == checkpoint_format.FORMAT_VERSION
    settings = checkpoint_format.settings(upgraded)
    flat = CalibrationSettings.earlier(raw["hyper_parameters"])  # format 2 renamed two calibration options
    for section in settings.sections():
        for name in section.names():
            if name in flat:
                assert section.as_dict()[name] == (list(flat[name]) if isinstance(flat[name], tuple) else flat[name])
    state = upgraded["state_dict"]
    moved = {"image_threshold": "model.image_threshold", "model.anomaly_map.reference": "model.reference.reference",
             "model.anomaly_map.score_reference": "model.reference.score_reference",
             "model.anomaly_map.level_scale": "model.reference.level_scale"}
    for old, new in moved.items():
        assert old not in state and torch.equal(state[new], raw["state_dict"][old])
    model = load_checkpoint(FORMAT_1)
    assert model.model.reference.enabled and model.settings.map.map_fusion == "sum"
    assert not torch.equal(model.model.reference.level_scale, torch.ones(2))  # fitted, and carried over
    assert model.thresholds == (float(raw["state_dict"]["image_threshold"]), float(raw["state_dict"]["pixel_threshold"]))
    again = checkpoint_format.upgrade(read_checkpoint(FORMAT_1))  # idempotent
    assert again["hyper_parameters"] == upgraded["hyper_parameters"] and again[checkpoint_format.KEY] == upgraded[
        checkpoint_format.KEY]
    assert again["state_dict"].keys() == state.keys()
    assert all(torch.allclose(again["state_dict"][k], state[k], rtol=0, atol=0, equal_nan=True) for k in state)


def test_a_format_1_checkpoint_resumes_and_the_run_continues_in_the_current_format(format_1, tiny_data, tmp_path) -> None:
    FORMAT_1 = format_1["format_1"]
    runs = tmp_path / "runs"
    start = runs / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    start.parent.mkdir(parents=True)
    shutil.copy(FORMAT_1, start)
    args = ["--category", "tiny", "--data-root", str(tiny_data), "--output-dir", str(runs), *TRAIN_ARGS]
    assert train_main([*args, "--resume", str(start), "--epochs", "2"]) == 0
    resumed = torch.load(start, map_location="cpu", weights_only=True)
    assert resumed[checkpoint_format.KEY]["format_version"] == checkpoint_format.FORMAT_VERSION
    assert resumed["epoch"] == 1 and resumed["global_step"] > torch.load(FORMAT_1, weights_only=True)["global_step"]
    assert load_checkpoint(start).settings.networks.backbone == "mobilenet_v2"  # the checkpoint's, not the flags'


def test_a_checkpoint_of_a_newer_format_is_refused_in_one_line(format_1, tiny_data, tmp_path, capsys) -> None:
    newer = torch.load(format_1["current"], map_location="cpu", weights_only=True)
    newer[checkpoint_format.KEY]["format_version"] = checkpoint_format.FORMAT_VERSION + 1
    path = tmp_path / "newer.ckpt"
    torch.save(newer, path)
    with pytest.raises(CheckpointError, match="newer version"):
        load_checkpoint(path)
    images = str(tiny_data / "tiny" / "test" / "good")
    assert run(predict_main, ["--checkpoint", str(path), "--input", images, "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "newer version" in err[-1]


def test_training_writes_the_current_format(trained_run) -> None:
    checkpoint = torch.load(trained_run["checkpoint"], map_location="cpu", weights_only=True)
    assert checkpoint[checkpoint_format.KEY]["format_version"] == checkpoint_format.FORMAT_VERSION
    assert set(checkpoint["hyper_parameters"]) == {"input", "networks", "map", "calibration", "optimizer"}
    hparams, record = dict(checkpoint["hyper_parameters"]), dict(checkpoint[checkpoint_format.KEY])
    checkpoint_format.upgrade(checkpoint)  # nothing to do
    assert checkpoint["hyper_parameters"] == hparams and checkpoint[checkpoint_format.KEY] == record
