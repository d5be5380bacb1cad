"""Training: frozen teacher, heterogeneous pairs, checkpoints, thresholds from validation only, train.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml

from conftest import TRAIN_ARGS
from stfpm.cli import run
from stfpm.cli.train import main as train_main
from stfpm.core.errors import ConfigError
from stfpm.data import MVTecDataModule, load_image
from stfpm.data.settings import DataSettings
from stfpm.inference.predictor import Predictor
from stfpm.model.calibrate import conformal_threshold
from stfpm.model.checkpoint import load_checkpoint
from stfpm.model.lightning_model import STFPM
from stfpm.model.settings import ModelSettings


def _fit(model: STFPM, data_root, max_steps: int = 3) -> None:
    data = DataSettings(category="tiny", data_root=str(data_root), batch_size=4, num_workers=0)
    datamodule = MVTecDataModule(data, model.preprocessing(), seed=0)
    trainer = pl.Trainer(
        max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(model, datamodule=datamodule)


def test_teacher_is_bit_identical_after_fit_and_student_changes(tiny_data) -> None:
    model = STFPM(ModelSettings.of(backbone="resnet18", teacher_weights="random", image_size=64))
    teacher_before = {k: v.clone() for k, v in model.model.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in model.model.student.state_dict().items()}
    assert any("running_mean" in k for k in teacher_before)
    _fit(model, tiny_data)
    for key, value in model.model.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), f"teacher {key} changed"
    changed = [k for k, v in model.model.student.state_dict().items() if not torch.equal(v, student_before[k])]
    assert any(k.endswith("weight") for k in changed) and any("running_mean" in k for k in changed)
    assert not model.model.teacher.training


def test_heterogeneous_pair_trains_and_round_trips_through_checkpoint(tiny_data, tmp_path) -> None:
    args = [a for a in TRAIN_ARGS if a != "resnet18"]
    args[args.index("--backbone") + 1 : args.index("--backbone") + 1] = ["mobilenet_v2"]
    assert train_main([
        "--category", "tiny", "--data-root", str(tiny_data), "--output-dir", str(tmp_path),
        "--student-backbone", "resnet18", *args, "--epochs", "1",
    ]) == 0
    path = tmp_path / "tiny" / "version_0" / "checkpoints" / "best.ckpt"
    model = load_checkpoint(path)
    assert model.settings.networks.backbone == "mobilenet_v2" and model.settings.networks.student_backbone == "resnet18"
    assert all(isinstance(p, torch.nn.Conv2d) for p in model.model.projections)
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.startswith("model.projections.") for k in state)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])
    maps, scores = model.model.predict(torch.randn(2, 3, 64, 64))
    assert maps.shape == (2, 1, 64, 64) and torch.isfinite(scores).all()


def test_student_initialised_from_the_teacher_trains_away_from_it(tiny_data, tmp_path) -> None:
    argv = ["--category", "tiny", "--data-root", str(tiny_data), "--output-dir", str(tmp_path), *TRAIN_ARGS]
    assert train_main([*argv, "--epochs", "1", "--student-init", "teacher"]) == 0
    model = load_checkpoint(tmp_path / "tiny" / "version_0" / "checkpoints" / "last.ckpt")
    assert model.settings.networks.student_init == "teacher"
    teacher, student = model.model.teacher.state_dict(), model.model.student.state_dict()
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher if k.endswith("weight"))
    maps, _ = model.model.predict(torch.rand(1, 3, 64, 64))
    assert maps.max() > 0


def test_train_py_writes_a_loadable_run(trained_run) -> None:
    run_dir = trained_run["run_dir"]
    assert (run_dir / "checkpoints" / "best.ckpt").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["data"]["category"] == "tiny" and config["networks"]["backbone"] == "resnet18"
    assert config["optimizer"]["lr"] == 0.4
    assert set(config) == {"data", "input", "networks", "map", "calibration", "optimizer", "trainer", "devices"}
    assert (run_dir / "metrics.csv").is_file()
    model = load_checkpoint(trained_run["checkpoint"])
    assert model.run_info["category"] == "tiny"
    assert model.settings.input.image_size == 64 and model.settings.networks.layers == ["layer1", "layer2", "layer3"]
    image_thr, pixel_thr = model.thresholds
    assert math.isfinite(image_thr) and math.isfinite(pixel_thr) and 0 < pixel_thr


def test_thresholds_come_from_validation_normals_only(data_copy, tmp_path) -> None:
    # corrupt every test image: if fit read the test split at all, loading would fail
    for path in (data_copy / "tiny" / "test").rglob("*.png"):
        path.write_bytes(b"not an image")
    assert train_main(["--category", "tiny", "--data-root", str(data_copy), "--output-dir", str(tmp_path), *TRAIN_ARGS]) == 0
    checkpoint = tmp_path / "tiny" / "version_0" / "checkpoints" / "best.ckpt"
    _assert_thresholds_match_validation_images(checkpoint, data_copy)


def _assert_thresholds_match_validation_images(
    checkpoint, data_root, target: float = 0.01, pixel_q: float = 0.999, n_val: int = 2
) -> None:
    """The stored thresholds are the quantiles of the maps of ALL held-out validation images."""
    model = load_checkpoint(checkpoint)
    datamodule = MVTecDataModule(DataSettings(category="tiny", data_root=str(data_root), num_workers=0),
                                 model.preprocessing(), seed=0)
    datamodule.setup("fit")
    predictor = Predictor(model, device="cpu")
    batch = torch.stack([predictor.transform(load_image(p)) for p in datamodule.val_paths])
    maps, scores = predictor.anomaly_maps(batch)
    assert len(scores) == n_val  # 20% of the training images
    assert model.thresholds[0] == pytest.approx(conformal_threshold(scores, target)[0], rel=1e-5)
    assert model.thresholds[1] == pytest.approx(np.quantile(maps.numpy(), pixel_q), rel=1e-5)


def test_thresholds_use_every_validation_batch_and_the_quantile_flags(tiny_data, tmp_path) -> None:
    """Batch size 1: the two validation images arrive in two batches, and both must enter the quantiles."""
    assert train_main(["--category", "tiny", "--data-root", str(tiny_data), "--output-dir", str(tmp_path), *TRAIN_ARGS,
                       "--batch-size", "1", "--epochs", "1", "--target-false-alarms", "0.5",
                       "--pixel-threshold-quantile", "0.9"]) == 0
    checkpoint = tmp_path / "tiny" / "version_0" / "checkpoints" / "best.ckpt"
    _assert_thresholds_match_validation_images(checkpoint, tiny_data, target=0.5, pixel_q=0.9)


def test_yaml_config_is_overridden_by_flags(tiny_data, tmp_path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"networks": {"backbone": "resnet18"}, "optimizer": {"lr": 0.01, "momentum": 0.5}}))
    assert train_main([
        "--config", str(config), "--lr", "0.02", "--category", "tiny", "--data-root", str(tiny_data),
        "--output-dir", str(tmp_path / "runs"), *TRAIN_ARGS, "--max-steps", "1",
    ]) == 0
    saved = yaml.safe_load((tmp_path / "runs" / "tiny" / "version_0" / "config.yaml").read_text())
    assert saved["optimizer"]["lr"] == 0.02 and saved["optimizer"]["momentum"] == 0.5


def test_resume_continues_in_the_same_run(tiny_data, tmp_path) -> None:
    base = ["--category", "tiny", "--data-root", str(tiny_data), "--output-dir", str(tmp_path), *TRAIN_ARGS]
    assert train_main([*base, "--epochs", "1"]) == 0
    last = tmp_path / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2  # 8 training images, batch 4
    assert train_main([*base, "--epochs", "2", "--resume", str(last)]) == 0
    assert torch.load(last, weights_only=True)["global_step"] == 4  # one more epoch, in the same run
    assert not (tmp_path / "tiny" / "version_1").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--data-root", "/nonexistent/root", "--category", "tiny"], "does not exist"),
        (["--category", "nosuch"], "found tiny"),
        (["--category", "tiny", "--teacher-weights", "/nonexistent.pth"], "does not exist"),
        (["--category", "tiny", "--student-backbone", "resnet34", "--student-init", "teacher"], "must be a resnet18"),
    ],
)
def test_bad_training_input_is_one_clear_line(tiny_data, tmp_path, capsys, extra, message) -> None:
    argv = ["--data-root", str(tiny_data), "--output-dir", str(tmp_path), *TRAIN_ARGS, *extra]
    assert run(train_main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
    assert not any("Traceback" in line for line in err)


def test_unknown_backbone_is_refused_by_the_parser(tiny_data, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        train_main(["--category", "tiny", "--data-root", str(tiny_data), "--backbone", "resnet9"])
    assert "invalid choice" in capsys.readouterr().err


def test_val_fraction_zero_trains_without_thresholds(tiny_data, tmp_path) -> None:
    assert train_main([
        "--category", "tiny", "--data-root", str(tiny_data), "--output-dir", str(tmp_path), *TRAIN_ARGS,
        "--val-fraction", "0", "--max-steps", "2",
    ]) == 0
    model = load_checkpoint(tmp_path / "tiny" / "version_0" / "checkpoints" / "last.ckpt")
    assert all(math.isnan(t) for t in model.thresholds)


def test_ddp_on_two_cpu_processes_gathers_validation_for_thresholds(data_copy, tmp_path) -> None:
    """The multi-process path: DDP across two CPU processes writes one run whose thresholds are the quantiles of
    every validation image, each counted once: 15 training images leave 3 for validation, which the distributed
    sampler pads to 2 + 2 with a repeat that must not enter the quantiles.

    Its weights differ from a one-process run by design, not by accident: each process takes --batch-size images
    per step (twice the images per optimizer step) in the distributed sampler's order, so the figures are not
    compared with one process here; test.py on several processes is (tests/test_engine.py).
    """
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    good = data_copy / "tiny" / "train" / "good"
    for i, path in enumerate(sorted(good.glob("*.png"))[:5]):
        shutil.copy(path, good / f"extra_{i}.png")
    repo = Path(__file__).resolve().parents[2]
    argv = [sys.executable, str(repo / "train.py"), "--category", "tiny", "--data-root", str(data_copy),
            "--output-dir", str(tmp_path), *TRAIN_ARGS, "--epochs", "1", "--devices", "2", "--strategy", "ddp"]
    done = subprocess.run(argv, cwd=repo, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [p.name for p in (tmp_path / "tiny").iterdir()] == ["version_0"]
    _assert_thresholds_match_validation_images(
        tmp_path / "tiny" / "version_0" / "checkpoints" / "best.ckpt", data_copy, n_val=3
    )
    assert done.stdout.count("best.ckpt") == 1  # one report, from rank 0


@pytest.mark.parametrize("metric", ["val_loss", "val_map_mean"])
def test_best_checkpoint_has_the_lowest_monitored_metric(tiny_data, tmp_path, metric) -> None:
    """best.ckpt is the epoch with the lowest val_loss (ours) or val_map_mean (the official criterion)."""
    import csv

    import torch

    from stfpm.cli.train import main

    argv = ["--category", "tiny", "--data-root", str(tiny_data), "--output-dir", str(tmp_path), *TRAIN_ARGS,
            "--epochs", "4", "--checkpoint-metric", metric]
    assert main(argv) == 0
    run_dir = tmp_path / "tiny" / "version_0"
    rows = [r for r in csv.DictReader((run_dir / "metrics.csv").open()) if r.get(metric)]
    by_epoch = {int(r["epoch"]): float(r[metric]) for r in rows}
    assert len(by_epoch) == 4 and len(set(by_epoch.values())) == 4  # four distinct values to choose from
    best_epoch = min(by_epoch, key=by_epoch.get)
    saved = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert saved["epoch"] == best_epoch


@pytest.mark.parametrize("augment", ["none", "light"])
def test_training_step_augments_only_when_asked(augment, recwarn) -> None:
    model = STFPM(ModelSettings.of(backbone="resnet18", teacher_weights="random", image_size=32, augment=augment))
    seen: list[torch.Tensor] = []
    forward = model.model.forward
    model.model.forward = lambda images: (seen.append(images.clone()), forward(images))[1]  # type: ignore[method-assign]
    batch = {"image": torch.randn(2, 3, 32, 32)}
    model.training_step(batch, 0)
    model.validation_step({"image": batch["image"]}, 0)
    assert torch.equal(seen[1], batch["image"])  # validation never augments
    assert torch.equal(seen[0], batch["image"]) == (augment == "none")


def test_cosine_schedule_decays_the_lr_to_zero_over_the_run(tiny_data, tmp_path, monkeypatch) -> None:
    # 8 training images, batch 4: 2 steps an epoch
    args = ["--category", "tiny", "--data-root", str(tiny_data), "--output-dir", str(tmp_path), *TRAIN_ARGS,
            "--lr", "0.2"]
    seen: list[float] = []

    class Recorder(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    import importlib

    fit_module = importlib.import_module("stfpm.training.fitting")
    build = fit_module.build_trainer

    def with_recorder(*a, **k):
        trainer = build(*a, **k)
        trainer.callbacks.append(Recorder())
        return trainer

    monkeypatch.setattr(fit_module, "build_trainer", with_recorder)
    assert train_main([*args, "--epochs", "3"]) == 0  # the default schedule: cosine over 6 steps
    assert seen == pytest.approx([0.1 * (1 + math.cos(math.pi * k / 6)) for k in range(6)])
    run = tmp_path / "tiny" / "version_0"
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert yaml.safe_load((run / "config.yaml").read_text())["optimizer"]["lr_schedule"] == "cosine"
    # extending the finished run to 4 epochs: the schedule of 8 steps, from step 6 on
    seen.clear()
    assert train_main([*args, "--epochs", "4", "--resume", str(run / "checkpoints" / "last.ckpt")]) == 0
    assert seen == pytest.approx([0.1 * (1 + math.cos(math.pi * k / 8)) for k in (6, 7)])
    # the paper's constant rate
    seen.clear()
    assert train_main([*args, "--epochs", "1", "--lr-schedule", "constant", "--output-dir", str(tmp_path / "c")]) == 0
    assert seen == [0.2, 0.2]


def test_training_from_python_equals_train_py(tiny_data, tmp_path) -> None:
    """fit(TrainSettings.of(...)) is train.py: the same run, weight for weight."""
    from stfpm.training import TrainSettings, fit

    assert train_main(["--category", "tiny", "--data-root", str(tiny_data), "--output-dir", str(tmp_path / "cli"),
                       *TRAIN_ARGS]) == 0
    settings = TrainSettings.of(
        category="tiny", data_root=str(tiny_data), output_dir=str(tmp_path / "api"), backbone="resnet18",
        teacher_weights="random", image_size=64, batch_size=4, epochs=2, num_workers=0, accelerator="cpu",
        log_every_n_steps=1, calibration="holdout", min_steps=0,
    )
    [result] = fit(settings)
    assert result.category == "tiny" and result.best == result.run.checkpoints / "best.ckpt"
    api = torch.load(result.best, map_location="cpu", weights_only=True)["state_dict"]
    cli = torch.load(tmp_path / "cli" / "tiny" / "version_0" / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert api.keys() == cli.keys() and all(torch.equal(api[k], cli[k]) for k in api)
    with pytest.raises(ConfigError, match="unknown option 'epochz'"):
        TrainSettings.of(epochz=3)


def test_min_steps_raise_the_epochs_of_a_small_set(tiny_data, tmp_path, caplog) -> None:
    """8 training images at batch 4 make 2 steps per epoch: --min-steps 6 trains 3 epochs, not the 1 asked."""
    with caplog.at_level("INFO"):
        assert train_main(["--category", "tiny", "--data-root", str(tiny_data), "--output-dir", str(tmp_path),
                           *TRAIN_ARGS, "--epochs", "1", "--min-steps", "6"]) == 0
    last = torch.load(tmp_path / "tiny" / "version_0" / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)
    assert last["global_step"] == 6 and last["epoch"] == 2
    assert "8 training images make 2 steps per epoch: 3 epochs" in caplog.text
