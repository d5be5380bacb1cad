"""What a lower precision costs a trained model: test.py's image / pixel AUROC and predict.py's decisions, at
32-true and at another precision, on the checkpoint's own test split.

    python scripts/precision_agreement.py runs/bsdata/version_0/checkpoints/best.ckpt \\
        runs/battery_weld/version_0/checkpoints/best.ckpt --precision bf16-mixed

prints, per checkpoint, the AUROCs at both precisions and the share of test images whose decision (anomalous or
not) is the same; `--precision auto` becomes a default only where that share is at least 99.5% on every set.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import sys
import tempfile
from pathlib import Path

from stfpm.cli.predict import main as predict_main
from stfpm.cli.test import main as evaluate_main
from stfpm.model.checkpoint import load_checkpoint


def _quiet(main, argv: list[str]) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        if main(argv) != 0:
            raise SystemExit(f"failed: {argv}")


def measure(checkpoint: Path, precision: str, work: Path) -> dict[str, float]:
    info = load_checkpoint(checkpoint).run_info
    test_split = Path(info["data_root"]) / info["category"] / "test"
    out: dict[str, dict] = {}
    for p in ("32-true", precision):
        _quiet(evaluate_main, ["--checkpoint", str(checkpoint), "--output-dir", str(work / p / "test"),
                               "--precision", p, "--no-report"])
        _quiet(predict_main, ["--checkpoint", str(checkpoint), "--input", str(test_split), "--output",
                              str(work / p / "pred"), "--precision", p, "--heatmap-format", "none", "--no-report"])
        with (work / p / "pred" / "predictions.csv").open() as handle:
            decisions = {r["path"]: r["is_anomalous"] for r in csv.DictReader(handle)}
        out[p] = {"results": json.loads((work / p / "test" / "results.json").read_text()), "decisions": decisions}
    full, low = out["32-true"], out[precision]
    same = sum(full["decisions"][k] == low["decisions"][k] for k in full["decisions"])
    return {"category": info["category"], "images": len(full["decisions"]), "agree": same / len(full["decisions"]),
            **{f"{k}_{tag}": o["results"][k] for tag, o in (("32", full), ("low", low))
               for k in ("image_auroc", "pixel_auroc")}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--precision", default="bf16-mixed")
    args = parser.parse_args()
    print(f"| set | test images | decisions agreeing with 32-true | image AUROC 32-true / {args.precision} | "
          f"pixel AUROC 32-true / {args.precision} |\n| --- | --- | --- | --- | --- |")
    for checkpoint in args.checkpoints:
        with tempfile.TemporaryDirectory() as tmp:
            m = measure(checkpoint, args.precision, Path(tmp))
        print(f"| {m['category']} | {m['images']} | {100 * m['agree']:.2f}% | {m['image_auroc_32']:.4f} / "
              f"{m['image_auroc_low']:.4f} | {m['pixel_auroc_32']:.4f} / {m['pixel_auroc_low']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
