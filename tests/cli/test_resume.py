"""Resuming equals an uninterrupted run, bit for bit, on the CPU; and the same seed gives the same run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TRAIN_ARGS
from stfpm.cli.test import main as evaluate
from stfpm.cli.train import main as train

REPO = Path(__file__).resolve().parents[2]

# train.py with every training step slowed down, so that a kill lands inside an epoch
SLOW_TRAIN = """
import sys, time
from stfpm.model.lightning_model import STFPM
step = STFPM.training_step
STFPM.training_step = lambda self, *a, **k: (time.sleep(0.4), step(self, *a, **k))[1]
from stfpm.cli.train import main
sys.exit(main(sys.argv[1:]))
"""


def _args(data: Path, out: Path, epochs: int, *extra: str) -> list[str]:
    return ["--category", "tiny", "--data-root", str(data), "--output-dir", str(out), *TRAIN_ARGS,
            "--epochs", str(epochs), "--seed", "3", *extra]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _assert_same_run(a: Path, b: Path, tmp_path: Path) -> None:
    """Same weights, thresholds and optimizer state in last.ckpt, and the same results.json of test.py."""
    wa, wb = _weights(a / "checkpoints" / "last.ckpt"), _weights(b / "checkpoints" / "last.ckpt")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    results = []
    for run, name in ((a, "ra"), (b, "rb")):
        assert evaluate(["--checkpoint", str(run / "checkpoints" / "last.ckpt"), "--output-dir", str(tmp_path / name),
                         "--num-workers", "0", "--accelerator", "cpu"]) == 0
        figures = json.loads((tmp_path / name / "results.json").read_text())
        results.append({k: v for k, v in figures.items() if k not in ("checkpoint",)})
    assert results[0] == results[1]


def test_resume_equals_uninterrupted(tiny_data, tmp_path) -> None:
    # a constant rate: with the cosine schedule a 2-epoch run decays faster than the first 2 epochs of 3 (extending
    # a cosine run is tested in test_train.py)
    paper = ["--lr-schedule", "constant"]
    assert train(_args(tiny_data, tmp_path / "whole", 3, *paper)) == 0
    assert train(_args(tiny_data, tmp_path / "parts", 2, *paper)) == 0
    run = tmp_path / "parts" / "tiny" / "version_0"
    assert train(_args(tiny_data, tmp_path / "parts", 3, *paper, "--resume", str(run / "checkpoints" / "last.ckpt"))) == 0
    _assert_same_run(tmp_path / "whole" / "tiny" / "version_0", run, tmp_path)


def test_same_seed_same_run(tiny_data, tmp_path) -> None:
    assert train(_args(tiny_data, tmp_path / "a", 2)) == 0
    assert train(_args(tiny_data, tmp_path / "b", 2)) == 0
    _assert_same_run(tmp_path / "a" / "tiny" / "version_0", tmp_path / "b" / "tiny" / "version_0", tmp_path)


@pytest.mark.parametrize("options", [[], ["--augment", "light"]], ids=["defaults", "augment"])
def test_resume_after_sigkill_mid_epoch_equals_uninterrupted(tiny_data, tmp_path, options) -> None:
    """Kill training while its third epoch runs; resume from last.ckpt; same result as never stopping (the default
    cosine schedule's state and the random augmentation's draws must carry over)."""
    assert train(_args(tiny_data, tmp_path / "whole", 4, *options)) == 0
    out = tmp_path / "killed"
    last = out / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_TRAIN, *_args(tiny_data, out, 4, *options)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            if last.is_file() and torch.load(last, map_location="cpu", weights_only=True)["epoch"] >= 1:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("training never reached its second epoch's checkpoint")
        time.sleep(0.7)  # inside the next epoch
        assert proc.poll() is None, "training ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert train(_args(tiny_data, out, 4, *options, "--resume", str(last))) == 0
    _assert_same_run(tmp_path / "whole" / "tiny" / "version_0", out / "tiny" / "version_0", tmp_path)


def _thresholds_match_final_weights(last: Path) -> None:
    """last.ckpt has finite thresholds, calibrated on its own weights (validation recomputed here)."""
    import math

    from stfpm.model.checkpoint import load_checkpoint

    model = load_checkpoint(last)
    assert all(math.isfinite(t) for t in model.thresholds)
    stored = model.thresholds
    levels = []
    from stfpm.data import MVTecDataModule
    from stfpm.data.settings import DataSettings

    data = DataSettings(category="tiny", data_root=model.run_info["data_root"], batch_size=4, num_workers=0)
    dm = MVTecDataModule(data, model.preprocessing(), seed=3)
    dm.setup("fit")
    with torch.no_grad():
        for batch in dm.val_dataloader():
            levels.append(model.model.layer_maps(batch["image"]))
    merged = [torch.cat(level) for level in zip(*levels)]

    image_thr, pixel_thr, _ = model.calibrate_on(merged)
    assert (image_thr, pixel_thr) == stored


def test_max_steps_inside_an_epoch_leaves_thresholds(tiny_data, tmp_path) -> None:
    # 8 training images, batch 4: step 3 ends inside the second epoch, where no validation runs
    assert train(_args(tiny_data, tmp_path, 5, "--max-steps", "3")) == 0
    last = tmp_path / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3
    _thresholds_match_final_weights(last)


def test_validating_every_n_epochs_still_calibrates_the_final_weights(tiny_data, tmp_path) -> None:
    """--val-every-n-epochs 2 over 3 epochs: validation runs after the second epoch only, then once on the final
    weights, whose last.ckpt carries thresholds calibrated on them."""
    import csv

    assert train(_args(tiny_data, tmp_path, 3, "--val-every-n-epochs", "2")) == 0
    run = tmp_path / "tiny" / "version_0"
    with (run / "metrics.csv").open(newline="") as handle:
        validated = [int(r["epoch"]) for r in csv.DictReader(handle) if r.get("val_loss")]
    assert validated == [1, 3]  # after the second epoch (index 1), then on the final weights (after 3 epochs)
    assert torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["global_step"] == 4
    _thresholds_match_final_weights(run / "checkpoints" / "last.ckpt")


def test_ctrl_c_stops_after_the_step_and_saves_a_usable_checkpoint(tiny_data, tmp_path) -> None:
    out = tmp_path / "runs"
    last = out / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_TRAIN, *_args(tiny_data, out, 50)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while not last.is_file() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(0.6)  # inside the next epoch
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-3000:]
    assert "Ctrl-C" in output and "Traceback" not in output
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["epoch"] < 49
    _thresholds_match_final_weights(last)
    # and --resume continues from it
    assert train(_args(tiny_data, out, int(saved["epoch"]) + 2, "--resume", str(last))) == 0
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == int(saved["epoch"]) + 1


def test_checkpoints_are_replaced_atomically(tmp_path, monkeypatch) -> None:
    """A crash while writing leaves the previous checkpoint intact and no partial file behind."""
    import stfpm.core.files
    from stfpm.model.checkpoint import AtomicCheckpointIO

    path = tmp_path / "last.ckpt"
    io_plugin = AtomicCheckpointIO()
    io_plugin.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(stfpm.core.files.os, "replace", crash)
    try:
        io_plugin.save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    except OSError:
        pass
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    monkeypatch.undo()
    io_plugin.save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 2


def test_training_writes_checkpoints_through_the_atomic_writer(tiny_data, tmp_path, monkeypatch) -> None:
    from stfpm.model.checkpoint import AtomicCheckpointIO

    written = []
    original = AtomicCheckpointIO.save_checkpoint
    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint",
                        lambda self, checkpoint, path, storage_options=None: (written.append(Path(path).name),
                                                                              original(self, checkpoint, path))[1])
    assert train(_args(tiny_data, tmp_path, 1)) == 0
    assert {"best.ckpt", "last.ckpt"} <= set(written)
