"""Evaluation metrics for anomaly detection: AUROC, ROC curve, F1-max and AUPRO.

All metrics are exact (no score binning) because binned approximations shift AUROC in the third decimal on
real anomaly maps, which is the precision papers report. They are also built to run on the full pixel set of
a test split (tens of millions of pixels): instead of an ``argsort`` over every pixel (an int64 index array
plus permuted float64 copies, as in ``sklearn``), they sort a single compact copy of the scores with
``np.sort`` (SIMD-accelerated for float32) and answer counting questions with ``np.searchsorted``.

Labels: ``True`` / values ``> 0`` are anomalous (positive), everything else is normal.
Inputs may be numpy arrays or torch tensors of any shape; they are flattened.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["auroc", "roc_curve", "f1_max", "aupro", "tpr_at_fpr", "rates_at_threshold", "overlap_at_threshold"]

# Number of query values handled per np.searchsorted call: bounds the int64 temporaries to a few MiB.
_CHUNK = 1 << 20
# 8-connectivity, as in the MVTec AD evaluation code.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


# ----------------------------------------------------------------------------------------------- input


def _to_numpy(x: Any) -> np.ndarray:
    """Turn a torch tensor (duck-typed, so this module never imports torch) or array-like into numpy."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        try:
            return x.numpy()
        except TypeError:  # bfloat16 and friends have no numpy dtype
            return x.float().numpy()
    return np.asarray(x)


def _as_scores(x: Any) -> np.ndarray:
    """Flatten scores without copying or upcasting; only float16/bool are widened (exactly) for fast sorts."""
    arr = _to_numpy(x).ravel()
    if arr.dtype == np.float16:
        return arr.astype(np.float32)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"scores must be a real numeric array, got dtype {arr.dtype}")
    return arr


def _as_labels(x: Any) -> np.ndarray:
    """Flatten labels to bool (positive = True or > 0), so {0,1}, {-1,1} and {0,255} masks all work."""
    arr = _to_numpy(x).ravel()
    return arr if arr.dtype == np.bool_ else arr > 0


def _prepare(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Flat scores and bool labels of equal length."""
    s, y = _as_scores(scores), _as_labels(labels)
    if s.size != y.size:
        raise ValueError(f"scores and labels differ in size: {s.size} vs {y.size}")
    return s, y


def _reject_nan(sorted_scores: np.ndarray) -> np.ndarray:
    """Raise on NaN; sorting puts NaN last, so one look at the end replaces a full-size isnan mask."""
    if sorted_scores.size and sorted_scores.dtype.kind == "f" and np.isnan(sorted_scores[-1]):
        raise ValueError("scores contain NaN; an anomaly map with NaN cannot be ranked")
    return sorted_scores


def _sorted(x: np.ndarray) -> np.ndarray:
    """Ascending sorted copy, NaN-checked."""
    return _reject_nan(np.sort(x))


def _runs(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a sorted block and their multiplicities, so tied scores are searched once."""
    new = np.empty(block.size, dtype=bool)
    new[:1] = True
    np.not_equal(block[1:], block[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    return block[starts], np.diff(starts, append=block.size)


def _distinct_values(sorted_scores: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (distinct values, index of their first occurrence) chunk by chunk, bounding temporaries."""
    for lo in range(0, sorted_scores.size, _CHUNK):
        block = sorted_scores[lo : lo + _CHUNK]
        new = np.empty(block.size, dtype=bool)
        new[0] = lo == 0 or block[0] != sorted_scores[lo - 1]
        np.not_equal(block[1:], block[:-1], out=new[1:])
        first = np.flatnonzero(new)
        yield block[first], first + lo


# ----------------------------------------------------------------------------------------------- AUROC


def _rank_sum(haystack: np.ndarray, queries: np.ndarray) -> int:
    """Sum over queries of (#haystack < q) + (#haystack <= q), as an exact Python int.

    Both counts come from binary searches of the (sorted) queries; ties among queries are searched once.
    """
    total = 0
    for lo in range(0, queries.size, _CHUNK):
        values, counts = _runs(queries[lo : lo + _CHUNK])
        left = np.searchsorted(haystack, values, side="left")
        right = np.searchsorted(haystack, values, side="right")
        total += int(np.dot(counts, left + right))
    return total


def auroc(scores: Any, labels: Any) -> float:
    """Exact, tie-aware ROC AUC (equal to sklearn's ``roc_auc_score``); NaN if only one class is present.

    AUC is the Mann-Whitney statistic P(pos > neg) + 0.5 P(pos == neg). We sort all scores once and binary
    search the smaller class in them: summing (#all < s) + (#all <= s) over the small class S gives
    2*U_S + |S|^2 (S against itself contributes exactly |S|^2 / 2 in the tie-aware count), so the only
    full-size allocation is one sorted copy of the scores, in their own dtype. Counting is done in integers,
    so the result is exact up to the final division.
    """
    s, y = _prepare(scores, labels)
    n_pos = int(np.count_nonzero(y))
    n_neg = s.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    haystack = _sorted(s)
    small_is_pos = n_pos <= n_neg
    small = s[y] if small_is_pos else s[~y]
    small.sort()
    twice_u = _rank_sum(haystack, small) - small.size**2
    pairs = 2 * n_pos * n_neg
    return twice_u / pairs if small_is_pos else (pairs - twice_u) / pairs


# ------------------------------------------------------------------------------------ ROC curve, F1


def _sorted_all_and_pos(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Sorted copies of all scores and of the positive scores: enough to count hits at any threshold."""
    s, y = _prepare(scores, labels)
    all_sorted = _sorted(s)
    pos_sorted = s[y]
    pos_sorted.sort()
    return all_sorted, pos_sorted


def _counts_at_or_above(
    all_sorted: np.ndarray, pos_sorted: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(#scores >= t, #positive scores >= t) for each threshold t, i.e. predicted positives and true positives."""
    predicted = all_sorted.size - np.searchsorted(all_sorted, thresholds, side="left")
    hits = pos_sorted.size - np.searchsorted(pos_sorted, thresholds, side="left")
    return predicted, hits


def _roc_thresholds(all_sorted: np.ndarray, pos_sorted: np.ndarray, budget: int) -> np.ndarray:
    """Ascending thresholds, at most ``budget``, always including the minimum score (the (1, 1) point).

    All distinct scores if they fit; otherwise evenly spaced quantiles of all scores (resolves the FPR axis)
    and of the positive scores (resolves the TPR axis, which the rare positives would otherwise starve).
    """
    distinct: list[np.ndarray] = []
    n_distinct = 0
    for values, _ in _distinct_values(all_sorted):
        n_distinct += values.size
        if n_distinct > budget:
            break
        distinct.append(values)
    if n_distinct <= budget:
        return np.concatenate(distinct)
    n_pos_points = min(budget // 2, pos_sorted.size)
    all_idx = np.linspace(0, all_sorted.size - 1, budget - n_pos_points).round().astype(np.int64)
    pos_idx = np.linspace(0, pos_sorted.size - 1, n_pos_points).round().astype(np.int64)
    return np.union1d(all_sorted[all_idx], pos_sorted[pos_idx])


def roc_curve(scores: Any, labels: Any, max_points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of the ROC curve for plotting, from (0, 0) to (1, 1), with at most ``max_points`` points.

    Every returned point is an exact ROC vertex; with more points than distinct scores the curve is complete
    and its trapezoid area equals :func:`auroc`. Raises ValueError when a class is missing (no curve exists).
    """
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    all_sorted, pos_sorted = _sorted_all_and_pos(scores, labels)
    n_pos, n_neg = pos_sorted.size, all_sorted.size - pos_sorted.size
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC curve needs both normal and anomalous samples")
    thresholds = _roc_thresholds(all_sorted, pos_sorted, max_points - 1)[::-1]
    predicted, hits = _counts_at_or_above(all_sorted, pos_sorted, thresholds)
    fpr = np.concatenate(([0.0], (predicted - hits) / n_neg))
    tpr = np.concatenate(([0.0], hits / n_pos))
    return fpr, tpr


def f1_max(scores: Any, labels: Any) -> tuple[float, float]:
    """Best F1 over every threshold (predict anomalous when score >= threshold) and that threshold.

    Exact over all distinct scores: each one is evaluated through binary-search counts, chunk by chunk, so
    no per-pixel index or float64 array is built. Returns (nan, nan) without positives (F1 undefined).
    Among thresholds with equal best F1, the lowest is returned.
    """
    all_sorted, pos_sorted = _sorted_all_and_pos(scores, labels)
    if pos_sorted.size == 0:
        return float("nan"), float("nan")
    best_f1, best_threshold = -1.0, float("nan")
    for values, _ in _distinct_values(all_sorted):
        predicted, hits = _counts_at_or_above(all_sorted, pos_sorted, values)
        f1 = 2.0 * hits / (predicted + pos_sorted.size)
        k = int(np.argmax(f1))
        if f1[k] > best_f1:
            best_f1, best_threshold = float(f1[k]), float(values[k])
    return best_f1, best_threshold


# ------------------------------------------------------------------------------------ operating points


def tpr_at_fpr(scores: Any, labels: Any, max_fpr: float) -> float:
    """Highest true positive rate of any threshold whose false positive rate is at most ``max_fpr``.

    Exact on the empirical ROC (predict anomalous when score >= threshold): with ``k = floor(max_fpr * n_neg)``
    false alarms allowed, the best threshold lies just above the (k+1)-th highest normal score, so the answer is
    the share of anomalous scores strictly above it. NaN when a class is missing.
    """
    if not 0.0 <= max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in [0, 1], got {max_fpr}")
    s, y = _prepare(scores, labels)
    negatives, positives = _sorted(s[~y]), s[y]
    if negatives.size == 0 or positives.size == 0:
        return float("nan")
    allowed = int(np.floor(max_fpr * negatives.size + 1e-9))
    if allowed >= negatives.size:
        return 1.0
    cut = negatives[negatives.size - 1 - allowed]  # the (allowed+1)-th highest normal score
    return float((positives > cut).sum() / positives.size)


def rates_at_threshold(scores: Any, labels: Any, threshold: float) -> tuple[float, float]:
    """(TPR, FPR) when scores >= ``threshold`` are flagged; each NaN when its class is absent or the threshold
    is NaN. The comparison is in float64, as a single image's verdict (``score >= threshold`` in Python) is: a
    threshold between two float32 values is not rounded onto one of them."""
    s, y = _prepare(scores, labels)
    if np.isnan(threshold):
        return float("nan"), float("nan")
    flagged = s.astype(np.float64, copy=False) >= float(threshold)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    tpr = float((flagged & y).sum() / n_pos) if n_pos else float("nan")
    fpr = float((flagged & ~y).sum() / n_neg) if n_neg else float("nan")
    return tpr, fpr


def overlap_at_threshold(scores: Any, labels: Any, threshold: float) -> tuple[float, float, float]:
    """(precision, recall, IoU) of the pixels flagged by scores >= ``threshold`` against the true defect pixels.

    Counted over all pixels together (micro average). Precision is NaN when nothing is flagged, recall when
    there is no defect pixel, IoU when both are empty; all are NaN for a NaN threshold.
    """
    s, y = _prepare(scores, labels)
    if np.isnan(threshold):
        return float("nan"), float("nan"), float("nan")
    flagged = s >= threshold
    tp = int(np.count_nonzero(flagged & y))
    n_flagged, n_pos = int(np.count_nonzero(flagged)), int(np.count_nonzero(y))
    union = n_flagged + n_pos - tp
    precision = tp / n_flagged if n_flagged else float("nan")
    recall = tp / n_pos if n_pos else float("nan")
    iou = tp / union if union else float("nan")
    return float(precision), float(recall), float(iou)


# ----------------------------------------------------------------------------------------------- AUPRO


def _region_weights(masks: Sequence[np.ndarray]) -> np.ndarray:
    """Per anomalous pixel (in the order of the images' ``mask[mask]``): 1 / (number of regions * region size).

    Summing these over the pixels above a threshold gives the mean per-region overlap directly. Regions are
    8-connected components found per image, so touching defects in different images never merge.
    """
    per_image = []
    n_regions = 0
    for image_mask in masks:
        regions, count = ndimage.label(image_mask, structure=_EIGHT_CONNECTED)
        per_image.append(regions[image_mask].astype(np.int64) + n_regions - 1)
        n_regions += count
    region_of_pixel = np.concatenate(per_image) if per_image else np.zeros(0, np.int64)
    sizes = np.bincount(region_of_pixel)
    return 1.0 / (n_regions * sizes[region_of_pixel].astype(np.float64))


def _area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under y(x) on [x[0], limit], interpolating y linearly at ``limit`` (MVTec convention)."""
    k = int(np.searchsorted(x, limit, side="right"))
    area = float(np.sum(0.5 * (y[1:k] + y[: k - 1]) * np.diff(x[:k])))
    if k < x.size and x[k - 1] < limit:
        y_limit = y[k - 1] + (y[k] - y[k - 1]) * (limit - x[k - 1]) / (x[k] - x[k - 1])
        area += 0.5 * (y[k - 1] + y_limit) * (limit - x[k - 1])
    return area


def _pro_curve(maps: np.ndarray, masks: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) at every distinct score as threshold (descending), preceded by (0, 0).

    ``maps`` and ``masks`` are flat; ``weights`` are the region weights of the anomalous pixels in order.
    Normal pixels only need a sorted copy (FPR is a count); only the usually few anomalous pixels are
    argsorted, to carry their region weights along for a suffix sum.
    """
    normal = _sorted(maps[~masks])
    anomalous = maps[masks]
    order = np.argsort(anomalous, kind="stable")
    anomalous = _reject_nan(anomalous[order])
    weights = weights[order]
    pro_at_or_above = np.append(np.cumsum(weights[::-1])[::-1], 0.0)

    thresholds = np.union1d(normal, anomalous)[::-1]
    fpr = (normal.size - np.searchsorted(normal, thresholds, side="left")) / normal.size
    pro = pro_at_or_above[np.searchsorted(anomalous, thresholds, side="left")]
    return np.concatenate(([0.0], fpr)), np.concatenate(([0.0], np.minimum(pro, 1.0)))


def aupro(anomaly_maps: Any, masks: Any, fpr_limit: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve up to ``fpr_limit`` (MVTec AD's AUPRO).

    Unlike pixel AUROC, every defect region counts equally whatever its size, so small defects matter.
    ``anomaly_maps``: float [N, H, W] (or [H, W]); ``masks``: bool [N, H, W]; or two lists of per-image
    [H_i, W_i] arrays, for images of different sizes (e.g. at their source resolution). Exact over all distinct
    scores. Returns NaN if there are no anomalous or no normal pixels.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    if isinstance(anomaly_maps, (list, tuple)):  # per-image arrays of different sizes: flattened into one copy
        map_list, mask_list = [_to_numpy(m) for m in anomaly_maps], [_as_mask(m) for m in masks]
        if len(map_list) != len(mask_list) or any(m.shape != g.shape or m.ndim != 2 for m, g in zip(map_list, mask_list)):
            raise ValueError("anomaly_maps and masks must be lists of [H, W] arrays of pairwise equal shapes")
        maps = np.concatenate([m.ravel() for m in map_list])
        gt = np.concatenate([g.ravel() for g in mask_list])
    else:  # one stacked array: flat views, no copy of the (possibly huge) map
        stacked, stacked_gt = _to_numpy(anomaly_maps), _as_mask(masks)
        if stacked.shape != stacked_gt.shape or stacked.ndim not in (2, 3):
            raise ValueError(f"anomaly_maps {stacked.shape} and masks {stacked_gt.shape} must share one [N, H, W] shape")
        mask_list = list(stacked_gt.reshape(-1, *stacked_gt.shape[-2:]))
        maps, gt = stacked.reshape(-1), stacked_gt.reshape(-1)
    maps = maps.astype(np.float32) if maps.dtype == np.float16 else maps
    n_anomalous = int(np.count_nonzero(gt))
    if n_anomalous == 0 or n_anomalous == gt.size:
        return float("nan")
    fpr, pro = _pro_curve(maps, gt, _region_weights(mask_list))
    return _area_up_to(fpr, pro, fpr_limit) / fpr_limit


def _as_mask(x: Any) -> np.ndarray:
    gt = _to_numpy(x)
    return gt if gt.dtype == np.bool_ else gt > 0
