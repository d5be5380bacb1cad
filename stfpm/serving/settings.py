"""The options of stfpm-serve: which model, where it listens, how it batches and what it accepts."""

from __future__ import annotations

from dataclasses import dataclass

from stfpm.core.options import Section, integer, number, option


@dataclass(frozen=True)
class ServeSettings(Section):
    name = "serve"
    about = "stfpm-serve: the HTTP service"

    checkpoint: str | None = option(None, "checkpoint written by train.py", kind=str)
    category: str | None = option(None, "serve the latest run of this category (default: the latest run of any)",
                                  kind=str)
    runs_dir: str = option("runs", "where train.py wrote its runs", kind=str)
    host: str = option("127.0.0.1", "address to listen on (127.0.0.1: this machine only; 0.0.0.0: every network)",
                       kind=str)
    port: int = option(8000, "port to listen on (0: any free port, printed at start)", kind=int, check=integer(0, 65535))
    max_batch_size: int = option(8, "concurrent requests scored together in one network call, at most", kind=int,
                                 check=integer(1, 1024))
    max_wait_ms: float = option(5.0, "how long the first request of a batch waits for others, in milliseconds",
                                kind=float, check=number(0, 1000))
    max_body_mb: float = option(32.0, "largest upload accepted, in MB (larger: 413)", kind=float,
                                check=number(0, 4096, low_open=True))
    max_image_pixels: int = option(50_000_000, "largest image accepted, in pixels, checked before decoding (a "
                                   "decompression bomb: 413)", kind=int, check=integer(1))
