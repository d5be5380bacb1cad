"""Figures checked against independent references (scikit-learn, maps recomputed through the public API), so
that a wrong sign, a wrong resolution, a wrong threshold or a wrong subset of images makes a test fail."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from stfpm.cli import run
from stfpm.cli.predict import main as predict_main
from stfpm.cli.test import main as evaluate_main
from stfpm.core.layout import Runs
from stfpm.data import load_image
from stfpm.inference.predictor import Predictor

BASE = ["--num-workers", "0", "--accelerator", "cpu"]


def _reference_split(data: Path, predictor: Predictor, skip_mask: str | None = None):
    """Scores, labels, maps, masks (None where a defective image has no mask) and types, walked from the folders."""
    size = predictor.transform.size
    rows = []
    for folder in sorted((data / "test").iterdir()):
        for path in sorted(folder.glob("*.png")):
            mask_path = data / "ground_truth" / folder.name / f"{path.stem}_mask.png"
            if folder.name == "good":
                mask = np.zeros(size, bool)
            elif mask_path.is_file() and mask_path.name != skip_mask:
                mask = np.asarray(Image.open(mask_path).convert("L").resize(size[::-1], Image.Resampling.NEAREST)) > 0
            else:
                mask = None
            rows.append((path, folder.name, mask))
    batch = torch.stack([predictor.transform(load_image(p)) for p, _, _ in rows])
    maps, scores = predictor.anomaly_maps(batch)
    types = [t for _, t, _ in rows]
    labels = np.array([t != "good" for t in types])
    return scores.numpy(), labels, maps.numpy(), [m for _, _, m in rows], types


def _pixel_auroc(maps, masks, select) -> float:
    keep = [i for i in range(len(masks)) if select[i] and masks[i] is not None]
    return roc_auc_score(np.concatenate([masks[i].ravel() for i in keep]), np.concatenate([maps[i].ravel() for i in keep]))


@pytest.mark.parametrize("drop_mask", [False, True])
def test_results_json_equals_sklearn_on_maps_recomputed_through_the_api(trained_run, data_copy, tmp_path, drop_mask) -> None:
    dropped = None
    if drop_mask:  # a defective image without ground truth must stay out of every pixel figure
        dropped = sorted((data_copy / "tiny" / "ground_truth" / "hole").glob("*_mask.png"))[0]
        dropped.unlink()
    out = tmp_path / "eval"
    assert evaluate_main(["--checkpoint", str(trained_run["checkpoint"]), "--data-root", str(data_copy),
                          "--output-dir", str(out), *BASE]) == 0
    results = json.loads((out / "results.json").read_text())
    predictor = Predictor.from_checkpoint(trained_run["checkpoint"], device="cpu")
    scores, labels, maps, masks, types = _reference_split(data_copy / "tiny", predictor)
    everything = np.ones(len(labels), bool)
    assert results["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert results["pixel_auroc"] == pytest.approx(_pixel_auroc(maps, masks, everything), abs=1e-6)
    for defect in set(types) - {"good"}:
        select = np.array([t in ("good", defect) for t in types])
        figures = results["per_defect_type"][defect]
        assert figures["image_auroc"] == pytest.approx(roc_auc_score(labels[select], scores[select]), abs=1e-6), defect
        assert figures["pixel_auroc"] == pytest.approx(_pixel_auroc(maps, masks, select), abs=1e-6), defect
    image_thr = predictor.image_threshold
    assert results["image_tpr_at_threshold"] == pytest.approx(np.mean(scores[labels] >= image_thr))
    assert results["image_fpr_at_threshold"] == pytest.approx(np.mean(scores[~labels] >= image_thr))
    assert results["n_defective_without_mask"] == int(drop_mask)


def test_mask_is_the_source_size_map_at_the_pixel_threshold(trained_run, tmp_path) -> None:
    """With a threshold inside the map's range, the mask is exactly the saved source-size map >= threshold,
    and the verdict is exactly score >= image threshold, with the Predictor's score."""
    images = sorted((trained_run["data"] / "tiny" / "test").rglob("*.png"))[:5]
    folder = tmp_path / "in"
    folder.mkdir()
    for i, path in enumerate(images):  # sizes other than the network's, and not a multiple of it
        Image.open(path).resize((70 + 9 * i, 45 + 5 * i)).save(folder / f"p{i}.png")
    argv = ["--checkpoint", str(trained_run["checkpoint"]), "--input", str(folder), "--save-raw", *BASE]
    assert predict_main([*argv, "--output", str(tmp_path / "first")]) == 0
    raw = np.concatenate([np.load(p).ravel() for p in sorted((tmp_path / "first").glob("*_map.npy"))])
    pixel_thr, image_thr = float(np.quantile(raw, 0.9)), float(np.quantile(raw, 0.99))
    out = tmp_path / "out"
    assert predict_main([*argv, "--output", str(out), "--threshold", repr(pixel_thr), "--image-threshold",
                         repr(image_thr)]) == 0
    predictor = Predictor.from_checkpoint(trained_run["checkpoint"], device="cpu")
    rows = {r["path"]: r for r in csv.DictReader((out / "predictions.csv").open())}
    lit = 0
    for i in range(len(images)):
        mask = np.asarray(Image.open(out / f"p{i}_mask.png"))
        saved = np.load(out / f"p{i}_map.npy")
        assert mask.shape == saved.shape == (45 + 5 * i, 70 + 9 * i)
        np.testing.assert_array_equal(mask > 0, saved >= pixel_thr)
        lit += int((mask > 0).sum())
        row = rows[f"p{i}.png"]
        score = predictor.predict(folder / f"p{i}.png").score
        assert float(row["image_score"]) == pytest.approx(score, rel=1e-5)
        assert (row["is_anomalous"] == "True") == (float(row["image_score"]) >= image_thr)
    assert 0 < lit < raw.size  # the threshold cut through the maps


def test_latest_checkpoint_is_the_highest_version_number(tmp_path) -> None:
    for version in (2, 10, 9):
        folder = tmp_path / "cat" / f"version_{version}" / "checkpoints"
        folder.mkdir(parents=True)
        (folder / "best.ckpt").write_bytes(b"x")
    (tmp_path / "cat" / "version_x").mkdir()
    assert Runs(tmp_path).latest_checkpoint("cat") == tmp_path / "cat" / "version_10" / "checkpoints" / "best.ckpt"


def test_predict_refuses_a_checkpoint_without_thresholds_unless_given_some(tiny_data, tmp_path, capsys) -> None:
    from conftest import TRAIN_ARGS
    from stfpm.cli.train import main as train_main

    assert train_main(["--category", "tiny", "--data-root", str(tiny_data), "--output-dir", str(tmp_path / "runs"),
                       *TRAIN_ARGS, "--val-fraction", "0", "--epochs", "1"]) == 0
    checkpoint = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    image = next((tiny_data / "tiny" / "test" / "good").glob("*.png"))
    argv = ["--checkpoint", str(checkpoint), "--input", str(image), *BASE]
    assert run(predict_main, [*argv, "--output", str(tmp_path / "a")]) == 2
    assert "no calibrated thresholds" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() or not list((tmp_path / "a").iterdir())
    assert predict_main([*argv, "--output", str(tmp_path / "b"), "--threshold", "0.1", "--image-threshold", "0.2"]) == 0


@pytest.mark.parametrize("content, needle", [
    (None, "does not exist"),
    ("model: [unclosed", "not valid YAML"),
    ("- a\n- b\n", "mapping"),
    ("model:\n  no_such_option: 3\n", "unknown option"),  # a file of an earlier version (a `model:` section)
    ("networks:\n  no_such_option: 3\n", "unknown option"),
    ("networks:\n  lr: 0.1\n", "belongs in section 'optimizer'"),
    ("modle:\n  lr: 0.1\n", "unknown section"),
    ("optimizer:\n  lr: -1\n", "--lr"),
])
def test_yaml_config_errors_are_one_line(tiny_data, tmp_path, capsys, content, needle) -> None:
    from stfpm.cli.train import main as train_main

    config = tmp_path / "c.yaml"
    if content is not None:
        config.write_text(content)
    code = run(train_main, ["--config", str(config), "--category", "tiny", "--data-root", str(tiny_data),
                            "--output-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("error:") == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()
