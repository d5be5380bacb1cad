"""A bounded load test of a running service, on loopback: concurrent clients mixing good uploads and bad ones
(empty, not an image, truncated, a decompression bomb, a wrong content type, an oversized body, a malformed
multipart), stopping after a number of requests or seconds. It reports requests/s, latency percentiles, the
answers by status, the service's memory at start and end, and each good image's answers."""

from __future__ import annotations

import http.client
import io
import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Upload:
    """One request's body: what it is, its bytes and content type, and the status a correct service answers."""

    name: str
    body: bytes
    content_type: str
    expected: int  # 200, or the 4xx a bad upload must get


def bad_uploads(good: bytes, max_body_bytes: int) -> list[Upload]:
    """Every kind of bad input, built from one good image file."""
    bomb = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(bomb, format="PNG")  # 144 M pixels in a few kB
    boundary = uuid.uuid4().hex
    return [
        Upload("empty", b"", "image/png", 400),
        Upload("not an image", b"this is not an image\n" * 20, "image/png", 400),
        Upload("truncated", good[: len(good) // 2], "image/jpeg", 400),
        Upload("decompression bomb", bomb.getvalue(), "image/png", 413),
        Upload("wrong content type", good, "text/plain", 415),
        Upload("oversized", b"\xff" * (max_body_bytes + 1), "application/octet-stream", 413),
        Upload("malformed multipart", b"--" + boundary.encode() + b"\r\nno headers, no end",
               f"multipart/form-data; boundary={boundary}", 400),
    ]


def multipart(body: bytes, name: str) -> tuple[bytes, str]:
    """``body`` as the multipart field ``image``."""
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + body + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@dataclass
class Report:
    seconds: float = 0.0
    statuses: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # of the good requests, in seconds
    wrong: list[str] = field(default_factory=list)  # requests whose status was not the expected one
    answers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # good image name -> its answers
    memory_start: int = 0
    memory_end: int = 0
    alone: float = 0.0  # median latency of one request alone

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    def lines(self) -> list[str]:
        total = sum(self.statuses.values())
        return [
            f"{total} requests in {self.seconds:.1f} s: {total / self.seconds:.1f} requests/s",
            "latency of good requests (ms): p50 {:.1f}, p95 {:.1f}, p99 {:.1f}; one request alone {:.1f}".format(
                *(1000 * self.percentile(q) for q in (50, 95, 99)), 1000 * self.alone),
            "answers by status: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items())),
            f"wrong answers: {len(self.wrong)}" + (f" ({'; '.join(self.wrong[:5])})" if self.wrong else ""),
            f"service memory: {self.memory_start / 2**20:.0f} MiB at start, {self.memory_end / 2**20:.0f} MiB at end "
            f"({self.memory_end / max(self.memory_start, 1):.3f}x)",
        ]


class Client:
    """One keep-alive connection to the service."""

    def __init__(self, url: str, timeout: float) -> None:
        parsed = urlparse(url)
        if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the load test talks to this machine only (127.0.0.1), not {parsed.hostname}")
        self.host, self.port, self.timeout = parsed.hostname, parsed.port or 80, timeout
        self.connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
                ) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": content_type} if content_type else {}
        for attempt in (0, 1):  # a connection the server closed (after a refused body) is opened again once
            try:
                self.connection.request(method, path, body=body, headers=headers)
                response = self.connection.getresponse()
                data = response.read()
                if response.getheader("connection", "").lower() == "close":
                    self.connection.close()
                return response.status, json.loads(data) if data else {}
            except (ConnectionError, http.client.HTTPException):
                self.connection.close()
                self.connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.connection.close()


def _good_uploads(images: list[Path]) -> list[Upload]:
    uploads = []
    for k, path in enumerate(images):
        body, kind = path.read_bytes(), f"image/{path.suffix.lstrip('.').lower().replace('jpg', 'jpeg')}"
        if k % 2:  # every other one as a multipart field, as a browser form sends it
            body, kind = multipart(body, path.name)
        uploads.append(Upload(path.name, body, kind, 200))
    return uploads


def run_load(url: str, images: list[Path], clients: int = 4, requests: int = 200, seconds: float = 60.0,
             bad_every: int = 4, max_body_bytes: int = 32_000_000, timeout: float = 60.0) -> Report:
    """Send about ``requests`` requests (at most ``seconds``) from ``clients`` threads; every ``bad_every``-th is a
    bad upload. A warm-up of one request per good image comes first; memory is read before and after the load."""
    good = _good_uploads(images)
    bad = bad_uploads(images[0].read_bytes(), max_body_bytes)
    plan, goods, bads = [], iter(range(requests)), iter(range(requests))
    for k in range(requests):  # every good and every bad kind in turn
        is_bad = bad_every and k % bad_every == bad_every - 1
        plan.append(bad[next(bads) % len(bad)] if is_bad else good[next(goods) % len(good)])
    report, lock, position = Report(), threading.Lock(), iter(range(len(plan)))
    probe = Client(url, timeout)
    alone = []
    for upload in good:  # warm-up, and the latency of one request alone
        start = time.perf_counter()
        probe.request("POST", "/predict", upload.body, upload.content_type)
        alone.append(time.perf_counter() - start)
    report.alone = float(np.median(alone))
    report.memory_start = probe.request("GET", "/health")[1]["memory_bytes"]
    deadline = time.monotonic() + seconds

    def work() -> None:
        client = Client(url, timeout)
        try:
            while time.monotonic() < deadline:
                with lock:
                    k = next(position, None)
                if k is None:
                    return
                upload = plan[k]
                start = time.perf_counter()
                status, answer = client.request("POST", "/predict", upload.body, upload.content_type)
                elapsed = time.perf_counter() - start
                with lock:
                    report.statuses[status] += 1
                    if status != upload.expected:
                        report.wrong.append(f"{upload.name}: {status} {answer.get('error', '')}".strip())
                    if upload.expected == 200:
                        report.latencies.append(elapsed)
                        report.answers.setdefault(upload.name, []).append(answer)
        finally:
            client.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=work, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + timeout)
    report.seconds = time.perf_counter() - started
    report.memory_end = probe.request("GET", "/health")[1]["memory_bytes"]
    probe.close()
    return report
