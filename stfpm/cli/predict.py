"""`python predict.py`: binary defect masks and heatmaps for a folder (or file) of new images.

The images go through the shared engine (:mod:`stfpm.inference.engine`: Lightning's ``Trainer.predict``, so the device,
precision and several-process flags are train.py's and test.py's) and a Lightning prediction writer,
:class:`MaskWriter`, that turns each map into a mask and a heatmap with the one :class:`Postprocessor`.

Every finished image is appended to a journal in the output folder once its files are written; ``--resume``
reads it back and skips those images, so an interrupted run over a large folder continues where it stopped
and never rewrites finished outputs. Under DDP each process writes its own share of the images and its own
journal; the first process merges the journals into ``predictions.csv`` at the end.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
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
from torch.utils.data import DataLoader, Dataset

from stfpm.config import Parser, integer, new_parser, parse_args, validate, writable_folder
from stfpm.data import ImageTransform, list_images, load_image
from stfpm.errors import DataError, ImageReadError, STFPMError
from stfpm.inference.engine import (
    add_engine_args,
    add_threshold_args,
    check_engine_args,
    run_inference,
    threshold_policy,
)
from stfpm.inference.postprocess import Postprocessor, Prediction
from stfpm.model.checkpoint import describe_run, find_latest_checkpoint, find_latest_run, load_checkpoint
from stfpm.reporting.atomic import atomic_write_bytes, atomic_write_text
from stfpm.reporting.report import save_image, save_png

log = logging.getLogger(__name__)

CSV_COLUMNS = ("path", "image_score", "image_threshold", "is_anomalous", "defect_area_fraction", "pixel_threshold")
JOURNAL_GLOB = ".predictions.rank*.jsonl"
HEATMAP_FORMATS = ("jpg", "png", "none")
MAX_PENDING_WRITES = 64


def build_parser() -> Parser:
    parser = new_parser("Write black/white defect masks (0/255) and heatmaps for new images.")
    options = parser.section("predict")
    options.add_argument("--checkpoint", help="checkpoint written by train.py")
    options.add_argument(
        "--category", help="use the latest run of this category (default: the latest run of any category)"
    )
    options.add_argument("--runs-dir", default="runs", help="where train.py wrote its runs")
    options.add_argument("--input", required=False, help="an image file or a folder (searched recursively)")
    options.add_argument("--output", default="predictions", help="output folder (mirrors the input's sub-folders)")
    existing = options.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    existing.add_argument(
        "--resume", action="store_true", help="continue an interrupted run: skip images whose outputs are complete"
    )
    options.add_argument("--min-defect-area", type=int, default=0, help="drop mask blobs smaller than N pixels")
    options.add_argument(
        "--heatmap-format", default="jpg", choices=HEATMAP_FORMATS,
        help="heatmap files: jpg (about 13x faster to write and 6x smaller than png), png (lossless) or none",
    )
    options.add_argument("--save-raw", action="store_true", help="also write the float32 anomaly map as .npy")
    options.add_argument("--json", action="store_true", help="also write predictions.json")
    add_threshold_args(parser)
    add_engine_args(parser, batch_size=16)
    return parser


class FolderDataset(Dataset):
    """Images of a folder, decoded and preprocessed in the loader's workers; an unreadable file becomes an
    error record instead of an exception."""

    def __init__(self, paths: list[Path], transform: ImageTransform) -> None:
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        try:
            image = load_image(path)
        except ImageReadError as exc:
            return {"index": index, "error": str(exc)}
        return {"index": index, "image": self.transform(image), "source": np.asarray(image)}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Readable images stacked into one tensor; error records passed through."""
    good = [i for i in items if "error" not in i]
    return {
        "image": torch.stack([i["image"] for i in good]) if good else None,
        "index": [i["index"] for i in good],
        "source": [i["source"] for i in good],  # decoded once, reused for the heatmap overlay (numpy: stays on CPU)
        "errors": [(i["index"], i["error"]) for i in items if "error" in i],
    }


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


def plan_targets(paths: list[Path], root: Path, out: Path, heatmap_format: str = "jpg") -> list[Target]:
    """Output paths mirroring the input tree; ``x.png`` and ``x.jpg`` side by side keep distinct names."""
    stems: dict[Path, int] = {}
    for p in paths:
        key = p.parent / p.stem
        stems[key] = stems.get(key, 0) + 1
    targets = []
    for p in paths:
        rel = p.relative_to(root) if p != root else Path(p.name)
        base = rel.stem if stems[p.parent / p.stem] == 1 else f"{rel.stem}_{rel.suffix.lstrip('.')}"
        folder = out / rel.parent
        heatmap = None if heatmap_format == "none" else folder / f"{base}_heatmap.{heatmap_format}"
        targets.append(Target(p, rel.as_posix(), folder / f"{base}_mask.png", heatmap, folder / f"{base}_map.npy"))
    return targets


def input_images(input_path: Path, output: Path) -> tuple[Path, list[Path]]:
    """The root the outputs mirror, and the images under it (never our own output folder)."""
    if not input_path.exists():
        raise DataError(f"input {input_path} does not exist")
    if output.exists() and not output.is_dir():
        raise DataError(f"--output {output} exists and is not a folder")
    root = input_path if input_path.is_dir() else input_path.parent
    out = output.resolve()
    paths = [p for p in list_images(input_path) if not p.resolve().is_relative_to(out)]
    if not paths:
        raise DataError(f"no images found in {input_path}")
    return root, paths


# ------------------------------------------------------------------------------------------------ journal


def _journal(output: Path, rank: int) -> Path:
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


def finished_rows(
    targets: list[Target], output: Path, save_raw: bool, policy_thresholds: tuple[float, float]
) -> dict[str, dict[str, Any]]:
    """The recorded rows whose output files all exist; refuses rows made with other thresholds."""
    recorded = read_rows(output)
    done = {}
    for target in targets:
        row = recorded.get(target.relative)
        if row is None or not all(f.is_file() for f in target.files(save_raw)):
            continue
        if (row["image_threshold"], row["pixel_threshold"]) != policy_thresholds:
            raise STFPMError(
                f"{output} holds outputs made with other thresholds (e.g. {target.relative}: image "
                f"{row['image_threshold']:.6g}, pixel {row['pixel_threshold']:.6g}); "
                "pass --overwrite or choose another --output"
            )
        done[target.relative] = row
    return done


def refuse_overwrite(targets: list[Target], output: Path, args: argparse.Namespace) -> None:
    """Existing outputs stop the run unless --overwrite or --resume says what to do with them."""
    if args.overwrite or args.resume:
        return
    planned = [output / "predictions.csv", *(f for t in targets for f in t.files(args.save_raw))]
    if args.json:
        planned.append(output / "predictions.json")
    existing = [p for p in planned if p.exists()]
    if existing:
        raise STFPMError(
            f"{len(existing)} output file(s) already exist in {output} (e.g. {existing[0]}); "
            "pass --resume to continue that run, --overwrite to replace them, or choose another --output"
        )


def write_tables(rows: list[dict[str, Any]], output: Path, as_json: bool) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(output / "predictions.csv", buffer.getvalue())
    if as_json:
        atomic_write_text(output / "predictions.json", json.dumps(rows, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------ writer


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
        self._journal = _journal(self.output, trainer.global_rank).open("a", buffering=1)
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
        # back-pressure: when writing is slower than the model (a fast GPU), wait here rather than queue decoded
        # images without bound, so memory stays flat in the number of images
        while len(self._pending) > MAX_PENDING_WRITES:
            self._pending.pop(0).result()
        pending = []
        for future in self._pending:
            if future.done():
                future.result()  # a failed write stops the run here, with its error
            else:
                pending.append(future)
        self._pending = pending

    def _write(self, target: Target, source: np.ndarray, anomaly_map: torch.Tensor, score: float) -> None:
        pred = self.postprocessor(anomaly_map, score, source.shape[:2])
        save_png(target.mask, pred.mask)
        if target.heatmap is not None:
            save_image(target.heatmap, self.postprocessor.heatmap(source, pred))
        if self.save_raw:
            buffer = io.BytesIO()
            np.save(buffer, pred.anomaly_map.astype(np.float32))
            atomic_write_bytes(target.raw, buffer.getvalue())
        row = _row(target, pred, self.postprocessor)
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


def _row(target: Target, pred: Prediction, postprocessor: Postprocessor) -> dict[str, Any]:
    return {
        "path": target.relative,
        "image_score": pred.score,
        "image_threshold": postprocessor.policy.image,
        "is_anomalous": pred.is_anomalous,
        "defect_area_fraction": pred.defect_area_fraction,
        "pixel_threshold": postprocessor.policy.pixel,
    }


# ------------------------------------------------------------------------------------------------ command


def checkpoint_path(args: argparse.Namespace) -> Path:
    """--checkpoint, else the latest run of --category, else the latest run of any category (said in one line)."""
    if args.checkpoint:
        return Path(args.checkpoint).expanduser()
    checkpoint = find_latest_checkpoint(args.runs_dir, args.category) if args.category else find_latest_run(args.runs_dir)
    log.info("using %s", describe_run(checkpoint))
    return checkpoint


def run_prediction(args: argparse.Namespace) -> tuple[int, int, int]:
    """Predict every image; returns (images with outputs, anomalous among them, skipped)."""
    if not args.input:
        raise STFPMError("pass --input, an image file or a folder of images")
    validate(args, {"min_defect_area": integer(0)})
    check_engine_args(args)
    output = writable_folder(args.output, "--output")
    root, paths = input_images(Path(args.input).expanduser(), output)
    targets = plan_targets(paths, root, output, args.heatmap_format)
    refuse_overwrite(targets, output, args)
    model = load_checkpoint(checkpoint_path(args))
    postprocessor = Postprocessor(threshold_policy(args, model), args.min_defect_area)
    policy = postprocessor.policy
    done = finished_rows(targets, output, args.save_raw, (policy.image, policy.pixel)) if args.resume else {}
    # Before any process starts writing: keep only what is finished, in predictions.csv, and no journal. Every
    # process (under DDP) does the same here, with the same result, so they all agree on what remains to do.
    if done:
        write_tables(sorted(done.values(), key=lambda r: r["path"]), output, False)
        log.info("--resume: %d of %d images already done, %d to go", len(done), len(targets), len(targets) - len(done))
    for journal in output.glob(JOURNAL_GLOB):
        journal.unlink(missing_ok=True)
    todo = [t for t in targets if t.relative not in done]
    writer = MaskWriter(todo, postprocessor, output, args.save_raw)
    if todo:
        loader = DataLoader(
            FolderDataset([t.source for t in todo], model.preprocessing()), batch_size=args.batch_size,
            num_workers=args.num_workers, collate_fn=collate, pin_memory=torch.cuda.is_available(),
        )
        try:
            trainer = run_inference(model, loader, args, [writer])
        finally:
            writer.close()
        trainer.strategy.barrier()  # every process's journal is complete
        if not trainer.is_global_zero:
            return len(writer.rows), sum(r["is_anomalous"] for r in writer.rows), writer.skipped
    new_rows, skipped, written = read_journals(output)
    rows = sorted({**new_rows, **done}.values(), key=lambda r: r["path"])
    if rows:
        write_tables(rows, output, args.json)
    for journal in output.glob(JOURNAL_GLOB):
        journal.unlink()
    anomalous = sum(bool(r["is_anomalous"]) for r in rows)
    rate = len(new_rows) / writer.elapsed if writer.elapsed > 0 else math.nan
    print(
        f"{len(rows)} images ({written} written in {writer.elapsed:.1f} s, {rate:.1f} img/s), {anomalous} anomalous, "
        f"{skipped} skipped; image threshold {policy.image:.6g}, pixel threshold {policy.pixel:.6g} "
        f"({policy.source}) -> {output}"
    )
    return len(rows), anomalous, skipped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    processed, _, _ = run_prediction(args)
    if processed == 0:
        raise STFPMError("no image could be processed")
    return 0


def cli() -> int:
    """The console script: :func:`main` with the error convention."""
    from stfpm.cli import run

    return run(main)
