"""test.py --save-images: per-image panels, ROC curves and the image-score histogram."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

from stfpm.data import load_image
from stfpm.evaluation.metrics import roc_curve
from stfpm.evaluation.results import TestPredictions
from stfpm.inference.postprocess import binary_mask, heatmap_scale, overlay
from stfpm.reporting.atomic import atomic_write_bytes
from stfpm.reporting.report import save_png

_GAP = 4


def image_panel(image_rgb: np.ndarray, gt: np.ndarray, anomaly_map: np.ndarray, pixel_threshold: float) -> np.ndarray:
    """Input | ground truth | heatmap overlay | predicted mask, side by side (RGB uint8)."""
    vmax = heatmap_scale(pixel_threshold, anomaly_map)
    gt_rgb = np.repeat((gt.astype(np.uint8) * 255)[..., None], 3, axis=2)
    mask = binary_mask(anomaly_map, pixel_threshold)
    mask_rgb = np.repeat(mask[..., None], 3, axis=2)
    gap = np.full((image_rgb.shape[0], _GAP, 3), 255, np.uint8)
    tiles = [image_rgb, gap, gt_rgb, gap, overlay(image_rgb, anomaly_map, vmax), gap, mask_rgb]
    return np.concatenate(tiles, axis=1)


def save_image_panels(pred: TestPredictions, out_dir: Path, pixel_threshold: float) -> int:
    """One panel per test image under ``out_dir/<defect_type>/<stem>.png``; returns how many were written."""
    for i, path in enumerate(pred.paths):
        height, width = pred.maps[i].shape  # the network input, square or not
        image = np.asarray(load_image(path).resize((width, height), Image.Resampling.BILINEAR))
        panel = image_panel(image, pred.masks[i], pred.maps[i], pixel_threshold)
        save_png(out_dir / pred.defect_types[i] / f"{Path(path).stem}.png", panel)
    return len(pred.paths)


def _save_figure(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def save_roc_curves(pred: TestPredictions, path: Path, results: dict) -> None:
    """Image- and pixel-level ROC curves in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    labels = pred.labels.astype(bool)
    if 0 < labels.sum() < len(labels):
        fpr, tpr = roc_curve(pred.scores, labels)
        ax.plot(fpr, tpr, label=f"image (AUROC {results['image_auroc']:.4f})")
    select = pred.has_mask
    masks = pred.masks[select]
    if masks.any() and not masks.all():
        fpr, tpr = roc_curve(pred.maps[select], masks)
        ax.plot(fpr, tpr, label=f"pixel (AUROC {results['pixel_auroc']:.4f})")
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC: {results['category']}")
    ax.legend(loc="lower right")
    _save_figure(fig, path)
    plt.close(fig)


def save_score_histogram(pred: TestPredictions, path: Path, image_threshold: float, category: str) -> None:
    """Histogram of image scores, good vs defective, with the calibrated threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    labels = pred.labels.astype(bool)
    bins = np.linspace(float(pred.scores.min()), float(pred.scores.max()) + 1e-12, 40).tolist()
    ax.hist(pred.scores[~labels], bins=bins, alpha=0.6, label=f"good ({(~labels).sum()})")
    ax.hist(pred.scores[labels], bins=bins, alpha=0.6, label=f"defective ({labels.sum()})")
    if math.isfinite(image_threshold):
        ax.axvline(image_threshold, color="k", linestyle="--", label="calibrated threshold")
    ax.set(xlabel="image score (max of anomaly map)", ylabel="images", title=f"Image scores: {category}")
    ax.legend()
    _save_figure(fig, path)
    plt.close(fig)
