"""The reports opened from file:// in headless Chromium: they load without a console error, show the figures of
results.json, and the threshold explorer shows the rates Python computes for the threshold it is moved to."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from stfpm.cli.predict import main as predict_main
from stfpm.cli.test import main as evaluate_main
from stfpm.data.datamodule import MVTecDataModule
from stfpm.data.settings import DataSettings
from stfpm.evaluation.metrics import rates_at_threshold
from stfpm.evaluation.results import predict_test_split
from stfpm.inference.settings import DeviceSettings
from stfpm.model.checkpoint import load_checkpoint

BASE = ["--num-workers", "0", "--accelerator", "cpu"]


def _open(browser, page: Path) -> None:
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(page.resolve().as_uri())
    assert browser.execute_script("return document.readyState") == "complete"


def _console_errors(browser) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def _value(element) -> float:
    return float(element.get_attribute("data-value"))


def _same(shown: float, expected) -> bool:
    return math.isnan(shown) if expected is None or (isinstance(expected, float) and math.isnan(expected)) \
        else shown == expected


@pytest.fixture(scope="module")
def evaluated(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    assert evaluate_main(["--checkpoint", str(trained_run["checkpoint"]), "--output-dir", str(out), *BASE]) == 0
    model = load_checkpoint(trained_run["checkpoint"])
    data = DataSettings(category="tiny", data_root=str(trained_run["data"]), batch_size=4, num_workers=0)
    pred, _ = predict_test_split(model, MVTecDataModule(data, model.preprocessing(), seed=0),
                                 DeviceSettings(accelerator="cpu"))
    return out, json.loads((out / "results.json").read_text()), pred


def test_report_loads_offline_and_shows_the_figures_of_results_json(browser, evaluated) -> None:
    out, results, _ = evaluated
    _open(browser, out / "report.html")
    assert not _console_errors(browser)
    assert browser.title == "Inspection report: tiny"
    cells = browser.find_elements("css selector", "#figures [data-key]")
    assert len(cells) == 13
    for element in cells:
        key = element.get_attribute("data-key")
        assert _same(_value(element), results[key]), key
        if results[key] is not None and key.endswith("auroc"):
            assert element.text == f"{results[key]:.4f}"
    assert _value(browser.find_element("id", "explorer-caught")) == results["image_tpr_at_threshold"]
    assert _value(browser.find_element("id", "explorer-flagged")) == results["image_fpr_at_threshold"]
    assert _value(browser.find_element("id", "explorer-threshold")) == results["image_threshold"]
    for k, defect in enumerate(sorted(results["per_defect_type"])):
        shown = _value(browser.find_element("id", f"explorer-type-{k}"))
        assert shown == results["per_defect_type"][defect]["image_tpr_at_threshold"], defect
    galleries = {g.get_attribute("id"): g for g in browser.find_elements("css selector", "section.gallery")}
    assert list(galleries) == ["misses", "false-alarms", "best"]
    caught = round(results["image_tpr_at_threshold"] * results["n_defective"])
    assert len(galleries["best"].find_elements("css selector", ".card")) == caught
    assert len(galleries["misses"].find_elements("css selector", ".card")) == results["n_defective"] - caught
    images = browser.find_elements("css selector", ".card img")
    assert images and all(browser.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images)


def test_moving_the_threshold_shows_the_rates_computed_in_python(browser, evaluated) -> None:
    out, results, pred = evaluated
    _open(browser, out / "report.html")
    embedded = json.loads(browser.find_element("id", "report-data").get_attribute("textContent"))
    assert embedded["scores"] == [float(s) for s in pred.scores]  # every image's score, exactly
    assert embedded["labels"] == pred.labels.tolist()
    control = browser.find_element("id", "explorer-range")
    steps = int(control.get_attribute("max")) + 1
    assert steps >= len(set(pred.scores.tolist())) + 1
    seen = set()
    for index in (0, 1, steps // 2, steps - 2, steps - 1):
        browser.execute_script("arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'))",
                               control, index)
        threshold = _value(browser.find_element("id", "explorer-threshold"))
        tpr, fpr = rates_at_threshold(pred.scores, pred.labels, threshold)
        assert _value(browser.find_element("id", "explorer-caught")) == tpr
        assert _value(browser.find_element("id", "explorer-flagged")) == fpr
        flagged = sum(float(s) >= threshold for s in pred.scores)  # as predict.py decides each image
        assert _value(browser.find_element("id", "explorer-counts")) == flagged
        command = browser.find_element("id", "explorer-command").text
        assert float(command.split("--image-threshold ")[1].split()[0]) == threshold  # predict.py decides the same
        seen.add(threshold)
    assert len(seen) == 5
    assert _value(browser.find_element("id", "explorer-caught")) == 0.0  # above the highest score: nothing flagged
    browser.find_element("id", "explorer-reset").click()
    assert _value(browser.find_element("id", "explorer-caught")) == results["image_tpr_at_threshold"]
    assert not _console_errors(browser)


def test_typing_a_threshold_and_the_keyboard_move_the_explorer(browser, evaluated) -> None:
    from selenium.webdriver.common.keys import Keys

    out, results, pred = evaluated
    _open(browser, out / "report.html")
    box = browser.find_element("id", "explorer-value")
    typed = float(sorted(pred.scores.tolist())[len(pred.scores) // 2])
    box.clear()
    box.send_keys(repr(typed), Keys.ENTER)
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", box)
    assert _value(browser.find_element("id", "explorer-threshold")) == typed
    assert _value(browser.find_element("id", "explorer-caught")) == rates_at_threshold(pred.scores, pred.labels, typed)[0]
    control = browser.find_element("id", "explorer-range")
    before = _value(browser.find_element("id", "explorer-threshold"))
    control.send_keys(Keys.ARROW_RIGHT)
    after = _value(browser.find_element("id", "explorer-threshold"))
    assert after > before
    assert _value(browser.find_element("id", "explorer-flagged")) == rates_at_threshold(pred.scores, pred.labels, after)[1]
    line = browser.find_element("id", "hist-threshold")
    svg = browser.find_element("css selector", "svg.wide")
    low, high = (float(svg.get_attribute(f"data-{k}")) for k in ("low", "high"))
    expected = float(svg.get_attribute("data-x0")) + (after - low) / (high - low) * float(svg.get_attribute("data-width"))
    assert float(line.get_attribute("x1")) == pytest.approx(expected, abs=1e-6)


def test_prediction_report_links_to_the_written_files(browser, trained_run, tmp_path) -> None:
    folder = trained_run["data"] / "tiny" / "test"
    out = tmp_path / "pred"
    assert predict_main(["--checkpoint", str(trained_run["checkpoint"]), "--input", str(folder),
                         "--output", str(out), *BASE]) == 0
    with (out / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    _open(browser, out / "report.html")
    assert not _console_errors(browser)
    names = [c.text for c in browser.find_elements("css selector", ".card .name")]
    ordered = sorted(rows, key=lambda r: (r["is_anomalous"] != "True", -float(r["image_score"]), r["path"]))
    assert names == [r["path"] for r in ordered]
    images = browser.find_elements("css selector", ".card img")
    assert len(images) == 2 * len(rows)  # heatmap and mask of each
    assert all(browser.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images)
    links = [Path(unquote(urlparse(a.get_attribute("href")).path)) for a in browser.find_elements("css selector", ".card a")]
    assert len(links) == 2 * len(rows) and all(p.is_file() and p.is_relative_to(out) for p in links)


def test_all_categories_index_links_each_report(browser, trained_run, tmp_path) -> None:
    out = tmp_path / "all"
    assert evaluate_main(["--category", "all", "--runs-dir", str(trained_run["runs"]), "--output-dir", str(out),
                          *BASE]) == 0
    _open(browser, out / "report_all.html")
    assert not _console_errors(browser)
    summary = json.loads((out / "results_all.json").read_text())
    rows = browser.find_elements("css selector", "#summary tr")[1:]
    assert [r.find_element("css selector", "td").text for r in rows] == [s["category"] for s in summary]
    shown = _value(rows[0].find_element("css selector", "[data-key=image_auroc]"))
    assert shown == summary[0]["image_auroc"]
    rows[0].find_element("css selector", "a").click()
    assert browser.title == "Inspection report: tiny"
    assert not _console_errors(browser)
