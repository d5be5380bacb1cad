"""Plots of the HTML reports as inline SVG: the image ROC with its operating point, and the score histogram with its
threshold line. Both carry their axes' mapping as data attributes, so the page's threshold explorer moves the point
and the line without redrawing."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

_W, _H = 560, 240  # the drawing's size in SVG units
_LEFT, _RIGHT, _TOP, _BOTTOM = 52, 14, 14, 40
GOOD, DEFECTIVE, MARK = "#3b7dd8", "#e0562f", "#111"


def _num(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values between ``low`` and ``high``."""
    if not high > low:
        return [low]
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if step * m >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _hidden(visible: bool) -> str:
    return "" if visible else ' visibility="hidden"'


def _label(value: float) -> str:
    return f"{value:.4g}"


def _frame(width: int, height: int, x_label: str, y_label: str) -> list[str]:
    x0, x1, y0, y1 = _LEFT, width - _RIGHT, _TOP, height - _BOTTOM
    return [
        f'<line x1="{x0}" y1="{y1}" x2="{x1}" y2="{y1}" class="axis"/>',
        f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" class="axis"/>',
        f'<text x="{(x0 + x1) / 2}" y="{height - 6}" text-anchor="middle">{x_label}</text>',
        f'<text x="12" y="{(y0 + y1) / 2}" text-anchor="middle" transform="rotate(-90 12 {(y0 + y1) / 2})">{y_label}</text>',
    ]


def roc_plot(fpr: np.ndarray, tpr: np.ndarray, point: tuple[float, float], title: str, size: int = 300) -> str:
    """The ROC curve (false-positive rate against true-positive rate) with the operating point ``point`` (fpr, tpr)
    marked; the point is the element ``#roc-point``."""
    x0, x1, y0, y1 = _LEFT, size - _RIGHT, _TOP, size - _BOTTOM
    w, h = x1 - x0, y1 - y0
    xs, ys = x0 + np.asarray(fpr, float) * w, y1 - np.asarray(tpr, float) * h
    path = " ".join(f"{_num(x)},{_num(y)}" for x, y in zip(xs, ys))
    parts = _frame(size, size, "false-positive rate (good images flagged)", "true-positive rate")
    for t in (0.0, 0.5, 1.0):
        parts.append(f'<text x="{x0 + t * w}" y="{y1 + 14}" text-anchor="middle" class="tick">{_label(t)}</text>')
        parts.append(f'<text x="{x0 - 4}" y="{y1 - t * h + 4}" text-anchor="end" class="tick">{_label(t)}</text>')
    parts.append(f'<line x1="{x0}" y1="{y1}" x2="{x1}" y2="{y0}" class="chance"/>')
    parts.append(f'<polyline points="{path}" fill="none" stroke="{DEFECTIVE}" stroke-width="2"/>')
    px, py = point
    visible = math.isfinite(px) and math.isfinite(py)
    cx, cy = (x0 + px * w, y1 - py * h) if visible else (x0, y1)
    parts.append(f'<circle id="roc-point" cx="{_num(cx)}" cy="{_num(cy)}" r="5" fill="{MARK}"'
                 f'{_hidden(visible)}/>')
    return (f'<svg class="plot" viewBox="0 0 {size} {size}" role="img" aria-label="{title}" data-x0="{x0}" '
            f'data-width="{w}" data-y1="{y1}" data-height="{h}">{"".join(parts)}</svg>')


def score_histogram(scores: np.ndarray, groups: Sequence[tuple[str, np.ndarray, str]], threshold: float, title: str,
                    bins: int = 40) -> str:
    """A histogram of ``scores`` for each group ``(name, selection, colour)``, overlaid, with the threshold as the
    vertical line ``#hist-threshold``."""
    scores = np.asarray(scores, float)
    low, high = (float(scores.min()), float(scores.max())) if scores.size else (0.0, 1.0)
    if math.isfinite(threshold):
        low, high = min(low, threshold), max(high, threshold)
    if not high > low:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bins + 1)
    counts = [np.histogram(scores[select], edges)[0] for _, select, _ in groups]
    top = max(1, *(int(c.max()) for c in counts if c.size))
    x0, x1, y0, y1 = _LEFT, _W - _RIGHT, _TOP, _H - _BOTTOM
    w, h = x1 - x0, y1 - y0
    parts = _frame(_W, _H, "image score", "images")
    bar = w / bins
    for (name, _, colour), count in zip(groups, counts):
        for i, c in enumerate(count.tolist()):
            if c:
                height = c / top * h
                parts.append(f'<rect x="{_num(x0 + i * bar)}" y="{_num(y1 - height)}" width="{_num(bar)}" '
                             f'height="{_num(height)}" fill="{colour}" fill-opacity="0.55">'
                             f"<title>{name}: {c}</title></rect>")
    for t in _ticks(low, high):
        x = x0 + (t - low) / (high - low) * w
        parts.append(f'<text x="{_num(x)}" y="{y1 + 14}" text-anchor="middle" class="tick">{_label(t)}</text>')
    for t in _ticks(0, top, 4):
        parts.append(f'<text x="{x0 - 4}" y="{_num(y1 - t / top * h + 4)}" text-anchor="end" class="tick">{int(t)}</text>')
    legend = [f'<tspan fill="{colour}">&#9632;</tspan> {name} ({int(select.sum())}) ' for name, select, colour in groups]
    parts.append(f'<text x="{x1}" y="{y0 + 10}" text-anchor="end" class="legend">{"".join(legend)}</text>')
    tx = x0 + ((threshold - low) / (high - low) * w if math.isfinite(threshold) else 0)
    parts.append(f'<line id="hist-threshold" x1="{_num(tx)}" y1="{y0}" x2="{_num(tx)}" y2="{y1}" stroke="{MARK}" '
                 f'stroke-width="2" stroke-dasharray="5 3"{_hidden(math.isfinite(threshold))}/>')
    return (f'<svg class="plot wide" viewBox="0 0 {_W} {_H}" role="img" aria-label="{title}" data-low="{low!r}" '
            f'data-high="{high!r}" data-x0="{x0}" data-width="{w}">{"".join(parts)}</svg>')
