"""--runtime onnxruntime / openvino: only the network changes, its export is keyed to the checkpoint, INT8 is
calibrated on the run's validation images only, and test.py states what a runtime and precision cost."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from stfpm.cli import run
from stfpm.cli.export import main as export_main
from stfpm.cli.predict import main as predict_main
from stfpm.cli.test import main as evaluate_main
from stfpm.core.errors import ConfigError, DataError
from stfpm.data.mvtec import split_train_val
from stfpm.inference.export import export, network_key
from stfpm.inference.predictor import Predictor
from stfpm.inference.runtime import calibration_images, exports_folder
from stfpm.model.checkpoint import load_checkpoint


@pytest.fixture()
def checkpoint(trained_run, tmp_path) -> Path:
    """A private copy of the test run's checkpoint: its exports go beside it."""
    path = tmp_path / "run" / "best.ckpt"
    path.parent.mkdir()
    shutil.copy(trained_run["checkpoint"], path)
    return path


def _test_images(trained_run) -> list[Path]:
    return sorted((trained_run["data"] / "tiny" / "test").rglob("*.png"))


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_an_exported_network_at_32_true_gives_the_model_s_maps_scores_and_decisions(trained_run, checkpoint,
                                                                                    runtime) -> None:
    images = _test_images(trained_run)
    reference = Predictor.from_checkpoint(checkpoint, device="cpu").predict(images)
    exported = Predictor.from_checkpoint(checkpoint, runtime=runtime, batch_sizes=(4,))
    assert exported.network == f"{runtime} 32-true" and exported.precision == "32-true"
    got = exported.predict(images[:4]) + exported.predict(images[4:])  # a prepared batch size and another one
    for want, have in zip(reference, got):
        np.testing.assert_allclose(have.anomaly_map, want.anomaly_map, rtol=1e-4, atol=1e-5)
        assert have.score == pytest.approx(want.score, rel=1e-4, abs=1e-5)
        assert have.is_anomalous == want.is_anomalous and (have.mask == want.mask).all()
    # the export was built once, beside the checkpoint, under the model's key
    files = sorted(p.name for p in exports_folder(load_checkpoint(checkpoint)).iterdir())
    key = network_key(load_checkpoint(checkpoint))[:16]
    assert files == [f"{key}.onnx", f"{key}.onnx.json"]


def test_a_changed_checkpoint_is_never_served_by_the_stale_export(checkpoint, trained_run, tmp_path) -> None:
    images = _test_images(trained_run)[:3]
    before = Predictor.from_checkpoint(checkpoint, runtime="onnxruntime").predict(images)
    stale = exports_folder(load_checkpoint(checkpoint))
    stale_file = next(stale.glob("*.onnx"))
    # "retrain": the same file name now holds other weights
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    name = next(k for k in saved["state_dict"] if k.startswith("model.student") and k.endswith("weight"))
    saved["state_dict"][name] = saved["state_dict"][name] * 1.5
    torch.save(saved, checkpoint)
    changed = Predictor.from_checkpoint(checkpoint, runtime="onnxruntime").predict(images)
    truth = Predictor.from_checkpoint(checkpoint, device="cpu").predict(images)
    for old, new, want in zip(before, changed, truth):
        np.testing.assert_allclose(new.anomaly_map, want.anomaly_map, rtol=1e-4, atol=1e-5)
        assert not np.allclose(old.anomaly_map, new.anomaly_map, atol=1e-4)
    assert len(list(stale.glob("*.onnx"))) == 2
    # an export of another model, given explicitly, is refused in one line
    with pytest.raises(ConfigError, match="exported from another model"):
        Predictor.from_checkpoint(checkpoint, runtime="onnxruntime", runtime_model=stale_file)
    # stfpm-export's ONNX of this checkpoint is accepted
    given = export(load_checkpoint(checkpoint), tmp_path / "given.onnx", "onnx")
    from_file = Predictor.from_checkpoint(checkpoint, runtime="openvino", runtime_model=given).predict(images)
    for have, want in zip(from_file, truth):
        np.testing.assert_allclose(have.anomaly_map, want.anomaly_map, rtol=1e-4, atol=1e-5)


def test_int8_is_calibrated_on_the_run_s_validation_images_only(trained_run, checkpoint) -> None:
    model = load_checkpoint(checkpoint)
    good = sorted((trained_run["data"] / "tiny" / "train" / "good").iterdir())
    _, validation = split_train_val(good, 0.2, 0)  # the defaults: --val-fraction 0.2, --seed 0
    assert sorted(calibration_images(model)) == sorted(validation)
    assert not any("test" in p.parts for p in calibration_images(model))
    images = _test_images(trained_run)
    reference = Predictor.from_checkpoint(checkpoint, device="cpu").predict(images)
    quantised = Predictor.from_checkpoint(checkpoint, runtime="openvino", precision="int8", batch_sizes=(4,))
    assert quantised.network == "openvino int8"
    got = quantised.predict(images)
    want, have = (np.concatenate([r.anomaly_map.ravel() for r in rs]) for rs in (reference, got))
    assert np.corrcoef(want, have)[0, 1] > 0.9  # the same network quantised (a random-weight one, on 2 images)
    assert np.abs(want - have).mean() < 0.1 * want.mean()
    meta = json.loads(next(exports_folder(model).glob("*.int8.xml.json")).read_text())
    assert meta["format"] == "openvino int8" and meta["model_key"] == network_key(model)
    assert f"{len(validation)} validation images" in meta["calibrated_on"]
    # where the validation images are gone, INT8 cannot be calibrated, and says so in one line
    model.run_info["data_root"] = str(checkpoint.parent / "elsewhere")
    with pytest.raises(DataError, match="not on this machine"):
        calibration_images(model)
    model.run_info.pop("calibration_images")
    with pytest.raises(DataError, match="does not record its validation images"):
        calibration_images(model)


def test_predict_py_in_another_runtime_writes_the_same_decisions(trained_run, checkpoint, tmp_path) -> None:
    test_split = trained_run["data"] / "tiny" / "test"
    rows = {}
    for runtime in ("torch", "onnxruntime"):
        out = tmp_path / runtime
        assert predict_main(["--checkpoint", str(checkpoint), "--input", str(test_split), "--output", str(out),
                             "--runtime", runtime, "--num-workers", "0", "--batch-size", "5", "--no-report",
                             "--min-defect-area", "3"]) == 0
        with (out / "predictions.csv").open() as handle:
            rows[runtime] = {r["path"]: r for r in csv.DictReader(handle)}
    assert rows["torch"].keys() == rows["onnxruntime"].keys()
    for path, want in rows["torch"].items():
        have = rows["onnxruntime"][path]
        assert have["is_anomalous"] == want["is_anomalous"] and have["defect_area_fraction"] == want["defect_area_fraction"]
        assert float(have["image_score"]) == pytest.approx(float(want["image_score"]), rel=1e-4, abs=1e-5)


def test_test_py_states_what_a_runtime_and_precision_cost(trained_run, checkpoint, tmp_path, capsys) -> None:
    out = tmp_path / "reference"
    assert evaluate_main(["--checkpoint", str(checkpoint), "--output-dir", str(out), "--num-workers", "0",
                          "--no-report"]) == 0
    reference = json.loads((out / "results.json").read_text())
    assert reference["network"] == "torch 32-true" and "decisions_changed" not in reference
    out = tmp_path / "bf16"
    assert evaluate_main(["--checkpoint", str(checkpoint), "--output-dir", str(out), "--num-workers", "0",
                          "--no-report", "--runtime", "openvino", "--precision", "bf16-mixed"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["network"] == "openvino bf16-mixed" and results["reference_network"] == "torch 32-true"
    assert results["reference_image_auroc"] == reference["image_auroc"]
    assert results["reference_pixel_auroc"] == reference["pixel_auroc"]
    assert 0 < results["max_score_difference"] < 0.1 and 0 < results["max_map_difference"]
    changed = results["decisions_changed"]
    assert results["decisions_agree"] == pytest.approx(1 - changed / results["n_images"])
    assert f"{changed} of {results['n_images']} image decisions changed" in printed


@pytest.mark.parametrize(("argv", "message"), [
    (["--runtime", "onnxruntime", "--precision", "bf16-mixed"], "runs 32-true only"),
    (["--precision", "int8"], "add --runtime openvino"),
    (["--runtime", "openvino", "--precision", "16-mixed"], "runs --precision 32-true, bf16-mixed or int8"),
    (["--runtime", "onnxruntime", "--accelerator", "gpu"], "runs on the CPU"),
])
def test_a_runtime_it_cannot_run_is_a_one_line_error(trained_run, checkpoint, tmp_path, capsys, argv, message) -> None:
    code = run(predict_main, ["--checkpoint", str(checkpoint), "--input", str(_test_images(trained_run)[0]),
                              "--output", str(tmp_path / "out"), "--num-workers", "0", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err


def test_a_runtime_model_of_another_format_is_refused(trained_run, checkpoint, tmp_path, capsys) -> None:
    given = tmp_path / "given.onnx"
    assert run(export_main, ["--checkpoint", str(checkpoint), "--output", str(given), "--format", "onnx"]) == 0
    capsys.readouterr()
    code = run(predict_main, ["--checkpoint", str(checkpoint), "--input", str(_test_images(trained_run)[0]),
                              "--output", str(tmp_path / "out"), "--num-workers", "0", "--runtime", "openvino",
                              "--precision", "int8", "--runtime-model", str(given)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "is of format onnx" in err and len(err.splitlines()) == 1, err
