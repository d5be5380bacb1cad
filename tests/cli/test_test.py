"""test.py end to end: result files, batch-size invariance, undefined metrics and bad input."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from stfpm.cli import run
from stfpm.cli.test import main as evaluate_main

BASE = ["--num-workers", "0", "--accelerator", "cpu"]
FPR_LIMIT = 0.3  # test.py's default --fpr-limit


def _results(path) -> dict:
    return json.loads((path / "results.json").read_text())


def test_test_py_reports_every_metric(trained_run, tmp_path) -> None:
    out = tmp_path / "eval"
    assert evaluate_main(["--category", "tiny", "--runs-dir", str(trained_run["runs"]), "--output-dir", str(out),
                      "--save-images", *BASE]) == 0
    results = _results(out)
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro", "image_f1_max", "pixel_f1_max",
                "image_f1_threshold", "pixel_f1_threshold", "checkpoint", "backbone", "student_backbone"):
        assert key in results
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro", "image_f1_max", "pixel_f1_max"):
        assert 0.0 <= results[key] <= 1.0
    assert results["category"] == "tiny" and results["n_images"] == 12 and results["n_defective"] == 8
    assert set(results["per_defect_type"]) == {"scratch", "hole", "stain", "missing"}
    assert results["checkpoint"] == str(trained_run["checkpoint"])
    assert (out / "results.csv").read_text().startswith("scope,n_images,image_auroc")
    assert "| all" in (out / "results.md").read_text()
    assert len(list((out / "images").rglob("*.png"))) == 12
    assert (out / "roc_curve.png").stat().st_size > 0 and (out / "score_histogram.png").stat().st_size > 0


def test_figures_do_not_depend_on_batch_size(trained_run, tmp_path) -> None:
    figures = []
    for batch_size in ("1", "5"):
        out = tmp_path / batch_size
        assert evaluate_main(["--checkpoint", str(trained_run["checkpoint"]), "--output-dir", str(out),
                          "--batch-size", batch_size, *BASE]) == 0
        figures.append(_results(out))
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro", "image_f1_max", "pixel_f1_max"):
        assert figures[0][key] == pytest.approx(figures[1][key], abs=1e-6)


def test_default_output_is_the_run_folder(trained_run) -> None:
    assert evaluate_main(["--category", "tiny", "--runs-dir", str(trained_run["runs"]), *BASE]) == 0
    assert _results(trained_run["run_dir"])["category"] == "tiny"


def test_all_categories_gives_a_table_with_a_mean_row(trained_run, tmp_path) -> None:
    out = tmp_path / "all"
    assert evaluate_main(["--category", "all", "--runs-dir", str(trained_run["runs"]), "--output-dir", str(out), *BASE]) == 0
    rows = json.loads((out / "results_all.json").read_text())
    assert [r["category"] for r in rows] == ["tiny", "mean"]
    assert rows[1]["image_auroc"] == pytest.approx(rows[0]["image_auroc"])
    assert (out / "tiny" / "results.json").is_file()


@pytest.mark.parametrize("remove", ["defective", "good"])
def test_single_class_test_split_reports_undefined_metrics(trained_run, data_copy, tmp_path, remove, caplog) -> None:
    test_dir = data_copy / "tiny" / "test"
    for folder in test_dir.iterdir():
        if (folder.name == "good") == (remove == "good"):
            shutil.rmtree(folder)
    out = tmp_path / "eval"
    assert evaluate_main(["--checkpoint", str(trained_run["checkpoint"]), "--data-root", str(data_copy),
                      "--output-dir", str(out), *BASE]) == 0
    results = _results(out)
    assert results["image_auroc"] is None
    assert "undefined" in caplog.text
    if remove == "good":  # defective images still hold normal and defect pixels
        assert 0 <= results["pixel_auroc"] <= 1 and results["pixel_f1_max"] is not None
    else:
        assert results["pixel_auroc"] is None and results["pixel_aupro"] is None


def test_bad_checkpoints_and_data_are_one_line_errors(trained_run, data_copy, tmp_path, capsys) -> None:
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x00garbage")
    shutil.rmtree(data_copy / "tiny" / "test")
    cases = [
        (["--checkpoint", str(tmp_path / "missing.ckpt")], "does not exist"),
        (["--checkpoint", str(foreign)], "not an STFPM checkpoint"),
        (["--checkpoint", str(junk)], "cannot read checkpoint"),
        (["--category", "nosuch", "--runs-dir", str(trained_run["runs"])], "no trained run"),
        (["--checkpoint", str(trained_run["checkpoint"]), "--data-root", str(data_copy)], "test"),
    ]
    for argv, message in cases:
        assert run(evaluate_main, [*argv, "--output-dir", str(tmp_path / "o"), *BASE]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and message in err[-1], err
        assert not any("Traceback" in line for line in err)


def test_mismatched_mask_sizes_are_resized_with_a_warning(trained_run, data_copy, tmp_path, caplog) -> None:
    from PIL import Image

    mask_path = next((data_copy / "tiny" / "ground_truth" / "hole").glob("*_mask.png"))
    Image.open(mask_path).resize((32, 32), Image.NEAREST).save(mask_path)
    assert evaluate_main(["--checkpoint", str(trained_run["checkpoint"]), "--data-root", str(data_copy),
                      "--output-dir", str(tmp_path / "o"), *BASE]) == 0
    assert "resized" in caplog.text and mask_path.name in caplog.text
    assert math.isfinite(_results(tmp_path / "o")["pixel_auroc"])


def test_defective_images_without_mask_are_left_out_of_pixel_metrics(trained_run, data_copy, tmp_path) -> None:
    next((data_copy / "tiny" / "ground_truth" / "stain").glob("*_mask.png")).unlink()
    out = tmp_path / "o"
    assert evaluate_main(["--checkpoint", str(trained_run["checkpoint"]), "--data-root", str(data_copy),
                          "--output-dir", str(out), *BASE]) == 0
    results = _results(out)
    assert results["n_defective_without_mask"] == 1 and results["n_defective"] == 8
    assert math.isfinite(results["pixel_auroc"]) and math.isfinite(results["image_auroc"])


def _hand_built():
    """Four 2x3 images: two good, two defective (one without a mask)."""
    from stfpm.evaluation.results import TestPredictions

    maps = np.array([
        [[0.1, 0.2, 0.1], [0.1, 0.6, 0.1]],  # good, one pixel at 0.6
        [[0.1, 0.1, 0.1], [0.1, 0.1, 0.3]],  # good
        [[0.9, 0.8, 0.1], [0.1, 0.1, 0.1]],  # defective, masked
        [[0.1, 0.1, 0.7], [0.1, 0.1, 0.1]],  # defective, no mask
    ], np.float32)
    masks = np.zeros(maps.shape, bool)
    masks[2, 0, :2] = True
    masks[2, 1, 0] = True
    return TestPredictions(
        scores=maps.reshape(4, -1).max(axis=1), labels=np.array([0, 0, 1, 1], np.int8), maps=maps, masks=masks,
        has_mask=np.array([True, True, True, False]), defect_types=["good", "good", "scratch", "hole"],
    )


def test_operating_point_figures_on_a_hand_built_split() -> None:
    from stfpm.evaluation.results import compute_metrics

    results = compute_metrics(_hand_built(), FPR_LIMIT, image_threshold=0.65, pixel_threshold=0.6)
    assert results["image_tpr_at_threshold"] == 1.0  # 0.9 and 0.7 >= 0.65
    assert results["image_fpr_at_threshold"] == 0.0  # 0.6 and 0.3 < 0.65
    # pixels of the three images with ground truth: flagged 0.6 (good), 0.9, 0.8 -> TP 2, FP 1, FN 1
    assert results["pixel_precision_at_threshold"] == pytest.approx(2 / 3)
    assert results["pixel_recall_at_threshold"] == pytest.approx(2 / 3)
    assert results["pixel_iou_at_threshold"] == pytest.approx(2 / 4)
    assert results["image_tpr_at_1pct_fpr"] == 1.0 and results["image_tpr_at_5pct_fpr"] == 1.0
    assert results["per_defect_type"]["scratch"]["image_tpr_at_threshold"] == 1.0
    stricter = compute_metrics(_hand_built(), FPR_LIMIT, image_threshold=0.8, pixel_threshold=0.85)
    assert stricter["image_tpr_at_threshold"] == 0.5 and stricter["per_defect_type"]["hole"]["image_tpr_at_threshold"] == 0.0
    assert stricter["pixel_precision_at_threshold"] == 1.0 and stricter["pixel_recall_at_threshold"] == pytest.approx(1 / 3)


def test_operating_point_is_undefined_without_thresholds_or_a_class() -> None:
    from stfpm.evaluation.results import compute_metrics

    results = compute_metrics(_hand_built(), FPR_LIMIT)
    for key in ("image_tpr_at_threshold", "image_fpr_at_threshold", "pixel_precision_at_threshold",
                "pixel_recall_at_threshold", "pixel_iou_at_threshold"):
        assert math.isnan(results[key]), key
    good_only = _hand_built()
    good_only.labels[:] = 0
    good_only.masks[:] = False
    results = compute_metrics(good_only, FPR_LIMIT, image_threshold=0.5, pixel_threshold=0.5)
    assert math.isnan(results["image_tpr_at_threshold"]) and results["image_fpr_at_threshold"] == 0.75  # 3 of 4
    assert math.isnan(results["image_tpr_at_1pct_fpr"]) and math.isnan(results["pixel_recall_at_threshold"])


def test_source_size_maps_of_different_shapes_give_the_same_figures_as_a_stack() -> None:
    from stfpm.evaluation.results import compute_metrics

    stacked = _hand_built()
    as_list = _hand_built()
    as_list.maps, as_list.masks = list(as_list.maps), list(as_list.masks)
    a = compute_metrics(stacked, FPR_LIMIT, image_threshold=0.65, pixel_threshold=0.6)
    b = compute_metrics(as_list, FPR_LIMIT, image_threshold=0.65, pixel_threshold=0.6)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN written alike on both sides
    ragged = _hand_built()
    ragged.maps = [m if i != 1 else np.full((4, 5), 0.2, np.float32) for i, m in enumerate(ragged.maps)]
    ragged.masks = [m if i != 1 else np.zeros((4, 5), bool) for i, m in enumerate(ragged.masks)]
    assert 0.0 <= compute_metrics(ragged, FPR_LIMIT)["pixel_aupro"] <= 1.0


def test_results_files_hold_the_operating_point(trained_run, tmp_path) -> None:
    out = tmp_path / "eval"
    assert evaluate_main(["--checkpoint", str(trained_run["checkpoint"]), "--output-dir", str(out), *BASE]) == 0
    results = _results(out)
    from stfpm.model.checkpoint import load_checkpoint

    image_thr, pixel_thr = load_checkpoint(trained_run["checkpoint"]).thresholds
    assert results["calibrated_image_threshold"] == pytest.approx(image_thr)
    for key in ("image_tpr_at_threshold", "image_fpr_at_threshold", "image_tpr_at_1pct_fpr", "pixel_iou_at_threshold"):
        assert results[key] is None or 0.0 <= results[key] <= 1.0
    assert "image_tpr_at_threshold" in (out / "results.csv").read_text().splitlines()[0]
    assert "image_fpr_at_threshold" in (out / "results.md").read_text()


def test_without_category_or_checkpoint_the_latest_run_is_used(trained_run, tmp_path, caplog, capsys) -> None:
    """`python test.py` and `python predict.py --input DIR` take the most recently trained run and say which."""
    import logging
    import os

    from stfpm.cli.predict import main as predict_main

    runs = tmp_path / "runs"
    shutil.copytree(trained_run["runs"], runs)
    newer = runs / "other" / "version_3"
    shutil.copytree(runs / "tiny" / "version_0", newer)
    for ckpt in (newer / "checkpoints").glob("*.ckpt"):
        os.utime(ckpt, (ckpt.stat().st_atime, ckpt.stat().st_mtime + 100))
    caplog.set_level(logging.INFO)
    assert evaluate_main(["--runs-dir", str(runs), "--output-dir", str(tmp_path / "eval"), *BASE]) == 0
    assert _results(tmp_path / "eval")["checkpoint"] == str(newer / "checkpoints" / "best.ckpt")
    assert f"using the latest run, {newer}" in caplog.text
    caplog.clear()
    images = trained_run["data"] / "tiny" / "test" / "good"
    assert predict_main(["--runs-dir", str(runs), "--input", str(images), "--output", str(tmp_path / "p"), *BASE]) == 0
    assert f"using the latest run, {newer}" in caplog.text
    assert run(evaluate_main, ["--runs-dir", str(tmp_path / "none"), *BASE]) == 2
    assert "no trained run under" in capsys.readouterr().err
