"""Benchmark stfpm.evaluation.metrics.auroc against sklearn.metrics.roc_auc_score on a large pixel set.

Usage (from the repo root)::

    python scripts/benchmark_auroc.py [--pixels 50000000] [--positive-fraction 0.05] [--seed 0]

Why subprocesses: peak memory of one call can only be measured honestly in a process whose high-water mark
holds nothing else. The parent generates the data once and saves it to .npy files; each method then runs in
its own fresh interpreter that loads the identical arrays (same bytes, same import set), resets the kernel's
peak-RSS counter, and reports ``peak RSS during the call - RSS just before it``. Data and interpreter memory
are thus excluded identically for both methods.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent

METHODS = ("stfpm.evaluation.metrics.auroc", "sklearn.metrics.roc_auc_score")


def make_data(pixels: int, positive_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Anomaly-map-like float32 scores (half-normal, positives shifted up), rounded to float16 precision.

    The float16 rounding reproduces the heavy ties of real maps computed or stored in half precision.
    """
    rng = np.random.default_rng(seed)
    labels = rng.random(pixels, dtype=np.float32) < positive_fraction
    scores = np.abs(rng.standard_normal(pixels, dtype=np.float32))
    scores += labels * np.float32(1.2)
    scores = scores.astype(np.float16).astype(np.float32)
    return scores, labels


def _status_kib(field: str) -> int:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def worker(method: str, data_dir: Path) -> None:
    """Run one method once on the saved data; print JSON with its time, value and peak RSS increase."""
    from sklearn.metrics import roc_auc_score

    from stfpm.evaluation.metrics import auroc

    scores = np.load(data_dir / "scores.npy")
    labels = np.load(data_dir / "labels.npy")
    call = {METHODS[0]: lambda: auroc(scores, labels), METHODS[1]: lambda: roc_auc_score(labels, scores)}[method]
    reset_ok = _reset_peak_rss()
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    value = call()
    seconds = time.perf_counter() - start
    peak_increase = _status_kib("VmHWM") - before
    print(json.dumps({"seconds": seconds, "value": float(value), "peak_kib": peak_increase, "reset": reset_ok}))


def run_worker(method: str, data_dir: Path) -> dict:
    """Run :func:`worker` in a fresh interpreter and parse its JSON line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", method, "--data-dir", str(data_dir)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO_ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pixels", type=int, default=50_000_000)
    parser.add_argument("--positive-fraction", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.data_dir)
        return

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        scores, labels = make_data(args.pixels, args.positive_fraction, args.seed)
        n_distinct = np.unique(scores).size
        np.save(data_dir / "scores.npy", scores)
        np.save(data_dir / "labels.npy", labels)
        del scores, labels
        ours, ref = (run_worker(method, data_dir) for method in METHODS)

    mib = 1024.0
    print(f"data: {args.pixels:,} pixels, float32 scores ({n_distinct:,} distinct values), "
          f"bool labels, positive fraction {args.positive_fraction}, seed {args.seed}")
    print("memory measure: peak RSS increase during the call (VmHWM after - VmRSS before, peak counter reset "
          "via /proc/self/clear_refs), each method in a fresh subprocess with the same data loaded"
          + ("" if ours["reset"] and ref["reset"] else " [WARNING: peak reset failed, figures include loading]"))
    print(f"time   ours: {ours['seconds']:.3f} s   sklearn: {ref['seconds']:.3f} s   "
          f"speed-up: {ref['seconds'] / ours['seconds']:.1f}x")
    print(f"memory ours: {ours['peak_kib'] / mib:.1f} MiB   sklearn: {ref['peak_kib'] / mib:.1f} MiB   "
          f"ours/sklearn: {ours['peak_kib'] / ref['peak_kib']:.3f}")
    print(f"AUROC  ours: {ours['value']:.12f}   sklearn: {ref['value']:.12f}   "
          f"|delta|: {abs(ours['value'] - ref['value']):.3e}")


if __name__ == "__main__":
    main()
