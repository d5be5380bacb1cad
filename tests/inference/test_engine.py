"""The shared inference engine: one threshold policy, resumable prediction, several processes, shared flags."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stfpm.cli import commands, parse_command, run
from stfpm.cli import test as evaluate_cli
from stfpm.cli.predict import main as predict_main
from stfpm.core.errors import STFPMError
from stfpm.core.options import command_parser
from stfpm.inference.thresholding import ThresholdPolicy
from stfpm.inference.writer import MaskWriter

REPO = Path(__file__).resolve().parents[2]


def test_policy_precedence_explicit_then_results_then_calibrated(tmp_path) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"image_f1_threshold": 0.7, "pixel_f1_threshold": 0.2}))
    assert ThresholdPolicy.resolve((1.0, 2.0)) == ThresholdPolicy(1.0, 2.0, "calibrated")
    from_file = ThresholdPolicy.resolve((1.0, 2.0), results_json=results)
    assert (from_file.image, from_file.pixel) == (0.7, 0.2) and "F1-optimal" in from_file.source
    mixed = ThresholdPolicy.resolve((1.0, 2.0), pixel=5.0, results_json=results)
    assert (mixed.image, mixed.pixel) == (0.7, 5.0) and "explicit" in mixed.source and "F1" in mixed.source
    assert ThresholdPolicy.resolve((1.0, 2.0), image=3.0).image == 3.0
    assert mixed.is_anomalous(0.7) and not mixed.is_anomalous(0.69)


def test_policy_errors_are_one_line(tmp_path) -> None:
    with pytest.raises(STFPMError, match="no calibrated thresholds"):
        ThresholdPolicy.resolve((math.nan, math.nan)).require_defined()
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps({"image_f1_threshold": None, "pixel_f1_threshold": 0.1}))
    with pytest.raises(STFPMError, match="no defined F1-optimal"):
        ThresholdPolicy.resolve((1.0, 1.0), results_json=bad)
    with pytest.raises(STFPMError, match="cannot read"):
        ThresholdPolicy.resolve((1.0, 1.0), results_json=tmp_path / "missing.json")


def test_test_and_predict_share_engine_and_threshold_flags() -> None:
    def flags(command: str) -> dict[str, object]:
        """Each flag of the command's parser: its default (as parsed without flags) and its choices."""
        defaults = {name: value for section in parse_command(command, "", []).values()
                    for name, value in section.as_dict().items()}
        parser = command_parser("", commands()[command])
        return {a.option_strings[0]: (defaults[a.dest], a.choices) for a in parser._actions
                if a.option_strings and a.dest in defaults}

    shared = ["--accelerator", "--devices", "--strategy", "--num-nodes", "--precision", "--num-workers",
              "--threshold", "--image-threshold", "--thresholds-from"]
    t, p = flags("test.py"), flags("predict.py")
    for flag in shared:
        assert flag in t and flag in p and t[flag] == p[flag], flag


@pytest.fixture()
def folder(tiny_data, tmp_path) -> Path:
    out = tmp_path / "in"
    out.mkdir()
    sources = sorted((tiny_data / "tiny" / "test").rglob("*.png"))[:6]
    for i, path in enumerate(sources):
        Image.open(path).resize((40 + 7 * i, 50)).save(out / f"img{i}.png")
    return out


def _rows(out: Path) -> dict[str, dict[str, str]]:
    return {r["path"]: r for r in csv.DictReader((out / "predictions.csv").open())}


def test_resume_after_a_crash_finishes_without_rewriting(trained_run, folder, tmp_path, monkeypatch) -> None:
    base = ["--checkpoint", str(trained_run["checkpoint"]), "--input", str(folder), "--num-workers", "0",
            "--batch-size", "1", "--accelerator", "cpu"]
    assert predict_main([*base, "--output", str(tmp_path / "full")]) == 0
    reference = _rows(tmp_path / "full")

    original, calls = MaskWriter._write, []

    def crashing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("simulated crash")
        return original(self, *args, **kwargs)

    out = tmp_path / "out"
    monkeypatch.setattr(MaskWriter, "_write", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        predict_main([*base, "--output", str(out)])
    monkeypatch.setattr(MaskWriter, "_write", original)
    finished = {p: p.stat().st_mtime_ns for p in out.glob("*_mask.png")}
    assert 1 <= len(finished) < 6 and not (out / "predictions.csv").exists()

    assert run(predict_main, [*base, "--output", str(out)]) == 2  # neither --resume nor --overwrite: refused
    assert predict_main([*base, "--output", str(out), "--resume"]) == 0
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # finished outputs never rewritten
    rows = _rows(out)
    assert set(rows) == set(reference) and len(list(out.glob("*_mask.png"))) == 6
    for path, row in rows.items():
        assert float(row["image_score"]) == pytest.approx(float(reference[path]["image_score"]), rel=1e-6)
    assert not list(out.glob(".predictions.rank*.jsonl"))  # journals merged into the table
    assert _report_cards(out) == sorted(rows)  # the report holds every image, the earlier run's too

    calls.clear()
    monkeypatch.setattr(MaskWriter, "_write", crashing)
    assert predict_main([*base, "--output", str(out), "--resume"]) == 0  # all done: nothing runs
    assert not calls


def test_resume_refuses_outputs_of_other_thresholds(trained_run, folder, tmp_path, capsys) -> None:
    base = ["--checkpoint", str(trained_run["checkpoint"]), "--input", str(folder), "--num-workers", "0",
            "--output", str(tmp_path / "o")]
    assert predict_main(base) == 0
    assert run(predict_main, [*base, "--resume", "--threshold", "123"]) == 2
    assert "other thresholds" in capsys.readouterr().err


def _report_cards(out: Path) -> list[str]:
    """The images predict.py's report shows, by path."""
    page = (out / "report.html").read_text()
    return sorted(re.findall(r'<div class="name">([^<]*)</div>', page))


def _python(script: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / script), *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def test_predict_on_two_cpu_processes_writes_each_output_once(trained_run, folder, tmp_path) -> None:
    common = ["--checkpoint", str(trained_run["checkpoint"]), "--input", str(folder), "--num-workers", "0",
              "--batch-size", "2", "--accelerator", "cpu", "--save-raw"]
    assert predict_main([*common, "--output", str(tmp_path / "one")]) == 0
    done = _python("predict.py", *common, "--output", str(tmp_path / "two"), "--devices", "2", "--strategy", "ddp")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("6 images") == 1 and "(6 written" in done.stdout  # one report; no image scored twice
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert set(one) == set(two) and len(two) == 6
    assert _report_cards(tmp_path / "two") == sorted(two)  # one page, every process's images
    assert not list((tmp_path / "two").glob(".*.tmp"))
    for path in one:
        stem = path.rsplit(".", 1)[0]
        assert float(two[path]["image_score"]) == pytest.approx(float(one[path]["image_score"]), rel=1e-5)
        np.testing.assert_allclose(np.load(tmp_path / "two" / f"{stem}_map.npy"),
                                   np.load(tmp_path / "one" / f"{stem}_map.npy"), rtol=1e-5, atol=1e-7)


def test_test_on_two_cpu_processes_equals_one(trained_run, tmp_path) -> None:
    common = ["--checkpoint", str(trained_run["checkpoint"]), "--num-workers", "0", "--batch-size", "3",
              "--accelerator", "cpu"]
    assert evaluate_cli.main([*common, "--output-dir", str(tmp_path / "one")]) == 0
    done = _python("test.py", *common, "--output-dir", str(tmp_path / "two"), "--devices", "2", "--strategy", "ddp")
    assert done.returncode == 0, done.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro", "image_f1_max", "image_tpr_at_threshold",
                "pixel_iou_at_threshold", "n_images"):
        assert two[key] == pytest.approx(one[key], rel=1e-6, nan_ok=True), key
    assert set(two["per_defect_type"]) == set(one["per_defect_type"])
    for defect, figures in one["per_defect_type"].items():
        assert two["per_defect_type"][defect] == pytest.approx(figures, rel=1e-6, nan_ok=True), defect


def test_policy_fallback_fills_only_undefined_thresholds() -> None:
    filled = ThresholdPolicy(math.nan, 0.4).or_else(0.9, 0.1, "F1-optimal")
    assert (filled.image, filled.pixel) == (0.9, 0.4) and "F1-optimal" in filled.source
    same = ThresholdPolicy(0.5, 0.4).or_else(0.9, 0.1, "F1-optimal")
    assert same == ThresholdPolicy(0.5, 0.4)
    assert math.isnan(ThresholdPolicy(math.nan, 0.4).or_else(None, None, "F1-optimal").image)


def test_folder_prediction_from_python_equals_predict_py(trained_run, folder, tmp_path) -> None:
    """Predictor.predict_folder is predict.py's folder prediction: the same table, the same masks, and --resume."""
    from stfpm.inference.predictor import Predictor

    ckpt = str(trained_run["checkpoint"])
    assert predict_main(["--checkpoint", ckpt, "--input", str(folder), "--output", str(tmp_path / "cli"),
                         "--num-workers", "0", "--accelerator", "cpu", "--min-defect-area", "3"]) == 0
    predictor = Predictor.from_checkpoint(ckpt, device="cpu", min_defect_area=3)
    summary = predictor.predict_folder(folder, tmp_path / "api", num_workers=0)
    assert summary.images == summary.written == 6 and summary.policy == predictor.postprocessor.policy
    assert _rows(tmp_path / "api") == _rows(tmp_path / "cli")
    for mask in sorted((tmp_path / "cli").glob("*_mask.png")):
        assert np.array_equal(np.asarray(Image.open(mask)), np.asarray(Image.open(tmp_path / "api" / mask.name)))
    again = predictor.predict_folder(folder, tmp_path / "api", num_workers=0, resume=True)
    assert again.images == 6 and again.written == 0  # nothing left to do
    with pytest.raises(STFPMError, match="already exist"):
        predictor.predict_folder(folder, tmp_path / "api", num_workers=0)


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; the parent-death signal is Linux's")
def test_a_killed_predict_leaves_no_data_loading_worker_behind(trained_run, tmp_path) -> None:
    import signal
    import time

    folder = tmp_path / "many"
    folder.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), np.uint8)
    for i in range(80):
        Image.fromarray(np.roll(noise, i, axis=1)).save(folder / f"{i:03d}.png")
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, str(REPO / "predict.py"), "--checkpoint", str(trained_run["checkpoint"]), "--input",
         str(folder), "--output", str(out), "--num-workers", "2", "--batch-size", "1", "--accelerator", "cpu"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        journal, deadline = out / ".predictions.rank0.jsonl", time.monotonic() + 120
        while time.monotonic() < deadline and not (journal.is_file() and len(journal.read_text().splitlines()) >= 3):
            assert process.poll() is None, "predict.py ended before it could be killed"
            time.sleep(0.2)
        workers = _children(process.pid)
        assert len(workers) >= 2, workers  # mid-run: its data-loading workers are up
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.2)
        assert not [w for w in workers if _alive(w)]
    finally:
        if process.poll() is None:
            process.kill()
        for worker in workers or _children(process.pid):
            if _alive(worker):
                os.kill(worker, signal.SIGKILL)  # what a failed run would leave


def test_precision_auto_is_bf16_only_where_the_device_computes_in_it(trained_run, monkeypatch) -> None:
    from stfpm.inference import settings
    from stfpm.inference.predictor import Predictor

    for native, expected in ((True, "bf16-mixed"), (False, "32-true")):
        monkeypatch.setattr(settings, "has_bf16", lambda accelerator, native=native: native)
        assert settings.resolve_precision("auto", "cpu") == expected
        assert settings.resolve_precision("16-mixed", "cpu") == "16-mixed"  # a name given is kept
        predictor = Predictor.from_checkpoint(trained_run["checkpoint"], device="cpu", precision="auto")
        assert predictor.precision == expected
    assert isinstance(settings.has_bf16("cpu"), bool)
