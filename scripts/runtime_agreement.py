"""What each runtime and precision costs a trained model: test.py on the checkpoint's own test split, once per
configuration, each against its own reference pass of PyTorch at 32-true (test.py's `network` figures).

    python scripts/runtime_agreement.py runs/bsdata/version_0/checkpoints/best.ckpt \\
        runs/battery_weld/version_0/checkpoints/best.ckpt \\
        --configs torch:bf16-mixed onnxruntime:32-true openvino:32-true openvino:bf16-mixed openvino:int8

prints, per checkpoint and configuration, the share of test images whose decision (anomalous or not, at the
checkpoint's thresholds) is unchanged, and the image / pixel AUROC against 32-true. A configuration is fit to be a
default only where that share is at least 99.5% on every set.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

from stfpm.cli.test import main as evaluate_main


def measure(checkpoint: Path, runtime: str, precision: str, work: Path) -> dict:
    argv = ["--checkpoint", str(checkpoint), "--output-dir", str(work), "--runtime", runtime, "--precision", precision,
            "--no-report"]
    with contextlib.redirect_stdout(io.StringIO()):
        if evaluate_main(argv) != 0:
            raise SystemExit(f"failed: test.py {' '.join(argv)}")
    return json.loads((work / "results.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--configs", nargs="+", default=["torch:bf16-mixed", "onnxruntime:32-true", "openvino:32-true",
                                                         "openvino:bf16-mixed", "openvino:int8"],
                        help="RUNTIME:PRECISION pairs")
    args = parser.parse_args()
    print("| set | network | test images | decisions agreeing with torch 32-true | image AUROC 32-true -> it | "
          "pixel AUROC 32-true -> it | largest score difference |\n| --- | --- | --- | --- | --- | --- | --- |")
    for checkpoint in args.checkpoints:
        for config in args.configs:
            runtime, precision = config.split(":")
            with tempfile.TemporaryDirectory() as tmp:
                r = measure(checkpoint, runtime, precision, Path(tmp))
            print(f"| {r['category']} | {r['network']} | {r['n_images']} | {100 * r['decisions_agree']:.2f}% "
                  f"({r['decisions_changed']} changed) | {r['reference_image_auroc']:.4f} -> {r['image_auroc']:.4f} | "
                  f"{r['reference_pixel_auroc']:.4f} -> {r['pixel_auroc']:.4f} | {r['max_score_difference']:.3g} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
