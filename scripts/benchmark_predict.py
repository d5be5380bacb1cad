#!/usr/bin/env python
"""predict.py end to end against the bare network, for each runtime and precision, side by side in one run.

Writes N JPEG photos (and a few more as the run's validation images, which OpenVINO INT8 calibrates on), builds a
checkpoint (random teacher: speed does not depend on the weights), then, for every RUNTIME:PRECISION, alternating
over the repeats, measures

* the floor: that configuration's network alone on preprocessed batches of the same size (PyTorch: the truncated
  teacher and student in the channels-last layout predict.py uses; onnxruntime / openvino: the exported network);
* ours: ``predict.py --runtime RUNTIME --precision PRECISION`` on the folder (decode, resize, network, maps, masks,
  heatmaps and the CSV written), its own img/s from the first batch to the last file written.

and prints img/s of each, ours / its floor, and ours / PyTorch 32-true's predict.py. Example:
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

CONFIGS = ["torch:32-true", "torch:bf16-mixed", "onnxruntime:32-true", "openvino:32-true", "openvino:bf16-mixed",
           "openvino:int8"]


def _checkpoint(path: Path, backbone: str, image_size: int, validation: list[Path]) -> None:
    from stfpm.model import checkpoint_format
    from stfpm.model.lightning_model import STFPM
    from stfpm.model.settings import ModelSettings

    model = STFPM(ModelSettings.of(backbone=backbone, image_size=image_size), load_teacher=False)
    model.model.image_threshold.fill_(0.5)
    model.model.pixel_threshold.fill_(0.5)
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": model.settings.as_dict()}
    info = {"category": "photos", "data_root": str(validation[0].parents[1]),
            "calibration_images": [p.name for p in validation]}
    checkpoint_format.stamp(checkpoint, info, [])
    torch.save(checkpoint, path)


def _floor(checkpoint: Path, config: str, n: int, batch_size: int, image_size: int) -> float:
    """img/s of the configuration's network alone (no data loading, no maps)."""
    from stfpm.inference.runtime import attach
    from stfpm.inference.settings import DeviceSettings, RuntimeSettings, autocast_dtype, resolve_precision
    from stfpm.model.checkpoint import load_checkpoint

    runtime, precision = config.split(":")
    model = load_checkpoint(checkpoint)
    model.prepare_for_inference()
    attach(model, RuntimeSettings(runtime), DeviceSettings(accelerator="cpu", precision=precision), [batch_size])
    batches = [torch.randn(min(batch_size, n - i), 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
               for i in range(0, n, batch_size)]
    dtype = autocast_dtype(resolve_precision(precision, "cpu")) if runtime == "torch" else None
    autocast = torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        net = model.network or model.model.predict
        net(batches[0])  # warm-up
        start = time.perf_counter()
        for batch in batches:
            net(batch)
        elapsed = time.perf_counter() - start
    return n / elapsed


def _ours(argv: list[str]) -> float:
    """img/s as predict.py reports it (first batch to last file written)."""
    from stfpm.cli.predict import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    text = out.getvalue()
    match = re.search(r"(\d+) images.*?([\d.]+) img/s", text)
    if code != 0 or not match:
        raise SystemExit(f"predict.py failed (exit {code}):\n{text}")
    return float(match.group(2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--source-size", type=int, nargs=2, default=[512, 384], metavar=("W", "H"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="alternating measurements of every configuration")
    parser.add_argument("--configs", nargs="+", default=CONFIGS, help="RUNTIME:PRECISION pairs, the first is the baseline")
    parser.add_argument("--predict-args", nargs=argparse.REMAINDER, default=[], help="extra predict.py flags")
    args = parser.parse_args()
    torch.manual_seed(0)
    floors: dict[str, list[float]] = {c: [] for c in args.configs}
    ours: dict[str, list[float]] = {c: [] for c in args.configs}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_photos(root / "photos", args.n_images, *args.source_size)
        validation = write_photos(root / "validation", 16, *args.source_size, seed=1)
        _checkpoint(root / "model.ckpt", args.backbone, args.image_size, validation)
        for r in range(args.repeats):
            for config in args.configs:
                runtime, precision = config.split(":")
                floors[config].append(_floor(root / "model.ckpt", config, args.n_images, args.batch_size,
                                             args.image_size))
                ours[config].append(_ours([
                    "--checkpoint", str(root / "model.ckpt"), "--input", str(root / "photos"), "--output",
                    str(root / f"out_{runtime}_{precision}_{r}"), "--batch-size", str(args.batch_size),
                    "--num-workers", str(args.num_workers), "--runtime", runtime, "--precision", precision,
                    *args.predict_args]))
    print(f"{args.backbone}, {args.image_size}px, {args.n_images} JPEG {args.source_size[0]}x{args.source_size[1]}, "
          f"batch {args.batch_size}, {args.num_workers} workers, {torch.get_num_threads()} torch threads, "
          f"{args.repeats} alternating repeats (each figure: every repeat)")
    print("| network | floor img/s | predict.py img/s | predict.py / floor | predict.py / "
          f"{args.configs[0]} predict.py |\n| --- | --- | --- | --- | --- |")
    base = statistics.median(ours[args.configs[0]])
    for config in args.configs:
        ratio = statistics.median(o / f for o, f in zip(ours[config], floors[config]))
        print(f"| {config.replace(':', ' ')} | {_spread(floors[config])} | {_spread(ours[config])} | {ratio:.2f} | "
              f"{statistics.median(ours[config]) / base:.2f}x |")
    return 0


def _spread(values: list[float]) -> str:
    return " / ".join(f"{v:.1f}" for v in values)


if __name__ == "__main__":
    sys.exit(main())
