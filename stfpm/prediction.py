"""`python predict.py`: binary defect masks and heatmaps for a folder (or file) of new images."""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from stfpm.atomic import atomic_write_bytes, atomic_write_text
from stfpm.checkpoint import find_latest_checkpoint, load_checkpoint
from stfpm.config import new_parser, parse_args
from stfpm.data import ImageTransform, list_images, load_image
from stfpm.errors import DataError, ImageReadError, STFPMError
from stfpm.inference import Prediction, Predictor
from stfpm.postprocess import heatmap_scale, overlay
from stfpm.report import save_png

log = logging.getLogger(__name__)

CSV_COLUMNS = ("path", "image_score", "image_threshold", "is_anomalous", "defect_area_fraction", "pixel_threshold")


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("Write black/white defect masks (0/255) and heatmaps for new images.")
    parser.add_argument("--checkpoint", help="checkpoint written by train.py")
    parser.add_argument("--category", help="use the latest run of this category (instead of --checkpoint)")
    parser.add_argument("--runs-dir", default="runs", help="where train.py wrote its runs")
    parser.add_argument("--input", required=False, help="an image file or a folder (searched recursively)")
    parser.add_argument("--output", default="predictions", help="output folder (mirrors the input's sub-folders)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--threshold", type=float, help="pixel threshold (default: calibrated one in the checkpoint)")
    parser.add_argument("--image-threshold", type=float, help="image threshold (default: calibrated one)")
    parser.add_argument("--thresholds-from", help="results.json of test.py: use its F1-optimal thresholds")
    parser.add_argument("--min-defect-area", type=int, default=0, help="drop mask blobs smaller than N pixels")
    parser.add_argument("--save-raw", action="store_true", help="also write the float32 anomaly map as .npy")
    parser.add_argument("--json", action="store_true", help="also write predictions.json")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--precision", default="32", choices=["32", "bf16", "16"], help="inference precision")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1))
    return parser


class _FolderDataset(Dataset):
    """Images of a folder; an unreadable file becomes an error record instead of an exception."""

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


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    good = [i for i in items if "error" not in i]
    return {
        "images": torch.stack([i["image"] for i in good]) if good else None,
        "indices": [i["index"] for i in good],
        "sources": [i["source"] for i in good],  # decoded once, reused for the heatmap overlay
        "errors": [(i["index"], i["error"]) for i in items if "error" in i],
    }


@dataclass
class _Target:
    """Where one input image's outputs go."""

    source: Path
    relative: str
    mask: Path
    heatmap: Path
    raw: Path


def _targets(paths: list[Path], root: Path, out: Path) -> list[_Target]:
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
        targets.append(
            _Target(p, rel.as_posix(), folder / f"{base}_mask.png", folder / f"{base}_heatmap.png", folder / f"{base}_map.npy")
        )
    return targets


def _input_images(input_path: Path, output: Path) -> tuple[Path, list[Path]]:
    """The root the outputs mirror, and the images under it (never our own output folder)."""
    if not input_path.exists():
        raise DataError(f"input {input_path} does not exist")
    root = input_path if input_path.is_dir() else input_path.parent
    paths = list_images(input_path)
    out = output.resolve()
    paths = [p for p in paths if not p.resolve().is_relative_to(out)]
    if not paths:
        raise DataError(f"no images found in {input_path}")
    return root, paths


def _refuse_overwrite(targets: list[_Target], output: Path, args: argparse.Namespace) -> None:
    if args.overwrite:
        return
    planned = [output / "predictions.csv"] + [t.mask for t in targets] + [t.heatmap for t in targets]
    if args.json:
        planned.append(output / "predictions.json")
    if args.save_raw:
        planned += [t.raw for t in targets]
    existing = [p for p in planned if p.exists()]
    if existing:
        raise STFPMError(
            f"{len(existing)} output file(s) already exist in {output} (e.g. {existing[0]}); "
            "pass --overwrite or choose another --output"
        )


def _thresholds(args: argparse.Namespace) -> tuple[float | None, float | None]:
    """(image, pixel) thresholds requested on the command line; None means 'use the calibrated one'."""
    image_thr, pixel_thr = args.image_threshold, args.threshold
    if args.thresholds_from:
        path = Path(args.thresholds_from)
        try:
            results = json.loads(path.read_text())
            from_file = (results["image_f1_threshold"], results["pixel_f1_threshold"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise STFPMError(f"cannot read F1-optimal thresholds from {path}: {exc}") from exc
        if None in from_file:
            raise STFPMError(f"{path} has no defined F1-optimal thresholds")
        image_thr = from_file[0] if image_thr is None else image_thr
        pixel_thr = from_file[1] if pixel_thr is None else pixel_thr
    return image_thr, pixel_thr


def _write_outputs(target: _Target, image: np.ndarray, pred: Prediction, predictor: Predictor, save_raw: bool) -> None:
    save_png(target.mask, pred.mask)
    vmax = heatmap_scale(predictor.pixel_threshold, pred.anomaly_map)
    save_png(target.heatmap, overlay(image, pred.anomaly_map, vmax))
    if save_raw:
        buffer = io.BytesIO()
        np.save(buffer, pred.anomaly_map.astype(np.float32))
        atomic_write_bytes(target.raw, buffer.getvalue())


def _row(target: _Target, pred: Prediction, predictor: Predictor) -> dict[str, Any]:
    return {
        "path": target.relative,
        "image_score": pred.score,
        "image_threshold": predictor.image_threshold,
        "is_anomalous": pred.is_anomalous,
        "defect_area_fraction": pred.defect_area_fraction,
        "pixel_threshold": predictor.pixel_threshold,
    }


def _write_tables(rows: list[dict[str, Any]], output: Path, as_json: bool) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(output / "predictions.csv", buffer.getvalue())
    if as_json:
        atomic_write_text(output / "predictions.json", json.dumps(rows, indent=2) + "\n")


def _checkpoint_path(args: argparse.Namespace) -> Path:
    if args.checkpoint:
        return Path(args.checkpoint).expanduser()
    if args.category:
        return find_latest_checkpoint(args.runs_dir, args.category)
    raise STFPMError("pass --checkpoint PATH or --category NAME (its latest run)")


def run_prediction(args: argparse.Namespace) -> tuple[int, int, int]:
    """Predict every image; returns (processed, anomalous, skipped)."""
    if not args.input:
        raise STFPMError("pass --input, an image file or a folder of images")
    output = Path(args.output).expanduser()
    root, paths = _input_images(Path(args.input).expanduser(), output)
    targets = _targets(paths, root, output)
    _refuse_overwrite(targets, output, args)
    image_thr, pixel_thr = _thresholds(args)
    predictor = Predictor(
        load_checkpoint(_checkpoint_path(args)), device=args.device, image_threshold=image_thr,
        pixel_threshold=pixel_thr, min_defect_area=args.min_defect_area, precision=args.precision,
    )
    loader = DataLoader(
        _FolderDataset(paths, predictor.transform), batch_size=args.batch_size, num_workers=args.num_workers,
        collate_fn=_collate, pin_memory=predictor.device.type == "cuda",
    )
    rows, skipped, start = [], 0, time.perf_counter()
    with tqdm(total=len(paths), unit="img", desc="predict") as bar:
        for batch in loader:
            for index, message in batch["errors"]:
                log.warning("skipped %s", message)
                skipped += 1
            if batch["images"] is not None:
                sizes = [source.shape[:2] for source in batch["sources"]]
                preds = predictor.predict_batch(batch["images"], sizes)
                for index, source, pred in zip(batch["indices"], batch["sources"], preds):
                    _write_outputs(targets[index], source, pred, predictor, args.save_raw)
                    rows.append(_row(targets[index], pred, predictor))
            bar.update(len(batch["indices"]) + len(batch["errors"]))
    elapsed = time.perf_counter() - start
    rows.sort(key=lambda r: r["path"])
    if rows:
        _write_tables(rows, output, args.json)
    anomalous = sum(r["is_anomalous"] for r in rows)
    rate = len(rows) / elapsed if elapsed > 0 else math.inf
    print(
        f"{len(rows)} images, {anomalous} anomalous, {skipped} skipped in {elapsed:.1f} s "
        f"({rate:.1f} img/s); image threshold {predictor.image_threshold:.6g}, "
        f"pixel threshold {predictor.pixel_threshold:.6g} -> {output}"
    )
    return len(rows), anomalous, skipped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    processed, _, _ = run_prediction(args)
    if processed == 0:
        print("error: no image could be processed", flush=True)
        return 1
    return 0
