"""The one inference engine of test.py and predict.py: Lightning's ``Trainer.predict`` with shared flags.

Both scripts declare their device, precision, batching and threshold options through the functions below and
run the model through :func:`run_inference`, so one device or precision fix reaches both, and a user learns
one vocabulary (Lightning's: ``--accelerator``, ``--devices``, ``--precision``, ``--strategy``, ``--num-nodes``).
Under several processes (DDP), each process scores its own share of the images, exactly once.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.callbacks import Callback
from torch.utils.data import DataLoader

from stfpm.config import Parser, Section, existing_file, finite, integer, parse_devices, validate
from stfpm.errors import STFPMError
from stfpm.inference.thresholding import ThresholdPolicy
from stfpm.model.lightning_model import STFPM

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "32", "bf16", "16")


def add_device_args(group: Section, devices: str) -> None:
    """The device and precision flags of every command that runs the model (train.py, test.py, predict.py);
    ``devices`` is the command's default (training may take every device, evaluation takes one)."""
    group.add_argument("--accelerator", default="auto", help="cpu, gpu, mps, auto, ...")
    group.add_argument("--devices", default=devices, help="a count (2), indices (0,1) or auto")
    group.add_argument("--strategy", default="auto", help="auto, ddp, ... (ddp splits the images over --devices)")
    group.add_argument("--num-nodes", type=int, default=1, help="machines taking part (with --strategy ddp)")
    group.add_argument(
        "--precision", default="32-true", choices=PRECISIONS, help="32-true, bf16-mixed, 16-mixed, ... (Lightning's)"
    )


def add_engine_args(parser: Parser, batch_size: int) -> None:
    """Device, precision and batching flags shared by test.py and predict.py (the device flags are train.py's)."""
    group = parser.section("engine")
    add_device_args(group, devices="1")
    group.add_argument("--batch-size", type=int, default=batch_size, help="images per forward pass")
    group.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1), help="image decoding processes")


def add_threshold_args(parser: Parser) -> None:
    """The threshold-policy flags (see :meth:`ThresholdPolicy.resolve`); default: the checkpoint's calibrated ones."""
    group = parser.section("thresholds")
    group.add_argument("--threshold", type=float, help="pixel threshold: a map value >= it is a defect pixel")
    group.add_argument("--image-threshold", type=float, help="image threshold: a score >= it is an anomalous image")
    group.add_argument("--thresholds-from", help="results.json of test.py: use its F1-optimal thresholds")


def threshold_policy(args: argparse.Namespace, model: STFPM) -> ThresholdPolicy:
    """The policy the flags of :func:`add_threshold_args` ask for."""
    return ThresholdPolicy.resolve(model.thresholds, args.image_threshold, args.threshold, args.thresholds_from)


ENGINE_CHECKS = {"batch_size": integer(1), "num_workers": integer(0), "num_nodes": integer(1)}
THRESHOLD_CHECKS = {"threshold": finite(), "image_threshold": finite()}


def check_engine_args(args: argparse.Namespace) -> None:
    """Ranges of the engine and threshold flags, checked before any work starts."""
    validate(args, {**ENGINE_CHECKS, **THRESHOLD_CHECKS})
    if getattr(args, "thresholds_from", None):
        existing_file(args.thresholds_from, "--thresholds-from")


def build_trainer(args: argparse.Namespace, **kwargs: Any) -> pl.Trainer:
    """A Trainer on the requested accelerator/devices/strategy/precision (train.py, test.py, predict.py); a
    device that does not exist, or a setting Lightning refuses, is a one-line error instead of a traceback."""
    try:
        return pl.Trainer(
            accelerator=args.accelerator,
            devices=parse_devices(args.devices),
            strategy=args.strategy,
            num_nodes=args.num_nodes,
            precision=args.precision,
            **kwargs,
        )
    except (MisconfigurationException, ValueError, RuntimeError, TypeError) as exc:
        reason = " ".join(str(exc).split())
        raise STFPMError(
            f"cannot run with --accelerator {args.accelerator} --devices {args.devices} --strategy {args.strategy} "
            f"--precision {args.precision}: {reason}"
        ) from exc


def inference_trainer(args: argparse.Namespace, callbacks: Sequence[Callback]) -> pl.Trainer:
    """A Trainer for ``predict`` on the requested devices (the flags were checked by the command's main)."""
    return build_trainer(args, logger=False, callbacks=list(callbacks), enable_model_summary=False)


def run_inference(model: STFPM, loader: DataLoader, args: argparse.Namespace, callbacks: Sequence[Callback]) -> pl.Trainer:
    """Score every batch of ``loader``; the callbacks (prediction writers) receive the model's outputs."""
    trainer = inference_trainer(args, callbacks)
    trainer.predict(model, dataloaders=loader, return_predictions=False)
    return trainer
