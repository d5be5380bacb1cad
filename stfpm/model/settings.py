"""The model's options, declared once: what the networks see, which networks, how maps become scores, how
thresholds are calibrated and how the student is trained.

:class:`ModelSettings` bundles the five sections; it is what :class:`~stfpm.model.lightning_model.STFPM` takes and
what a checkpoint records as its hyperparameters. Its fields' defaults are the defaults of the project (the recipe
study's choices, docs/recipe_study.md); ``configs/official.yaml`` holds the paper's recipe.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from stfpm.core.errors import ConfigError
from stfpm.core.options import Section, integer, number, option, sizes
from stfpm.data.augment import AUGMENTATIONS
from stfpm.data.io import IMAGENET_MEAN, IMAGENET_STD, ImageTransform, as_hw, size_record
from stfpm.model.anomaly_map import FUSIONS, SCORE_LEVELS, resolve_score_levels
from stfpm.model.backbones import PRESETS, resolve_layers
from stfpm.model.calibrate import CALIBRATIONS, TAILS
from stfpm.model.reference import NORMALIZATIONS

LR_SCHEDULES = ("constant", "cosine")
STUDENT_INITS = ("random", "teacher")


def _size(value: Any) -> Any:
    """S, [S] or [S, S] -> S; [H, W] -> [H, W] (how sizes are recorded); anything else is left to the check."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(values) in (1, 2) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        return size_record(as_hw(values))
    return value


def _floats(value: Any) -> Any:
    """A sequence of numbers as a tuple of floats (recorded as a list); anything else is left as it is."""
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
        return tuple(float(v) for v in value)
    return value


def _score_levels(value: Any) -> str | list[int]:
    """``all``, ``coarser`` or level indices, from flags (a list of words) or YAML (a word, an integer, a list)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    words = [str(v) for v in values]
    if len(words) == 1 and words[0] in SCORE_LEVELS:
        return words[0]
    if words and all(w.isdigit() for w in words) and not any(isinstance(v, bool) for v in values):
        return [int(w) for w in words]
    raise ConfigError(f"--score-levels must be {' or '.join(SCORE_LEVELS)}, or level indices (0 the finest), "
                      f"got {value!r}")


@dataclass(frozen=True)
class InputSettings(Section):
    name = "input"
    about = "train.py: what the networks see"

    image_size: int | list[int] = option(
        256, "network input: S (S x S, or about S*S pixels with --keep-aspect) or H W", kind=int, many=True,
        metavar="SIZE", check=sizes(32), normalize=_size)
    keep_aspect: bool = option(False, "with one SIZE: keep the training images' median aspect ratio at about SIZE*SIZE "
                               "pixels (sides multiples of 16)", kind=bool, negatable=True)
    tile_size: int | list[int] | None = option(
        None, "cut each input into overlapping tiles of S (or H W) pixels, each seen by the networks on its own",
        kind=int, many=True, metavar="SIZE", check=sizes(32), normalize=_size)
    tile_overlap: float = option(0.25, "share of a tile overlapping its neighbour", kind=float,
                                 check=number(0, 1, high_open=True))
    augment: str = option("none", "light: shift, rotate, zoom and re-light each training image slightly (teacher "
                          "and student alike)", choices=AUGMENTATIONS)
    mean: tuple[float, ...] = option(IMAGENET_MEAN, "per-channel mean of the normalisation", flag=False, normalize=_floats)
    std: tuple[float, ...] = option(IMAGENET_STD, "per-channel standard deviation of the normalisation", flag=False,
                                    normalize=_floats)

    @property
    def size(self) -> tuple[int, int]:
        """The network input (height, width)."""
        return as_hw(self.image_size)

    @property
    def tile(self) -> tuple[int, int] | None:
        return None if self.tile_size is None else as_hw(self.tile_size)

    def transform(self) -> ImageTransform:
        """The preprocessing of these inputs (the data module's, predict.py's, the service's and the export's)."""
        return ImageTransform(self.size, self.mean, self.std)


@dataclass(frozen=True)
class NetworkSettings(Section):
    name = "networks"
    about = "train.py: teacher and student networks"

    backbone: str = option("resnet152", "teacher architecture", choices=tuple(PRESETS))
    student_backbone: str | None = option(None, "student architecture (default: same as the teacher)",
                                          choices=tuple(PRESETS))
    student_init: str = option("random", "random (the paper's) or teacher: the student starts as a copy of the "
                               "teacher's pretrained weights", choices=STUDENT_INITS)
    layers: list[str] | None = option(None, "feature levels (default: the backbone's three, e.g. layer1-3)",
                                      kind=str, many=True, metavar="LAYER")
    teacher_weights: str = option("imagenet", "`imagenet` (torchvision download), PATH to a local torchvision "
                                  "state_dict, or `random` (tests only)", kind=str, path="file",
                                  keywords=("imagenet", "random"))


@dataclass(frozen=True)
class MapSettings(Section):
    name = "map"
    about = "train.py: from features to the anomaly map and the image score"

    map_fusion: str = option("product", "how pyramid levels are fused: product (the paper's) or sum of levels "
                             "scaled by their validation mean", choices=FUSIONS)
    map_sigma: float = option(0.0, "Gaussian smoothing of the map, in input pixels (0: none, as the paper)",
                              kind=float, check=number(0))
    map_normalization: str = option(
        "reference", "reference: divide the map, position by position, by the validation normals' mean map (when "
        "the validation maps are of at least 20 images' worth); none: the paper's map", choices=NORMALIZATIONS)
    score_fraction: float = option(0.01, "image score: the mean of this share of the map's highest pixels (0: the "
                                   "maximum, as the paper)", kind=float, check=number(0, 1, high_open=True))
    score_levels: str | list[int] = option(
        "coarser", "levels the image score is fused from: all (the paper's), coarser (all but the finest) or indices "
        "of --layers, 0 the finest (the map and its masks fuse every level)", kind=str, many=True, metavar="LEVEL",
        normalize=_score_levels, check=(lambda v: v in SCORE_LEVELS or isinstance(v, list), "all, coarser or indices"))


@dataclass(frozen=True)
class CalibrationSettings(Section):
    name = "calibration"
    about = "train.py: decision thresholds from out-of-sample good images"

    target_false_alarms: float = option(
        0.02, "share of good parts the image threshold is set to flag; n out-of-sample good scores support at best "
        "1/(n+1), below which --tail decides", kind=float, check=number(0, 1, low_open=True, high_open=True))
    pixel_threshold_quantile: float = option(0.999, "pixel threshold: this quantile of the out-of-sample good maps' "
                                             "pixels", kind=float, check=number(0, 1, low_open=True))
    calibration: str = option(
        "auto", "where the out-of-sample good scores come from: holdout (the --val-fraction split), cross-fit (every "
        "training image, scored by one of --folds students trained without it; the shipped student trains on all of "
        "them), auto (cross-fit when the validation split cannot support --target-false-alarms)", choices=CALIBRATIONS)
    folds: int = option(5, "students trained for --calibration cross-fit (each without one fold)", kind=int,
                        check=integer(2, 20))
    tail: str = option("none", "beyond the highest out-of-sample score: none (the promise is what the scores "
                       "support), or the quantile of a fitted gumbel law (all scores) or pareto law (their upper "
                       "half)", choices=TAILS)

    @classmethod
    def earlier(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """Values under the names of earlier versions translated: ``image_threshold_quantile`` q is a target of
        1 - q, and ``calibration`` ``empirical``/``gumbel`` was the tail model of the validation split."""
        values = dict(values)
        if "image_threshold_quantile" in values:
            quantile = values.pop("image_threshold_quantile")
            values.setdefault("target_false_alarms", round(1.0 - quantile, 12) if isinstance(quantile, (int, float))
                              else quantile)
        if values.get("calibration") in ("empirical", "gumbel"):
            values.setdefault("tail", "none" if values["calibration"] == "empirical" else "gumbel")
            values["calibration"] = "holdout"
        return values


@dataclass(frozen=True)
class OptimizerSettings(Section):
    name = "optimizer"
    about = "train.py: SGD, its schedule and the loss"

    lr: float = option(0.4, "SGD learning rate", kind=float, check=number(0, low_open=True))
    momentum: float = option(0.9, "SGD momentum", kind=float, check=number(0, 1, high_open=True))
    weight_decay: float = option(1e-4, "SGD weight decay", kind=float, check=number(0))
    lr_schedule: str = option("cosine", "constant (the paper's) or cosine: from --lr down to 0 at the last step",
                              choices=LR_SCHEDULES)
    hard_fraction: float = option(1.0, "train on this share of feature positions with the largest teacher-student "
                                  "difference (1: all, as the paper)", kind=float, check=number(0, 1, low_open=True))


@dataclass(frozen=True)
class ModelSettings:
    """Every option of the model, by section; the one object the model, its checkpoint and its export carry."""

    input: InputSettings = field(default_factory=InputSettings)
    networks: NetworkSettings = field(default_factory=NetworkSettings)
    map: MapSettings = field(default_factory=MapSettings)
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)

    SECTIONS: ClassVar[tuple[type[Section], ...]] = (
        InputSettings, NetworkSettings, MapSettings, CalibrationSettings, OptimizerSettings,
    )

    @classmethod
    def of(cls, **options: Any) -> ModelSettings:
        """Settings from options by name, each looked up in its section (``ModelSettings.of(backbone="resnet18")``)."""
        return cls().replace(**options)

    @classmethod
    def from_sections(cls, sections: Mapping[str, Any]) -> ModelSettings:
        """The model's sections among a command's parsed ones."""
        return cls(**{s.name: sections[s.name] for s in cls.SECTIONS})

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, Any]]) -> ModelSettings:
        """Settings as :meth:`as_dict` (a checkpoint's hyperparameters) holds them."""
        return cls(**{s.name: s.of(dict(data.get(s.name, {}))) for s in cls.SECTIONS})

    def sections(self) -> list[Section]:
        """The section objects, in order."""
        return [getattr(self, s.name) for s in self.SECTIONS]

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {s.name: s.as_dict() for s in self.sections()}

    def replace(self, **options: Any) -> ModelSettings:
        """These settings with options changed by name; an unknown name is a one-line error."""
        changes: dict[str, dict[str, Any]] = {}
        for key, value in options.items():
            owner = next((s.name for s in self.SECTIONS if key in s.names()), None)
            if owner is None:
                raise ConfigError(f"unknown option {key!r}")
            changes.setdefault(owner, {})[key] = value
        return dataclasses.replace(self, **{
            name: dataclasses.replace(getattr(self, name), **values) for name, values in changes.items()})

    def resumed_with(self, given: ModelSettings) -> tuple[ModelSettings, list[str]]:
        """These recorded settings with the SGD settings ``given`` now (the rest as recorded), and the flags of
        ``given`` that the recording overrides (the architecture is the checkpoint's)."""
        o = given.optimizer
        ignored = [] if given.networks.backbone == self.networks.backbone else [f"--backbone {given.networks.backbone}"]
        return self.replace(lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay), ignored

    def resolved(self) -> ModelSettings:
        """Defaults that depend on other options made explicit: the student's architecture, the levels, and the
        score's levels as indices (``coarser`` -> ``[1, 2]``), as checkpoints record them."""
        b = self.networks
        layers = list(resolve_layers(b.backbone, b.layers))
        return self.replace(student_backbone=b.student_backbone or b.backbone, layers=layers,
                            score_levels=list(resolve_score_levels(self.map.score_levels, len(layers))))

    def facts(self) -> list[tuple[str, str]]:
        """The model in a few labelled lines, as the reports show it."""
        b, i, m, c = self.networks, self.input, self.map, self.calibration
        size = i.image_size if isinstance(i.image_size, int) else "x".join(map(str, i.image_size))
        tiles = "none" if not i.tile_size else f"tiles of {i.tile_size} px, overlap {i.tile_overlap:g}"
        return [
            ("teacher", f"{b.backbone} ({b.teacher_weights}), levels {', '.join(b.layers or ()) or 'default'}"),
            ("student", f"{b.student_backbone or b.backbone}, initialised {b.student_init}"),
            ("input", f"{size} px{', aspect kept' if i.keep_aspect else ''}, augmentation {i.augment}"),
            ("tiling", tiles),
            ("map", f"{m.map_fusion} fusion, normalization {m.map_normalization}, score: top "
                    f"{m.score_fraction:g} of levels {m.score_levels}"),
            ("calibration", f"{c.calibration} (target {100 * c.target_false_alarms:g}% false alarms, tail {c.tail})"),
        ]

    def summary(self) -> dict[str, Any]:
        """What test.py's results name of the model."""
        b = self.networks
        return {"backbone": b.backbone, "student_backbone": b.student_backbone, "layers": list(b.layers or ()),
                "teacher_weights": b.teacher_weights, "image_size": self.input.image_size}
