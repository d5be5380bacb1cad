"""Hostile arguments: every script answers with one `error:` line on stderr and exit code 2, before any work."""

from __future__ import annotations

import pytest
import torch

from conftest import TRAIN_ARGS
from stfpm.cli import run
from stfpm.cli.predict import main as predict_main
from stfpm.cli.test import main as evaluate_main
from stfpm.cli.train import main as train_main

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="asks for a GPU that this machine has")


def _exit_code(main, argv) -> int:
    try:
        return run(main, argv)
    except SystemExit as exc:  # argparse's own errors
        return int(exc.code)


def _check(capsys, main, argv, needle: str) -> None:
    code = _exit_code(main, argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert code == 2, captured.err[-2000:]
    assert len(lines) == 1 and needle in lines[0], captured.err[-2000:]
    assert "Traceback" not in captured.err + captured.out


@pytest.mark.parametrize("extra, needle", [
    (["--batch-size", "0"], "--batch-size"),
    (["--epochs", "0"], "--epochs"),
    (["--lr", "-1"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--val-fraction", "1"], "--val-fraction"),
    (["--target-false-alarms", "0"], "--target-false-alarms"),
    (["--target-false-alarms", "1"], "--target-false-alarms"),
    (["--folds", "1"], "--folds"),
    (["--pixel-threshold-quantile", "1.5"], "--pixel-threshold-quantile"),
    (["--momentum", "1"], "--momentum"),
    (["--image-size", "8"], "--image-size"),
    (["--image-size", "64", "64", "64"], "--image-size"),
    (["--max-steps", "0"], "--max-steps"),
    (["--max-time", "5min"], "--max-time"),
    (["--seed", "-1"], "--seed"),
    (["--num-workers", "-1"], "--num-workers"),
    (["--log-every-n-steps", "0"], "--log-every-n-steps"),
    (["--teacher-weights", "/no/such/weights.pth"], "--teacher-weights"),
    (["--resume", "/no/such/last.ckpt"], "--resume"),
    (["--devices", "0,x"], "--devices"),
    (["--precision", "7"], "--precision"),
    (["--precision", "int8"], "--precision int8 is OpenVINO"),
    (["--batch-size", "four"], "--batch-size"),
    pytest.param(["--accelerator", "gpu"], "--accelerator", marks=NO_GPU),
])
def test_train_rejects(tiny_data, tmp_path, capsys, extra, needle) -> None:
    argv = ["--category", "tiny", "--data-root", str(tiny_data), "--output-dir", str(tmp_path / "runs"),
            *TRAIN_ARGS, *extra]
    _check(capsys, train_main, argv, needle)
    assert not (tmp_path / "runs" / "tiny").exists()  # nothing started


def test_train_rejects_an_output_dir_that_is_a_file(tiny_data, tmp_path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    argv = ["--category", "tiny", "--data-root", str(tiny_data), "--output-dir", str(tmp_path / "file"), *TRAIN_ARGS]
    _check(capsys, train_main, argv, "--output-dir")


@pytest.mark.parametrize("extra, needle", [
    (["--fpr-limit", "0"], "--fpr-limit"),
    (["--batch-size", "0"], "--batch-size"),
    (["--threshold", "nan"], "--threshold"),
    (["--thresholds-from", "/no/such/results.json"], "--thresholds-from"),
    (["--output-dir", "FILE"], "--output-dir"),
    (["--precision", "7"], "--precision"),
    (["--precision", "int8"], "--precision int8 is OpenVINO"),
    pytest.param(["--accelerator", "gpu"], "--accelerator", marks=NO_GPU),
])
def test_test_rejects(trained_run, tmp_path, capsys, extra, needle) -> None:
    (tmp_path / "FILE").write_text("x")
    extra = [str(tmp_path / "FILE") if e == "FILE" else e for e in extra]
    argv = ["--checkpoint", str(trained_run["checkpoint"]), "--num-workers", "0", *extra]
    if "--output-dir" not in extra:
        argv += ["--output-dir", str(tmp_path / "out")]
    _check(capsys, evaluate_main, argv, needle)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, needle", [
    (["--min-defect-area", "-1"], "--min-defect-area"),
    (["--batch-size", "0"], "--batch-size"),
    (["--threshold", "inf"], "--threshold"),
    (["--image-threshold", "nan"], "--image-threshold"),
    (["--output", "FILE"], "--output"),
    (["--precision", "7"], "--precision"),
    (["--precision", "int8"], "--precision int8 is OpenVINO"),
    (["--resume", "--overwrite"], "--overwrite"),
    pytest.param(["--accelerator", "gpu"], "--accelerator", marks=NO_GPU),
])
def test_predict_rejects(trained_run, tmp_path, capsys, extra, needle) -> None:
    (tmp_path / "FILE").write_text("x")
    images = trained_run["data"] / "tiny" / "test" / "good"
    extra = [str(tmp_path / "FILE") if e == "FILE" else e for e in extra]
    argv = ["--checkpoint", str(trained_run["checkpoint"]), "--input", str(images), "--num-workers", "0", *extra]
    if "--output" not in extra:
        argv += ["--output", str(tmp_path / "out")]
    _check(capsys, predict_main, argv, needle)
    assert not list((tmp_path / "out").glob("*_mask.png")) if (tmp_path / "out").exists() else True


@pytest.mark.parametrize("command", ["train", "test", "predict", "export", "download"])
def test_every_command_has_a_help_page_naming_its_options(command, capsys) -> None:
    import importlib

    from stfpm.cli import commands

    module = importlib.import_module(f"stfpm.cli.{command}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    name = {"train": "train.py", "test": "test.py", "predict": "predict.py"}.get(command, f"stfpm-{command}")
    for cls in commands()[name]:
        assert f"{cls.name} (" in text  # the section's heading
        for field, spec in cls.specs():
            if spec.flag:
                assert f"--{field.name.replace('_', '-')}" in text
