"""What the HTML reports are built of: the page, tables of facts and figures, cards and galleries, the explorer's
data.

Each page is one self-contained file: style, plots (inline SVG), pictures (``data:`` URIs, or links to files beside
the page) and, for test.py, the per-image scores its threshold explorer computes from. It opens from the file system
with no network and no server, so a run folder can be zipped and mailed.
"""

from __future__ import annotations

import datetime
import html
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from stfpm import __version__
from stfpm.core.files import atomic_write_text
from stfpm.reporting import svg
from stfpm.reporting.tables import fmt, promise_line

GALLERY_LIMIT = 24  # cards per gallery; the rest are counted
PREDICT_CARD_LIMIT = 48
REPORT_NAME = "report.html"
INDEX_NAME = "report_all.html"


@dataclass(frozen=True)
class Card:
    """One image of a gallery: its pictures (``src``, and where a click leads, or ``""``) and what it says."""

    name: str
    lines: list[str]
    pictures: list[tuple[str, str]] = field(default_factory=list)


def _asset(name: str) -> str:
    return resources.files("stfpm.reporting").joinpath("assets").joinpath(name).read_text(encoding="utf-8")


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def percent(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.{digits}f}%"


def _value(value: Any) -> str:
    """An exact number for a ``data-value`` attribute (what the tests and scripts read back)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "NaN"
    return repr(float(value))


def cell(key: str, value: Any, text: str) -> str:
    return f'<td class="num" data-key="{esc(key)}" data-value="{_value(value)}">{esc(text)}</td>'


def number_cell(key: str, value: Any) -> str:
    return cell(key, value, fmt(value))


def share_cell(key: str, value: Any, digits: int = 1) -> str:
    return cell(key, value, percent(value, digits))


def page(title: str, body: str, data: dict[str, Any] | None = None, script: str | None = None) -> str:
    """A whole page: the style sheet inline, ``data`` as embedded JSON and ``script`` (an asset's name) inline."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{_asset('report.css')}</style></head><body>",
        f'<header><h1>{esc(title)}</h1><p class="sub">written {stamp} by stfpm {esc(__version__)}</p></header>',
        f"<main>{body}</main>",
    ]
    if data is not None:
        embedded = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
        parts.append(f'<script type="application/json" id="report-data">{embedded}</script>')
    if script:
        parts.append(f"<script>{_asset(script)}</script>")
    parts.append("</body></html>\n")
    return "".join(parts)


def write_page(path: Path, text: str) -> Path:
    atomic_write_text(path, text)
    return path


def facts_table(facts: Sequence[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts)
    return f'<table class="facts">{rows}</table>'


def promise_block(results: dict[str, Any], calibrated: bool) -> str:
    """What the calibrated image threshold promises, and whether the threshold in use is that one."""
    line = promise_line(results) or ("This checkpoint does not record what its image threshold promises (it was "
                                     "written before thresholds stated their promise).")
    if not calibrated:
        line += (f" The threshold in use is not the calibrated one ({results.get('threshold_source')}): "
                 "that promise does not apply to it.")
    return f'<p class="promise{"" if calibrated else " warn"}" id="promise">{esc(line)}</p>'


def card_html(card: Card) -> str:
    pictures = []
    for src, link in card.pictures:
        img = f'<img src="{esc(src)}" alt="{esc(card.name)}" loading="lazy">'
        pictures.append(f'<a href="{esc(link)}">{img}</a>' if link else f"<a>{img}</a>")
    lines = "".join(f'<div class="figures">{esc(line)}</div>' for line in card.lines)
    return (f'<div class="card"><div class="pair">{"".join(pictures)}</div>'
            f'<div class="name">{esc(card.name)}</div>{lines}</div>')


def gallery(anchor: str, title: str, cards: Sequence[Card], total: int, empty: str, more: str = "") -> str:
    """A section of cards, worst first; says how many were left out."""
    body = "".join(card_html(c) for c in cards) if cards else ""
    rest = total - len(cards)
    left_out = f'<p class="more">and {rest} more{more}</p>' if rest > 0 else ""
    content = f'<div class="cards">{body}</div>{left_out}' if cards else f'<p class="note">{esc(empty)}</p>'
    return f'<section id="{anchor}" class="gallery"><h2>{esc(title)} ({total})</h2>{content}</section>'


def link(path: Path, start: Path) -> str:
    """A relative URL from the folder ``start`` to ``path``."""
    return quote(Path(os.path.relpath(path, start)).as_posix())


def gallery_indices(scores: np.ndarray, labels: np.ndarray, threshold: float,
                    limit: int = GALLERY_LIMIT) -> dict[str, tuple[list[int], int]]:
    """The images of each gallery, worst first, at most ``limit`` each, and how many each has: misses (defective
    under the threshold, lowest score first), false alarms (good at or over it, highest first) and best detections
    (defective at or over it, highest first)."""
    labels = labels.astype(bool)
    flagged = scores >= threshold if math.isfinite(threshold) else np.zeros(len(scores), bool)
    order = np.argsort(scores, kind="stable")
    picks = {
        "misses": [i for i in order.tolist() if labels[i] and not flagged[i]],
        "false-alarms": [i for i in order[::-1].tolist() if not labels[i] and flagged[i]],
        "best": [i for i in order[::-1].tolist() if labels[i] and flagged[i]],
    }
    return {name: (chosen[:limit], len(chosen)) for name, chosen in picks.items()}


def explorer_data(scores: np.ndarray, labels: np.ndarray, defect_types: Sequence[str], threshold: float,
                  fallback: float, command: str, pixel_argument: str) -> dict[str, Any]:
    """What the threshold explorer computes from: every image's score (float32 values, exactly), label and defect
    type, where it starts (the threshold in use, else ``fallback``) and the command it completes."""
    names = sorted({t for t, y in zip(defect_types, labels) if y})
    index = {name: k for k, name in enumerate(names)}
    values = [float(s) for s in np.asarray(scores, np.float32)]
    start = threshold if math.isfinite(threshold) else fallback
    if not math.isfinite(start):
        start = float(np.median(values))
    return {"scores": values, "labels": [int(bool(y)) for y in labels],
            "types": [index[t] if y else -1 for t, y in zip(defect_types, labels)], "typeNames": names,
            "threshold": threshold if math.isfinite(threshold) else None, "start": float(start),
            "above": float(np.nextafter(max(values), math.inf)), "command": command, "pixelArgument": pixel_argument}


def figure_rows(rows: Sequence[tuple[str, str, Any, str]]) -> str:
    """A table of figures, each ``(label, results key, value, text)``."""
    body = "".join(f"<tr><th>{esc(label)}</th>{cell(key, value, text)}</tr>" for label, key, value, text in rows)
    return f'<table class="grid figures">{body}</table>'


def histogram_groups(labels: np.ndarray | None) -> list[tuple[str, np.ndarray, str]]:
    if labels is None:
        return []
    y = labels.astype(bool)
    return [("good", ~y, svg.GOOD), ("defective", y, svg.DEFECTIVE)]
