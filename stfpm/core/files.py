"""Atomic file writes: a temporary file in the same folder, then a rename.

A crash or a full disk never leaves a half-written mask, result or checkpoint that looks valid. Files get the
permissions the user's umask gives a newly created file (as ``open`` would), not the private 0600 of a temporary
file, so colleagues and services can read what a run wrote when the umask lets them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # read once, at import: changing the umask is not thread-safe


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary sibling file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), _FILE_MODE)
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def publish(tmp: str | Path, path: str | Path) -> None:
    """Move a finished file written elsewhere in ``path``'s folder (by a library that writes to a path of its own) into
    place, with the permissions of :func:`atomic_write_bytes`."""
    os.chmod(tmp, _FILE_MODE)
    os.replace(tmp, path)
