"""Folder prediction: binary defect masks and heatmaps for a folder (or file) of new images, resumable.

The images go through the shared engine (:mod:`stfpm.inference.engine`: Lightning's ``Trainer.predict``, so the
device, precision and several-process options are train.py's and test.py's) and the prediction writer
(:mod:`stfpm.inference.writer`), which turns each map into a mask and a heatmap with the one :class:`Postprocessor`.

>>> from stfpm.inference.folder import predict_folder
>>> summary = predict_folder(PredictSettings(checkpoint="best.ckpt", input="photos", output="out"))
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from stfpm.core.errors import DataError, STFPMError
from stfpm.core.layout import Runs
from stfpm.data.io import list_images
from stfpm.data.mvtec import ImageFolderDataset, collate_readable
from stfpm.data.workers import worker_init
from stfpm.inference.describe import run_facts
from stfpm.inference.engine import run_inference
from stfpm.inference.postprocess import Postprocessor
from stfpm.inference.runtime import attach, network_label
from stfpm.inference.settings import (
    DeviceSettings,
    EngineSettings,
    PostprocessSettings,
    PredictSettings,
    RuntimeSettings,
    ThresholdSettings,
)
from stfpm.inference.thresholding import ThresholdPolicy
from stfpm.inference.writer import (
    MaskWriter,
    Target,
    read_journals,
    read_rows,
    remove_journals,
    write_tables,
)
from stfpm.model.checkpoint import load_checkpoint
from stfpm.model.lightning_model import STFPM
from stfpm.reporting.page import REPORT_NAME, write_page
from stfpm.reporting.prediction import prediction_page

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FolderSummary:
    """What a folder prediction did."""

    images: int  # images with outputs (this run's and earlier runs' of the same --output)
    written: int  # outputs written by this run
    anomalous: int
    skipped: int  # unreadable files
    seconds: float
    rate: float  # images scored per second
    policy: ThresholdPolicy
    output: Path

    def line(self) -> str:
        return (f"{self.images} images ({self.written} written in {self.seconds:.1f} s, {self.rate:.1f} img/s), "
                f"{self.anomalous} anomalous, {self.skipped} skipped; image threshold {self.policy.image:.6g}, pixel "
                f"threshold {self.policy.pixel:.6g} ({self.policy.source}) -> {self.output}")


def plan_targets(paths: list[Path], root: Path, out: Path, heatmap_format: str) -> list[Target]:
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
    root = input_path if input_path.is_dir() else input_path.parent
    out = output.resolve()
    paths = [p for p in list_images(input_path) if not p.resolve().is_relative_to(out)]
    if not paths:
        raise DataError(f"no images found in {input_path}")
    return root, paths


def finished_rows(
    targets: list[Target], output: Path, save_raw: bool, policy: ThresholdPolicy
) -> dict[str, dict[str, Any]]:
    """The recorded rows whose output files all exist; refuses rows made with other thresholds."""
    recorded = read_rows(output)
    done = {}
    for target in targets:
        row = recorded.get(target.relative)
        if row is None or not all(f.is_file() for f in target.files(save_raw)):
            continue
        if (row["image_threshold"], row["pixel_threshold"]) != (policy.image, policy.pixel):
            raise STFPMError(
                f"{output} holds outputs made with other thresholds (e.g. {target.relative}: image "
                f"{row['image_threshold']:.6g}, pixel {row['pixel_threshold']:.6g}); "
                "pass --overwrite or choose another --output"
            )
        done[target.relative] = row
    return done


def refuse_overwrite(targets: list[Target], output: Path, settings: PredictSettings) -> None:
    """Existing outputs stop the run unless --overwrite or --resume says what to do with them."""
    if settings.overwrite or settings.resume:
        return
    planned = [output / "predictions.csv", *(f for t in targets for f in t.files(settings.save_raw))]
    if settings.json:
        planned.append(output / "predictions.json")
    existing = [p for p in planned if p.exists()]
    if existing:
        raise STFPMError(
            f"{len(existing)} output file(s) already exist in {output} (e.g. {existing[0]}); "
            "pass --resume to continue that run, --overwrite to replace them, or choose another --output"
        )


def _score(model: STFPM, todo: list[Target], writer: MaskWriter, engine: EngineSettings, devices: DeviceSettings) -> bool:
    """Score and write ``todo``; True on the first process (the one that merges the tables)."""
    dataset = ImageFolderDataset([t.source for t in todo], model.preprocessing(), keep_source=True, skip_unreadable=True)
    loader = DataLoader(dataset, batch_size=engine.batch_size, num_workers=engine.num_workers,
                        worker_init_fn=worker_init if engine.num_workers else None, collate_fn=collate_readable,
                        pin_memory=torch.cuda.is_available())
    try:
        trainer = run_inference(model, loader, devices, [writer])
    finally:
        writer.close()
    trainer.strategy.barrier()  # every process's journal is complete
    return trainer.is_global_zero


def predict_folder(
    settings: PredictSettings,
    engine: EngineSettings | None = None,
    devices: DeviceSettings | None = None,
    thresholds: ThresholdSettings | None = None,
    model: STFPM | None = None,
    postprocess: PostprocessSettings | None = None,
    runtime: RuntimeSettings | None = None,
) -> FolderSummary:
    """Predict every image of ``settings.input`` into ``settings.output``; with ``settings.resume``, the images an
    earlier run finished are skipped. The checkpoint's model runs in ``runtime`` unless ``model`` is given, which
    runs as it is (a :class:`Predictor`'s, with its runtime attached)."""
    engine, devices, thresholds = engine or EngineSettings(), devices or DeviceSettings(), thresholds or ThresholdSettings()
    postprocess = postprocess or PostprocessSettings()
    if not settings.input:
        raise STFPMError("pass --input, an image file or a folder of images")
    settings.check_paths()
    thresholds.check_paths()
    output = Path(settings.output).expanduser()
    root, paths = input_images(Path(settings.input).expanduser(), output)
    targets = plan_targets(paths, root, output, settings.heatmap_format)
    refuse_overwrite(targets, output, settings)
    checkpoint = None
    if model is None:
        checkpoint = Runs(Path(settings.runs_dir)).resolve(settings.checkpoint, settings.category)
        model = load_checkpoint(checkpoint)
        devices = attach(model, runtime or RuntimeSettings(), devices, [engine.batch_size])
    postprocessor = Postprocessor(ThresholdPolicy.of(thresholds, model.thresholds), postprocess.min_defect_area)
    policy = postprocessor.policy
    done = finished_rows(targets, output, settings.save_raw, policy) if settings.resume else {}
    # Before any process starts writing: keep only what is finished, in predictions.csv, and no journal. Every
    # process (under DDP) does the same here, with the same result, so they all agree on what remains to do.
    if done:
        write_tables(sorted(done.values(), key=lambda r: r["path"]), output, False)
        log.info("--resume: %d of %d images already done, %d to go", len(done), len(targets), len(targets) - len(done))
    remove_journals(output)
    todo = [t for t in targets if t.relative not in done]
    writer = MaskWriter(todo, postprocessor, output, settings.save_raw)
    if todo and not _score(model, todo, writer, engine, devices):
        mine = writer.rows
        return FolderSummary(len(mine), len(mine), sum(r["is_anomalous"] for r in mine), writer.skipped,
                             writer.elapsed, _rate(len(mine), writer.elapsed), policy, output)
    new_rows, skipped, written = read_journals(output)
    rows = sorted({**new_rows, **done}.values(), key=lambda r: r["path"])
    if rows:
        write_tables(rows, output, settings.json)
        if settings.report:
            files = {t.relative: (t.heatmap, t.mask) for t in targets}
            facts = run_facts(model, checkpoint, policy, network_label(model, devices))
            write_page(output / REPORT_NAME, prediction_page(rows, files, output, facts,
                                                             {**policy.as_dict(), **model.model.promise}, skipped))
    remove_journals(output)
    anomalous = sum(bool(r["is_anomalous"]) for r in rows)
    return FolderSummary(len(rows), written, anomalous, skipped, writer.elapsed, _rate(len(new_rows), writer.elapsed),
                         policy, output)


def _rate(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else math.nan
