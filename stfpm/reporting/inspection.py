"""test.py's ``report.html``: the run, its figures, the score plots, galleries of misses, false alarms and best
detections, and a threshold explorer; and the index page of ``--category all``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stfpm.reporting import svg
from stfpm.reporting.page import (
    Card,
    esc,
    explorer_data,
    facts_table,
    figure_rows,
    gallery,
    histogram_groups,
    link,
    number_cell,
    page,
    percent,
    promise_block,
    share_cell,
)
from stfpm.reporting.tables import fmt, summary_rows

GALLERIES = (
    ("misses", "Misses: defective images under the image threshold, lowest score first", "no defective image was missed"),
    ("false-alarms", "False alarms: good images at or over the image threshold, highest score first",
     "no good image was flagged"),
    ("best", "Best detections: defective images caught, highest score first", "no defective image was caught"),
)


@dataclass(frozen=True)
class Inspection:
    """What test.py's report shows, as plain data."""

    results: dict[str, Any]  # results.json's content
    facts: list[tuple[str, str]]  # the run: model, input, training, thresholds
    scores: np.ndarray  # float32 [N], every test image
    labels: np.ndarray  # [N], 1 = defective
    defect_types: list[str]
    roc: tuple[np.ndarray, np.ndarray] | None  # image ROC (fpr, tpr), when both classes are present
    galleries: dict[str, tuple[list[Card], int]]  # name -> (cards, how many images the gallery has)
    calibrated: bool  # the image threshold in use is the checkpoint's calibrated one
    command: str  # predict.py's command line up to the image threshold's value
    pixel_argument: str  # what follows the value (the pixel threshold, when it is not the calibrated one)
    fallback: float  # where the explorer starts when there is no image threshold (the F1-optimal one)


def _counted(scores: np.ndarray, select: np.ndarray, threshold: float) -> str:
    n = int(select.sum())
    k = int((scores[select] >= threshold).sum()) if math.isfinite(threshold) else 0
    return f"{k} of {n}"


def figures_section(x: Inspection) -> str:
    r, labels = x.results, x.labels.astype(bool)
    t = r.get("image_threshold", math.nan)
    t = math.nan if t is None else t
    quality = figure_rows([
        ("image AUROC", "image_auroc", r["image_auroc"], fmt(r["image_auroc"])),
        ("pixel AUROC", "pixel_auroc", r["pixel_auroc"], fmt(r["pixel_auroc"])),
        (f"AUPRO (to {fmt(r['aupro_fpr_limit'], 2)} false-positive rate)", "pixel_aupro", r["pixel_aupro"],
         fmt(r["pixel_aupro"])),
        ("image F1-max", "image_f1_max", r["image_f1_max"], fmt(r["image_f1_max"])),
        ("pixel F1-max", "pixel_f1_max", r["pixel_f1_max"], fmt(r["pixel_f1_max"])),
    ])
    promise = r.get("image_threshold_promise")
    promised = percent(promise, 2) if x.calibrated and promise is not None else "n/a (not the calibrated threshold)"
    operating = figure_rows([
        ("defective images caught", "image_tpr_at_threshold", r["image_tpr_at_threshold"],
         f"{percent(r['image_tpr_at_threshold'])} ({_counted(x.scores, labels, t)})"),
        ("good images flagged (measured)", "image_fpr_at_threshold", r["image_fpr_at_threshold"],
         f"{percent(r['image_fpr_at_threshold'])} ({_counted(x.scores, ~labels, t)})"),
        ("good images flagged (promised)", "image_threshold_promise", promise if x.calibrated else None, promised),
        ("pixel precision", "pixel_precision_at_threshold", r["pixel_precision_at_threshold"],
         fmt(r["pixel_precision_at_threshold"])),
        ("pixel recall", "pixel_recall_at_threshold", r["pixel_recall_at_threshold"], fmt(r["pixel_recall_at_threshold"])),
        ("pixel IoU", "pixel_iou_at_threshold", r["pixel_iou_at_threshold"], fmt(r["pixel_iou_at_threshold"])),
        ("defective caught at 1% of good flagged", "image_tpr_at_1pct_fpr", r["image_tpr_at_1pct_fpr"],
         percent(r["image_tpr_at_1pct_fpr"])),
        ("defective caught at 5% of good flagged", "image_tpr_at_5pct_fpr", r["image_tpr_at_5pct_fpr"],
         percent(r["image_tpr_at_5pct_fpr"])),
    ])
    where = (f"At the image threshold {fmt(t, 6)} and the pixel threshold {fmt(r.get('pixel_threshold'), 6)} "
             f"({r.get('threshold_source')}):")
    return (f'<section id="figures"><h2>Figures</h2><div class="plots"><div><h3>Quality</h3>{quality}</div>'
            f'<div><h3>Operating point</h3><p class="note">{esc(where)}</p>{operating}</div></div></section>')


def _defect_table(x: Inspection) -> str:
    names = sorted({t for t, y in zip(x.defect_types, x.labels) if y})
    head = ('<tr><th>defect type</th><th class="num">images</th><th class="num">image AUROC</th>'
            '<th class="num">pixel AUROC</th><th class="num">caught at the threshold</th>'
            '<th class="num">caught at the explorer\'s threshold</th></tr>')
    rows = []
    for k, name in enumerate(names):
        f = x.results["per_defect_type"].get(name, {})
        rows.append(f"<tr><td>{esc(name)}</td><td class=\"num\">{f.get('n_images', '')}</td>"
                    f"{number_cell('image_auroc', f.get('image_auroc'))}{number_cell('pixel_auroc', f.get('pixel_auroc'))}"
                    f"{share_cell('image_tpr_at_threshold', f.get('image_tpr_at_threshold'))}"
                    f'<td class="num" id="explorer-type-{k}"></td></tr>')
    return f'<table class="grid" id="defect-types">{head}{"".join(rows)}</table>'


def plots_section(x: Inspection) -> str:
    r = x.results
    t = r.get("image_threshold")
    t = math.nan if t is None else t
    plots = []
    if x.roc is not None:
        fpr, tpr = (math.nan if v is None else float(v) for v in (r["image_fpr_at_threshold"], r["image_tpr_at_threshold"]))
        plots.append(svg.roc_plot(*x.roc, (fpr, tpr), f"image ROC, AUROC {fmt(r['image_auroc'])}"))
    plots.append(svg.score_histogram(x.scores, histogram_groups(x.labels), t, "image scores of good and defective images"))
    return (f'<section id="plots"><h2>Scores</h2><p class="note">The dot on the ROC is the operating point; the dashed '
            f'line is the image threshold. Both follow the explorer below.</p><div class="plots">{"".join(plots)}</div>'
            f"<h3>Per defect type</h3>{_defect_table(x)}</section>")


def explorer_section(x: Inspection) -> str:
    return (
        '<section id="explorer"><h2>Threshold explorer</h2>'
        '<p class="note">Move the image threshold over the observed scores: the shares are computed live from every '
        "test image's score, embedded in this page.</p>"
        '<div class="controls"><input type="range" id="explorer-range" min="0" max="0" step="1" value="0" '
        'aria-label="image threshold"><label>image threshold <input type="number" id="explorer-value" step="any">'
        '</label><button id="explorer-reset" type="button">back to the threshold in use</button></div>'
        '<table class="grid"><tr><th>image threshold</th><td class="num big" id="explorer-threshold"></td></tr>'
        '<tr><th>defective images caught</th><td class="num big" id="explorer-caught"></td></tr>'
        '<tr><th>good images flagged</th><td class="num big" id="explorer-flagged"></td></tr>'
        '<tr><th>counts</th><td id="explorer-counts"></td></tr></table>'
        '<h3>Run predict.py at this threshold</h3><code class="command" id="explorer-command"></code>'
        '<p class="note">NEW_IMAGES: the image file or folder to inspect.</p></section>'
    )


def inspection_page(x: Inspection) -> str:
    """The whole page."""
    key = ('<p class="legend-key">Each card: the input, and the heatmap over it with the predicted defect outlined in '
           '<span class="key-pred">white</span> and the ground truth in <span class="key-truth">green</span>.</p>')
    galleries = "".join(gallery(name, title, *x.galleries.get(name, ([], 0)), empty) for name, title, empty in GALLERIES)
    body = (f'<section id="run"><h2>The run</h2>{facts_table(x.facts)}{promise_block(x.results, x.calibrated)}'
            f"</section>{figures_section(x)}{plots_section(x)}{key}{galleries}{explorer_section(x)}")
    t = x.results.get("image_threshold")
    data = explorer_data(x.scores, x.labels, x.defect_types, math.nan if t is None else float(t), x.fallback,
                         x.command, x.pixel_argument)
    return page(f"Inspection report: {x.results['category']}", body, data, "explorer.js")


def index_page(rows: list[tuple[dict[str, Any], Path | None]], folder: Path) -> str:
    """The summary of ``--category all``: one row per category, linking to its report, and the mean row (the page is
    written in ``folder``)."""
    head = ("<tr><th>category</th><th class=\"num\">image AUROC</th><th class=\"num\">pixel AUROC</th>"
            "<th class=\"num\">AUPRO</th><th class=\"num\">defective caught</th><th class=\"num\">good flagged</th>"
            "<th class=\"num\">promised</th></tr>")
    body = []
    mean = summary_rows([r for r, _ in rows])[-1]
    for r, report in [*rows, (mean, None)]:
        name = esc(r["category"])
        title = f'<a href="{link(report, folder)}">{name}</a>' if report else name
        numbers = "".join(number_cell(k, r[k]) for k in ("image_auroc", "pixel_auroc", "pixel_aupro"))
        shares = "".join(share_cell(k, r[k]) for k in ("image_tpr_at_threshold", "image_fpr_at_threshold"))
        promise = share_cell("image_threshold_promise", r.get("image_threshold_promise"), 2)
        body.append(f"<tr><td>{title}</td>{numbers}{shares}{promise}</tr>")
    table = f'<table class="grid" id="summary">{head}{"".join(body)}</table>'
    return page("Inspection reports: all categories", f'<section id="summary-section"><h2>Categories</h2>{table}'
                '<p class="note">Each figure at that category\'s decision thresholds; the category name opens its '
                "report.</p></section>")
