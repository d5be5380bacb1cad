"""`stfpm-download` / `python scripts/download_mvtec.py`: download MVTec AD (all categories or one) into a data root.

A thin command line over :func:`stfpm.tools.download.download_mvtec`, where all logic (resume, checksum, safe
all-or-nothing extraction) lives.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from stfpm.config import Parser, integer, number, validate, writable_folder
from stfpm.tools.download import (
    MVTEC_AD_CATEGORIES,
    MVTEC_AD_MD5,
    MVTEC_AD_PAGE,
    MVTEC_AD_SHA256,
    MVTEC_AD_URL,
    download_mvtec,
)

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """Command-line options; kept separate from :func:`main` so the help text can be tested."""
    parser = Parser(
        description=(
            "Download MVTec AD (the official full archive mvtec_anomaly_detection.tar.xz, about 5.3 GB / "
            "4.9 GiB, from MVTec's mydrive.ch share), verify its checksum and extract it safely into "
            "--data-root. Interrupted downloads resume from <archive>.part when re-run. Categories already "
            "present in --data-root are skipped, never overwritten."
        ),
        epilog=(
            f"If the download link stops working, get the archive from {MVTEC_AD_PAGE} and extract it into "
            "--data-root by hand (or pass its new address with --url)."
        ),
    )
    parser.add_argument(
        "--data-root", type=Path, required=True,
        help="dataset folder that receives bottle/, cable/, ... (e.g. ./data/mvtec_anomaly_detection); the "
        "archive is stored in its parent folder",
    )
    parser.add_argument(
        "--category", default="all", choices=("all", *MVTEC_AD_CATEGORIES),
        help="one category or 'all' (default). MVTec's per-category archive links and checksums could not be "
        "confirmed, so a single category still downloads the full archive and extracts only that category",
    )
    parser.add_argument(
        "--keep-archive", action="store_true", help="keep the downloaded archive after a successful extraction"
    )
    parser.add_argument(
        "--url", default=None,
        help="download from this address instead of the official archive (a mirror or a new link); its "
        "checksum is only verified if --md5/--sha256 is given",
    )
    parser.add_argument(
        "--md5", default=None, help=f"expected md5 of the archive (official archive: {MVTEC_AD_MD5})"
    )
    parser.add_argument(
        "--sha256", default=None, help=f"expected sha256 of the archive (official archive: {MVTEC_AD_SHA256})"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds (default: 60)")
    parser.add_argument(
        "--retries", type=int, default=3, help="extra attempts, each resuming, after a network error (default: 3)"
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the download; user-facing errors propagate as STFPMError (see :func:`stfpm.cli.run`)."""
    args = build_parser().parse_args(argv)
    validate(args, {"timeout": number(0, low_open=True), "retries": integer(0)})
    writable_folder(args.data_root, "--data-root")
    if args.md5 or args.sha256:
        md5, sha256 = args.md5, args.sha256
    elif args.url:
        md5 = sha256 = None
    else:
        md5, sha256 = MVTEC_AD_MD5, MVTEC_AD_SHA256
    download_mvtec(
        args.data_root,
        category=args.category,
        url=args.url or MVTEC_AD_URL,
        md5=md5,
        sha256=sha256,
        keep_archive=args.keep_archive,
        timeout=args.timeout,
        retries=args.retries,
        progress=not args.no_progress,
    )
    logger.info("MVTec AD is ready in %s", args.data_root)
    return 0


def cli() -> int:
    """The console script: :func:`main` with the error convention."""
    from stfpm.cli import run

    return run(main)
