"""`python test.py`: image/pixel AUROC, AUPRO and F1-max of a trained model on the test split."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter

from stfpm.data import MVTecDataModule
from stfpm.evaluation.metrics import aupro, auroc, f1_max, overlap_at_threshold, rates_at_threshold, tpr_at_fpr
from stfpm.inference.engine import run_inference
from stfpm.inference.settings import DeviceSettings
from stfpm.inference.thresholding import ThresholdPolicy
from stfpm.model.lightning_model import STFPM

log = logging.getLogger(__name__)


@dataclass
class TestPredictions:
    """Everything the metrics need, in compact dtypes: float32 maps and scores, bool masks."""

    scores: np.ndarray  # float32 [N]
    labels: np.ndarray  # int8 [N]
    maps: np.ndarray | list[np.ndarray]  # float32 [N,H,W], or N arrays [H_i,W_i] (e.g. at source sizes)
    masks: np.ndarray | list[np.ndarray]  # bool, shaped like maps
    has_mask: np.ndarray  # bool [N]: False for defective images without a ground-truth mask
    defect_types: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


class _Collector(BasePredictionWriter):
    """Copies each batch's outputs into preallocated arrays at their dataset indices, so the maps are held once,
    not twice; under several processes the shares are gathered to every process at the end."""

    def __init__(self, n: int, size: tuple[int, int]) -> None:
        super().__init__(write_interval="batch")
        self.data = TestPredictions(
            scores=np.empty(n, np.float32),
            labels=np.empty(n, np.int8),
            maps=np.empty((n, *size), np.float32),
            masks=np.empty((n, *size), bool),
            has_mask=np.empty(n, bool),
            defect_types=[""] * n,
            paths=[""] * n,
        )
        self.filled = np.zeros(n, bool)
        self.offset = 0

    def write_on_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: dict[str, Any], batch_indices: Any,
        *args: Any,
    ) -> None:
        count = len(prediction["score"])
        if batch_indices is None:  # without a tracking sampler: batches arrive in order
            batch_indices = range(self.offset, self.offset + count)
        self.offset += count
        self._store(np.asarray(list(batch_indices)), {
            "scores": prediction["score"].numpy(), "labels": prediction["label"].numpy(),
            "maps": prediction["anomaly_map"].numpy(), "masks": prediction["mask"][:, 0].numpy(),
            "has_mask": prediction["has_mask"].numpy(), "defect_types": list(prediction["defect_type"]),
            "paths": list(prediction["path"]),
        })

    def _store(self, index: np.ndarray, values: dict[str, Any]) -> None:
        d = self.data
        for key in ("scores", "labels", "maps", "masks", "has_mask"):
            getattr(d, key)[index] = values[key]
        for i, defect, path in zip(index.tolist(), values["defect_types"], values["paths"]):
            d.defect_types[i], d.paths[i] = defect, path
        self.filled[index] = True

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size > 1:
            import torch.distributed as dist

            mine = np.flatnonzero(self.filled)
            d = self.data
            share = {
                "index": mine, "scores": d.scores[mine], "labels": d.labels[mine], "maps": d.maps[mine],
                "masks": d.masks[mine], "has_mask": d.has_mask[mine],
                "defect_types": [d.defect_types[i] for i in mine], "paths": [d.paths[i] for i in mine],
            }
            shares: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(shares, share)
            for other in shares:
                self._store(other["index"], other)
        if not self.filled.all():
            raise RuntimeError(f"{int((~self.filled).sum())} test images received no prediction")


def predict_test_split(model: STFPM, datamodule: MVTecDataModule, devices: DeviceSettings) -> tuple[TestPredictions, bool]:
    """Run the model over the test split through the shared engine (progress bar, devices, precision, DDP).

    Returns the predictions of every test image, in dataset order, on every process, and whether this
    process is the first (the one that reports).
    """
    datamodule.setup("test")
    assert datamodule.test_dataset is not None
    n = len(datamodule.test_dataset)
    collector = _Collector(n, model.preprocessing().size)
    trainer = run_inference(model, datamodule.test_dataloader(), devices, [collector])
    return collector.data, trainer.is_global_zero


def network_cost(reference: TestPredictions, pred: TestPredictions, policy: ThresholdPolicy) -> dict[str, Any]:
    """What running the network another way (another runtime or precision) costs against the PyTorch model at 32-true
    on the same test images: the reference's image and pixel AUROC, the image decisions (at the image threshold in
    use) and the pixel decisions (at the pixel threshold) it changes, and the largest score and map differences."""
    labels = reference.labels.astype(bool)
    maps, masks = _pixel_subset(reference, reference.has_mask)
    before, after = reference.scores.astype(np.float64) >= policy.image, pred.scores.astype(np.float64) >= policy.image
    reference_maps, pred_maps = _flat(reference.maps), _flat(pred.maps)
    return {
        "reference_network": REFERENCE_NETWORK,
        "reference_image_auroc": auroc(reference.scores, labels),
        "reference_pixel_auroc": auroc(_flat(maps), _flat(masks)),
        "decisions_changed": int((before != after).sum()),
        "decisions_agree": float((before == after).mean()) if len(after) else math.nan,
        "pixel_decisions_changed": float(((reference_maps >= policy.pixel) != (pred_maps >= policy.pixel)).mean())
        if len(pred_maps) else math.nan,
        "max_score_difference": float(np.abs(reference.scores - pred.scores).max()) if len(after) else math.nan,
        "max_map_difference": float(np.abs(reference_maps - pred_maps).max()) if len(pred_maps) else math.nan,
    }


REFERENCE_NETWORK = "torch 32-true"
"""What another runtime or precision is measured against: the PyTorch model in full precision."""


def _pixel_subset(pred: TestPredictions, select: np.ndarray) -> tuple[Any, Any]:
    """Maps and masks of the selected images; views, not copies, when every image is selected."""
    if select.all():
        return pred.maps, pred.masks
    if isinstance(pred.maps, list):
        keep = np.flatnonzero(select)
        return [pred.maps[i] for i in keep], [pred.masks[i] for i in keep]
    return pred.maps[select], pred.masks[select]


def _flat(arrays: Any) -> np.ndarray:
    """All pixels of a stacked array, or of a list of per-image arrays, as one flat array."""
    if isinstance(arrays, list):
        return np.concatenate([a.ravel() for a in arrays]) if arrays else np.zeros(0, np.float32)
    return arrays.reshape(-1)


def compute_metrics(
    pred: TestPredictions,
    fpr_limit: float,
    image_threshold: float = math.nan,
    pixel_threshold: float = math.nan,
) -> dict[str, Any]:
    """All figures of one category; undefined ones (a single class present, no threshold) are NaN.

    ``image_threshold`` and ``pixel_threshold`` are the decision thresholds of the model (the calibrated ones
    stored in the checkpoint): the operating-point figures say what a user of ``predict.py`` gets with them.
    """
    labels = pred.labels.astype(bool)
    maps, masks = _pixel_subset(pred, pred.has_mask)
    flat_maps, flat_masks = _flat(maps), _flat(masks)
    image_f1, image_thr = f1_max(pred.scores, labels)
    pixel_f1, pixel_thr = f1_max(flat_maps, flat_masks) if flat_masks.any() else (math.nan, math.nan)
    results: dict[str, Any] = {
        "image_auroc": auroc(pred.scores, labels),
        "pixel_auroc": auroc(flat_maps, flat_masks),
        "pixel_aupro": aupro(maps, masks, fpr_limit=fpr_limit) if len(masks) else math.nan,
        "image_f1_max": image_f1,
        "image_f1_threshold": image_thr,
        "pixel_f1_max": pixel_f1,
        "pixel_f1_threshold": pixel_thr,
        "aupro_fpr_limit": fpr_limit,
        "n_images": int(len(labels)),
        "n_good": int((~labels).sum()),
        "n_defective": int(labels.sum()),
        "n_defective_without_mask": int((labels & ~pred.has_mask).sum()),
        **operating_point(pred.scores, labels, flat_maps, flat_masks, image_threshold, pixel_threshold),
    }
    results["per_defect_type"] = _per_defect_type(pred, labels, image_threshold)
    return results


def operating_point(
    scores: np.ndarray,
    labels: np.ndarray,
    maps: np.ndarray,
    masks: np.ndarray,
    image_threshold: float,
    pixel_threshold: float,
) -> dict[str, float]:
    """What the decision thresholds deliver on the test split, and the image ROC at fixed false-alarm rates.

    Image rates count images whose score >= ``image_threshold``; pixel figures count the pixels of the
    images with ground truth (good images included) whose map value >= ``pixel_threshold``.
    """
    tpr, fpr = rates_at_threshold(scores, labels, image_threshold)
    precision, recall, iou = overlap_at_threshold(maps, masks, pixel_threshold) if masks.any() else (math.nan,) * 3
    return {
        "image_tpr_at_threshold": tpr,
        "image_fpr_at_threshold": fpr,
        "pixel_precision_at_threshold": precision,
        "pixel_recall_at_threshold": recall,
        "pixel_iou_at_threshold": iou,
        "image_tpr_at_1pct_fpr": tpr_at_fpr(scores, labels, 0.01),
        "image_tpr_at_5pct_fpr": tpr_at_fpr(scores, labels, 0.05),
    }


def _per_defect_type(pred: TestPredictions, labels: np.ndarray, image_threshold: float) -> dict[str, dict[str, Any]]:
    """Image and pixel AUROC of each defect type against the good images, and the share of it flagged."""
    types = np.asarray(pred.defect_types)
    good = ~labels
    out: dict[str, dict[str, Any]] = {}
    for defect in sorted(set(pred.defect_types) - {"good"}):
        select = good | (types == defect)
        maps, masks = _pixel_subset(pred, select & pred.has_mask)
        out[defect] = {
            "n_images": int((types == defect).sum()),
            "image_auroc": auroc(pred.scores[select], labels[select]),
            "pixel_auroc": auroc(_flat(maps), _flat(masks)),
            "image_tpr_at_threshold": rates_at_threshold(pred.scores[select], labels[select], image_threshold)[0],
        }
    return out


def undefined_metrics_note(results: dict[str, Any]) -> str | None:
    """A one-line explanation when AUROCs are undefined, instead of a crash."""
    if results["n_good"] == 0:
        return "the test split has no good images: image AUROC is undefined (n/a); pixel metrics use the defective images"
    if results["n_defective"] == 0:
        return "the test split has no defective images: AUROC/AUPRO/F1 are undefined (reported as n/a)"
    if results["n_defective"] == results["n_defective_without_mask"]:
        return "no defective image has a ground-truth mask: pixel metrics are undefined (reported as n/a)"
    return None
