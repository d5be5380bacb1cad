"""Writing evaluation results: results.json / .csv / .md and the console tables."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from stfpm.core.files import atomic_write_text

SUMMARY_COLUMNS = ("image_auroc", "pixel_auroc", "pixel_aupro", "image_f1_max", "pixel_f1_max")
OPERATING_COLUMNS = (
    "image_tpr_at_threshold",
    "image_fpr_at_threshold",
    "pixel_precision_at_threshold",
    "pixel_recall_at_threshold",
    "pixel_iou_at_threshold",
    "image_tpr_at_1pct_fpr",
    "image_tpr_at_5pct_fpr",
)
ALL_COLUMNS = SUMMARY_COLUMNS + OPERATING_COLUMNS


def _json_safe(value: Any) -> Any:
    """NaN/inf become null (JSON has no NaN), numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def fmt(value: Any, digits: int = 4) -> str:
    """A metric for a table: fixed digits, or n/a when undefined."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def category_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row for the whole category and one per defect type (image/pixel AUROC and share flagged only)."""
    rows = [{"scope": "all", "n_images": results["n_images"], **{c: results[c] for c in ALL_COLUMNS}}]
    for defect, figures in results["per_defect_type"].items():
        rows.append({"scope": defect, **figures})
    return rows


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A GitHub-flavoured Markdown table (also readable on a console)."""
    widths = [max(len(c), *(len(fmt(r.get(c))) for r in rows)) for c in columns]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line([fmt(r.get(c)) for c in columns]) for r in rows]
    return "\n".join(out) + "\n"


def _csv_text(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in columns})
    return buffer.getvalue()


def promise_line(results: dict[str, Any]) -> str | None:
    """What the calibrated image threshold promises and what it rests on, in a sentence (None when not recorded)."""
    promise, support = results.get("image_threshold_promise"), results.get("image_threshold_support") or 0
    if not support or promise is None or not math.isfinite(promise):
        return None
    floor = 1.0 / (support + 1)
    how = ("extrapolated by its tail model" if promise < floor - 1e-12
           else f"n scores support at best 1/(n+1) = {100 * floor:.2g}%")
    return (f"The calibrated image threshold was set to flag {100 * promise:.2g}% of good parts, from {support} "
            f"out-of-sample good images ({how}).")


def write_category_results(results: dict[str, Any], out_dir: Path) -> str:
    """results.json, results.csv and results.md of one category; returns the Markdown table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = category_rows(results)
    columns = ["scope", "n_images", *SUMMARY_COLUMNS]
    table = markdown_table(rows, columns)
    operating = markdown_table(rows, ["scope", *OPERATING_COLUMNS])
    atomic_write_text(out_dir / "results.json", json.dumps(_json_safe(results), indent=2) + "\n")
    atomic_write_text(out_dir / "results.csv", _csv_text(rows, ["scope", "n_images", *ALL_COLUMNS]))
    thresholds = (
        f"At the {results.get('threshold_source', 'calibrated')} thresholds "
        f"(image {fmt(results.get('image_threshold', results.get('calibrated_image_threshold')), 6)}, "
        f"pixel {fmt(results.get('pixel_threshold', results.get('calibrated_pixel_threshold')), 6)}):\n\n"
    )
    promise = promise_line(results)
    thresholds = f"{promise}\n\n{thresholds}" if promise else thresholds
    atomic_write_text(out_dir / "results.md", f"# {results['category']}\n\n{table}\n{thresholds}{operating}")
    return f"{table}\n{thresholds}{operating}"


def summary_rows(all_results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per category plus a mean row over the categories where each figure is defined."""
    rows = [{"category": r["category"], **{c: r[c] for c in ALL_COLUMNS}} for r in all_results]
    mean: dict[str, Any] = {"category": "mean"}
    for column in ALL_COLUMNS:
        values = [r[column] for r in rows if r[column] is not None and math.isfinite(r[column])]
        mean[column] = float(np.mean(values)) if values else math.nan
    return rows + [mean]


def write_summary(all_results: list[dict[str, Any]], out_dir: Path) -> str:
    """The combined table of several categories (``--category all``) as .json, .csv and .md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = summary_rows(all_results)
    table = markdown_table(rows, ["category", *SUMMARY_COLUMNS])
    table += (
        "\nAt each model's decision thresholds (calibrated unless test.py was given others; see threshold_source "
        "in results.json):\n\n" + markdown_table(rows, ["category", *OPERATING_COLUMNS])
    )
    atomic_write_text(out_dir / "results_all.json", json.dumps(_json_safe(rows), indent=2) + "\n")
    atomic_write_text(out_dir / "results_all.csv", _csv_text(rows, ["category", *ALL_COLUMNS]))
    atomic_write_text(out_dir / "results_all.md", table)
    return table
