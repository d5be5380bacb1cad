"""Tests for stfpm.evaluation.metrics against sklearn and against slow, obviously-correct reference implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from stfpm.evaluation.metrics import aupro, auroc, f1_max, roc_curve


def _tied_data(n: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores rounded to one decimal (heavy ties) with positives shifted up."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.2
    scores = np.round(rng.random(n) + 0.3 * labels, 1)
    return scores, labels


# ----------------------------------------------------------------------------------------------- auroc


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn_with_ties(seed: int) -> None:
    scores, labels = _tied_data(seed=seed)
    assert abs(auroc(scores, labels) - roc_auc_score(labels, scores)) <= 1e-9


def test_auroc_matches_sklearn_continuous() -> None:
    rng = np.random.default_rng(1)
    labels = rng.random(20000) < 0.5
    scores = rng.normal(size=20000) + labels
    assert abs(auroc(scores, labels) - roc_auc_score(labels, scores)) <= 1e-9


def test_auroc_more_positives_than_negatives() -> None:
    rng = np.random.default_rng(2)
    labels = rng.random(3000) < 0.9
    scores = np.round(rng.normal(size=3000) + 0.5 * labels, 1)
    assert abs(auroc(scores, labels) - roc_auc_score(labels, scores)) <= 1e-9


def test_auroc_constant_scores_is_half() -> None:
    labels = np.array([0, 1, 0, 1, 1, 0, 0])
    assert auroc(np.full(7, 3.0), labels) == 0.5


def test_auroc_scores_outside_unit_interval() -> None:
    rng = np.random.default_rng(3)
    labels = rng.random(4000) < 0.3
    scores = np.round((rng.normal(size=4000) + labels) * 1e6, -5) - 2e6
    assert scores.min() < 0 and scores.max() > 1
    assert abs(auroc(scores, labels) - roc_auc_score(labels, scores)) <= 1e-9


@pytest.mark.parametrize("positive_label", [True, False])
def test_auroc_single_sample_of_one_class(positive_label: bool) -> None:
    rng = np.random.default_rng(4)
    scores = np.round(rng.random(500), 2)
    labels = np.full(500, not positive_label)
    labels[7] = positive_label
    assert abs(auroc(scores, labels) - roc_auc_score(labels, scores)) <= 1e-9


def test_auroc_torch_tensors() -> None:
    scores, labels = _tied_data(seed=5)
    expected = roc_auc_score(labels, scores)
    assert abs(auroc(torch.from_numpy(scores), torch.from_numpy(labels)) - expected) <= 1e-9
    assert abs(auroc(torch.from_numpy(scores).requires_grad_(), torch.from_numpy(labels).long()) - expected) <= 1e-9


def test_auroc_float32_and_float64_agree() -> None:
    scores, labels = _tied_data(seed=6)
    scores32 = scores.astype(np.float32)
    assert abs(auroc(scores32, labels) - roc_auc_score(labels, scores32)) <= 1e-9
    assert abs(auroc(scores32, labels) - auroc(scores32.astype(np.float64), labels)) <= 1e-12


def test_auroc_float16_input() -> None:
    scores, labels = _tied_data(seed=7)
    scores16 = scores.astype(np.float16)
    assert abs(auroc(scores16, labels) - roc_auc_score(labels, scores16.astype(np.float32))) <= 1e-9


@pytest.mark.parametrize("shape", [(50, 100), (5, 10, 100)])
def test_auroc_multidimensional_inputs(shape: tuple[int, ...]) -> None:
    scores, labels = _tied_data(seed=8)
    expected = roc_auc_score(labels, scores)
    assert abs(auroc(scores.reshape(shape), labels.reshape(shape).astype(np.uint8)) - expected) <= 1e-9


def test_auroc_one_class_is_nan() -> None:
    assert math.isnan(auroc(np.arange(5.0), np.zeros(5, dtype=bool)))
    assert math.isnan(auroc(np.arange(5.0), np.ones(5, dtype=int)))


def test_auroc_nan_scores_raise() -> None:
    with pytest.raises(ValueError, match="NaN"):
        auroc(np.array([0.1, np.nan, 0.3]), np.array([0, 1, 0]))


def test_auroc_size_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="size"):
        auroc(np.zeros(3), np.zeros(4))


# ------------------------------------------------------------------------------------------- roc_curve


def test_roc_curve_endpoints_monotone_and_area() -> None:
    scores, labels = _tied_data(seed=9)
    fpr, tpr = roc_curve(scores, labels, max_points=10_000)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert abs(np.trapezoid(tpr, fpr) - auroc(scores, labels)) <= 1e-9


def test_roc_curve_subsampled() -> None:
    rng = np.random.default_rng(10)
    labels = rng.random(50_000) < 0.05
    scores = rng.normal(size=50_000) + 2 * labels
    fpr, tpr = roc_curve(scores, labels, max_points=200)
    assert len(fpr) <= 200
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert abs(np.trapezoid(tpr, fpr) - auroc(scores, labels)) < 5e-3


def test_roc_curve_one_class_raises() -> None:
    with pytest.raises(ValueError):
        roc_curve(np.arange(4.0), np.zeros(4))


# ---------------------------------------------------------------------------------------------- f1_max


def _f1_brute_force(scores: np.ndarray, labels: np.ndarray) -> float:
    best = 0.0
    for t in np.unique(scores):
        predicted = scores >= t
        tp = np.sum(predicted & labels)
        precision = tp / predicted.sum()
        recall = tp / labels.sum()
        if tp:
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


@pytest.mark.parametrize("seed", range(3))
def test_f1_max_matches_brute_force(seed: int) -> None:
    scores, labels = _tied_data(n=2000, seed=seed)
    scores = scores + np.random.default_rng(seed).integers(0, 30, size=2000) * 0.01  # more thresholds
    best, threshold = f1_max(scores, labels)
    expected = _f1_brute_force(scores, labels)
    assert abs(best - expected) <= 1e-12
    predicted = scores >= threshold
    tp = np.sum(predicted & labels)
    assert abs(2 * tp / (predicted.sum() + labels.sum()) - expected) <= 1e-12


def test_f1_max_perfect_separation() -> None:
    best, threshold = f1_max(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1]))
    assert best == 1.0 and threshold == pytest.approx(0.8)


def test_f1_max_no_positives_is_nan() -> None:
    best, threshold = f1_max(np.arange(4.0), np.zeros(4))
    assert math.isnan(best) and math.isnan(threshold)


# ----------------------------------------------------------------------------------------------- aupro


def _aupro_reference(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """Slow MVTec-style AUPRO: one full pass over the images per distinct threshold."""
    structure = np.ones((3, 3), dtype=bool)
    regions = []  # boolean mask of each region, with its image index
    for i, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, structure=structure)
        regions += [(i, labelled == k) for k in range(1, count + 1)]
    normal = ~masks
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        above = maps >= t
        fpr = np.sum(above & normal) / normal.sum()
        pro = np.mean([above[i][region].mean() for i, region in regions])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += 0.5 * (y0 + y1) * (x1 - x0)
    return area / limit


def _synthetic_defects(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Four 32x32 images: regions of several sizes (incl. diagonal-only contact), one defect-free image."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((4, 32, 32), dtype=bool)
    masks[0, 2:12, 3:15] = True  # large
    masks[0, 20:22, 20:22] = True  # small
    masks[0, 22, 22] = True  # touches the small one diagonally -> same region under 8-connectivity
    masks[1, 5:8, 25:30] = True
    masks[1, 15:30, 1:4] = True
    masks[1, 28, 28] = True  # single pixel
    masks[2, 10:25, 10:25] = True
    # image 3: no defect
    maps = rng.random(masks.shape) * 0.6 + masks * rng.random(masks.shape) * 0.6
    return np.round(maps, 2).astype(np.float32), masks  # rounding creates ties


@pytest.mark.parametrize("seed", range(3))
def test_aupro_matches_reference(seed: int) -> None:
    maps, masks = _synthetic_defects(seed)
    assert abs(aupro(maps, masks) - _aupro_reference(maps, masks)) <= 1e-6


def test_aupro_other_limit_and_torch_input() -> None:
    maps, masks = _synthetic_defects(5)
    expected = _aupro_reference(maps, masks, limit=0.05)
    assert abs(aupro(torch.from_numpy(maps), torch.from_numpy(masks), fpr_limit=0.05) - expected) <= 1e-6


def test_aupro_perfect_maps_is_one() -> None:
    _, masks = _synthetic_defects(0)
    assert aupro(masks.astype(np.float32), masks) == pytest.approx(1.0, abs=1e-12)


def test_aupro_no_anomalous_pixels_is_nan() -> None:
    maps, masks = _synthetic_defects(0)
    assert math.isnan(aupro(maps, np.zeros_like(masks)))


def test_aupro_nan_scores_raise() -> None:
    maps, masks = _synthetic_defects(0)
    maps[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        aupro(maps, masks)


# ------------------------------------------------------------------------------------ operating points


def test_tpr_at_fpr_hand_built() -> None:
    from stfpm.evaluation.metrics import tpr_at_fpr

    normal = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    defect = [0.05, 0.65, 0.95, 1.5]
    scores = np.array(normal + defect)
    labels = np.array([0] * 10 + [1] * 4)
    # no false alarm allowed (1% of 10 normals rounds down to 0): only 1.5 is above the highest normal
    assert tpr_at_fpr(scores, labels, 0.01) == 0.25
    # one false alarm allowed (10%): threshold just above 0.9 catches 0.95 and 1.5
    assert tpr_at_fpr(scores, labels, 0.10) == 0.5
    assert tpr_at_fpr(scores, labels, 0.35) == 0.5  # 3 alarms: above 0.7, still 0.95 and 1.5
    assert tpr_at_fpr(scores, labels, 0.45) == 0.75  # 4 alarms: above 0.6 adds 0.65
    assert tpr_at_fpr(scores, labels, 1.0) == 1.0
    assert math.isnan(tpr_at_fpr(scores[:10], labels[:10], 0.05))


def test_tpr_at_fpr_ties_between_classes_count_as_alarms() -> None:
    from stfpm.evaluation.metrics import tpr_at_fpr

    scores = np.array([0.5, 0.5, 0.2, 0.5, 0.9])
    labels = np.array([0, 0, 0, 1, 1])
    # a threshold at 0.5 would flag two normals (FPR 2/3): with at most 1/3 allowed only 0.9 remains
    assert tpr_at_fpr(scores, labels, 0.34) == 0.5
    assert tpr_at_fpr(scores, labels, 0.67) == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tpr_at_fpr_matches_sklearn_roc(seed: int) -> None:
    from sklearn.metrics import roc_curve as sk_roc_curve

    from stfpm.evaluation.metrics import tpr_at_fpr

    rng = np.random.default_rng(seed)
    labels = rng.random(400) < 0.3
    scores = np.round(rng.normal(size=400) + labels, 1)  # many ties
    fpr, tpr, _ = sk_roc_curve(labels, scores, drop_intermediate=False)
    for limit in (0.0, 0.01, 0.05, 0.2, 0.5):
        assert tpr_at_fpr(scores, labels, limit) == pytest.approx(tpr[fpr <= limit + 1e-12].max())


def test_rates_at_threshold_hand_built() -> None:
    from stfpm.evaluation.metrics import rates_at_threshold

    scores = np.array([0.1, 0.5, 0.7, 0.5, 0.9, 0.2])
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert rates_at_threshold(scores, labels, 0.5) == (pytest.approx(2 / 3), pytest.approx(2 / 3))  # >= counts
    assert rates_at_threshold(scores, labels, 0.8) == (pytest.approx(1 / 3), 0.0)
    tpr, fpr = rates_at_threshold(scores[:3], labels[:3], 0.5)
    assert math.isnan(tpr) and fpr == pytest.approx(2 / 3)
    assert all(math.isnan(v) for v in rates_at_threshold(scores, labels, float("nan")))


def test_rates_at_a_threshold_between_float32_scores_agree_with_each_verdict() -> None:
    """test.py's rates count what predict.py flags (``float(score) >= threshold``): a threshold just above a float32
    score is not rounded down onto it."""
    from stfpm.evaluation.metrics import rates_at_threshold
    from stfpm.inference.thresholding import ThresholdPolicy

    scores = np.array([0.1, 0.3, 0.7, 0.9], np.float32)
    labels = np.array([0, 1, 0, 1])
    for score in scores.tolist():
        threshold = float(np.nextafter(score, math.inf))  # above the score, closer to it than to any other float32
        policy = ThresholdPolicy(threshold, 0.5)
        flagged = [policy.is_anomalous(float(s)) for s in scores]
        tpr, fpr = rates_at_threshold(scores, labels, threshold)
        assert tpr == sum(f for f, y in zip(flagged, labels) if y) / 2
        assert fpr == sum(f for f, y in zip(flagged, labels) if not y) / 2
        assert not policy.is_anomalous(score)


def test_overlap_at_threshold_hand_built() -> None:
    from stfpm.evaluation.metrics import overlap_at_threshold

    maps = np.array([[0.9, 0.8, 0.1], [0.2, 0.6, 0.0]])
    masks = np.array([[1, 1, 0], [1, 0, 0]], dtype=bool)
    precision, recall, iou = overlap_at_threshold(maps, masks, 0.6)  # flags 0.9, 0.8, 0.6
    assert precision == pytest.approx(2 / 3) and recall == pytest.approx(2 / 3) and iou == pytest.approx(2 / 4)
    precision, recall, iou = overlap_at_threshold(maps, masks, 5.0)  # nothing flagged
    assert math.isnan(precision) and recall == 0.0 and iou == 0.0
    precision, recall, iou = overlap_at_threshold(maps, np.zeros_like(masks), 5.0)
    assert all(math.isnan(v) for v in (precision, recall, iou))
