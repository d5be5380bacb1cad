"""predict.py and the Predictor API: binary masks at source size, CSV, safety against bad input."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from stfpm.cli import run
from stfpm.cli.predict import main as predict_main
from stfpm.inference.postprocess import remove_small_blobs
from stfpm.inference.predictor import Predictor

SIZES = {"wide.png": (37, 81), "tall.jpg": (90, 41), "odd.bmp": (33, 33)}


@pytest.fixture()
def inputs(tiny_data, tmp_path):
    """A folder with images of odd sizes and modes, a sub-folder, a corrupt and a truncated file."""
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    source = Image.open(next((tiny_data / "tiny" / "test" / "hole").glob("*.png")))
    for name, (h, w) in SIZES.items():
        source.resize((w, h)).save(folder / name)
    source.convert("L").save(folder / "sub" / "gray.png")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    data = (folder / "wide.png").read_bytes()
    (folder / "sub" / "truncated.png").write_bytes(data[: len(data) // 2])
    return folder


def _listing(folder):
    return sorted((p.relative_to(folder), p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_masks_are_binary_at_source_size_and_csv_matches(trained_run, inputs, tmp_path, caplog) -> None:
    before = _listing(inputs)
    out = tmp_path / "out"
    code = predict_main(["--checkpoint", str(trained_run["checkpoint"]), "--input", str(inputs), "--output", str(out),
                         "--num-workers", "0", "--save-raw", "--json", "--batch-size", "2"])
    assert code == 0
    assert _listing(inputs) == before  # nothing written into the input folder
    expected = {**SIZES, "sub/gray.png": (64, 64)}
    for rel, (h, w) in expected.items():
        stem = rel.rsplit(".", 1)[0]
        mask = np.asarray(Image.open(out / f"{stem}_mask.png"))
        assert mask.shape == (h, w) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        heat = Image.open(out / f"{stem}_heatmap.jpg")
        assert heat.size == (w, h) and heat.mode == "RGB"
        assert np.load(out / f"{stem}_map.npy").shape == (h, w)
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert sorted(r["path"] for r in rows) == sorted(expected)
    assert set(rows[0]) == {"path", "image_score", "image_threshold", "is_anomalous", "defect_area_fraction",
                            "pixel_threshold"}
    assert len(json.loads((out / "predictions.json").read_text())) == 4
    assert "broken.png" in caplog.text and "truncated.png" in caplog.text


def test_existing_outputs_are_not_overwritten_without_flag(trained_run, inputs, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    argv = ["--checkpoint", str(trained_run["checkpoint"]), "--input", str(inputs / "wide.png"), "--output", str(out),
            "--num-workers", "0"]
    assert predict_main(argv) == 0
    mask = out / "wide_mask.png"
    stamp = mask.stat().st_mtime_ns
    assert run(predict_main, argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert mask.stat().st_mtime_ns == stamp
    assert predict_main([*argv, "--overwrite"]) == 0


def test_threshold_overrides_and_results_json(trained_run, inputs, tmp_path) -> None:
    argv = ["--checkpoint", str(trained_run["checkpoint"]), "--input", str(inputs / "odd.bmp"), "--num-workers", "0"]
    assert predict_main([*argv, "--output", str(tmp_path / "a"), "--threshold", "0", "--image-threshold", "0"]) == 0
    assert np.all(np.asarray(Image.open(tmp_path / "a" / "odd_mask.png")) == 255)
    row = next(csv.DictReader((tmp_path / "a" / "predictions.csv").open()))
    assert row["is_anomalous"] == "True" and float(row["defect_area_fraction"]) == 1.0
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"image_f1_threshold": 1e9, "pixel_f1_threshold": 1e9}))
    assert predict_main([*argv, "--output", str(tmp_path / "b"), "--thresholds-from", str(results)]) == 0
    assert not np.asarray(Image.open(tmp_path / "b" / "odd_mask.png")).any()
    row = next(csv.DictReader((tmp_path / "b" / "predictions.csv").open()))
    assert row["is_anomalous"] == "False" and float(row["image_threshold"]) == 1e9


def test_min_defect_area_removes_small_blobs() -> None:
    mask = np.zeros((20, 20), bool)
    mask[1:3, 1:3] = True  # 4 px
    mask[10:16, 10:16] = True  # 36 px
    kept = remove_small_blobs(mask, 5)
    assert not kept[1:3, 1:3].any() and kept[10:16, 10:16].all()


@pytest.mark.parametrize("kind", ["missing", "empty", "all_corrupt", "bad_checkpoint"])
def test_bad_input_is_one_clear_line(trained_run, tmp_path, capsys, kind) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    checkpoint = str(trained_run["checkpoint"])
    if kind == "missing":
        folder = tmp_path / "nope"
    if kind == "all_corrupt":
        (folder / "x.png").write_bytes(b"junk")
    if kind == "bad_checkpoint":
        Image.new("RGB", (8, 8)).save(folder / "x.png")
        checkpoint = str(tmp_path / "none.ckpt")
    code = run(predict_main, ["--checkpoint", checkpoint, "--input", str(folder), "--output", str(tmp_path / "o"),
                              "--num-workers", "0"])
    captured = capsys.readouterr()
    assert code != 0
    text = captured.err + captured.out
    assert "error:" in text and "Traceback" not in text


def test_predictor_api_accepts_pil_numpy_paths_and_batches(trained_run, inputs) -> None:
    predictor = Predictor.from_checkpoint(trained_run["checkpoint"], device="cpu")
    pil = Image.open(inputs / "wide.png")
    one = predictor.predict(pil)
    assert one.anomaly_map.shape == (37, 81) and one.mask.shape == (37, 81)
    assert one.is_anomalous == (one.score >= predictor.image_threshold)
    gray = predictor.predict(np.zeros((20, 30), np.uint8))
    assert gray.mask.shape == (20, 30)
    batch = predictor.predict([pil, np.asarray(pil), inputs / "wide.png"])
    assert len(batch) == 3
    assert batch[0].score == pytest.approx(one.score, rel=1e-5) == pytest.approx(batch[2].score, rel=1e-5)


@pytest.mark.parametrize("orientation", [3, 6, 8, 5])
def test_photos_with_an_exif_orientation_come_back_as_a_viewer_shows_them(trained_run, tiny_data, tmp_path,
                                                                         orientation) -> None:
    """A camera stores the pixels as shot and says in EXIF how to turn them: masks, maps and the size in the table
    follow the upright image, in predict.py and in the Predictor alike."""
    source = Image.open(next((tiny_data / "tiny" / "test" / "hole").glob("*.png"))).convert("RGB").resize((72, 40))
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored, upright = tmp_path / "turned", tmp_path / "upright"
    stored.mkdir(), upright.mkdir()
    source.save(stored / "photo.jpg", quality=100, exif=exif.tobytes())
    with Image.open(stored / "photo.jpg") as shot:  # the same decoded pixels, turned by hand, stored without EXIF
        turned = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
                  8: Image.Transpose.ROTATE_90}[orientation]
        shot.convert("RGB").transpose(turned).save(upright / "photo.png")
    before = (stored / "photo.jpg").read_bytes()
    base = ["--checkpoint", str(trained_run["checkpoint"]), "--num-workers", "0", "--accelerator", "cpu"]
    for folder in (stored, upright):
        assert predict_main([*base, "--input", str(folder), "--output", str(folder / "out"), "--save-raw"]) == 0
    mask = np.asarray(Image.open(stored / "out" / "photo_mask.png"))
    expected = np.asarray(Image.open(upright / "out" / "photo_mask.png"))
    assert mask.shape == expected.shape == ((40, 72) if orientation == 3 else (72, 40))
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_allclose(np.load(stored / "out" / "photo_map.npy"), np.load(upright / "out" / "photo_map.npy"),
                               rtol=1e-5, atol=1e-6)
    assert Image.open(stored / "out" / "photo_heatmap.jpg").size == Image.open(upright / "out" / "photo_heatmap.jpg").size
    predictor = Predictor.from_checkpoint(trained_run["checkpoint"], device="cpu")
    with Image.open(stored / "photo.jpg") as opened:
        np.testing.assert_array_equal(predictor.predict(opened).mask, expected)
    np.testing.assert_array_equal(predictor.predict(stored / "photo.jpg").mask, expected)
    assert (stored / "photo.jpg").read_bytes() == before  # the input is never modified
