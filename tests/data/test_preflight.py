"""Data pre-flight: every problem of a data folder reported in one pass, unusable files left out (or --strict)."""

from __future__ import annotations

import json
import logging

import numpy as np
from PIL import Image

from conftest import TRAIN_ARGS
from stfpm.cli import run
from stfpm.cli.test import main as evaluate_main
from stfpm.cli.train import main as train_main

BASE = ["--num-workers", "0", "--accelerator", "cpu"]


def _break_train(root) -> list[str]:
    good = sorted((root / "tiny" / "train" / "good").glob("*.png"))
    good[0].write_bytes(b"not an image at all")
    data = good[1].read_bytes()
    good[1].write_bytes(data[: len(data) // 2])  # truncated PNG: the header still reads
    (good[0].parent / "notes.txt").write_text("ignored: not an image suffix")
    return [good[0].name, good[1].name]


def test_training_leaves_unreadable_images_out_and_lists_them(data_copy, tmp_path, caplog) -> None:
    broken = _break_train(data_copy)
    caplog.set_level(logging.INFO)
    assert train_main(["--category", "tiny", "--data-root", str(data_copy), "--output-dir", str(tmp_path),
                       *TRAIN_ARGS, "--epochs", "1"]) == 0
    run_dir = tmp_path / "tiny" / "version_0"
    report = json.loads((run_dir / "data_problems_train.json").read_text())
    assert sorted(p.split("/")[-1] for p, _ in report["unreadable"]) == sorted(broken)
    assert report["counts"] == {"train/good images": 10, "usable": 8, "training": 6, "validation": 2}
    summaries = [r.getMessage() for r in caplog.records if "pre-flight" in r.getMessage()]
    assert len(summaries) == 1 and "2 unreadable images left out" in summaries[0]
    assert "validation images" in caplog.text  # too few for the 0.99 quantile: said before training


def test_training_strict_stops_before_anything_starts(data_copy, tmp_path, capsys) -> None:
    _break_train(data_copy)
    code = run(train_main, ["--category", "tiny", "--data-root", str(data_copy), "--output-dir", str(tmp_path),
                            *TRAIN_ARGS, "--strict"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("error:") == 1 and "2 unreadable" in err and "Traceback" not in err
    assert not (tmp_path / "tiny").exists()


def _break_test(root) -> dict[str, str]:
    tiny = root / "tiny"
    good = sorted((tiny / "test" / "good").glob("*.png"))
    good[0].write_bytes(b"\x89PNG broken")
    masks = sorted((tiny / "ground_truth" / "hole").glob("*_mask.png"))
    masks[0].unlink()  # its image has no mask now
    Image.open(masks[1]).resize((20, 30), Image.Resampling.NEAREST).save(masks[1])  # wrong size
    stain = sorted((tiny / "ground_truth" / "stain").glob("*_mask.png"))[0]
    values = np.asarray(Image.open(stain).convert("L")).copy()
    values[0, :3] = [0, 90, 200]  # grey levels: anti-aliased export
    Image.fromarray(values).save(stain)
    Image.new("L", (64, 64)).save(tiny / "ground_truth" / "hole" / "zzz_mask.png")  # a mask without an image
    return {"unreadable": good[0].name, "no_mask": masks[0].name.replace("_mask", ""), "resized": masks[1].name,
            "grey": stain.name}


def test_test_py_reports_every_problem_in_one_summary(trained_run, data_copy, tmp_path, caplog) -> None:
    names = _break_test(data_copy)
    out = tmp_path / "eval"
    assert evaluate_main(["--checkpoint", str(trained_run["checkpoint"]), "--data-root", str(data_copy),
                          "--output-dir", str(out), *BASE]) == 0
    report = json.loads((out / "data_problems_test.json").read_text())
    last = lambda rows: sorted(p.split("/")[-1] for p, _ in rows)  # noqa: E731
    assert last(report["unreadable"]) == [names["unreadable"]]
    assert last(report["images_without_mask"]) == [names["no_mask"]]
    assert last(report["masks_without_image"]) == ["zzz_mask.png"]
    assert last(report["odd_masks"]) == sorted([names["resized"], names["grey"]])
    results = json.loads((out / "results.json").read_text())
    assert results["n_images"] == report["counts"]["usable"] == report["counts"]["test images"] - 1
    assert results["n_defective_without_mask"] == 1
    summaries = [r.getMessage() for r in caplog.records if "pre-flight" in r.getMessage()]
    assert len(summaries) == 1
    for part in ("1 unreadable", "1 masks without an image", "1 defective images without a mask", "2 odd masks"):
        assert part in summaries[0]


def test_test_py_strict_fails_with_one_line(trained_run, data_copy, tmp_path, capsys) -> None:
    _break_test(data_copy)
    code = run(evaluate_main, ["--checkpoint", str(trained_run["checkpoint"]), "--data-root", str(data_copy),
                               "--output-dir", str(tmp_path / "eval"), "--strict", *BASE])
    err = capsys.readouterr().err
    assert code == 2 and err.count("error:") == 1 and "--strict" in err and "Traceback" not in err
    assert not (tmp_path / "eval" / "results.json").exists()
