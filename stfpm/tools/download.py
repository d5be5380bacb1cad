"""Download and safely extract the MVTec AD dataset.

The official archive is a single ~5.3 GB (4.9 GiB) ``tar.xz`` file served from MVTec's mydrive.ch share. A
download that size fails often enough (flaky Wi-Fi, a closed laptop, a proxy timeout) that starting from zero
every time is not acceptable, and a corrupt or truncated archive must never leave a half-populated dataset
folder behind, because training on a silently incomplete category gives wrong results instead of an error.
Hence the design:

* :func:`download_file` streams into ``<file>.part`` and resumes it with an HTTP ``Range`` request, coping with
  servers that ignore ranges (``200``: start again) or report the file as already complete (``416``).
* The file only gets its final name after its checksum (md5 and/or sha256, read in one streamed pass) matches;
  a mismatching file is deleted so that the next run downloads it afresh instead of trusting it.
* :func:`extract_archive` refuses absolute paths, ``..`` components, links that point outside the target and
  device files, extracts into a temporary folder next to the data root (same file system) and only then
  renames each top-level folder into place, so a read error leaves the data root untouched.

Only the standard library and ``tqdm`` are used, so downloading needs nothing beyond the base install.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import logging
import lzma
import os
import re
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from stfpm.core.errors import DownloadError, TransientDownloadError, one_line
from stfpm.data.categories import MVTEC_CATEGORIES

logger = logging.getLogger(__name__)

#: Official full archive on MVTec's mydrive.ch share; the URL anomalib's ``MVTecAD`` datamodule downloads.
MVTEC_AD_URL = (
    "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/"
    "download/420938113-1629952094/mvtec_anomaly_detection.tar.xz"
)
#: md5 of the full archive, as published in anomalib's ``DownloadInfo`` for that URL (older releases).
MVTEC_AD_MD5 = "eefca59f2cede9c3fc5b6befbfec275e"
#: sha256 of the full archive, as published in anomalib's current ``DownloadInfo`` for the same URL.
MVTEC_AD_SHA256 = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
#: Page where MVTec publishes the dataset (and where a fresh download link can be requested by hand).
MVTEC_AD_PAGE = "https://www.mvtec.com/company/research/datasets/mvtec-ad"
#: Each category is a top-level folder of the archive.
MVTEC_AD_CATEGORIES = MVTEC_CATEGORIES

#: Prefix of the temporary extraction folders, so leftovers of a killed process are recognisable.
EXTRACT_TMP_PREFIX = ".stfpm-extract-"

_DEFAULT_CHUNK = 1 << 20
_USER_AGENT = "stfpm-download/1.0 (+python urllib)"
_HASH_LENGTHS = {"md5": 32, "sha256": 64}
# HTTP statuses worth retrying: the server (or something in between) may recover.
_TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


def _manual_hint() -> str:
    return (
        f"download mvtec_anomaly_detection.tar.xz manually from {MVTEC_AD_PAGE} "
        "and extract it into --data-root"
    )


# --------------------------------------------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------------------------------------------


def _expected_digests(expected_md5: str | None, expected_sha256: str | None) -> dict[str, str]:
    """Validate user-supplied checksums early, so a typo fails before a multi-gigabyte download, not after."""
    expected: dict[str, str] = {}
    for algorithm, value in (("md5", expected_md5), ("sha256", expected_sha256)):
        if value is None or value == "":
            continue
        value = value.strip().lower()
        if not re.fullmatch(rf"[0-9a-f]{{{_HASH_LENGTHS[algorithm]}}}", value):
            raise DownloadError(
                f"invalid {algorithm} checksum {value!r}: expected {_HASH_LENGTHS[algorithm]} hexadecimal digits"
            )
        expected[algorithm] = value
    return expected


def file_digests(
    path: str | os.PathLike[str], algorithms: tuple[str, ...] = ("md5",), chunk_size: int = _DEFAULT_CHUNK,
    progress: bool = False,
) -> dict[str, str]:
    """Hash a file in one streamed pass for every algorithm at once.

    Streaming keeps memory flat for a 5 GB archive, and computing md5 and sha256 together reads the file only once.
    """
    path = Path(path)
    hashers = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as fh, tqdm(
        total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
        desc=f"verify {path.name}", disable=not progress,
    ) as bar:
        while True:
            block = fh.read(chunk_size)
            if not block:
                break
            for hasher in hashers.values():
                hasher.update(block)
            bar.update(len(block))
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def _mismatches(path: Path, expected: dict[str, str], progress: bool) -> list[str]:
    actual = file_digests(path, tuple(expected), progress=progress)
    return [
        f"expected {name} {expected[name]}, got {actual[name]}" for name in expected if actual[name] != expected[name]
    ]


# --------------------------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------------------------


def _total_from_content_range(value: str | None) -> int | None:
    """Total size from ``Content-Range: bytes a-b/TOTAL`` or ``bytes */TOTAL`` (``None`` when unknown)."""
    if not value:
        return None
    match = re.search(r"/\s*(\d+)\s*$", value)
    return int(match.group(1)) if match else None


def _start_from_content_range(value: str | None) -> int | None:
    if not value:
        return None
    match = re.match(r"\s*bytes\s+(\d+)\s*-", value)
    return int(match.group(1)) if match else None


class _RangeNotSatisfiable(Exception):
    """The server answered a resume request with HTTP 416; carries its ``Content-Range`` header."""

    def __init__(self, content_range: str | None) -> None:
        super().__init__(content_range)
        self.content_range = content_range


def _open_request(url: str, offset: int, timeout: float) -> Any:
    """Send the request (a ``Range`` request from ``offset`` when resuming) and return the open response.

    HTTP errors worth retrying and network trouble raise :class:`TransientDownloadError`, other HTTP errors and
    malformed URLs :class:`DownloadError`; a 416 answer to a resume raises :class:`_RangeNotSatisfiable`.
    """
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - URL chosen by the user
    except urllib.error.HTTPError as exc:
        content_range = exc.headers.get("Content-Range") if exc.headers else None
        exc.close()
        if exc.code == 416 and offset:
            raise _RangeNotSatisfiable(content_range) from exc
        message = f"download of {url} failed: HTTP {exc.code} {one_line(exc.reason)}"
        if exc.code in _TRANSIENT_HTTP:
            raise TransientDownloadError(message) from exc
        raise DownloadError(message) from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(exc, ValueError):  # e.g. "unknown url type": a user typo, retrying cannot help
            raise DownloadError(f"cannot download {url}: {one_line(reason)}") from exc
        raise TransientDownloadError(f"cannot reach {url}: {one_line(reason) or type(exc).__name__}") from exc


def _settle_unsatisfiable_range(part: Path, offset: int, content_range: str | None) -> bool:
    """After a 416: ``True`` if ``part`` already is the whole file, else delete it and return ``False``."""
    total = _total_from_content_range(content_range)
    if total is None or total == offset:
        logger.info("%s is already complete (%d bytes)", part.name, offset)
        return True
    logger.warning(
        "partial file %s (%d bytes) does not fit the remote file (%d bytes); starting again",
        part, offset, total,
    )
    part.unlink()
    return False


def _transfer_plan(response: Any, part: Path, offset: int, desc: str) -> tuple[int, int | None, str] | None:
    """Resume or restart, from the response: ``(start byte, total size or None, file mode)``.

    ``None`` means the server resumed from the wrong byte; ``part`` was deleted and the caller starts again.
    """
    status = response.status
    length_header = response.headers.get("Content-Length")
    length = int(length_header) if length_header and length_header.isdigit() else None
    if status != 206:
        if offset:
            logger.info("server does not support resuming (HTTP %d); downloading %s from the start", status, desc)
        return 0, length, "wb"
    start = _start_from_content_range(response.headers.get("Content-Range"))
    if start != offset:
        logger.warning("server answered the resume request with bytes from %s; starting again", start)
        part.unlink(missing_ok=True)
        return None
    total = _total_from_content_range(response.headers.get("Content-Range"))
    if total is None and length is not None:
        total = offset + length
    return offset, total, "ab"


def _check_disk_space(url: str, part: Path, start: int, total: int | None) -> None:
    """Fail before streaming when the remaining ``total - start`` bytes cannot fit next to ``part``."""
    if total is None:
        return
    free = shutil.disk_usage(part.parent).free
    if total - start > free:
        raise DownloadError(
            f"not enough disk space in {part.parent} for {url}: "
            f"{total - start} bytes needed, {free} bytes free"
        )


def _read_chunk(response: Any, chunk_size: int, url: str, part: Path, received: int) -> bytes:
    """Next block of the body; a network failure raises :class:`TransientDownloadError` (``part`` kept)."""
    try:
        return response.read(chunk_size)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise TransientDownloadError(
            f"download of {url} was interrupted after {received} bytes "
            f"({one_line(exc) or type(exc).__name__}); the partial data is kept in {part}, "
            "re-run to resume"
        ) from exc


def _copy_body(
    response: Any, url: str, part: Path, plan: tuple[int, int | None, str], chunk_size: int, progress: bool,
    desc: str,
) -> int:
    """Stream the response body into ``part`` (opened with the plan's mode); returns the size of ``part``."""
    start, total, mode = plan
    received = start
    try:
        with open(part, mode) as fh, tqdm(
            total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
            disable=not progress,
        ) as bar:
            while True:
                chunk = _read_chunk(response, chunk_size, url, part, received)
                if not chunk:
                    break
                fh.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    except OSError as exc:  # writing the partial file failed (disk full, permissions): not a network problem
        raise DownloadError(f"cannot write {part}: {one_line(exc)}") from exc
    return received


def _check_received(url: str, part: Path, received: int, total: int | None) -> None:
    """Compare the bytes received with ``total``: too few is transient (resume later), too many deletes ``part``."""
    if total is not None and received < total:
        raise TransientDownloadError(
            f"download of {url} was interrupted after {received} of {total} bytes; "
            f"the partial data is kept in {part}, re-run to resume"
        )
    if total is not None and received > total:
        part.unlink(missing_ok=True)
        raise DownloadError(f"download of {url} sent {received} bytes instead of {total}; deleted it, re-run")


def _fetch_once(url: str, part: Path, chunk_size: int, timeout: float, progress: bool, desc: str) -> bool:
    """One HTTP request that appends to (or restarts) ``part``.

    Returns ``True`` when ``part`` holds the complete file, ``False`` when the partial data turned out to be
    unusable and was deleted (the caller then asks again from byte 0). Network trouble raises
    :class:`TransientDownloadError` with ``part`` kept, so a later call can resume.
    """
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open_request(url, offset, timeout)
    except _RangeNotSatisfiable as exc:
        return _settle_unsatisfiable_range(part, offset, exc.content_range)
    with response:
        plan = _transfer_plan(response, part, offset, desc)
        if plan is None:
            return False
        start, total, _ = plan
        _check_disk_space(url, part, start, total)
        received = _copy_body(response, url, part, plan, chunk_size, progress, desc)
    _check_received(url, part, received, total)
    return True


def _reuse_existing(dest: Path, expected: dict[str, str], progress: bool) -> bool:
    """Whether an existing ``dest`` can be kept; one that fails its checksum is deleted."""
    if not dest.is_file():
        return False
    if not expected:
        logger.info("%s already exists; not downloading it again", dest)
        return True
    if not _mismatches(dest, expected, progress):
        logger.info("%s already exists and its checksum matches; not downloading it again", dest)
        return True
    logger.warning("existing %s does not match the expected checksum; downloading it again", dest)
    dest.unlink()
    return False


def _fetch_with_retries(
    url: str, part: Path, chunk_size: int, timeout: float, retries: int, progress: bool, desc: str,
    manual_hint: str | None, retry_wait: float,
) -> None:
    """Call :func:`_fetch_once` until ``part`` is complete, retrying network failures with exponential backoff."""
    attempts_left = max(0, int(retries))
    restarts_left = 2  # a resume that turns out unusable restarts from 0 at most this often
    while True:
        try:
            if _fetch_once(url, part, chunk_size, timeout, progress, desc):
                return
            restarts_left -= 1
            if restarts_left < 0:
                raise DownloadError(f"download of {url} could not be resumed or restarted consistently")
        except TransientDownloadError as exc:
            if attempts_left <= 0:
                message = str(exc)
                if manual_hint:
                    message = f"{message}; check the connection and re-run, or {manual_hint}"
                raise DownloadError(message) from exc
            attempts_left -= 1
            wait = min(60.0, retry_wait * 2 ** (max(0, int(retries)) - attempts_left - 1))
            logger.warning("%s; retrying in %.0f s (%d more attempt(s) left)", exc, wait, attempts_left)
            time.sleep(wait)


def _verify_download(url: str, part: Path, dest: Path, expected: dict[str, str], progress: bool) -> None:
    """Check the downloaded ``part`` against ``expected``; a mismatching file is deleted."""
    if not expected:
        return
    logger.info("verifying %s checksum of %s", "/".join(expected), dest.name)
    mismatches = _mismatches(part, expected, progress)
    if mismatches:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"checksum mismatch for {dest.name} downloaded from {url} ({'; '.join(mismatches)}): "
            "the corrupt file was deleted, re-run the command to download it again"
        )


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    expected_md5: str | None = None,
    expected_sha256: str | None = None,
    chunk_size: int = _DEFAULT_CHUNK,
    timeout: float = 60.0,
    retries: int = 0,
    progress: bool = True,
    manual_hint: str | None = None,
    retry_wait: float = 2.0,
) -> Path:
    """Download ``url`` to ``dest``, resuming a previous partial download and verifying checksums.

    Data is written to ``<dest>.part`` and only renamed to ``dest`` once complete and verified, so ``dest``
    existing means it is trustworthy; a ``.part`` left by an interrupted run is continued with a ``Range``
    request instead of fetching gigabytes again. ``retries`` extra attempts (each resuming) are made after
    network failures. A checksum mismatch deletes the file, because keeping it would make every later run
    resume onto (or re-extract) corrupt data.

    Args:
        url: HTTP(S) address of the file.
        dest: Final path of the file; its folder is created if needed.
        expected_md5: Hex md5 the file must have (``None``: not checked).
        expected_sha256: Hex sha256 the file must have (``None``: not checked).
        chunk_size: Bytes read per network/disk operation.
        timeout: Seconds to wait for the server on connect and on each read.
        retries: Additional attempts after a network failure.
        progress: Show tqdm progress bars.
        manual_hint: Appended to network error messages (e.g. where to download the file by hand).
        retry_wait: Seconds before the first retry, doubled for each further one (capped at 60 s), so a
            briefly overloaded server is not hammered.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        DownloadError: on network errors (after the retries), HTTP errors, or checksum mismatches.
    """
    dest = Path(dest)
    expected = _expected_digests(expected_md5, expected_sha256)
    if _reuse_existing(dest, expected, progress):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _fetch_with_retries(url, part, chunk_size, timeout, retries, progress, dest.name, manual_hint, retry_wait)
    _verify_download(url, part, dest, expected, progress)
    os.replace(part, dest)
    return dest

# --------------------------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------------------------


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _member_parts(name: str) -> list[str]:
    """Path components of a member name, treating ``\\`` as a separator too (it is one on Windows)."""
    return [part for part in re.split(r"[\\/]+", name) if part not in ("", ".")]


def _check_member(member: tarfile.TarInfo, root: str) -> None:
    """Refuse a member that could write outside ``root`` (path traversal) or create special files."""
    name = member.name
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise DownloadError(f"refusing unsafe archive member {name!r}: absolute path")
    if ".." in _member_parts(name):
        raise DownloadError(f"refusing unsafe archive member {name!r}: '..' in path (path traversal)")
    target = os.path.normpath(os.path.join(root, *_member_parts(name)))
    if not _is_within(target, root):
        raise DownloadError(f"refusing unsafe archive member {name!r}: outside the extraction folder")
    if member.issym() or member.islnk():
        link = member.linkname
        if link.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", link):
            raise DownloadError(f"refusing unsafe archive member {name!r}: link to absolute path {link!r}")
        base = os.path.dirname(target) if member.issym() else root  # hard links are relative to the archive root
        link_target = os.path.normpath(os.path.join(base, *re.split(r"[\\/]+", link)))
        if not _is_within(link_target, root):
            raise DownloadError(f"refusing unsafe archive member {name!r}: link {link!r} points outside the archive")
    elif not (member.isreg() or member.isdir()):
        raise DownloadError(f"refusing unsafe archive member {name!r}: device, fifo or other special file")


def _check_extract_target(data_root: Path, members_prefix: str | None) -> str | None:
    """Validate the arguments of :func:`extract_archive`; returns the normalised ``members_prefix``."""
    if data_root.exists() and not data_root.is_dir():
        raise DownloadError(f"data root {data_root} exists but is not a folder")
    if members_prefix is not None:
        members_prefix = members_prefix.strip("/")
        if not members_prefix or len(_member_parts(members_prefix)) != 1 or members_prefix == "..":
            raise DownloadError(f"invalid member prefix {members_prefix!r}: expected one top-level folder name")
    return members_prefix


def _extraction_error(archive: Path, data_root: Path, exc: BaseException) -> DownloadError:
    """The error for an archive that could not be read or written out (disk full, truncated, corrupt)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        reason = f"disk full: {one_line(exc)}"
    else:
        reason = f"the archive is truncated or corrupt: {one_line(exc) or type(exc).__name__}"
    return DownloadError(f"cannot extract {archive} ({reason}); nothing was written to {data_root}")


def _extract_members(
    archive: Path, tmp: Path, data_root: Path, members_prefix: str | None, existing: set[str], progress: bool,
) -> tuple[int, set[str]]:
    """Check and extract the wanted members into ``tmp``, skipping top-level entries already in ``data_root``.

    Returns the number of extracted members and the skipped top-level names. An unsafe member or an unreadable
    archive raises :class:`DownloadError`.
    """
    root = os.path.realpath(tmp)
    extract_kwargs: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    skipped: set[str] = set()
    extracted = 0
    try:
        with tarfile.open(archive, "r:*") as tar, tqdm(
            unit=" files", desc=f"extract {archive.name}", disable=not progress
        ) as bar:
            tar.errorlevel = 2  # make every extraction problem an exception instead of a silent skip
            for member in tar:
                parts = _member_parts(member.name)
                if not parts:
                    continue
                top = parts[0]
                if members_prefix is not None and top != members_prefix:
                    continue
                _check_member(member, root)
                if top in existing:
                    if top not in skipped:
                        logger.info("%s already exists in %s; skipping it (not overwritten)", top, data_root)
                        skipped.add(top)
                    continue
                tar.extract(member, tmp, **extract_kwargs)
                extracted += 1
                bar.update(1)
    except DownloadError:
        raise
    except (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error, OSError) as exc:
        raise _extraction_error(archive, data_root, exc) from exc
    return extracted, skipped


def _move_into_place(tmp: Path, data_root: Path) -> list[Path]:
    """Rename each top-level entry of ``tmp`` into ``data_root``, never over an existing one; returns the new paths."""
    data_root.mkdir(parents=True, exist_ok=True)
    created: list[Path] = []
    for entry in sorted(tmp.iterdir()):
        target = data_root / entry.name
        if target.exists() or target.is_symlink():  # appeared meanwhile (another process): still no overwrite
            logger.info("%s already exists in %s; skipping it (not overwritten)", entry.name, data_root)
            continue
        os.rename(entry, target)  # same file system: atomic, no copy
        created.append(target)
    return created


def extract_archive(
    archive: str | os.PathLike[str],
    data_root: str | os.PathLike[str],
    members_prefix: str | None = None,
    progress: bool = True,
) -> list[Path]:
    """Safely extract a tar archive (any compression) into ``data_root``, all or nothing.

    Members are checked one by one before extraction (no absolute paths, no ``..``, no links leaving the
    archive, no device files) and extracted into a temporary folder created in ``data_root``'s parent, i.e. on
    the same file system; only when the whole archive has been read without error are its top-level entries
    (the category folders) renamed into ``data_root``. A truncated or corrupt archive therefore raises
    :class:`DownloadError` and leaves ``data_root`` exactly as it was, and the temporary folder is removed.
    Top-level entries that already exist in ``data_root`` are skipped (and logged), never overwritten, so a
    category the user already has (possibly edited) stays untouched.

    Args:
        archive: Path of the ``.tar``/``.tar.gz``/``.tar.xz``/... file.
        data_root: Folder that receives the archive's top-level entries (e.g. ``carpet/``).
        members_prefix: Only extract this top-level folder (e.g. ``"carpet"``); ``None`` extracts everything.
        progress: Show a tqdm progress bar (counting members).

    Returns:
        The paths that were newly created in ``data_root``.

    Raises:
        DownloadError: unreadable/truncated archive, unsafe member, or ``members_prefix`` not in the archive.
    """
    archive = Path(archive)
    data_root = Path(data_root).absolute()
    members_prefix = _check_extract_target(data_root, members_prefix)
    existing = {entry.name for entry in data_root.iterdir()} if data_root.is_dir() else set()
    if members_prefix is not None and members_prefix in existing:
        logger.info("%s already exists in %s; skipping it (not overwritten)", members_prefix, data_root)
        return []

    parent = data_root.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=EXTRACT_TMP_PREFIX, dir=parent))
    try:
        extracted, skipped = _extract_members(archive, tmp, data_root, members_prefix, existing, progress)
        if members_prefix is not None and extracted == 0 and members_prefix not in skipped:
            raise DownloadError(f"{archive} has no top-level folder named {members_prefix!r}")
        return _move_into_place(tmp, data_root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

# --------------------------------------------------------------------------------------------------------------
# MVTec AD
# --------------------------------------------------------------------------------------------------------------


def _archive_name(url: str) -> str:
    name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return name if name and name not in (".", "..") else "mvtec_anomaly_detection.tar.xz"


def _wanted_categories(category: str) -> tuple[str, ...]:
    """The categories ``category`` stands for (``"all"``: every one); an unknown name raises."""
    if category != "all" and category not in MVTEC_AD_CATEGORIES:
        raise DownloadError(
            f"unknown MVTec AD category {category!r}; choose 'all' or one of {', '.join(MVTEC_AD_CATEGORIES)}"
        )
    return MVTEC_AD_CATEGORIES if category == "all" else (category,)


def _all_present(data_root: Path, wanted: tuple[str, ...]) -> bool:
    """Whether every wanted category already has a folder in ``data_root`` (logging the ones that do)."""
    present = [name for name in wanted if (data_root / name).is_dir()]
    if len(present) == len(wanted):
        logger.info("%s already present in %s; nothing to download", ", ".join(wanted), data_root)
        return True
    for name in present:
        logger.info("%s already exists in %s; skipping it (not overwritten)", name, data_root)
    return False


def _extract_downloaded(archive: Path, data_root: Path, category: str, verified: bool, progress: bool) -> list[Path]:
    """Extract ``category`` (or all) from the downloaded archive; on failure keep it only if it was verified."""
    logger.info("extracting %s into %s", "all categories" if category == "all" else category, data_root)
    try:
        return extract_archive(archive, data_root, members_prefix=None if category == "all" else category,
                               progress=progress)
    except DownloadError as exc:
        if verified:
            raise DownloadError(f"{exc}; the verified archive {archive} was kept") from exc
        archive.unlink(missing_ok=True)
        raise DownloadError(f"{exc}; the unverified archive was deleted, re-run to download it again") from exc


def _report_and_clean_up(
    data_root: Path, wanted: tuple[str, ...], created: list[Path], archive: Path, keep_archive: bool
) -> None:
    """Log what was created and what the archive lacked, then delete the archive unless it is to be kept."""
    for path in created:
        logger.info("created %s", path)
    missing = [name for name in wanted if not (data_root / name).is_dir()]
    if missing:
        logger.warning("the archive did not contain: %s", ", ".join(missing))
    if keep_archive:
        logger.info("kept the archive %s", archive)
    else:
        archive.unlink(missing_ok=True)
        logger.info("removed the archive %s (use --keep-archive to keep it)", archive)


def download_mvtec(
    data_root: str | os.PathLike[str],
    category: str = "all",
    url: str = MVTEC_AD_URL,
    md5: str | None = MVTEC_AD_MD5,
    sha256: str | None = MVTEC_AD_SHA256,
    keep_archive: bool = False,
    archive_dir: str | os.PathLike[str] | None = None,
    timeout: float = 60.0,
    retries: int = 3,
    progress: bool = True,
) -> Path:
    """Download MVTec AD (or one category of it) into ``data_root`` unless it is already there.

    MVTec's per-category archive links and their checksums could not be confirmed from an authoritative source,
    so a single category is obtained from the verified full archive by extracting only that category's
    members. The archive is stored next to ``data_root`` (in its parent folder, or ``archive_dir``) rather than
    inside it, so the data root only ever contains dataset folders, and it is deleted after a successful
    extraction unless ``keep_archive`` is set. Categories already present are skipped, so re-running is cheap
    and never overwrites data.

    Args:
        data_root: Dataset folder that will contain ``bottle/``, ``cable/``, ...
        category: One of :data:`MVTEC_AD_CATEGORIES`, or ``"all"``.
        url: Archive address; defaults to the official full archive.
        md5: Expected md5 of the archive (``None``: not checked).
        sha256: Expected sha256 of the archive (``None``: not checked).
        keep_archive: Keep the downloaded archive after extraction.
        archive_dir: Where to store the archive (default: ``data_root``'s parent folder).
        timeout: Network timeout in seconds.
        retries: Extra download attempts (each resuming) after network failures.
        progress: Show progress bars.

    Returns:
        ``data_root``.

    Raises:
        DownloadError: unknown category, network or checksum failure, or an unusable archive.
    """
    data_root = Path(data_root)
    wanted = _wanted_categories(category)
    _expected_digests(md5, sha256)  # a malformed checksum should fail now, not after the download
    if _all_present(data_root, wanted):
        return data_root

    archive_folder = Path(archive_dir) if archive_dir is not None else data_root.absolute().parent
    archive = archive_folder / _archive_name(url)
    verified = bool(md5 or sha256)
    if not verified:
        logger.warning("no checksum given for %s; the download cannot be verified", url)
    logger.info("downloading %s to %s", url, archive)
    download_file(
        url, archive, expected_md5=md5, expected_sha256=sha256, timeout=timeout, retries=retries,
        progress=progress, manual_hint=_manual_hint(),
    )
    created = _extract_downloaded(archive, data_root, category, verified, progress)
    _report_and_clean_up(data_root, wanted, created, archive, keep_archive)
    return data_root
