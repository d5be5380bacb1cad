"""train.py's work: fit STFPM on one category (or all) of an MVTec-AD-layout dataset and write its run folder.

>>> from stfpm.training import TrainSettings, fit
>>> results = fit(TrainSettings.of(category="carpet", backbone="resnet18", epochs=10))
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from stfpm.core.errors import ConfigError, DataError
from stfpm.core.files import atomic_write_text
from stfpm.core.layout import Run
from stfpm.core.options import Section, as_config
from stfpm.data.datamodule import MVTecDataModule
from stfpm.data.io import aspect_preserving_size, median_aspect
from stfpm.data.mvtec import list_categories, resolve_category_dir, scan_train
from stfpm.data.settings import DataSettings
from stfpm.inference.engine import TRAINING_DEVICES, build_trainer
from stfpm.inference.settings import DeviceSettings
from stfpm.model import checkpoint_format
from stfpm.model.calibrate import cross_fit_students, promise_report
from stfpm.model.checkpoint import AtomicCheckpointIO, read_checkpoint
from stfpm.model.lightning_model import STFPM
from stfpm.model.reference import MIN_REFERENCE_IMAGES, reference_is_uniform
from stfpm.model.settings import InputSettings, ModelSettings
from stfpm.training.callbacks import FirstInterruptStops, checkpoint_callbacks
from stfpm.training.cross_fit import Folds
from stfpm.training.settings import TrainerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """Every option of train.py, by concern."""

    data: DataSettings = field(default_factory=DataSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    devices: DeviceSettings = field(default_factory=DeviceSettings)

    SECTIONS: ClassVar[tuple[type[Section], ...]] = (DataSettings, *ModelSettings.SECTIONS, TrainerSettings, DeviceSettings)

    @classmethod
    def from_sections(cls, sections: Mapping[str, Any]) -> TrainSettings:
        return cls(sections["data"], ModelSettings.from_sections(sections), sections["trainer"], sections["devices"])

    @classmethod
    def of(cls, **options: Any) -> TrainSettings:
        """Settings from options by name (``TrainSettings.of(category="carpet", epochs=10)``)."""
        own: dict[str, dict[str, Any]] = {}
        rest = dict(options)
        for section in (DataSettings, TrainerSettings, DeviceSettings):
            own[section.name] = {k: rest.pop(k) for k in section.names() if k in rest}
        return cls(DataSettings(**own["data"]), ModelSettings.of(**rest), TrainerSettings(**own["trainer"]),
                   DeviceSettings(**own["devices"]))

    def sections(self) -> list[Section]:
        return [self.data, *self.model.sections(), self.trainer, self.devices]

    def check(self) -> None:
        """What can be checked before any work starts: paths, and the score's levels against the network's."""
        for section in self.sections():
            section.check_paths()
        self.model.resolved()

    def run_config(self, category: str) -> dict[str, dict[str, Any]]:
        """The resolved options of one category's run, by section: `--config` of any command reads it back."""
        config = as_config(*self.sections())
        config["data"]["category"] = category
        config["trainer"]["resume"] = None
        return config


@dataclass(frozen=True)
class FitResult:
    """A finished run: its category, folder and best checkpoint."""

    category: str
    run: Run
    best: Path


def fit(settings: TrainSettings) -> list[FitResult]:
    """Train every category the data section names (`all`: each category folder, one after another)."""
    settings.check()
    data = settings.data
    if not data.category:
        raise ConfigError("--category is required (a folder name under --data-root, or `all`)")
    categories = list_categories(data.data_root) if data.category == "all" else [data.category]
    if not categories:
        if not Path(data.data_root).is_dir():
            resolve_category_dir(data.data_root, None)  # raises the one-line "does not exist" error
        raise DataError(f"no category folders (with train/good) found in {data.data_root}")
    if settings.trainer.resume and len(categories) > 1:
        raise ConfigError("--resume needs a single --category")
    for category in categories:  # every folder found before anything is built or downloaded
        resolve_category_dir(data.data_root, category)
    return [fit_category(settings, category) for category in categories]


def resolve_input(source: InputSettings, train_images: Callable[[], list[Path]]) -> InputSettings:
    """The input as trained: with ``keep_aspect``, the training images' median aspect ratio at about SIZE*SIZE
    pixels (sides multiples of 16; ``train_images`` is only called then); tiles must fit in it."""
    size = source.size
    if source.keep_aspect:
        if size[0] != size[1]:
            raise DataError("--keep-aspect takes one --image-size (the side of a square of equal area), not H W")
        aspect = median_aspect(train_images())
        size = aspect_preserving_size(size[0], aspect)
        log.info("--keep-aspect: median height/width of the training images %.3f -> input %dx%d (HxW)", aspect, *size)
    tile = source.tile
    if tile is not None and (tile[0] > size[0] or tile[1] > size[1]):
        raise DataError(f"--tile-size {tile[0]}x{tile[1]} is larger than the input {size[0]}x{size[1]} (HxW)")
    return dataclasses.replace(source, image_size=list(size))


def resumed_model(path: Path, settings: ModelSettings) -> STFPM:
    """A model with the architecture recorded in ``path`` and this run's optimizer; Lightning restores its weights
    in ``fit``, so the teacher's are not loaded (nothing is downloaded)."""
    resumed, ignored = checkpoint_format.settings(read_checkpoint(path)).resumed_with(settings)
    if ignored:
        log.warning("resuming %s: %s ignored, the checkpoint's networks are used", path, ", ".join(ignored))
    return STFPM(resumed, load_teacher=False)


def _model(settings: TrainSettings, category: str, resume: Path | None) -> STFPM:
    if resume:
        return resumed_model(resume, settings.model)
    source = resolve_input(settings.model.input,
                           lambda: scan_train(resolve_category_dir(settings.data.data_root, category)))
    return STFPM(dataclasses.replace(settings.model, input=source))


def _trainer(settings: TrainSettings, run: Run, loggers: list, has_val: bool, images: int
             ) -> tuple[pl.Trainer, Any, FirstInterruptStops]:
    t = settings.trainer
    epochs = t.epochs_for(images, settings.data.batch_size)
    if epochs > t.epochs:
        log.info("%d training images make %d steps per epoch: %d epochs, to train at least --min-steps %d steps",
                 images, math.ceil(images / settings.data.batch_size), epochs, t.min_steps)
    best, callbacks = checkpoint_callbacks(run.checkpoints, t.checkpoint_metric, has_val)
    interrupt = FirstInterruptStops()
    trainer = build_trainer(
        settings.devices, TRAINING_DEVICES, **t.length(images, settings.data.batch_size),
        plugins=[AtomicCheckpointIO()], logger=loggers,
        callbacks=[*callbacks, interrupt], log_every_n_steps=t.log_every_n_steps,
        limit_val_batches=1.0 if has_val else 0, num_sanity_val_steps=0, check_val_every_n_epoch=t.val_every_n_epochs,
    )
    return trainer, best, interrupt


def fit_category(settings: TrainSettings, category: str) -> FitResult:
    """Fit one category; return its run and best checkpoint."""
    t, data = settings.trainer, dataclasses.replace(settings.data, category=category)
    pl.seed_everything(t.seed, workers=True, verbose=False)
    resume = Path(t.resume).expanduser() if t.resume else None
    model = _model(settings, category, resume)
    model.run_info = {"category": category, "data_root": str(Path(data.data_root).resolve())}
    datamodule = MVTecDataModule(data, model.preprocessing(), t.seed)
    version = Run.of_checkpoint(resume).version if resume and resume.parent.name == "checkpoints" else None
    csv_logger = CSVLogger(t.output_dir, name=category, version=version)
    run = Run(Path(csv_logger.log_dir))
    # every training image checked once before anything starts; the full list is saved in the run folder
    preflight = datamodule.preflight("fit", strict=data.strict, report_path=run.problems("train"))
    has_val = data.val_fraction > 0
    validation = preflight.counts.get("validation", 0)
    students = cross_fit_students(model.settings, validation, has_val)
    cross, images = students > 0, list[Path]()
    if cross:  # the shipped student trains on every image; K others give the out-of-sample maps
        images = datamodule.good_images()
        datamodule = MVTecDataModule(data, model.preprocessing(), t.seed, split=(images, []))
        log.info("cross-fitted calibration: %d students, each without one fold of the %d good training images, give "
                 "the out-of-sample maps; the shipped student trains on all of them", students, len(images))
    _record_images(model, len(images) if cross else preflight.counts.get("training", 0), validation, students)
    warning = model.few_validation_warning(len(images) if cross else validation,
                                           _CROSS_FITTED if cross else "validation images")
    if warning and (has_val or cross):
        log.warning("%s", warning)
        model.warned_few = True
    datamodule.setup("fit")
    _record_calibration_images(model, images if cross else datamodule.val_paths or [], datamodule.category_dir)
    tb_logger = TensorBoardLogger(t.output_dir, name=category, version=csv_logger.version, default_hp_metric=False)
    if not has_val and not cross:
        log.warning("--val-fraction 0: no validation images, so no best-model selection and no thresholds")
    trainer, best, interrupt = _trainer(settings, run, [csv_logger, tb_logger], has_val and not cross,
                                        len(images) if cross else preflight.counts.get("training", 0)
                                        or len(datamodule.good_images()))
    if trainer.is_global_zero:
        _ = csv_logger.experiment  # create the run folder through the logger first, so it starts out empty
        atomic_write_text(run.config, yaml.safe_dump(settings.run_config(category), sort_keys=False))
        if preflight.problems:
            preflight.save(run.problems("train"))
    log.info("training %s -> %s", category, run.folder)
    with warnings.catch_warnings():
        # the teacher is in eval mode on purpose (frozen BatchNorm statistics); Lightning warns about any such module
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
        trainer.fit(model, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
        if cross:
            students_of = Folds(students, images, settings.data, model.settings, settings.trainer, settings.devices)
            _cross_fit(trainer, model, students_of, run, best, interrupt.pressed)
    if has_val and not cross:
        _finish_inside_epoch(trainer, model, datamodule, run.last)
    path = Path(best.best_model_path) if best.best_model_path else run.last
    if trainer.is_global_zero:
        _report(settings, category, path, best, has_val or cross)
    return FitResult(category, run, path)


_CROSS_FITTED = "cross-fitted training images"


def _record_images(model: STFPM, training: int, validation: int, students: int) -> None:
    """What the checkpoint's reports say of the images the run trained and calibrated on."""
    fitted = (f"{training} {_CROSS_FITTED} ({students} students)" if students
              else f"{validation} validation images" if validation else "none (no validation images)")
    model.run_info.update(train_images=str(training), validation_images=str(0 if students else validation),
                          calibrated_on=fitted)


def _record_calibration_images(model: STFPM, images: list[Path], category_dir: Path) -> None:
    """The good images the thresholds are fitted on (relative to the category's folder where they are inside it): what
    OpenVINO's INT8 quantisation calibrates on, so it never sees a test image."""
    root = category_dir.resolve()
    model.run_info["calibration_images"] = [
        str(p.resolve().relative_to(root)) if p.resolve().is_relative_to(root) else str(p.resolve()) for p in images]


def _cross_fit(trainer: pl.Trainer, model: STFPM, students: Folds, run: Run, best: Any, interrupted: bool) -> None:
    """After the shipped student: the folds' out-of-sample maps, its calibration on them, and its checkpoints
    written again with the thresholds. A Ctrl-C during the shipped student's training stops before the folds."""
    if interrupted:
        log.warning("interrupted: %s has no thresholds yet; --resume it to finish training and the cross-fit", run.last)
        return
    levels = students.levels(run)
    model.calibrate_on(levels, source=_CROSS_FITTED)
    model.validated_step = trainer.global_step
    for path in {run.last, Path(best.best_model_path) if best.best_model_path else run.checkpoints / "best.ckpt"}:
        trainer.save_checkpoint(path)


def _finish_inside_epoch(trainer: pl.Trainer, model: STFPM, datamodule: MVTecDataModule, last: Path) -> None:
    """When training stopped inside an epoch (--max-steps, --max-time, Ctrl-C), no validation ran on the final
    weights: run one, so that last.ckpt holds them with thresholds that match them."""
    if trainer.global_step == 0 or model.validated_step == trainer.global_step:
        return
    log.info("training stopped inside an epoch (step %d): calibrating thresholds on the final weights", trainer.global_step)
    trainer.validate(model, datamodule=datamodule, verbose=False)
    trainer.save_checkpoint(last)


def _report(settings: TrainSettings, category: str, path: Path, best: Any, has_val: bool) -> None:
    """The run's outcome in a few lines (said again after the progress bars, where a warning may be lost)."""
    state = checkpoint_format.upgrade(torch.load(path, map_location="cpu", weights_only=True))["state_dict"]
    score = f"{float(best.best_model_score):.6g}" if best.best_model_score is not None else "n/a"
    log.info("%s: best checkpoint %s (%s %s); calibrated thresholds: image %.6g, pixel %.6g", category, path,
             settings.trainer.checkpoint_metric, score, float(state["model.image_threshold"]),
             float(state["model.pixel_threshold"]))
    promise = promise_report(float(state["model.image_threshold_promise"]), int(state["model.image_threshold_support"]))
    if promise:
        log.info("%s: %s", category, promise)
    reference = state.get("model.reference.reference")
    if reference is not None and reference_is_uniform(reference) and has_val:
        log.warning("%s: the map is left as it is (no reference normalization): the validation maps were of fewer "
                    "than %d images' worth", category, MIN_REFERENCE_IMAGES)
