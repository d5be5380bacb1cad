"""test.py --save-images: per-image panels, ROC curves and the image-score histogram."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from stfpm.core.files import atomic_write_bytes
from stfpm.data.io import load_image, save_image
from stfpm.reporting.render import heatmap_scale, overlay

_GAP = 4


def image_panel(image_rgb: np.ndarray, gt: np.ndarray, anomaly_map: np.ndarray, mask: np.ndarray, vmax: float) -> np.ndarray:
    """Input | ground truth | heatmap overlay | predicted mask (uint8 0/255), side by side (RGB uint8)."""
    gt_rgb = np.repeat((gt.astype(np.uint8) * 255)[..., None], 3, axis=2)
    mask_rgb = np.repeat(mask[..., None], 3, axis=2)
    gap = np.full((image_rgb.shape[0], _GAP, 3), 255, np.uint8)
    tiles = [image_rgb, gap, gt_rgb, gap, overlay(image_rgb, anomaly_map, vmax), gap, mask_rgb]
    return np.concatenate(tiles, axis=1)


def save_image_panels(
    paths: Sequence[str], maps: Sequence[np.ndarray] | np.ndarray, masks: Sequence[np.ndarray] | np.ndarray,
    defect_types: Sequence[str],
    out_dir: Path, pixel_threshold: float, mask_of: Callable[[np.ndarray], np.ndarray],
) -> int:
    """One panel per test image under ``out_dir/<defect_type>/<stem>.png``, its predicted mask from ``mask_of``;
    returns how many were written."""
    for path, anomaly_map, gt, defect in zip(paths, maps, masks, defect_types):
        height, width = anomaly_map.shape  # the network input, square or not
        image = np.asarray(load_image(path).resize((width, height), Image.Resampling.BILINEAR))
        vmax = heatmap_scale(pixel_threshold, anomaly_map)
        panel = image_panel(image, gt, anomaly_map, mask_of(anomaly_map), vmax)
        save_image(out_dir / defect / f"{Path(path).stem}.png", panel)
    return len(paths)


def _save_figure(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_roc_curves(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], path: Path, title: str) -> None:
    """ROC curves, each ``(label, fpr, tpr)``, in one PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for label, fpr, tpr in curves:
        ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right")
    _save_figure(fig, path)
    plt.close(fig)


def save_score_histogram(scores: np.ndarray, labels: np.ndarray, path: Path, image_threshold: float, category: str) -> None:
    """Histogram of image scores, good vs defective, with the image threshold."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = labels.astype(bool)
    bins = np.linspace(float(scores.min()), float(scores.max()) + 1e-12, 40).tolist()
    ax.hist(scores[~labels], bins=bins, alpha=0.6, label=f"good ({(~labels).sum()})")
    ax.hist(scores[labels], bins=bins, alpha=0.6, label=f"defective ({labels.sum()})")
    if math.isfinite(image_threshold):
        ax.axvline(image_threshold, color="k", linestyle="--", label="calibrated threshold")
    ax.set(xlabel="image score", ylabel="images", title=f"Image scores: {category}")
    ax.legend()
    _save_figure(fig, path)
    plt.close(fig)
