"""The options of `stfpm-download` (scripts/download_mvtec.py)."""

from __future__ import annotations

from dataclasses import dataclass

from stfpm.core.options import Section, integer, number, option
from stfpm.data.categories import MVTEC_CATEGORIES


@dataclass(frozen=True)
class DownloadSettings(Section):
    name = "download"
    about = "stfpm-download, scripts/download_mvtec.py"

    data_root: str | None = option(None, "dataset folder that receives bottle/, cable/, ... (e.g. "
                                   "./data/mvtec_anomaly_detection); the archive is stored in its parent folder",
                                   kind=str, path="folder")
    category: str = option("all", "one category or 'all'. MVTec's per-category archive links and checksums could not "
                           "be confirmed, so a single category still downloads the full archive and extracts only that "
                           "category", choices=("all", *MVTEC_CATEGORIES))
    keep_archive: bool = option(False, "keep the downloaded archive after a successful extraction", kind=bool)
    url: str | None = option(None, "download from this address instead of the official archive (a mirror or a new "
                             "link); its checksum is only verified if --md5/--sha256 is given", kind=str)
    md5: str | None = option(None, "expected md5 of the archive", kind=str)
    sha256: str | None = option(None, "expected sha256 of the archive", kind=str)
    timeout: float = option(60.0, "network timeout in seconds", kind=float, check=number(0, low_open=True))
    retries: int = option(3, "extra attempts, each resuming, after a network error", kind=int, check=integer(0))
    no_progress: bool = option(False, "do not show progress bars", kind=bool)
