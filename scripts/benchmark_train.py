#!/usr/bin/env python
"""train.py's epoch against the floor of its training step, in one run on this machine.

Writes N JPEG photos as ``train/good`` of a category, then measures

* the floor: one training step alone (teacher forward, student forward and backward, SGD) on random batches of
  the same size, times the steps of an epoch;
* ours: ``train.py`` for 1 and for 1 + E epochs (random teacher, no validation); the difference divided by E is
  the time of one epoch, set-up excluded (data loading, Lightning's loop and logging included).

Example:
    python scripts/benchmark_train.py --backbone resnet18 --image-size 256 --n-images 64 --batch-size 8
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from stfpm.tools.synthetic import write_photos


def _floor(backbone: str, image_size: int, batch_size: int, n: int) -> float:
    """img/s of the bare training step over one epoch's batches."""
    from stfpm.model.loss import stfpm_loss
    from stfpm.model.settings import ModelSettings
    from stfpm.model.torch_model import STFPMModel

    model = STFPMModel(ModelSettings.of(backbone=backbone, image_size=image_size), load_teacher=False)
    model.student.train()
    sgd = model.settings.optimizer
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=sgd.lr, momentum=sgd.momentum,
                                weight_decay=sgd.weight_decay)
    sizes = [min(batch_size, n - i) for i in range(0, n, batch_size)]
    batches = [torch.randn(b, 3, image_size, image_size) for b in sizes]

    def step(images: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        stfpm_loss(*model(images), sgd.hard_fraction).backward()
        optimizer.step()

    step(batches[0])  # warm-up
    start = time.perf_counter()
    for images in batches:
        step(images)
    return n / (time.perf_counter() - start)


def _train_seconds(root: Path, out: Path, epochs: int, args: argparse.Namespace) -> float:
    from stfpm.cli.train import main

    argv = [
        "--category", "bench", "--data-root", str(root), "--output-dir", str(out), "--epochs", str(epochs),
        "--backbone", args.backbone, "--teacher-weights", "random", "--image-size", str(args.image_size),
        "--batch-size", str(args.batch_size), "--num-workers", str(args.num_workers), "--val-fraction", "0",
        "--accelerator", "cpu",
    ]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    if code != 0:
        raise SystemExit(f"train.py failed with exit code {code}")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--extra-epochs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_photos(root / "bench" / "train" / "good", args.n_images, 512, 384)
        floor = _floor(args.backbone, args.image_size, args.batch_size, args.n_images)
        one = _train_seconds(root, root / "runs1", 1, args)
        more = _train_seconds(root, root / "runs2", 1 + args.extra_epochs, args)
        floor_after = _floor(args.backbone, args.image_size, args.batch_size, args.n_images)
    epoch = (more - one) / args.extra_epochs
    ours = args.n_images / epoch if epoch > 0 else math.nan
    print(
        f"{args.backbone}, {args.image_size}px, {args.n_images} JPEG 512x384, batch {args.batch_size}, "
        f"{args.num_workers} workers, {torch.get_num_threads()} torch threads"
    )
    print(f"floor (training step alone): {floor:6.2f} img/s before, {floor_after:6.2f} img/s after")
    print(f"train.py epoch: {ours:6.2f} img/s ({epoch:.1f} s; set-up and first epoch {one:.1f} s)")
    fast, slow = max(floor, floor_after), min(floor, floor_after)
    print(f"ratio train.py / floor: {ours / fast:.2f} (to the slower floor: {ours / slow:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
