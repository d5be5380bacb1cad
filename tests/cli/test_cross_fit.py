"""Cross-fitted calibration through train.py: every good training image gets an out-of-sample map from a student
trained without it, the thresholds and their promise rest on all of them, and test.py states that promise."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TRAIN_ARGS, as_format_2
from stfpm.cli.test import main as evaluate
from stfpm.cli.train import main as train_main
from stfpm.core.layout import Run
from stfpm.data.mvtec import scan_train, split_folds
from stfpm.model import checkpoint_format
from stfpm.model.calibrate import conformal_threshold
from stfpm.model.checkpoint import load_checkpoint

FOLDS = 3


def _train(data: Path, out: Path, *extra: str) -> Run:
    argv = ["--category", "tiny", "--data-root", str(data), "--output-dir", str(out), *TRAIN_ARGS, "--epochs", "1",
            "--calibration", "auto", *extra]
    assert train_main(argv) == 0
    return Run(out / "tiny" / "version_0")


def _fold_levels(run: Run) -> tuple[list[list[str]], list[torch.Tensor]]:
    records = [torch.load(run.fold_maps(k, FOLDS), weights_only=True) for k in range(1, FOLDS + 1)]
    return [r["images"] for r in records], [torch.cat(level) for level in zip(*(r["levels"] for r in records))]


@pytest.fixture(scope="module")
def cross_fitted(tiny_data, tmp_path_factory) -> Run:
    """The default (auto) on the tiny set: its 2 validation images cannot support 1%, so the run cross-fits."""
    return _train(tiny_data, tmp_path_factory.mktemp("cross"), "--folds", str(FOLDS))


def test_auto_cross_fits_a_small_set_and_the_thresholds_rest_on_every_training_image(cross_fitted, tiny_data) -> None:
    run = cross_fitted
    images = scan_train(tiny_data / "tiny")
    folds, levels = _fold_levels(run)
    # the folds are the seeded split of every good training image: disjoint, and together all of them
    assert folds == [[str(p) for p in fold] for fold in split_folds(images, FOLDS, seed=0)]
    assert sorted(p for fold in folds for p in fold) == sorted(str(p) for p in images)
    for name in ("best.ckpt", "last.ckpt"):
        model = load_checkpoint(run.checkpoints / name)
        promise = model.model.promise
        assert promise["image_threshold_support"] == len(images) == 10
        assert promise["image_threshold_promise"] == pytest.approx(1 / 11)  # 10 scores: at best 1/(n+1)
        scores = checkpoint_format.calibration_scores(torch.load(run.checkpoints / name, weights_only=True))
        assert len(scores) == 10 and model.thresholds[0] == pytest.approx(max(scores), rel=1e-6)
        # the stored thresholds are the calibration step's on the folds' out-of-sample maps, nothing else
        stored = model.thresholds
        image_thr, pixel_thr, _ = model.calibrate_on(levels)
        assert (image_thr, pixel_thr) == pytest.approx(stored, rel=1e-6)
    # the shipped student maps its own training images lower than the students that never saw them
    shipped = load_checkpoint(run.last)
    with torch.no_grad():
        batch = torch.stack([shipped.preprocessing()(_image(p)) for f in folds for p in f])
        own = shipped.model.layer_maps(batch)
    assert float(own[0].mean()) < float(levels[0].mean())


def _image(path: str) -> torch.Tensor:
    from stfpm.data import load_image

    return load_image(Path(path))


def test_test_py_states_the_promise_and_what_it_rests_on(cross_fitted, tmp_path) -> None:
    out = tmp_path / "results"
    assert evaluate(["--checkpoint", str(cross_fitted.last), "--output-dir", str(out), "--num-workers", "0",
                      "--accelerator", "cpu"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["image_threshold_promise"] == pytest.approx(1 / 11)
    assert results["image_threshold_support"] == 10
    assert results["image_threshold_supported_rate"] == pytest.approx(1 / 11)
    assert "set to flag 9.1% of good parts, from 10 out-of-sample good images" in (out / "results.md").read_text()
    from stfpm.inference.export import metadata

    meta = metadata(load_checkpoint(cross_fitted.last), "onnx")
    assert meta["image_threshold_support"] == 10 and meta["image_threshold_promise"] == pytest.approx(1 / 11)
    assert meta["settings"]["calibration"]["calibration"] == "auto"


def test_a_resumed_cross_fit_trains_only_the_folds_that_did_not_finish(cross_fitted, tiny_data, tmp_path,
                                                                       caplog) -> None:
    import shutil

    copy = tmp_path / "runs" / "tiny" / "version_0"
    shutil.copytree(cross_fitted.folder, copy)
    Run(copy).fold_maps(2, FOLDS).unlink()
    before = load_checkpoint(copy / "checkpoints" / "last.ckpt").thresholds
    with caplog.at_level("INFO"):
        _train(tiny_data, tmp_path / "runs", "--folds", str(FOLDS), "--resume", str(copy / "checkpoints" / "last.ckpt"))
    trained = [r.getMessage() for r in caplog.records if "cross-fit: student" in r.getMessage()]
    assert len(trained) == 1 and trained[0].startswith("cross-fit: student 2 of 3")
    assert Run(copy).fold_maps(2, FOLDS).is_file()
    # training on one CPU process is reproducible: the retrained fold gives the same maps, so the same thresholds
    assert load_checkpoint(copy / "checkpoints" / "last.ckpt").thresholds == pytest.approx(before, rel=1e-6)


def test_a_holdout_run_with_a_tail_model_promises_the_target_beyond_its_few_scores(tiny_data, tmp_path) -> None:
    run = _train(tiny_data, tmp_path, "--calibration", "holdout", "--tail", "gumbel", "--target-false-alarms", "0.02",
                 "--val-fraction", "0.3")  # 3 validation images: the fewest a Gumbel law is fitted to
    model = load_checkpoint(run.checkpoints / "best.ckpt")
    scores = checkpoint_format.calibration_scores(torch.load(run.checkpoints / "best.ckpt", weights_only=True))
    assert len(scores) == 3 and not run.fold_maps(1, 5).parent.exists()
    assert model.model.promise == {"image_threshold_promise": pytest.approx(0.02), "image_threshold_support": 3}
    assert model.thresholds[0] >= max(scores)
    plain = _train(tiny_data, tmp_path / "plain", "--calibration", "holdout")
    model = load_checkpoint(plain.checkpoints / "best.ckpt")
    scores = checkpoint_format.calibration_scores(torch.load(plain.checkpoints / "best.ckpt", weights_only=True))
    assert model.thresholds[0] == pytest.approx(conformal_threshold(np.array(scores), 0.01)[0], rel=1e-6)
    assert model.model.promise["image_threshold_promise"] == pytest.approx(1 / 3)


def test_a_format_2_checkpoint_reads_its_quantile_as_a_target_and_has_no_promise(cross_fitted, tmp_path) -> None:
    current = torch.load(cross_fitted.last, map_location="cpu", weights_only=True)
    current["hyper_parameters"]["calibration"]["target_false_alarms"] = 0.05
    path = tmp_path / "format2.ckpt"
    torch.save(as_format_2(current), path)
    old = load_checkpoint(path)
    assert old.settings.calibration.target_false_alarms == pytest.approx(0.05)
    assert old.settings.calibration.calibration == "holdout" and old.settings.calibration.tail == "none"
    assert math.isnan(old.model.promise["image_threshold_promise"]) and old.model.promise["image_threshold_support"] == 0
    assert old.thresholds == load_checkpoint(cross_fitted.last).thresholds
    images = torch.rand(2, 3, *old.settings.input.size)
    with torch.no_grad():
        torch.testing.assert_close(old.model.predict(images), load_checkpoint(cross_fitted.last).model.predict(images))


def test_cross_fitting_on_two_ddp_processes_scores_every_image_once(tiny_data, tmp_path) -> None:
    """Under DDP each fold's maps are gathered from both processes (the distributed sampler pads a fold of 5 to
    3 + 3), each image counted once: the threshold rests on all 10 images, and one process writes the fold files."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    argv = [sys.executable, str(repo / "train.py"), "--category", "tiny", "--data-root", str(tiny_data),
            "--output-dir", str(tmp_path), *TRAIN_ARGS, "--epochs", "1", "--calibration", "cross-fit", "--folds", "2",
            "--devices", "2", "--strategy", "ddp"]
    done = subprocess.run(argv, cwd=repo, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    run = Run(tmp_path / "tiny" / "version_0")
    assert [p.name for p in (tmp_path / "tiny").iterdir()] == ["version_0"]
    model = load_checkpoint(run.last)
    assert model.model.promise["image_threshold_support"] == 10
    records = [torch.load(run.fold_maps(k, 2), weights_only=True) for k in (1, 2)]
    assert sorted(len(r["images"]) for r in records) == [5, 5]
    assert [len(r["levels"][0]) for r in records] == [5, 5]
    assert done.stderr.count("cross-fit: student 1 of 2") == 1


def test_auto_cross_fits_on_what_the_validation_split_supports_not_on_all_the_images(tiny_data, tmp_path) -> None:
    """At a 10% target, the 2 validation images (1/3) cannot support it and the 10 images together (1/11) can:
    auto cross-fits, and every fold is trained (the decision is taken once, on the validation split)."""
    run = _train(tiny_data, tmp_path, "--target-false-alarms", "0.1", "--folds", "2")
    model = load_checkpoint(run.last)
    assert model.model.promise == {"image_threshold_promise": pytest.approx(1 / 11), "image_threshold_support": 10}
    assert run.fold_maps(1, 2).is_file() and run.fold_maps(2, 2).is_file()
