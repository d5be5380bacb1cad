"""test.py's work: evaluate a checkpoint (or the latest run of each category) on its test split and write the
results beside it."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from stfpm.core.errors import CheckpointError
from stfpm.core.layout import Run, Runs
from stfpm.data.datamodule import MVTecDataModule
from stfpm.data.settings import DEFAULT_DATA_ROOT, DataSettings
from stfpm.evaluation.metrics import roc_curve
from stfpm.evaluation.report import write_index, write_inspection
from stfpm.evaluation.results import (
    REFERENCE_NETWORK,
    TestPredictions,
    compute_metrics,
    network_cost,
    predict_test_split,
    undefined_metrics_note,
)
from stfpm.evaluation.settings import TestSettings
from stfpm.inference.postprocess import binary_mask
from stfpm.inference.runtime import attach, runtime_label
from stfpm.inference.settings import DeviceSettings, EngineSettings, RuntimeSettings, ThresholdSettings
from stfpm.inference.thresholding import ThresholdPolicy
from stfpm.model.calibrate import supported_rate
from stfpm.model.checkpoint import load_checkpoint
from stfpm.model.lightning_model import STFPM
from stfpm.reporting.panels import save_image_panels, save_roc_curves, save_score_histogram
from stfpm.reporting.tables import fmt, write_category_results, write_summary

log = logging.getLogger(__name__)


class Evaluation:
    """test.py with its options; ``say`` receives what a user reads (tables, where the results are)."""

    def __init__(self, settings: TestSettings, engine: EngineSettings, devices: DeviceSettings,
                 thresholds: ThresholdSettings, runtime: RuntimeSettings | None = None,
                 say: Callable[[str], None] = print) -> None:
        settings.check_paths()
        thresholds.check_paths()
        self.settings, self.engine, self.devices, self.thresholds, self.say = settings, engine, devices, thresholds, say
        self.runtime = runtime or RuntimeSettings()
        self.network = runtime_label(self.runtime, devices)  # what runs the network, in words
        self.reports: dict[str, Path] = {}  # category -> its report.html

    def run(self) -> list[dict[str, Any]]:
        """Evaluate what the options name: a checkpoint, the latest run of a category, of every category (`all`,
        with a summary table) or of any category; the results of each (none on the other processes of DDP)."""
        s = self.settings
        runs = Runs(Path(s.runs_dir))
        output_dir = Path(s.output_dir).expanduser() if s.output_dir else None
        if s.checkpoint or s.category != "all":
            checkpoint = runs.resolve(s.checkpoint, s.category)
            results = self.checkpoint(checkpoint, s.category, output_dir)
            return [results] if results else []
        categories = runs.trained_categories()
        if not categories:
            raise CheckpointError(f"no trained runs under {s.runs_dir}; train with `python train.py --category ...`")
        every = [self.checkpoint(runs.latest_checkpoint(c), c, output_dir / c if output_dir else None)
                 for c in categories]
        if not all(every):
            return []  # not the reporting process
        summary_dir = output_dir or runs.root
        self.say(f"\nall categories\n{write_summary(every, summary_dir)}")
        self.say(f"summary: {summary_dir / 'results_all.md'}")
        if self.settings.report:
            index = write_index(every, [self.reports.get(r["category"]) for r in every], summary_dir)
            self.say(f"report: {index}")
        return every

    def checkpoint(self, checkpoint: Path, category: str | None, out_dir: Path | None) -> dict[str, Any]:
        """Evaluate one checkpoint; write and show its results; return them (empty on the other processes)."""
        model = load_checkpoint(checkpoint)
        category = category or model.run_info.get("category")
        if not category:
            raise CheckpointError(f"{checkpoint} does not record its category; pass --category")
        data_root = self.settings.data_root or model.run_info.get("data_root") or DEFAULT_DATA_ROOT
        data = DataSettings(category=category, data_root=str(data_root), batch_size=self.engine.batch_size,
                            num_workers=self.engine.num_workers)
        datamodule = MVTecDataModule(data, model.preprocessing(), seed=0)
        policy = ThresholdPolicy.of(self.thresholds, model.thresholds)
        run = Run(out_dir) if out_dir else Run.of_checkpoint(checkpoint)
        preflight = datamodule.preflight("test", strict=self.settings.strict, report_path=run.problems("test"))
        pred, reporter, cost = self.predict(model, datamodule, policy)
        if not reporter:  # under several processes, the first one reports
            return {}
        support = int(model.model.image_threshold_support)
        results = {
            "category": category,
            **compute_metrics(pred, self.settings.fpr_limit, policy.image, policy.pixel),
            "calibrated_image_threshold": model.thresholds[0],
            "calibrated_pixel_threshold": model.thresholds[1],
            **model.model.promise,
            "image_threshold_supported_rate": supported_rate(support) if support else math.nan,
            **policy.as_dict(),
            "checkpoint": str(checkpoint),
            "data_root": str(data_root),
            **model.settings.summary(),
            "network": self.network,
            **cost,
        }
        table = write_category_results(results, run.folder)
        if preflight.problems:
            preflight.save(run.problems("test"))
        self.say(f"\n{category} ({len(pred.scores)} test images, checkpoint {checkpoint})\n{table}")
        if cost:
            self.say(cost_line(results))
        note = undefined_metrics_note(results)
        if note:
            log.warning("%s: %s", category, note)
        if self.settings.save_images:
            fallback = policy.or_else(results["image_f1_threshold"], results["pixel_f1_threshold"], "F1-optimal")
            save_visuals(pred, results, run.folder, fallback)
        self.say(f"results: {run.folder / 'results.json'}")
        if self.settings.report:
            self.reports[category] = write_inspection(pred, results, run.folder, model, checkpoint, policy)
            self.say(f"report: {self.reports[category]}")
        return results

    def predict(self, model: STFPM, datamodule: MVTecDataModule, policy: ThresholdPolicy
                ) -> tuple[TestPredictions, bool, dict[str, Any]]:
        """The test split's predictions in the runtime and precision asked for, whether this process reports, and,
        when that is not the reference (PyTorch at 32-true), what it costs against a reference pass."""
        runs_on = attach(model, self.runtime, self.devices, [self.engine.batch_size])  # refuses what it cannot run
        cost: dict[str, Any] = {}
        reference = None
        if self.network != REFERENCE_NETWORK:
            network, model.network = model.network, None
            reference, _ = predict_test_split(model, datamodule, dataclasses.replace(self.devices, precision="32-true"))
            model.network = network
        pred, reporter = predict_test_split(model, datamodule, runs_on)
        if reference is not None and reporter:
            cost = network_cost(reference, pred, policy)
        return pred, reporter, cost


def cost_line(results: dict[str, Any]) -> str:
    """test.py's line on what the network it ran costs against the reference."""
    return (f"{results['network']} against {results['reference_network']}: {results['decisions_changed']} of "
            f"{results['n_images']} image decisions changed ({100 * results['decisions_agree']:.2f}% agree), image "
            f"AUROC {fmt(results['reference_image_auroc'])} -> {fmt(results['image_auroc'])}, pixel AUROC "
            f"{fmt(results['reference_pixel_auroc'])} -> {fmt(results['pixel_auroc'])}, largest score difference "
            f"{results['max_score_difference']:.3g}")


def save_visuals(pred: TestPredictions, results: dict[str, Any], out_dir: Path, policy: ThresholdPolicy) -> None:
    """--save-images: a panel per test image, the ROC curves and the score histogram."""
    threshold = policy.pixel
    if not math.isfinite(threshold):
        log.warning("no pixel threshold available: predicted masks in the panels are skipped")
        threshold = math.inf
    count = save_image_panels(pred.paths, pred.maps, pred.masks, pred.defect_types, out_dir / "images", threshold,
                              lambda anomaly_map: binary_mask(anomaly_map, threshold, 0))
    save_roc_curves(_curves(pred, results), out_dir / "roc_curve.png", f"ROC: {results['category']}")
    save_score_histogram(pred.scores, pred.labels, out_dir / "score_histogram.png", policy.image, results["category"])
    log.info("wrote %d image panels (input | ground truth | heatmap | mask) to %s", count, out_dir / "images")


def _curves(pred: TestPredictions, results: dict[str, Any]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The image ROC (both classes present) and the pixel ROC (defect and normal pixels present)."""
    curves = []
    labels = pred.labels.astype(bool)
    if 0 < labels.sum() < len(labels):
        fpr, tpr = roc_curve(pred.scores, labels)
        curves.append((f"image (AUROC {results['image_auroc']:.4f})", fpr, tpr))
    select = pred.has_mask
    masks = pred.masks[select]
    if masks.any() and not masks.all():
        fpr, tpr = roc_curve(pred.maps[select], masks)
        curves.append((f"pixel (AUROC {results['pixel_auroc']:.4f})", fpr, tpr))
    return curves
