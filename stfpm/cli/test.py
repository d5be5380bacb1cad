"""`python test.py`: evaluate the latest run of a category (or every category) on its test split."""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

from stfpm.config import Parser, new_parser, number, parse_args, validate, writable_folder
from stfpm.data import DEFAULT_DATA_ROOT, MVTecDataModule
from stfpm.errors import CheckpointError
from stfpm.evaluation.results import TestPredictions, compute_metrics, predict_test_split, undefined_metrics_note
from stfpm.inference.engine import add_engine_args, add_threshold_args, check_engine_args, threshold_policy
from stfpm.inference.thresholding import ThresholdPolicy
from stfpm.model.checkpoint import (
    describe_run,
    find_latest_checkpoint,
    find_latest_run,
    list_trained_categories,
    load_checkpoint,
)
from stfpm.reporting.report import write_category_results, write_summary

log = logging.getLogger(__name__)


def build_parser() -> Parser:
    parser = new_parser("Evaluate STFPM on the test split: image/pixel AUROC, pixel AUPRO, F1-max, per defect type.")
    options = parser.section("test")
    options.add_argument(
        "--category", help="category to evaluate (its latest run), or `all` (default: the latest run of any category)"
    )
    options.add_argument("--checkpoint", help="evaluate this checkpoint instead of the latest run")
    options.add_argument(
        "--data-root", help=f"dataset root (default: the one recorded at training, else {DEFAULT_DATA_ROOT})"
    )
    options.add_argument("--runs-dir", default="runs", help="where train.py wrote its runs (its --output-dir)")
    options.add_argument("--output-dir", help="where results go (default: next to the checkpoint, in its run folder)")
    options.add_argument("--fpr-limit", type=float, default=0.3, help="AUPRO integrates up to this false positive rate")
    options.add_argument("--save-images", action="store_true", help="also write per-image panels, ROC and histogram")
    options.add_argument(
        "--strict", action="store_true", help="stop on any data problem instead of leaving unusable files out"
    )
    add_threshold_args(parser)
    add_engine_args(parser, batch_size=32)
    return parser


def _run_dir(checkpoint: Path) -> Path:
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def evaluate_checkpoint(
    args: argparse.Namespace, checkpoint: Path, category: str | None, out_dir: Path | None
) -> dict[str, Any]:
    """Evaluate one checkpoint; write and print its results; return them."""
    model = load_checkpoint(checkpoint)
    category = category or model.run_info.get("category")
    if not category:
        raise CheckpointError(f"{checkpoint} does not record its category; pass --category")
    data_root = args.data_root or model.run_info.get("data_root") or DEFAULT_DATA_ROOT
    hp = model.hparams
    datamodule = MVTecDataModule(
        data_root, category, image_size=hp["image_size"], batch_size=args.batch_size,
        num_workers=args.num_workers, mean=hp["mean"], std=hp["std"],
    )
    policy = threshold_policy(args, model)
    out_dir = out_dir or _run_dir(checkpoint)
    report = datamodule.preflight("test", strict=args.strict, report_path=out_dir / "data_problems_test.json")
    pred, reporter = predict_test_split(model, datamodule, args)
    if not reporter:  # under several processes, the first one reports
        return {}
    results = {
        "category": category,
        **compute_metrics(pred, fpr_limit=args.fpr_limit, image_threshold=policy.image, pixel_threshold=policy.pixel),
        "calibrated_image_threshold": model.thresholds[0],
        "calibrated_pixel_threshold": model.thresholds[1],
        **policy.as_dict(),
        "checkpoint": str(checkpoint),
        "data_root": str(data_root),
        "backbone": hp["backbone"],
        "student_backbone": hp["student_backbone"],
        "layers": list(hp["layers"]),
        "teacher_weights": hp.get("teacher_weights"),
        "image_size": hp["image_size"],
    }
    table = write_category_results(results, out_dir)
    if report.problems:
        report.save(out_dir / "data_problems_test.json")
    print(f"\n{category} ({len(pred.scores)} test images, checkpoint {checkpoint})\n{table}")
    note = undefined_metrics_note(results)
    if note:
        log.warning("%s: %s", category, note)
    if args.save_images:
        fallback = policy.or_else(results["image_f1_threshold"], results["pixel_f1_threshold"], "F1-optimal")
        _save_visuals(pred, results, out_dir, fallback)
    print(f"results: {out_dir / 'results.json'}")
    return results


def _save_visuals(pred: TestPredictions, results: dict[str, Any], out_dir: Path, policy: ThresholdPolicy) -> None:
    from stfpm.reporting.visual_report import save_image_panels, save_roc_curves, save_score_histogram

    threshold = policy.pixel
    if not math.isfinite(threshold):
        log.warning("no pixel threshold available: predicted masks in the panels are skipped")
        threshold = math.inf
    count = save_image_panels(pred, out_dir / "images", threshold)
    save_roc_curves(pred, out_dir / "roc_curve.png", results)
    save_score_histogram(pred, out_dir / "score_histogram.png", policy.image, results["category"])
    log.info("wrote %d image panels (input | ground truth | heatmap | mask) to %s", count, out_dir / "images")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    validate(args, {"fpr_limit": number(0, 1, low_open=True)})
    check_engine_args(args)
    if args.output_dir:
        writable_folder(args.output_dir, "--output-dir")
    output_dir = Path(args.output_dir) if args.output_dir else None
    if args.checkpoint:
        evaluate_checkpoint(args, Path(args.checkpoint).expanduser(), args.category, output_dir)
        return 0
    if not args.category:  # the most recently trained run, as users expect after `python train.py ...`
        checkpoint = find_latest_run(args.runs_dir)
        log.info("no --category or --checkpoint: evaluating the latest run, %s", describe_run(checkpoint))
        evaluate_checkpoint(args, checkpoint, None, output_dir)
        return 0
    if args.category != "all":
        checkpoint = find_latest_checkpoint(args.runs_dir, args.category)
        evaluate_checkpoint(args, checkpoint, args.category, output_dir)
        return 0
    categories = list_trained_categories(args.runs_dir)
    if not categories:
        raise CheckpointError(f"no trained runs under {args.runs_dir}; train with `python train.py --category ...`")
    results = [
        evaluate_checkpoint(
            args, find_latest_checkpoint(args.runs_dir, c), c, output_dir / c if output_dir else None
        )
        for c in categories
    ]
    if not all(results):
        return 0  # not the reporting process
    summary_dir = output_dir or Path(args.runs_dir)
    print(f"\nall categories\n{write_summary(results, summary_dir)}")
    print(f"summary: {summary_dir / 'results_all.md'}")
    return 0


def cli() -> int:
    """The console script: :func:`main` with the error convention."""
    from stfpm.cli import run

    return run(main)
