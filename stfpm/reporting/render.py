"""Anomaly maps drawn for people: the colour scale and the heatmap over the image."""

from __future__ import annotations

import math

import cv2
import numpy as np


def heatmap_scale(pixel_threshold: float, anomaly_map: np.ndarray) -> float:
    """Upper end of the colour scale: twice the pixel threshold, so the threshold sits mid-scale and the
    colours of different images are comparable; the map's own maximum when no threshold is known."""
    if math.isfinite(pixel_threshold) and pixel_threshold > 0:
        return 2.0 * pixel_threshold
    return float(anomaly_map.max()) or 1.0


def colorize(anomaly_map: np.ndarray, vmax: float) -> np.ndarray:
    """JET colour image (RGB uint8) of a map scaled to [0, vmax]."""
    scaled = np.clip(anomaly_map / vmax, 0.0, 1.0)
    bgr = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def overlay(image_rgb: np.ndarray, anomaly_map: np.ndarray, vmax: float, alpha: float = 0.5) -> np.ndarray:
    """The coloured map blended over the image (both at the same size), RGB uint8."""
    heat = colorize(anomaly_map, vmax)
    return cv2.addWeighted(image_rgb, 1.0 - alpha, heat, alpha, 0.0)
