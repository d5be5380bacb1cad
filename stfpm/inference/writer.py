"""What folder prediction writes: each image's mask, heatmap and raw map, a journal line per finished image, and
the tables (predictions.csv, predictions.json).

Every finished image is appended to a journal in the output folder once its files are written; a resumed run reads
it back and skips those images, so an interrupted run over a large folder continues where it stopped and never
rewrites finished outputs. Under DDP each process writes its own share of the images and its own journal; the first
process merges the journals into ``predictions.csv`` at the end.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

from stfpm.core.files import atomic_write_bytes, atomic_write_text
from stfpm.data.io import save_image
from stfpm.inference.postprocess import Postprocessor, Prediction

log = logging.getLogger(__name__)

CSV_COLUMNS = ("path", "image_score", "image_threshold", "is_anomalous", "defect_area_fraction", "pixel_threshold")
JOURNAL_GLOB = ".predictions.rank*.jsonl"
MAX_PENDING_WRITES = 64


@dataclass
class Target:
    """Where one input image's outputs go."""

    source: Path
    relative: str
    mask: Path
    heatmap: Path | None
    raw: Path

    def files(self, save_raw: bool) -> list[Path]:
        return [self.mask, *([self.heatmap] if self.heatmap else []), *([self.raw] if save_raw else [])]


def journal_path(output: Path, rank: int) -> Path:
    return output / f".predictions.rank{rank}.jsonl"


def read_journals(output: Path) -> tuple[dict[str, dict[str, Any]], int, int]:
    """Rows of the images finished by the processes of this run, how many images they skipped, and how many
    outputs they wrote (equal to the rows unless an image was scored twice)."""
    rows: dict[str, dict[str, Any]] = {}
    skipped = written = 0
    for journal in sorted(output.glob(JOURNAL_GLOB)):
        for line in journal.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut off by a crash
                continue
            if isinstance(record, dict) and "skipped" in record:
                skipped += 1
            elif isinstance(record, dict) and "path" in record and "image_score" in record:
                rows[record["path"]] = record
                written += 1
    return rows, skipped, written


def remove_journals(output: Path) -> None:
    for journal in output.glob(JOURNAL_GLOB):
        journal.unlink(missing_ok=True)


def read_rows(output: Path) -> dict[str, dict[str, Any]]:
    """Rows already recorded in ``output``: predictions.csv, then the journals of an interrupted run."""
    rows: dict[str, dict[str, Any]] = {}
    table = output / "predictions.csv"
    if table.is_file():
        with table.open(newline="") as handle:
            for row in csv.DictReader(handle):
                rows[row["path"]] = _typed(row)
    rows.update(read_journals(output)[0])
    return rows


def _typed(row: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"path": row["path"], "is_anomalous": row["is_anomalous"] == "True"}
    for key in ("image_score", "image_threshold", "defect_area_fraction", "pixel_threshold"):
        out[key] = float(row[key])
    return out


def write_tables(rows: list[dict[str, Any]], output: Path, as_json: bool) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(output / "predictions.csv", buffer.getvalue())
    if as_json:
        atomic_write_text(output / "predictions.json", json.dumps(rows, indent=2) + "\n")


def row_of(target: Target, pred: Prediction, postprocessor: Postprocessor) -> dict[str, Any]:
    return {
        "path": target.relative,
        "image_score": pred.score,
        "image_threshold": postprocessor.policy.image,
        "is_anomalous": pred.is_anomalous,
        "defect_area_fraction": pred.defect_area_fraction,
        "pixel_threshold": postprocessor.policy.pixel,
    }


class MaskWriter(BasePredictionWriter):
    """Lightning prediction writer: each image's mask, heatmap (and raw map) at its source size, written
    exactly once by the process that scored it; PNG encoding and disk writes run on a small thread pool, off
    the model's critical path. A journal line per image is appended only after its files are complete."""

    def __init__(self, targets: list[Target], postprocessor: Postprocessor, output: Path, save_raw: bool) -> None:
        super().__init__(write_interval="batch")
        self.targets = targets
        self.postprocessor = postprocessor
        self.output = output
        self.save_raw = save_raw
        self.rows: list[dict[str, Any]] = []
        self.skipped = 0
        self.started: float | None = None
        self.elapsed = 0.0
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []
        self._journal: Any = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.output.mkdir(parents=True, exist_ok=True)
        self._journal = journal_path(self.output, trainer.global_rank).open("a", buffering=1)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="stfpm-writer")

    def on_predict_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self.started is None:
            self.started = time.perf_counter()

    def write_on_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any, batch_indices: Any,
        batch: Any, batch_idx: int, dataloader_idx: int,
    ) -> None:
        for _, message in prediction["errors"]:
            log.warning("skipped %s", message)
            self.skipped += 1
            with self._lock:
                self._journal.write(json.dumps({"skipped": message}) + "\n")
        if prediction.get("anomaly_map") is None:
            return
        for index, source, anomaly_map, score in zip(
            prediction["index"], prediction["source"], prediction["anomaly_map"], prediction["score"].tolist()
        ):
            assert self._pool is not None
            self._pending.append(self._pool.submit(self._write, self.targets[index], source, anomaly_map, score))
        self._drain()

    def _drain(self) -> None:
        """Back-pressure: when writing is slower than the model (a fast GPU), wait here rather than queue decoded
        images without bound, so memory stays flat in the number of images; a failed write stops the run here."""
        while len(self._pending) > MAX_PENDING_WRITES:
            self._pending.pop(0).result()
        pending = []
        for future in self._pending:
            if future.done():
                future.result()
            else:
                pending.append(future)
        self._pending = pending

    def _write(self, target: Target, source: np.ndarray, anomaly_map: torch.Tensor, score: float) -> None:
        pred = self.postprocessor(anomaly_map, score, source.shape[:2])
        save_image(target.mask, pred.mask)
        if target.heatmap is not None:
            save_image(target.heatmap, self.postprocessor.heatmap(source, pred))
        if self.save_raw:
            buffer = io.BytesIO()
            np.save(buffer, pred.anomaly_map.astype(np.float32))
            atomic_write_bytes(target.raw, buffer.getvalue())
        row = row_of(target, pred, self.postprocessor)
        with self._lock:
            self.rows.append(row)
            self._journal.write(json.dumps(row) + "\n")

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.close()
        if self.started is not None:
            self.elapsed = time.perf_counter() - self.started

    def close(self) -> None:
        """Wait for every pending write (re-raising its error) and close the journal."""
        if self._pool is not None:
            try:
                for future in self._pending:
                    future.result()
            finally:
                self._pool.shutdown(wait=True)
                self._pool = None
                self._pending = []
        if self._journal is not None:
            self._journal.close()
            self._journal = None
