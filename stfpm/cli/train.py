"""`python train.py`: fit STFPM on one category (or all) of an MVTec-AD-layout dataset."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import logging
import os
import re
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only

from stfpm.config import (
    Parser,
    duration,
    grouped,
    integer,
    new_parser,
    number,
    parse_args,
    sizes,
    validate,
    writable_folder,
)
from stfpm.data import DEFAULT_DATA_ROOT, MVTecDataModule, list_categories, resolve_category_dir, scan_train
from stfpm.data.augment import AUGMENTATIONS
from stfpm.data.io import as_hw, aspect_preserving_size, median_aspect, size_record
from stfpm.errors import ConfigError, DataError
from stfpm.inference.engine import ENGINE_CHECKS, add_device_args, build_trainer
from stfpm.inference.thresholding import CALIBRATIONS
from stfpm.model.anomaly_map import (
    FUSIONS,
    MIN_REFERENCE_IMAGES,
    NORMALIZATIONS,
    SCORE_LEVELS,
    reference_is_uniform,
    resolve_score_levels,
)
from stfpm.model.backbones import PRESETS, resolve_layers
from stfpm.model.checkpoint import AtomicCheckpointIO, read_checkpoint, require_ours
from stfpm.model.lightning_model import LR_SCHEDULES, STFPM
from stfpm.model.torch_model import STUDENT_INITS

log = logging.getLogger(__name__)

CHECKPOINT_METRICS = ("val_loss", "val_map_mean")
MODEL = {name: p.default for name, p in inspect.signature(STFPM.__init__).parameters.items() if name != "self"}
"""The model's options and their defaults, declared once: in the signature of :class:`STFPM`. The model, optimizer
and map flags take their defaults from it, and :func:`_model_kwargs` passes every one of them back."""


def build_parser() -> Parser:
    parser = new_parser("Train STFPM on one category (or `all`) of an MVTec-AD-layout dataset.")
    data = parser.section("data")
    data.add_argument("--category", help="category folder name under --data-root, or `all`")
    data.add_argument("--data-root", default=DEFAULT_DATA_ROOT, help="dataset root in MVTec AD layout")
    data.add_argument(
        "--image-size", type=int, nargs="+", default=MODEL["image_size"], metavar="SIZE",
        help="network input: S (S x S, or about S*S pixels with --keep-aspect) or H W",
    )
    data.add_argument(
        "--keep-aspect", action=argparse.BooleanOptionalAction, default=False,
        help="with one SIZE: keep the training images' median aspect ratio at about SIZE*SIZE pixels",
    )
    data.add_argument(
        "--tile-size", type=int, nargs="+", metavar="SIZE",
        help="cut each input into overlapping tiles of S (or H W) pixels, each seen by the networks on its own",
    )
    data.add_argument(
        "--tile-overlap", type=float, default=MODEL["tile_overlap"], help="share of a tile overlapping its neighbour"
    )
    data.add_argument("--batch-size", type=int, default=32)
    data.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1), help="data loading processes")
    data.add_argument("--val-fraction", type=float, default=0.2, help="share of train/good held out for validation")
    data.add_argument(
        "--strict", action="store_true", help="stop on any unreadable image instead of leaving it out with a warning"
    )
    data.add_argument(
        "--augment", default=MODEL["augment"], choices=list(AUGMENTATIONS),
        help="light: shift, rotate, zoom and re-light each training image slightly (teacher and student alike)",
    )
    data.add_argument(
        "--checkpoint-metric", default="val_loss", choices=list(CHECKPOINT_METRICS),
        help="best.ckpt has the lowest: val_loss (ours) or val_map_mean (mean validation anomaly map, the official code's)",
    )
    model = parser.section("model")
    model.add_argument("--backbone", default=MODEL["backbone"], choices=list(PRESETS), help="teacher architecture")
    model.add_argument(
        "--student-backbone", choices=list(PRESETS), help="student architecture (default: same as the teacher)"
    )
    model.add_argument(
        "--student-init", default=MODEL["student_init"], choices=list(STUDENT_INITS),
        help="random (the paper's) or teacher: the student starts as a copy of the teacher's pretrained weights",
    )
    model.add_argument("--layers", nargs="+", help="feature levels (default: the backbone's three, e.g. layer1-3)")
    model.add_argument(
        "--teacher-weights",
        default=MODEL["teacher_weights"],
        help="`imagenet` (torchvision download), PATH to a local torchvision state_dict, or `random` (tests only)",
    )
    model.add_argument(
        "--image-threshold-quantile", type=float, default=MODEL["image_threshold_quantile"],
        help="of validation image scores",
    )
    model.add_argument(
        "--pixel-threshold-quantile", type=float, default=MODEL["pixel_threshold_quantile"],
        help="of validation map pixels",
    )
    model.add_argument(
        "--calibration", default=MODEL["calibration"], choices=list(CALIBRATIONS),
        help="image threshold: the empirical quantile of validation scores, or the quantile of a fitted Gumbel",
    )
    model.add_argument(
        "--map-fusion", default=MODEL["map_fusion"], choices=list(FUSIONS), help="how pyramid levels are fused"
    )
    model.add_argument(
        "--map-sigma", type=float, default=MODEL["map_sigma"], help="Gaussian smoothing of the map, in input pixels"
    )
    model.add_argument(
        "--map-normalization", default=MODEL["map_normalization"], choices=list(NORMALIZATIONS),
        help="reference: divide the map, position by position, by the validation normals' mean map "
        "(when the validation maps are of at least 20 images' worth; none: the paper's map)",
    )
    model.add_argument(
        "--score-fraction", type=float, default=MODEL["score_fraction"],
        help="image score: the mean of this share of the map's highest pixels (0: the maximum, as the paper)",
    )
    model.add_argument(
        "--score-levels", nargs="+", default=MODEL["score_levels"], metavar="LEVEL",
        help="levels the image score is fused from: all (the paper's), coarser (all but the finest) or indices of "
        "--layers, 0 the finest (the map and its masks fuse every level)",
    )
    model.add_argument(
        "--hard-fraction", type=float, default=MODEL["hard_fraction"],
        help="train on this share of feature positions with the largest teacher-student difference (1: all, as the paper)",
    )
    optim = parser.section("optimizer")
    optim.add_argument("--lr", type=float, default=MODEL["lr"])
    optim.add_argument("--momentum", type=float, default=MODEL["momentum"])
    optim.add_argument("--weight-decay", type=float, default=MODEL["weight_decay"])
    optim.add_argument(
        "--lr-schedule", default=MODEL["lr_schedule"], choices=list(LR_SCHEDULES),
        help="constant (the paper's) or cosine: from --lr down to 0 at the last step",
    )
    trainer = parser.section("trainer")
    trainer.add_argument("--epochs", type=int, default=100)
    trainer.add_argument("--max-steps", type=int, default=-1, help="stop after N optimizer steps (-1: no limit)")
    trainer.add_argument("--max-time", help="stop after this much training time, DD:HH:MM:SS (e.g. 00:08:00:00)")
    trainer.add_argument("--seed", type=int, default=0)
    trainer.add_argument(
        "--deterministic", action="store_true",
        help="deterministic algorithms on GPU (slower; CPU runs are reproducible without it)",
    )
    trainer.add_argument("--output-dir", default="runs", help="runs go to OUTPUT_DIR/<category>/version_N/")
    add_device_args(trainer, devices="auto")
    trainer.add_argument("--log-every-n-steps", type=int, default=10)
    trainer.add_argument("--resume", help="checkpoint to resume training from (e.g. a run's last.ckpt)")
    return parser


def resolve_image_size(
    image_size: int | list[int], keep_aspect: bool, train_images: Callable[[], list[Path]]
) -> tuple[int, int]:
    """The network input (H, W): as given, or with ``keep_aspect`` the training images' median aspect ratio at
    about SIZE*SIZE pixels (sides multiples of 16). ``train_images`` is only called with ``keep_aspect``."""
    size = as_hw(image_size)
    if not keep_aspect:
        return size
    if size[0] != size[1]:
        raise DataError("--keep-aspect takes one --image-size (the side of a square of equal area), not H W")
    aspect = median_aspect(train_images())
    resolved = aspect_preserving_size(size[0], aspect)
    log.info("--keep-aspect: median height/width of the training images %.3f -> input %dx%d (HxW)", aspect, *resolved)
    return resolved


def check_tiles(image_size: tuple[int, int], tile_size: int | list[int] | None) -> None:
    """Tiles must fit in the input."""
    if tile_size is None:
        return
    tile = as_hw(tile_size)
    if tile[0] > image_size[0] or tile[1] > image_size[1]:
        raise DataError(f"--tile-size {tile[0]}x{tile[1]} is larger than the input {image_size[0]}x{image_size[1]} (HxW)")


def _model_kwargs(args: argparse.Namespace, image_size: tuple[int, int]) -> dict:
    """Every :class:`STFPM` option from the parsed flags (mean/std, which have no flag, keep their defaults)."""
    kwargs = {name: getattr(args, name) for name in MODEL if hasattr(args, name)}
    return {**kwargs, "image_size": size_record(image_size)}


def _resumed_model(path: Path, args: argparse.Namespace) -> STFPM:
    """A model with the architecture recorded in ``path``; Lightning restores its weights in ``fit``."""
    checkpoint = read_checkpoint(path)
    require_ours(checkpoint, path)
    hparams = dict(checkpoint["hyper_parameters"])
    for option in ("backbone",):
        if getattr(args, option) != hparams.get(option):
            log.warning(
                "resuming %s: --%s %s ignored, the checkpoint's %s is used",
                path, option.replace("_", "-"), getattr(args, option), hparams.get(option),
            )
    recorded_weights = hparams.get("teacher_weights")
    hparams.update(teacher_weights=None, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    model = STFPM.from_hparams(hparams)  # the teacher's weights come from the checkpoint: nothing is downloaded
    model.hparams["teacher_weights"] = recorded_weights
    return model


def _run_version(resume: Path | None) -> int | None:
    """Resuming writes into the run the checkpoint came from; otherwise Lightning picks the next version."""
    if resume is not None and resume.parent.name == "checkpoints":
        match = re.fullmatch(r"version_(\d+)", resume.parent.parent.name)
        if match:
            return int(match.group(1))
    return None


@contextlib.contextmanager
def _first_interrupt_stops(trainer: pl.Trainer) -> Iterator[None]:
    """A first Ctrl-C ends training after the current step (then thresholds are calibrated and a checkpoint
    saved, as at any other stop); a second one aborts at once. Single process only: under DDP, every process
    would have to agree on the step, so Ctrl-C keeps Lightning's immediate shutdown there."""
    if trainer.world_size > 1 or threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed = False
    owner = os.getpid()  # data-loading workers forked from here inherit the handler: they ignore the signal

    def handler(signum: int, frame: object) -> None:
        nonlocal pressed
        if os.getpid() != owner:
            return
        if pressed:
            raise KeyboardInterrupt
        pressed = True
        log.warning("Ctrl-C: training stops after this step, then calibrates and saves (Ctrl-C again to abort now)")
        trainer.should_stop = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _finish_inside_epoch(trainer: pl.Trainer, model: STFPM, datamodule: MVTecDataModule, last: Path) -> None:
    """When training stopped inside an epoch (--max-steps, --max-time, Ctrl-C), no validation ran on the final
    weights: run one, so that last.ckpt holds them with thresholds that match them."""
    if trainer.global_step == 0 or model.validated_step == trainer.global_step:
        return
    log.info("training stopped inside an epoch (step %d): calibrating thresholds on the final weights", trainer.global_step)
    trainer.validate(model, datamodule=datamodule, verbose=False)
    trainer.save_checkpoint(last)


def _run_config(config: dict[str, dict], category: str) -> dict[str, dict]:
    """The resolved options of one category's run, by section: `--config` of any command reads it back."""
    return {**config, "data": {**config["data"], "category": category}, "trainer": {**config["trainer"], "resume": None}}


def train_category(args: argparse.Namespace, category: str, config: dict) -> Path:
    """Fit one category; return the path of its best checkpoint."""
    pl.seed_everything(args.seed, workers=True, verbose=False)
    resume = Path(args.resume).expanduser() if args.resume else None
    if resume:
        model = _resumed_model(resume, args)
    else:
        image_size = resolve_image_size(
            args.image_size, args.keep_aspect, lambda: scan_train(resolve_category_dir(args.data_root, category))
        )
        check_tiles(image_size, args.tile_size)
        model = STFPM(**_model_kwargs(args, image_size))
    model.run_info = {"category": category, "data_root": str(Path(args.data_root).resolve())}
    datamodule = MVTecDataModule(
        data_root=args.data_root,
        category=category,
        image_size=model.hparams["image_size"],
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        val_fraction=args.val_fraction,
        seed=args.seed,
        mean=model.hparams["mean"],
        std=model.hparams["std"],
    )
    csv_logger = CSVLogger(args.output_dir, name=category, version=_run_version(resume))
    run_dir = Path(csv_logger.log_dir)
    # every training image checked once before anything starts; the full list is saved in the run folder
    preflight = datamodule.preflight("fit", strict=args.strict, report_path=run_dir / "data_problems_train.json")
    warning = model.few_validation_warning(preflight.counts.get("validation", 0))
    if warning and args.val_fraction > 0:
        log.warning("%s", warning)
        model.warned_few = True
    datamodule.setup("fit")
    tb_logger = TensorBoardLogger(args.output_dir, name=category, version=csv_logger.version, default_hp_metric=False)
    has_val = args.val_fraction > 0
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor=args.checkpoint_metric if has_val else None,
        mode="min",
        save_last=not has_val,  # unmonitored, it saves every epoch, and last.ckpt with it
    )
    # last.ckpt: the newest weights after every epoch, for --resume. Not save_last=True on the monitored checkpoint:
    # since Lightning 2.6 that writes last.ckpt only in epochs where the monitored metric improved.
    callbacks = [checkpoint]
    if has_val:  # two unmonitored ModelCheckpoints would share one state key, hence save_last above without validation
        callbacks.append(ModelCheckpoint(
            dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1, enable_version_counter=False,
        ))
    if not has_val:
        log.warning("--val-fraction 0: no validation images, so no best-model selection and no thresholds")
    trainer = build_trainer(
        args,
        max_epochs=args.epochs,
        max_steps=args.max_steps,
        max_time=args.max_time,
        deterministic=True if args.deterministic else None,
        plugins=[AtomicCheckpointIO()],
        logger=[csv_logger, tb_logger],
        callbacks=callbacks,
        log_every_n_steps=args.log_every_n_steps,
        limit_val_batches=1.0 if has_val else 0,
        num_sanity_val_steps=0,
    )
    if trainer.is_global_zero:
        _ = csv_logger.experiment  # create the run folder through the logger first, so it starts out empty
        (run_dir / "config.yaml").write_text(yaml.safe_dump(_run_config(config, category), sort_keys=False))
        if preflight.problems:
            preflight.save(run_dir / "data_problems_train.json")
    log.info("training %s -> %s", category, run_dir)
    with _first_interrupt_stops(trainer), warnings.catch_warnings():
        # the teacher is in eval mode on purpose (frozen BatchNorm statistics); Lightning warns about any such module
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
        trainer.fit(model, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
    last = run_dir / "checkpoints" / "last.ckpt"
    if has_val:
        _finish_inside_epoch(trainer, model, datamodule, last)
    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else last
    if not trainer.is_global_zero:
        return best
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    log.info(
        "%s: best checkpoint %s (%s %s); calibrated thresholds: image %.6g, pixel %.6g",
        category,
        best,
        args.checkpoint_metric,
        f"{float(checkpoint.best_model_score):.6g}" if checkpoint.best_model_score is not None else "n/a",
        float(state["image_threshold"]),
        float(state["pixel_threshold"]),
    )
    reference = state.get("model.anomaly_map.reference")
    if reference is not None and reference_is_uniform(reference) and has_val:
        # said again here: the warning given during training may be lost among progress-bar lines
        log.warning("%s: the map is left as it is (no reference normalization): the validation maps were of fewer "
                    "than %d images' worth", category, MIN_REFERENCE_IMAGES)
    return best


TRAIN_CHECKS = {
    **ENGINE_CHECKS,
    "image_size": sizes(32),
    "tile_size": sizes(32),
    "tile_overlap": number(0, 1, high_open=True),
    "val_fraction": number(0, 1, high_open=True),
    "image_threshold_quantile": number(0, 1, low_open=True),
    "pixel_threshold_quantile": number(0, 1, low_open=True),
    "map_sigma": number(0),
    "hard_fraction": number(0, 1, low_open=True),
    "score_fraction": number(0, 1, high_open=True),
    "lr": number(0, low_open=True),
    "momentum": number(0, 1, high_open=True),
    "weight_decay": number(0),
    "epochs": integer(1),
    "max_steps": (lambda v: isinstance(v, int) and (v == -1 or v >= 1), "-1 (no limit) or an integer >= 1"),
    "max_time": duration(),
    "seed": integer(0, 2**32 - 1),
    "log_every_n_steps": integer(1),
}


def score_levels_value(value: Any) -> str | list[int]:
    """``--score-levels`` from flags (a list of words) or YAML (a word, an integer or a list): ``all``, ``coarser`` or
    a list of level indices; a one-line error otherwise. Whether the indices exist is checked against the model."""
    values = value if isinstance(value, (list, tuple)) else [value]
    words = [str(v) for v in values]
    if len(words) == 1 and words[0] in SCORE_LEVELS:
        return words[0]
    if words and all(w.isdigit() for w in words) and not any(isinstance(v, bool) for v in values):
        return [int(w) for w in words]
    raise ConfigError(f"--score-levels must be {' or '.join(SCORE_LEVELS)}, or level indices (0 the finest), "
                      f"got {value!r}")


def check_args(args: argparse.Namespace) -> None:
    """Every value, from flags or a YAML file, before any work starts."""
    validate(args, TRAIN_CHECKS)
    args.score_levels = score_levels_value(args.score_levels)
    resolve_score_levels(args.score_levels, len(resolve_layers(args.backbone, args.layers)))  # before any download
    writable_folder(args.output_dir, "--output-dir")
    weights = args.teacher_weights
    if weights not in (None, "imagenet", "random") and not Path(weights).expanduser().is_file():
        raise DataError(
            f"--teacher-weights {weights} does not exist (pass imagenet, random or a torchvision state_dict file)"
        )
    if args.resume and not Path(args.resume).expanduser().is_file():
        raise DataError(f"--resume {args.resume} does not exist (pass a run's checkpoints/last.ckpt)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    if not args.category:
        parser.error("--category is required (a folder name under --data-root, or `all`)")
    check_args(args)
    config = grouped(parser, args)
    categories = list_categories(args.data_root) if args.category == "all" else [args.category]
    if not categories:
        if not Path(args.data_root).is_dir():
            resolve_category_dir(args.data_root, None)  # raises the one-line "does not exist" error
        raise DataError(f"no category folders (with train/good) found in {args.data_root}")
    if args.resume and len(categories) > 1:
        parser.error("--resume needs a single --category")
    results = {category: train_category(args, category, config) for category in categories}
    if getattr(rank_zero_only, "rank", 0) == 0:  # under DDP every process gets here; one report is enough
        for category, path in results.items():
            print(f"{category}: {path}")
    return 0


def cli() -> int:
    """The console script: :func:`main` with the error convention."""
    from stfpm.cli import run

    return run(main)
