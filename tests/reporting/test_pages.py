"""The report pages as files: self-contained, their galleries chosen worst first, small for 10,000 test images, and
written (or not) by test.py and predict.py."""

from __future__ import annotations

import json
import re

import numpy as np

from stfpm.cli.predict import main as predict_main
from stfpm.cli.test import main as evaluate_main
from stfpm.evaluation.metrics import roc_curve
from stfpm.reporting.cards import card_picture, data_uri
from stfpm.reporting.inspection import Inspection, inspection_page
from stfpm.reporting.page import GALLERY_LIMIT, Card, gallery_indices

BASE = ["--num-workers", "0", "--accelerator", "cpu"]
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:|//)|url\(|@import""", re.IGNORECASE)


def test_galleries_are_worst_first_and_limited() -> None:
    scores = np.array([0.9, 0.1, 0.5, 0.7, 0.2, 0.8, 0.3], np.float32)
    labels = np.array([1, 1, 1, 0, 0, 0, 1])
    chosen = gallery_indices(scores, labels, 0.6, limit=2)
    assert chosen["misses"] == ([1, 6], 3)  # defective under 0.6: lowest first (0.1, 0.3, then 0.5 left out)
    assert chosen["false-alarms"] == ([5, 3], 2)  # good at or over 0.6: highest first
    assert chosen["best"] == ([0], 1)
    nothing = gallery_indices(scores, labels, float("nan"))
    assert nothing["false-alarms"] == ([], 0) and nothing["misses"][1] == 4  # no threshold: nothing flagged


def _inspection(n: int, cards: int, defect_type: str = "scratch") -> Inspection:
    rng = np.random.default_rng(0)
    labels = (np.arange(n) % 2).astype(np.int8)
    scores = (rng.normal(size=n) + 2 * labels).astype(np.float32)
    picture = data_uri(card_picture(rng.integers(0, 256, (900, 1200, 3), np.uint8),
                                    rng.random((256, 256), np.float32), rng.random((256, 256)) > 0.9, 0.5))
    card = Card("x.png", [f"{defect_type}: score 1.0 (threshold 0.5)"], [(picture, "")])
    results = {"category": "c", "image_auroc": 0.9, "pixel_auroc": 0.8, "pixel_aupro": 0.7, "aupro_fpr_limit": 0.3,
               "image_f1_max": 0.6, "pixel_f1_max": 0.5, "image_tpr_at_threshold": 0.5, "image_fpr_at_threshold": 0.01,
               "pixel_precision_at_threshold": 0.1, "pixel_recall_at_threshold": 0.2, "pixel_iou_at_threshold": 0.1,
               "image_tpr_at_1pct_fpr": 0.4, "image_tpr_at_5pct_fpr": 0.6, "image_threshold": 1.5,
               "pixel_threshold": 0.5, "threshold_source": "calibrated", "image_threshold_promise": 0.01,
               "image_threshold_support": 500, "per_defect_type": {defect_type: {"n_images": n // 2}}}
    return Inspection(results, [("category", "c")], scores, labels, [defect_type if y else "good" for y in labels],
                      roc_curve(scores, labels), {g: ([card] * cards, n // 2) for g in ("misses", "false-alarms", "best")},
                      True, "python predict.py --image-threshold ", "", 1.5)


def test_the_page_needs_nothing_from_outside_and_embeds_every_score_exactly() -> None:
    inspection = _inspection(200, 3, defect_type="</script><b>odd")
    page = inspection_page(inspection)
    assert not EXTERNAL.search(page)
    assert page.count("</script>") == 2  # the data's and the explorer's; a defect type cannot close them
    embedded = json.loads(re.search(r'id="report-data">(.*?)</script>', page, re.S).group(1))
    assert embedded["scores"] == [float(s) for s in inspection.scores]
    assert embedded["typeNames"] == ["</script><b>odd"] and embedded["threshold"] == 1.5


def test_the_page_for_10000_test_images_stays_under_20_mb() -> None:
    page = inspection_page(_inspection(10_000, GALLERY_LIMIT))  # full galleries of noise pictures, the worst case
    size = len(page.encode("utf-8"))
    assert size < 20 * 2**20, size
    assert page.count('class="card"') == 3 * GALLERY_LIMIT


def test_test_and_predict_write_their_reports_unless_told_not_to(trained_run, tmp_path) -> None:
    checkpoint = ["--checkpoint", str(trained_run["checkpoint"])]
    assert evaluate_main([*checkpoint, "--output-dir", str(tmp_path / "t"), *BASE]) == 0
    assert evaluate_main([*checkpoint, "--output-dir", str(tmp_path / "t0"), "--no-report", *BASE]) == 0
    folder = ["--input", str(trained_run["data"] / "tiny" / "test" / "good")]
    assert predict_main([*checkpoint, *folder, "--output", str(tmp_path / "p"), *BASE]) == 0
    assert predict_main([*checkpoint, *folder, "--output", str(tmp_path / "p0"), "--no-report", *BASE]) == 0
    assert (tmp_path / "t" / "report.html").is_file() and (tmp_path / "p" / "report.html").is_file()
    assert not (tmp_path / "t0" / "report.html").exists() and not (tmp_path / "p0" / "report.html").exists()
    mode = lambda path: path.stat().st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "t" / "report.html") == mode(tmp_path / "t" / "results.json")
    page = (tmp_path / "t" / "report.html").read_text()
    assert "The calibrated image threshold was set to flag" in page and "training images" in page
