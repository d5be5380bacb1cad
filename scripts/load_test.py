"""Load test of stfpm-serve on this machine (127.0.0.1 only), bounded in requests and seconds.

    python scripts/load_test.py --checkpoint runs/bsdata/version_0/checkpoints/best.ckpt \\
        --images ../shared/data/bsdata/test/pitting --clients 4 --requests 400 --seconds 120

starts the service on a free port, sends good uploads mixed with bad ones (every 4th), prints requests/s, latency
percentiles, answers by status and the service's memory, and stops it. `--url http://127.0.0.1:8000` tests a
service already running instead. Exit code 1 when a good request did not get 200 or a bad one not its 4xx.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from stfpm.data.io import list_images
from stfpm.serving.loadtest import run_load


def start(checkpoint: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "stfpm.cli.serve", "--checkpoint", checkpoint, "--port", "0",
                                *extra], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("serving "):
            return process, line.split(" on ", 1)[1].split()[0]
    raise SystemExit(f"stfpm-serve did not start (exit code {process.wait()})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="start stfpm-serve with this checkpoint")
    parser.add_argument("--url", help="or test a service already running here (http://127.0.0.1:PORT)")
    parser.add_argument("--images", required=True, type=Path, help="image file or folder of good uploads")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--max-body-mb", type=float, default=32.0)
    parser.add_argument("--limit", type=int, default=16, help="good images used, at most")
    parser.add_argument("serve_options", nargs="*", help="after --: more stfpm-serve options (e.g. --precision ...)")
    args = parser.parse_args()
    if bool(args.checkpoint) == bool(args.url):
        parser.error("give --checkpoint (start a service) or --url (one already running)")
    images = list_images(args.images)[: args.limit]
    process, url = (start(args.checkpoint, ["--max-body-mb", str(args.max_body_mb), *args.serve_options])
                    if args.checkpoint else (None, args.url))
    try:
        report = run_load(url, images, args.clients, args.requests, args.seconds,
                          max_body_bytes=int(args.max_body_mb * 1_000_000))
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
    print("\n".join(report.lines()))
    p99, alone = report.percentile(99), report.alone
    print(f"p99 / one request alone: {p99 / alone:.2f}x; 5xx: {sum(v for k, v in report.statuses.items() if k >= 500)}")
    return 1 if report.wrong else 0


if __name__ == "__main__":
    sys.exit(main())
