"""The pictures of a report's cards: the input beside the heatmap over it, with the predicted mask's outline (white)
and the ground truth's (green), small enough that a page of many cards stays light."""

from __future__ import annotations

import base64

import cv2
import numpy as np

from stfpm.reporting.render import heatmap_scale, overlay

PREDICTED, TRUTH = (255, 255, 255), (0, 230, 64)
_GAP = 4


def _fit(height: int, width: int, longest: int) -> tuple[int, int]:
    scale = min(1.0, longest / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _outline(picture: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> None:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(picture, contours, -1, colour, 1, lineType=cv2.LINE_AA)


def card_picture(image_rgb: np.ndarray, anomaly_map: np.ndarray, truth: np.ndarray | None, pixel_threshold: float,
                 longest: int = 224) -> np.ndarray:
    """Input | heatmap overlay with outlines, each in the input's proportions and at most ``longest`` pixels on its
    longer side (RGB uint8).

    The map (of the network's input size) is stretched back to the image's proportions; ``truth`` (bool, the map's
    size) is outlined when given.
    """
    height, width = _fit(image_rgb.shape[0], image_rgb.shape[1], longest)
    image = cv2.resize(image_rgb, (width, height), interpolation=cv2.INTER_AREA)
    values = cv2.resize(anomaly_map.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    heat = overlay(image, values, heatmap_scale(pixel_threshold, values))
    if np.isfinite(pixel_threshold):
        _outline(heat, values >= pixel_threshold, PREDICTED)
    if truth is not None and truth.any():
        small = cv2.resize(truth.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
        _outline(heat, small > 0, TRUTH)
    gap = np.full((height, _GAP, 3), 255, np.uint8)
    return np.concatenate([image, gap, heat], axis=1)


def data_uri(picture: np.ndarray, quality: int = 82) -> str:
    """A JPEG ``data:`` URI of an RGB uint8 picture, for an ``<img>`` that needs no file beside the page."""
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("could not encode a report picture")
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")
