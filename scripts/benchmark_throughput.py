#!/usr/bin/env python
"""Training and inference throughput of STFPM on this machine (CPU or GPU, fp32 or bf16).

Speed does not depend on the weights, so the teacher is random here (no download). Prints images/s for a
training step (teacher forward, student forward + backward, SGD) and for inference (anomaly maps + scores),
and the peak GPU memory when on CUDA. Example:
    python scripts/benchmark_throughput.py --backbone resnet152 --batch-size 32 --precision bf16
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch

from stfpm.inference.predictor import resolve_device
from stfpm.inference.settings import autocast_dtype
from stfpm.model.loss import stfpm_loss
from stfpm.model.settings import ModelSettings
from stfpm.model.torch_model import STFPMModel


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet152")
    parser.add_argument("--student-backbone")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    device = resolve_device(args.device)
    # the shipped defaults (map, score, normalization) at the asked size: the pipeline users run
    settings = ModelSettings.of(backbone=args.backbone, student_backbone=args.student_backbone, image_size=args.image_size)
    model = STFPMModel(settings, load_teacher=False).to(device)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    sgd = model.settings.optimizer
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=sgd.lr, momentum=sgd.momentum,
                                weight_decay=sgd.weight_decay)
    dtype = autocast_dtype(args.precision)
    autocast = torch.autocast(device_type=device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = stfpm_loss(*model(images), sgd.hard_fraction)
        loss.backward()
        optimizer.step()

    def infer() -> None:
        with torch.inference_mode(), autocast:
            model.predict(images)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    train_s = _timed(train_step, args.steps, args.warmup, device)
    model.eval()
    infer_s = _timed(infer, args.steps, args.warmup, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}, {args.backbone} -> {args.student_backbone or args.backbone}, "
          f"{args.image_size}px, batch {args.batch_size}, precision {args.precision}")
    print(f"train: {args.batch_size / train_s:8.1f} img/s ({train_s * 1000:.1f} ms/step)")
    print(f"infer: {args.batch_size / infer_s:8.1f} img/s ({infer_s * 1000:.1f} ms/batch)")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
