"""stfpm-serve on 127.0.0.1: the decisions of predict.py under concurrent load, every bad upload a 4xx with a
reason, no 5xx, memory that does not grow, and no process left behind."""

from __future__ import annotations

import base64
import csv
import io
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stfpm.cli import run
from stfpm.cli.predict import main as predict_main
from stfpm.cli.serve import main as serve_main
from stfpm.core.errors import DataError
from stfpm.data.io import ImageTooLarge, decode_image
from stfpm.serving.loadtest import Client, bad_uploads, run_load

REPO = Path(__file__).resolve().parents[2]
MAX_BODY = 1_000_000


@pytest.fixture(scope="module")
def photos(tiny_data, tmp_path_factory) -> Path:
    """The tiny test split's images under names of their own, one folder."""
    folder = tmp_path_factory.mktemp("photos")
    for path in sorted((tiny_data / "tiny" / "test").rglob("*.png")):
        shutil.copy(path, folder / f"{path.parent.name}_{path.name}")
    return folder


@pytest.fixture(scope="module")
def service(trained_run):
    """stfpm-serve on a free port of 127.0.0.1, stopped at the end."""
    yield from _serve(trained_run["checkpoint"])


def _serve(checkpoint: Path, *options: str):
    process = subprocess.Popen(
        [sys.executable, "-m", "stfpm.cli.serve", "--checkpoint", str(checkpoint), "--port", "0",
         "--accelerator", "cpu", "--max-body-mb", str(MAX_BODY / 1e6), "--max-batch-size", "4", *options],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, url = time.monotonic() + 120, None
    assert process.stdout is not None
    while time.monotonic() < deadline and url is None:
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("serving "):
            url = line.split(" on ", 1)[1].split()[0]
    if url is None:
        process.kill()
        pytest.fail(f"stfpm-serve did not start: {process.stderr.read()[-2000:] if process.stderr else ''}")
    yield process, url
    process.terminate()
    process.wait(timeout=30)


def test_decoding_refuses_each_kind_of_bad_upload_in_one_line(photos) -> None:
    good = next(photos.glob("*.png")).read_bytes()
    for upload in bad_uploads(good, MAX_BODY):
        if upload.name in ("wrong content type", "oversized", "malformed multipart"):
            continue  # refused by the HTTP layer, before decoding
        with pytest.raises(ImageTooLarge if upload.expected == 413 else DataError) as caught:
            decode_image(upload.body, 50_000_000)
        assert "\n" not in str(caught.value) and "object at" not in str(caught.value), upload.name
        assert isinstance(caught.value, ImageTooLarge) == (upload.expected == 413), upload.name
    assert decode_image(good, 50_000_000).mode == "RGB"
    with pytest.raises(ImageTooLarge, match="over the limit"):
        decode_image(good, 10)


def test_under_load_the_service_decides_as_predict_py_and_refuses_bad_input(service, trained_run, photos,
                                                                              tmp_path) -> None:
    process, url = service
    assert url.startswith("http://127.0.0.1:")  # listens on this machine only unless told otherwise
    images = sorted(photos.glob("*.png"))
    report = run_load(url, images, clients=4, requests=72, seconds=90, bad_every=3, max_body_bytes=MAX_BODY)
    assert not report.wrong, report.wrong  # every good upload 200, every bad one its 4xx
    assert not [s for s in report.statuses if s >= 500]
    assert report.statuses[200] == 48 and sum(v for s, v in report.statuses.items() if 400 <= s < 500) == 24
    assert report.memory_end <= 1.1 * report.memory_start, report.lines()
    out = tmp_path / "pred"
    assert predict_main(["--checkpoint", str(trained_run["checkpoint"]), "--input", str(photos), "--output",
                         str(out), "--num-workers", "0", "--accelerator", "cpu"]) == 0
    with (out / "predictions.csv").open() as handle:
        expected = {row["path"]: row for row in csv.DictReader(handle)}
    assert set(report.answers) == set(expected)
    for name, answers in report.answers.items():
        for answer in answers:
            assert answer["is_anomalous"] == (expected[name]["is_anomalous"] == "True"), name
            assert answer["score"] == pytest.approx(float(expected[name]["image_score"]), rel=1e-5), name
            assert answer["image_threshold"] == float(expected[name]["image_threshold"])
            assert answer["threshold_source"] == "calibrated"
    assert process.poll() is None  # still serving


def test_the_mask_comes_back_as_predict_py_writes_it(service, trained_run, photos, tmp_path) -> None:
    _, url = service
    image = sorted(photos.glob("hole_*.png"))[0]
    out = tmp_path / "one"
    assert predict_main(["--checkpoint", str(trained_run["checkpoint"]), "--input", str(image), "--output", str(out),
                         "--num-workers", "0", "--accelerator", "cpu"]) == 0
    client = Client(url, 60)
    status, answer = client.request("POST", "/predict?mask=true", image.read_bytes(), "image/png")
    assert status == 200
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["mask_png"]))))
    np.testing.assert_array_equal(mask, np.asarray(Image.open(out / f"{image.stem}_mask.png")))
    assert (answer["height"], answer["width"]) == mask.shape
    status, health = client.request("GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["checkpoint"] == str(trained_run["checkpoint"])
    client.close()


def test_the_service_in_another_runtime_with_a_minimum_defect_area_answers_as_predict_py(trained_run, photos,
                                                                                          tmp_path) -> None:
    checkpoint = tmp_path / "run" / "best.ckpt"  # a copy: the export goes beside it
    checkpoint.parent.mkdir()
    shutil.copy(trained_run["checkpoint"], checkpoint)
    options = ["--runtime", "openvino", "--min-defect-area", "40"]
    expected = {}
    for name, extra in (("same", options), ("no minimum", [])):
        out = tmp_path / name
        assert predict_main(["--checkpoint", str(checkpoint), "--input", str(photos), "--output", str(out),
                             "--num-workers", "0", "--no-report", *extra]) == 0
        with (out / "predictions.csv").open() as handle:
            expected[name] = {row["path"]: row for row in csv.DictReader(handle)}
    areas = {name: {k: float(r["defect_area_fraction"]) for k, r in rows.items()} for name, rows in expected.items()}
    assert areas["same"] != areas["no minimum"]  # the minimum removes blobs on some image
    started = _serve(checkpoint, *options)
    _, url = next(started)
    client = Client(url, 60)
    try:
        status, health = client.request("GET", "/health")
        assert status == 200 and health["network"] == "openvino 32-true" and health["min_defect_area"] == 40
        for image in sorted(photos.glob("*.png")):
            status, answer = client.request("POST", "/predict?mask=true", image.read_bytes(), "image/png")
            want = expected["same"][image.name]
            assert status == 200 and answer["is_anomalous"] == (want["is_anomalous"] == "True"), image.name
            assert answer["defect_area_fraction"] == float(want["defect_area_fraction"]), image.name
            mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["mask_png"]))))
            np.testing.assert_array_equal(mask, np.asarray(Image.open(tmp_path / "same" / f"{image.stem}_mask.png")))
    finally:
        client.close()
        next(started, None)


def test_the_service_compiles_openvino_for_every_batch_size_before_its_first_request(trained_run, tmp_path) -> None:
    """Batches of 1 and of the maximum get their own compiled network, every size between the dynamic one, all at
    start: a request never waits for a compile."""
    from stfpm.inference.settings import DeviceSettings, PostprocessSettings, RuntimeSettings, ThresholdSettings
    from stfpm.serving.server import load
    from stfpm.serving.settings import ServeSettings

    checkpoint = tmp_path / "best.ckpt"  # a copy: the export goes beside it
    shutil.copy(trained_run["checkpoint"], checkpoint)
    predictor, _ = load(ServeSettings(checkpoint=str(checkpoint), max_batch_size=4), DeviceSettings(accelerator="cpu"),
                        ThresholdSettings(), PostprocessSettings(), RuntimeSettings(runtime="openvino"))
    assert set(predictor.model.network.run.compiled) == {1, 4, None}


def test_the_service_runs_no_other_process(service) -> None:
    """A SIGKILL of the service leaves nothing behind: it has no child process to leave."""
    process, _ = service
    children = [p for p in Path("/proc").glob("[0-9]*/stat")
                if p.read_text().rsplit(")", 1)[1].split()[1] == str(process.pid)] if sys.platform == "linux" else []
    assert not children


def test_a_missing_checkpoint_or_a_taken_port_is_one_line(trained_run, tmp_path, capsys) -> None:
    assert run(serve_main, ["--checkpoint", str(tmp_path / "none.ckpt")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        assert run(serve_main, ["--checkpoint", str(trained_run["checkpoint"]), "--port",
                                str(taken.getsockname()[1]), "--accelerator", "cpu"]) == 2
        assert "cannot listen on 127.0.0.1" in capsys.readouterr().err
    finally:
        taken.close()
