#!/usr/bin/env python
"""predict.py end to end against the compute floor, in one run on this machine.

Writes N JPEG photos, builds a checkpoint (random teacher: speed does not depend on the weights), then measures

* the floor: the truncated teacher and student forward alone, on preprocessed batches of the same size, in
  PyTorch's default memory layout and in the channels-last layout that predict.py uses;
* ours: ``predict.py`` on the folder (decode, resize, model, maps, masks, heatmaps and the CSV written),
  timed from the first batch to the last file written, and the whole call (checkpoint load, set-up).

and prints img/s of each and the ratio ours / floor. Example:
    python scripts/benchmark_predict.py --backbone resnet18 --image-size 256 --n-images 64 --batch-size 8
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from stfpm.tools.synthetic import write_photos


def _checkpoint(path: Path, backbone: str, image_size: int) -> None:
    from stfpm.model import checkpoint_format
    from stfpm.model.lightning_model import STFPM
    from stfpm.model.settings import ModelSettings

    model = STFPM(ModelSettings.of(backbone=backbone, image_size=image_size), load_teacher=False)
    model.model.image_threshold.fill_(0.5)
    model.model.pixel_threshold.fill_(0.5)
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": model.settings.as_dict()}
    checkpoint_format.stamp(checkpoint, {}, [])
    torch.save(checkpoint, path)


def _floor(checkpoint: Path, n: int, batch_size: int, image_size: int, precision: str, layout: torch.memory_format) -> float:
    """img/s of teacher + student forward alone (no data loading, no maps)."""
    from stfpm.model.checkpoint import load_checkpoint

    net = load_checkpoint(checkpoint).model.eval().to(memory_format=layout)
    batches = [
        torch.randn(min(batch_size, n - i), 3, image_size, image_size).contiguous(memory_format=layout)
        for i in range(0, n, batch_size)
    ]
    from stfpm.inference.settings import autocast_dtype

    dtype = autocast_dtype(precision)
    autocast = torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        net(batches[0])  # warm-up
        start = time.perf_counter()
        for batch in batches:
            net(batch)
        elapsed = time.perf_counter() - start
    return n / elapsed


def _ours(argv: list[str]) -> tuple[float, float, int]:
    """(loop img/s as predict.py reports it, whole-call seconds, images processed)."""
    from stfpm.cli.predict import main

    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    whole = time.perf_counter() - start
    text = out.getvalue()
    match = re.search(r"(\d+) images.*?([\d.]+) img/s", text)
    if code != 0 or not match:
        raise SystemExit(f"predict.py failed (exit {code}):\n{text}")
    return float(match.group(2)), whole, int(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--source-size", type=int, nargs=2, default=[512, 384], metavar=("W", "H"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="alternating floor / ours measurements")
    parser.add_argument("--precision", default="32-true", help="Lightning precision passed to predict.py")
    parser.add_argument("--predict-args", nargs=argparse.REMAINDER, default=[], help="extra predict.py flags")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_photos(root / "photos", args.n_images, *args.source_size)
        _checkpoint(root / "model.ckpt", args.backbone, args.image_size)
        floors, floors_cl, loops, wholes = [], [], [], []
        for r in range(args.repeats):
            floor_args = (root / "model.ckpt", args.n_images, args.batch_size, args.image_size, args.precision)
            floors.append(_floor(*floor_args, torch.contiguous_format))
            floors_cl.append(_floor(*floor_args, torch.channels_last))
            argv = [
                "--checkpoint", str(root / "model.ckpt"), "--input", str(root / "photos"), "--output", str(root / f"out{r}"),
                "--batch-size", str(args.batch_size), "--num-workers", str(args.num_workers),
                "--precision", args.precision, *args.predict_args,
            ]
            loop, whole, n = _ours(argv)
            loops.append(loop)
            wholes.append(n / whole)
    print(
        f"{args.backbone}, {args.image_size}px, {args.n_images} JPEG {args.source_size[0]}x{args.source_size[1]}, "
        f"batch {args.batch_size}, {args.num_workers} workers, {args.precision}, {torch.get_num_threads()} torch threads"
    )
    for r, (f, fc, lo, w) in enumerate(zip(floors, floors_cl, loops, wholes)):
        print(
            f"run {r}: floor {f:6.2f} img/s (channels-last {fc:6.2f}) | predict.py {lo:6.2f} img/s "
            f"(ratio {lo / f:.2f}; to the channels-last floor {lo / fc:.2f}) | whole call {w:6.2f} img/s"
        )
    ratio = statistics.median(lo / f for lo, f in zip(loops, floors))
    ratio_cl = statistics.median(lo / f for lo, f in zip(loops, floors_cl))
    print(f"median ratio predict.py / floor: {ratio:.2f} (to the channels-last floor: {ratio_cl:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
