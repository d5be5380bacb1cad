"""`stfpm-download` / `python scripts/download_mvtec.py`: download MVTec AD (all categories or one) into a data root.

A thin command line over :func:`stfpm.tools.download.download_mvtec`, where all logic (resume, checksum, safe
all-or-nothing extraction) lives.
"""

from __future__ import annotations

import logging

from stfpm.core.errors import ConfigError
from stfpm.core.options import command_parser, parse
from stfpm.tools.download import MVTEC_AD_MD5, MVTEC_AD_PAGE, MVTEC_AD_SHA256, MVTEC_AD_URL, download_mvtec
from stfpm.tools.settings import DownloadSettings

logger = logging.getLogger(__name__)

DESCRIPTION = (
    "Download MVTec AD (the official full archive mvtec_anomaly_detection.tar.xz, about 5.3 GB / 4.9 GiB, from "
    "MVTec's mydrive.ch share), verify its checksum and extract it safely into --data-root. Interrupted downloads "
    "resume from <archive>.part when re-run. Categories already present in --data-root are skipped, never "
    f"overwritten. If the download link stops working, get the archive from {MVTEC_AD_PAGE} and extract it into "
    f"--data-root by hand (or pass its new address with --url). Official checksums: md5 {MVTEC_AD_MD5}, sha256 "
    f"{MVTEC_AD_SHA256}."
)


def main(argv: list[str] | None = None) -> int:
    """Run the download; user-facing errors propagate as STFPMError (see :func:`stfpm.cli.run`)."""
    s: DownloadSettings = parse(command_parser(DESCRIPTION, [DownloadSettings]), [DownloadSettings], argv)["download"]
    if not s.data_root:
        raise ConfigError("pass --data-root, the folder that receives the categories")
    s.check_paths()
    if s.md5 or s.sha256:
        md5, sha256 = s.md5, s.sha256
    elif s.url:
        md5 = sha256 = None
    else:
        md5, sha256 = MVTEC_AD_MD5, MVTEC_AD_SHA256
    download_mvtec(s.data_root, category=s.category, url=s.url or MVTEC_AD_URL, md5=md5, sha256=sha256,
                   keep_archive=s.keep_archive, timeout=s.timeout, retries=s.retries, progress=not s.no_progress)
    logger.info("MVTec AD is ready in %s", s.data_root)
    return 0


def cli() -> int:
    """The console script: :func:`main` with the error convention."""
    from stfpm.cli import run

    return run(main)
