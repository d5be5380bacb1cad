"""Tests for stfpm.tools.download and scripts/download_mvtec.py against a local HTTP server (127.0.0.1 only).

The server serves a small MVTec-like tar.xz built here and can misbehave on request: cut the connection
after N bytes, ignore Range headers, send corrupted bytes or a truncated archive.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import random
import re
import socket
import subprocess
import sys
import tarfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stfpm.core.errors import DownloadError
from stfpm.tools.download import EXTRACT_TMP_PREFIX, download_file, download_mvtec, extract_archive

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "download_mvtec.py"

# MVTec-like layout: category/split/defect/file.png (contents are random bytes: incompressible, so that a
# truncated xz stream still decodes its first members before failing).
ARCHIVE_FILES = (
    "carpet/train/good/000.png",
    "carpet/train/good/001.png",
    "carpet/test/good/000.png",
    "carpet/test/cut/000.png",
    "carpet/ground_truth/cut/000_mask.png",
    "bottle/train/good/000.png",
    "bottle/test/broken_large/000.png",
    "bottle/ground_truth/broken_large/000_mask.png",
)


@dataclass
class ArchiveInfo:
    path: Path
    data: bytes
    md5: str
    sha256: str
    files: dict[str, bytes]


def _build_tar_xz(path: Path, files: dict[str, bytes], extra: list[tuple[tarfile.TarInfo, bytes | None]] = ()) -> None:
    with tarfile.open(path, "w:xz") as tar:
        dirs: set[str] = set()
        for name, content in files.items():
            parts = name.split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    tar.addfile(info)
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
        for info, content in extra:
            tar.addfile(info, io.BytesIO(content) if content is not None else None)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> ArchiveInfo:
    rng = random.Random(0)
    files = {name: rng.randbytes(6000) for name in ARCHIVE_FILES}
    files["license.txt"] = b"CC BY-NC-SA 4.0 (test stand-in)\n"
    path = tmp_path_factory.mktemp("archive") / "mvtec_anomaly_detection.tar.xz"
    _build_tar_xz(path, files)
    data = path.read_bytes()
    return ArchiveInfo(path, data, hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest(), files)


@dataclass
class ServerState:
    payload: bytes = b""
    cut_after: int | None = None  # first request only: send this many bytes of the body, then drop the connection
    ignore_range: bool = False  # always answer 200 with the whole file
    corrupt: bool = False  # flip bytes in the middle of the payload (same length)
    truncate_to: int | None = None  # serve only the first N bytes (as if it were the whole file)
    ranges: list[str | None] = field(default_factory=list)  # Range header of each request (None: no header)
    statuses: list[int] = field(default_factory=list)


class Server:
    def __init__(self, state: ServerState, port: int) -> None:
        self.state = state
        self.port = port

    def url(self, name: str = "mvtec_anomaly_detection.tar.xz") -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


def _make_handler(state: ServerState) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep test output quiet
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str], cut: int | None = None) -> None:
            state.statuses.append(status)
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if cut is None:
                self.wfile.write(body)
                return
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            range_header = self.headers.get("Range")
            state.ranges.append(range_header)
            if not self.path.endswith(".tar.xz"):
                self._send(404, b"not found", {"Content-Length": "9"})
                return
            data = state.payload
            if state.truncate_to is not None:
                data = data[: state.truncate_to]
            if state.corrupt:
                middle = len(data) // 2
                data = data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64]) + data[middle + 64 :]
            cut, state.cut_after = state.cut_after, None
            match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
            if match and not state.ignore_range:
                start = int(match.group(1))
                if start >= len(data):
                    self._send(416, b"", {"Content-Range": f"bytes */{len(data)}", "Content-Length": "0"})
                    return
                body = data[start:]
                headers = {
                    "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}",
                    "Content-Length": str(len(body)),
                }
                self._send(206, body, headers, cut)
                return
            self._send(200, data, {"Content-Length": str(len(data))}, cut)

    return Handler


@pytest.fixture
def server(archive: ArchiveInfo):
    state = ServerState(payload=archive.data)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Server(state, httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _leftovers(folder: Path) -> list[str]:
    """Temporary extraction folders and partial downloads left in ``folder``."""
    return [p.name for p in folder.iterdir() if p.name.startswith(EXTRACT_TMP_PREFIX) or p.name.endswith(".part")]


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------------------------


def test_full_download_verifies_and_extracts(tmp_path: Path, server: Server, archive: ArchiveInfo) -> None:
    data_root = tmp_path / "data" / "mvtec"
    result = download_mvtec(
        data_root, url=server.url(), md5=archive.md5, sha256=archive.sha256, retries=0, progress=False
    )
    assert result == data_root
    assert _tree(data_root) == archive.files
    assert not (tmp_path / "data" / "mvtec_anomaly_detection.tar.xz").exists()  # removed without --keep-archive
    assert _leftovers(tmp_path / "data") == []
    assert server.state.ranges == [None]


def test_single_category_and_keep_archive(tmp_path: Path, server: Server, archive: ArchiveInfo) -> None:
    data_root = tmp_path / "data" / "mvtec"
    download_mvtec(data_root, category="carpet", url=server.url(), md5=archive.md5, sha256=None,
                   keep_archive=True, retries=0, progress=False)
    assert sorted(p.name for p in data_root.iterdir()) == ["carpet"]
    assert _tree(data_root) == {k: v for k, v in archive.files.items() if k.startswith("carpet/")}
    assert (tmp_path / "data" / "mvtec_anomaly_detection.tar.xz").read_bytes() == archive.data


def test_interrupted_download_resumes_with_range(tmp_path: Path, server: Server, archive: ArchiveInfo) -> None:
    dest = tmp_path / "dl" / "mvtec_anomaly_detection.tar.xz"
    server.state.cut_after = 10_000
    with pytest.raises(DownloadError, match="interrupted") as excinfo:
        download_file(server.url(), dest, expected_md5=archive.md5, retries=0, timeout=5, progress=False)
    assert "\n" not in str(excinfo.value)
    part = dest.with_name(dest.name + ".part")
    assert not dest.exists()
    assert 0 < part.stat().st_size < len(archive.data)
    kept = part.stat().st_size

    download_file(server.url(), dest, expected_md5=archive.md5, expected_sha256=archive.sha256, retries=0,
                  timeout=5, progress=False)
    assert server.state.ranges == [None, f"bytes={kept}-"]
    assert server.state.statuses == [200, 206]
    assert dest.read_bytes() == archive.data
    assert not part.exists()


def test_interrupted_download_is_retried_automatically(tmp_path: Path, server: Server, archive: ArchiveInfo) -> None:
    dest = tmp_path / "mvtec_anomaly_detection.tar.xz"
    server.state.cut_after = 7_000
    download_file(server.url(), dest, expected_md5=archive.md5, retries=1, retry_wait=0, timeout=5, progress=False)
    assert server.state.ranges == [None, "bytes=7000-"]
    assert dest.read_bytes() == archive.data


def test_server_ignoring_range_restarts_from_zero(tmp_path: Path, server: Server, archive: ArchiveInfo) -> None:
    dest = tmp_path / "mvtec_anomaly_detection.tar.xz"
    dest.with_name(dest.name + ".part").write_bytes(b"stale garbage that must not be kept")
    server.state.ignore_range = True
    download_file(server.url(), dest, expected_md5=archive.md5, retries=0, timeout=5, progress=False)
    assert server.state.ranges == ["bytes=35-"]
    assert server.state.statuses == [200]
    assert dest.read_bytes() == archive.data


def test_already_complete_part_gets_416(tmp_path: Path, server: Server, archive: ArchiveInfo) -> None:
    dest = tmp_path / "mvtec_anomaly_detection.tar.xz"
    dest.with_name(dest.name + ".part").write_bytes(archive.data)
    download_file(server.url(), dest, expected_sha256=archive.sha256, retries=0, timeout=5, progress=False)
    assert server.state.statuses == [416]
    assert dest.read_bytes() == archive.data


def test_corrupted_archive_is_detected_and_removed(tmp_path: Path, server: Server, archive: ArchiveInfo) -> None:
    server.state.corrupt = True
    data_root = tmp_path / "data" / "mvtec"
    with pytest.raises(DownloadError, match="checksum mismatch") as excinfo:
        download_mvtec(data_root, url=server.url(), md5=archive.md5, sha256=None, retries=0, progress=False)
    message = str(excinfo.value)
    assert "\n" not in message and "re-run" in message and "deleted" in message
    assert not data_root.exists()
    assert list((tmp_path / "data").iterdir()) == []  # neither the archive nor its .part is left


def test_truncated_archive_without_checksum_is_not_half_extracted(
    tmp_path: Path, server: Server, archive: ArchiveInfo
) -> None:
    server.state.truncate_to = int(len(archive.data) * 0.7)
    data_root = tmp_path / "data" / "mvtec"
    with pytest.raises(DownloadError, match="truncated or corrupt") as excinfo:
        download_mvtec(data_root, url=server.url(), md5=None, sha256=None, retries=0, progress=False)
    assert "\n" not in str(excinfo.value)
    assert not data_root.exists()
    assert list((tmp_path / "data").iterdir()) == []  # no temp folder, and the unverified archive was deleted


def test_truncated_archive_leaves_existing_data_root_untouched(tmp_path: Path, archive: ArchiveInfo) -> None:
    truncated = tmp_path / "truncated.tar.xz"
    truncated.write_bytes(archive.data[: int(len(archive.data) * 0.7)])
    data_root = tmp_path / "data" / "mvtec"
    (data_root / "grid").mkdir(parents=True)
    with pytest.raises(DownloadError, match="nothing was written"):
        extract_archive(truncated, data_root, progress=False)
    assert [p.name for p in data_root.iterdir()] == ["grid"]
    assert _leftovers(data_root.parent) == []


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


def _hardlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE
    info.linkname = target
    return info


def _file(name: str, content: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    return info


@pytest.mark.parametrize(
    "kind",
    ["dotdot", "nested_dotdot", "absolute", "symlink_out", "symlink_absolute", "hardlink_out"],
)
def test_unsafe_members_are_refused(tmp_path: Path, kind: str) -> None:
    outside = tmp_path / "evil.txt"
    payload = b"pwned"
    extra = {
        "dotdot": (_file("../../evil.txt", payload), payload),
        "nested_dotdot": (_file("carpet/../../../evil.txt", payload), payload),
        "absolute": (_file(str(outside), payload), payload),
        "symlink_out": (_symlink("carpet/link", "../../../evil.txt"), None),
        "symlink_absolute": (_symlink("carpet/link", str(outside)), None),
        "hardlink_out": (_hardlink("carpet/link", "../evil.txt"), None),
    }[kind]
    bad = tmp_path / "bad.tar.xz"
    _build_tar_xz(bad, {"carpet/train/good/000.png": b"png"}, [extra])
    data_root = tmp_path / "data" / "mvtec"
    with pytest.raises(DownloadError, match="unsafe archive member"):
        extract_archive(bad, data_root, progress=False)
    assert not outside.exists()
    assert not (tmp_path / "data" / "evil.txt").exists()
    assert not data_root.exists()
    assert _leftovers(tmp_path / "data") == []


def test_existing_category_is_skipped_not_overwritten(tmp_path: Path, server: Server, archive: ArchiveInfo) -> None:
    data_root = tmp_path / "data" / "mvtec"
    (data_root / "carpet").mkdir(parents=True)
    (data_root / "carpet" / "mine.txt").write_text("user data")

    # Single category already present: nothing is even requested.
    download_mvtec(data_root, category="carpet", url=server.url(), md5=archive.md5, retries=0, progress=False)
    assert server.state.ranges == []

    # Everything: carpet is skipped, the rest is extracted.
    download_mvtec(data_root, url=server.url(), md5=archive.md5, sha256=None, retries=0, progress=False)
    assert [p.name for p in (data_root / "carpet").iterdir()] == ["mine.txt"]
    assert (data_root / "carpet" / "mine.txt").read_text() == "user data"
    assert (data_root / "bottle" / "train" / "good" / "000.png").read_bytes() == archive.files[
        "bottle/train/good/000.png"
    ]


def test_unreachable_url_gives_one_line_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/x.tar.xz"
    data_root = tmp_path / "data" / "mvtec"
    with pytest.raises(DownloadError) as excinfo:
        download_mvtec(data_root, url=url, md5=None, sha256=None, retries=0, timeout=5, progress=False)
    message = str(excinfo.value)
    assert "\n" not in message
    assert url in message
    assert "https://www.mvtec.com/company/research/datasets/mvtec-ad" in message
    assert "--data-root" in message
    assert not data_root.exists()


def test_http_error_is_reported(tmp_path: Path, server: Server) -> None:
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(server.url("missing.zip"), tmp_path / "x.zip", retries=0, timeout=5, progress=False)


def test_invalid_checksum_argument_fails_before_downloading(tmp_path: Path, server: Server) -> None:
    with pytest.raises(DownloadError, match="invalid md5"):
        download_file(server.url(), tmp_path / "x.tar.xz", expected_md5="not-a-hash", progress=False)
    assert server.state.ranges == []


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the script must find stfpm on its own
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--no-progress", "--retries", "0", "--timeout", "5", *args],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, env=env,
    )


def test_cli_success_and_bad_checksum(tmp_path: Path, server: Server, archive: ArchiveInfo) -> None:
    data_root = tmp_path / "data" / "mvtec_anomaly_detection"
    done = _run_cli("--url", server.url(), "--md5", archive.md5, "--data-root", str(data_root))
    assert done.returncode == 0, done.stderr
    assert _tree(data_root) == archive.files

    other_root = tmp_path / "other" / "mvtec_anomaly_detection"
    failed = _run_cli("--url", server.url(), "--md5", "0" * 32, "--data-root", str(other_root))
    assert failed.returncode == 2
    error_lines = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and "checksum mismatch" in error_lines[0]
    assert "Traceback" not in failed.stderr
    assert not other_root.exists()


def test_cli_help_mentions_category_strategy() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "--category" in done.stdout and "full archive" in " ".join(done.stdout.split())


@pytest.mark.parametrize("extra, needle", [(["--timeout", "0"], "--timeout"), (["--retries", "-1"], "--retries")])
def test_download_arguments_are_checked_first(tmp_path, capsys, extra, needle) -> None:
    from stfpm.cli import run
    from stfpm.cli.download import main

    assert run(main, ["--data-root", str(tmp_path / "mvtec"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and not (tmp_path / "mvtec").exists()
