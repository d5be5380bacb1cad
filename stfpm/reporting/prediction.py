"""predict.py's ``report.html``: counts, thresholds, the score histogram and the images, flagged ones first,
highest score first, as cards linking to the files predict.py wrote beside the page."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stfpm.reporting import svg
from stfpm.reporting.page import PREDICT_CARD_LIMIT, Card, facts_table, gallery, link, page, percent, promise_block
from stfpm.reporting.tables import fmt


def prediction_cards(rows: Sequence[dict[str, Any]], files: dict[str, tuple[Path | None, Path]], output: Path,
                     limit: int = PREDICT_CARD_LIMIT) -> list[Card]:
    """Cards of the first ``limit`` images, flagged ones first, each group highest score first; ``files`` maps each
    row's path to its heatmap (or None) and mask."""
    ordered = sorted(rows, key=lambda r: (not r["is_anomalous"], -r["image_score"], r["path"]))
    cards = []
    for row in ordered[:limit]:
        heatmap, mask = files[row["path"]]
        pictures = [(link(p, output), link(p, output)) for p in (heatmap, mask) if p is not None]
        verdict = "anomalous" if row["is_anomalous"] else "good"
        cards.append(Card(row["path"], [f"{verdict}: score {row['image_score']:.6g} (threshold "
                                        f"{row['image_threshold']:.6g})",
                                        f"defect area {percent(row['defect_area_fraction'], 2)} of the image"], pictures))
    return cards


def prediction_page(rows: Sequence[dict[str, Any]], files: dict[str, tuple[Path | None, Path]], output: Path,
                    facts: list[tuple[str, str]], thresholds: dict[str, Any], skipped: int) -> str:
    """The whole page; ``thresholds`` holds the policy's values and source and the checkpoint's promise
    (``image_threshold_promise``, ``image_threshold_support``)."""
    scores = np.asarray([r["image_score"] for r in rows], float)
    flagged = int(sum(bool(r["is_anomalous"]) for r in rows))
    calibrated = thresholds["threshold_source"] == "calibrated"
    counts = facts_table([
        ("images", str(len(rows))),
        ("anomalous", f"{flagged} ({percent(flagged / len(rows) if rows else math.nan)})"),
        ("skipped (unreadable), this run", str(skipped)),
        ("image threshold", f"{fmt(thresholds['image_threshold'], 6)} ({thresholds['threshold_source']})"),
        ("pixel threshold", f"{fmt(thresholds['pixel_threshold'], 6)}"),
    ])
    histogram = svg.score_histogram(scores, [("images", np.ones(len(rows), bool), svg.GOOD)],
                                    float(thresholds["image_threshold"]), "image scores")
    cards = prediction_cards(rows, files, output)
    body = (f'<section id="run"><h2>The model</h2>{facts_table(facts)}{promise_block(thresholds, calibrated)}</section>'
            f'<section id="counts"><h2>Counts</h2>{counts}<p class="note">All rows: <a href="predictions.csv">'
            f'predictions.csv</a>.</p></section><section id="plots"><h2>Scores</h2>{histogram}</section>'
            + gallery("images", "Images, anomalous first, highest score first", cards, len(rows), "no image",
                      ": see predictions.csv"))
    return page(f"Prediction report: {output.name or output}", body)
