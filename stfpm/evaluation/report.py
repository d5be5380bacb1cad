"""test.py's ``report.html`` from its predictions: the cards of the galleries drawn, the page written beside
results.json."""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Any

import numpy as np

from stfpm.data.io import load_image
from stfpm.evaluation.metrics import roc_curve
from stfpm.evaluation.results import REFERENCE_NETWORK, TestPredictions
from stfpm.inference.describe import run_facts
from stfpm.inference.thresholding import ThresholdPolicy
from stfpm.model.lightning_model import STFPM
from stfpm.reporting.cards import card_picture, data_uri
from stfpm.reporting.inspection import Inspection, index_page, inspection_page
from stfpm.reporting.page import INDEX_NAME, REPORT_NAME, Card, gallery_indices, percent, write_page


def _card(pred: TestPredictions, i: int, image_threshold: float, pixel_threshold: float) -> Card:
    anomaly_map = np.asarray(pred.maps[i])
    truth = np.asarray(pred.masks[i]) if pred.has_mask[i] else None
    picture = card_picture(np.asarray(load_image(pred.paths[i])), anomaly_map, truth, pixel_threshold)
    area = float((anomaly_map >= pixel_threshold).mean()) if math.isfinite(pixel_threshold) else math.nan
    return Card(Path(pred.paths[i]).name, [
        f"{pred.defect_types[i]}: score {pred.scores[i]:.6g} (threshold {image_threshold:.6g})",
        f"predicted defect area {percent(area, 2)}",
    ], [(data_uri(picture), "")])


def _command(checkpoint: Path, policy: ThresholdPolicy, calibrated_pixel: float, network: str) -> tuple[str, str]:
    """predict.py's command line up to the image threshold's value, and what follows it; with the runtime and
    precision of the scores shown when they are not PyTorch's at 32-true."""
    runtime, precision = network.split(" ", 1)
    runs = "" if network == REFERENCE_NETWORK else f"--runtime {runtime} --precision {precision} "
    command = (f"python predict.py --checkpoint {shlex.quote(str(checkpoint))} --input NEW_IMAGES "
               f"--output predictions {runs}--image-threshold ")
    same = policy.pixel == calibrated_pixel or not math.isfinite(policy.pixel)
    return command, "" if same else f" --threshold {policy.pixel!r}"


def cost_fact(results: dict[str, Any]) -> str:
    """What the network that ran costs against the reference, in one line."""
    return (f"{results['decisions_changed']} of {results['n_images']} image decisions changed; image AUROC "
            f"{results['reference_image_auroc']:.4f} there, pixel AUROC {results['reference_pixel_auroc']:.4f}; "
            f"largest score difference {results['max_score_difference']:.3g}")


def write_inspection(pred: TestPredictions, results: dict[str, Any], folder: Path, model: STFPM, checkpoint: Path,
                     policy: ThresholdPolicy) -> Path:
    """Write ``folder/report.html``; returns its path. ``policy`` holds the thresholds in use (its NaN ones replaced
    by the F1-optimal ones for the galleries)."""
    labels = pred.labels.astype(bool)
    shown = policy.or_else(results["image_f1_threshold"], results["pixel_f1_threshold"], "F1-optimal")
    galleries = {name: ([_card(pred, i, shown.image, shown.pixel) for i in chosen], total)
                 for name, (chosen, total) in gallery_indices(pred.scores, labels, shown.image).items()}
    both = 0 < labels.sum() < len(labels)
    network = results.get("network", REFERENCE_NETWORK)
    command, pixel_argument = _command(checkpoint, shown, model.thresholds[1], network)
    facts = run_facts(model, checkpoint, policy, network)
    if "decisions_changed" in results:
        facts.append((f"against {results['reference_network']}", cost_fact(results)))
    inspection = Inspection(
        results=results, facts=facts, scores=pred.scores, labels=labels,
        defect_types=list(pred.defect_types), roc=roc_curve(pred.scores, labels) if both else None,
        galleries=galleries, calibrated=policy.source == "calibrated", command=command,
        pixel_argument=pixel_argument, fallback=float(shown.image),
    )
    return write_page(folder / REPORT_NAME, inspection_page(inspection))


def write_index(every: list[dict[str, Any]], reports: list[Path | None], folder: Path) -> Path:
    """The ``--category all`` index page in ``folder``, each category linking to its report."""
    return write_page(folder / INDEX_NAME, index_page(list(zip(every, reports)), folder))
