"""Backbone presets and the truncated feature extractor shared by teacher and student.

A torchvision classifier is built in full (so torchvision's own weights API and plain torchvision state_dicts
load unchanged), then cut after the deepest stage STFPM uses: nothing beyond it (ResNet ``layer4``,
``avgpool``, ``fc``) is kept or ever computed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from stfpm.core.errors import WeightsError, one_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackbonePreset:
    """How to cut one torchvision architecture into named stages.

    ``stages`` maps a stage name to ``(modules, channels, stride)``: the top-level attribute names of the
    torchvision model that make up the stage (in order, after the previous stage), its output channels and its
    output stride relative to the input.
    """

    builder: Callable[..., nn.Module]
    weights: str
    stages: dict[str, tuple[tuple[str, ...], int, int]]
    default_layers: tuple[str, ...]


def _resnet_stages(expansion: int) -> dict[str, tuple[tuple[str, ...], int, int]]:
    return {
        "layer1": (("conv1", "bn1", "relu", "maxpool", "layer1"), 64 * expansion, 4),
        "layer2": (("layer2",), 128 * expansion, 8),
        "layer3": (("layer3",), 256 * expansion, 16),
        "layer4": (("layer4",), 512 * expansion, 32),
    }


def _mobilenet_v2_stages() -> dict[str, tuple[tuple[str, ...], int, int]]:
    # The last block of each stride stage of MobileNetV2: strides 4/8/16/32, like ResNet layer1-4.
    idx = lambda a, b: tuple(f"features.{i}" for i in range(a, b))  # noqa: E731
    return {
        "features.3": (idx(0, 4), 24, 4),
        "features.6": (idx(4, 7), 32, 8),
        "features.13": (idx(7, 14), 96, 16),
        "features.17": (idx(14, 18), 320, 32),
    }


_RESNET_LAYERS = ("layer1", "layer2", "layer3")

PRESETS: dict[str, BackbonePreset] = {
    "resnet18": BackbonePreset(torchvision.models.resnet18, "IMAGENET1K_V1", _resnet_stages(1), _RESNET_LAYERS),
    "resnet34": BackbonePreset(torchvision.models.resnet34, "IMAGENET1K_V1", _resnet_stages(1), _RESNET_LAYERS),
    "resnet50": BackbonePreset(torchvision.models.resnet50, "IMAGENET1K_V1", _resnet_stages(4), _RESNET_LAYERS),
    "resnet101": BackbonePreset(torchvision.models.resnet101, "IMAGENET1K_V1", _resnet_stages(4), _RESNET_LAYERS),
    "resnet152": BackbonePreset(torchvision.models.resnet152, "IMAGENET1K_V1", _resnet_stages(4), _RESNET_LAYERS),
    "wide_resnet50_2": BackbonePreset(
        torchvision.models.wide_resnet50_2, "IMAGENET1K_V1", _resnet_stages(4), _RESNET_LAYERS
    ),
    "mobilenet_v2": BackbonePreset(
        torchvision.models.mobilenet_v2,
        "IMAGENET1K_V1",
        _mobilenet_v2_stages(),
        ("features.3", "features.6", "features.13"),
    ),
}


def get_preset(name: str) -> BackbonePreset:
    """Return the preset of a backbone, or a one-line error listing the known ones."""
    if name not in PRESETS:
        raise WeightsError(f"unknown backbone {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def resolve_layers(name: str, wanted: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Validate the requested stage names (default: the preset's three) and return them in network order."""
    preset = get_preset(name)
    if not wanted:
        return preset.default_layers
    unknown = [layer for layer in wanted if layer not in preset.stages]
    if unknown:
        raise WeightsError(f"backbone {name} has no layer(s) {unknown}; available: {', '.join(preset.stages)}")
    order = list(preset.stages)
    return tuple(sorted(set(wanted), key=order.index))


def layer_channels(name: str, chosen: tuple[str, ...]) -> list[int]:
    """Output channels of the given stages."""
    stages = get_preset(name).stages
    return [stages[layer][1] for layer in chosen]


def layer_strides(name: str, chosen: tuple[str, ...]) -> list[int]:
    """Output strides of the given stages."""
    stages = get_preset(name).stages
    return [stages[layer][2] for layer in chosen]


class FeatureExtractor(nn.Module):
    """Runs the stages of a truncated backbone in sequence and returns the outputs of the requested ones."""

    def __init__(self, stages: nn.ModuleList, return_index: list[int]) -> None:
        super().__init__()
        self.stages = stages
        self.return_index = return_index

    def forward(self, images: Tensor) -> list[Tensor]:
        features: list[Tensor] = []
        x = images
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.return_index:
                features.append(x)
        return features


class FrozenFeatureExtractor(FeatureExtractor):
    """A feature extractor that never leaves eval mode and never needs gradients.

    Lightning calls ``.train()`` on the whole LightningModule every epoch; overriding ``train`` here keeps the
    teacher's BatchNorm running statistics bit-identical no matter who calls it.
    """

    def __init__(self, stages: nn.ModuleList, return_index: list[int]) -> None:
        super().__init__(stages, return_index)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenFeatureExtractor:  # noqa: ARG002 - mode is ignored on purpose
        return super().train(False)


def _get_submodule(model: nn.Module, dotted: str) -> nn.Module:
    module = model
    for part in dotted.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)  # type: ignore[index]
    return module


def truncate(model: nn.Module, name: str, chosen: tuple[str, ...], frozen: bool) -> FeatureExtractor:
    """Cut a full torchvision ``model`` after the deepest of the ``chosen`` stages and wrap it as a feature
    extractor."""
    stage_names = list(get_preset(name).stages)
    deepest = max(stage_names.index(layer) for layer in chosen)
    stages = nn.ModuleList()
    for stage in stage_names[: deepest + 1]:
        parts = get_preset(name).stages[stage][0]
        stages.append(nn.Sequential(*[_get_submodule(model, p) for p in parts]))
    return_index = [stage_names.index(layer) for layer in chosen]
    cls = FrozenFeatureExtractor if frozen else FeatureExtractor
    return cls(stages, return_index)


def _download_hint(name: str) -> str:
    return (
        f"on an offline machine pass --teacher-weights PATH to a local torchvision {name} state_dict (.pth), "
        f"or put torchvision's file in {torch.hub.get_dir()}/checkpoints/"
    )


def _load_imagenet(name: str, preset: BackbonePreset) -> nn.Module:
    """Build the model with torchvision's ImageNet weights (downloaded once into the torch hub cache)."""
    weights = torchvision.models.get_model_weights(preset.builder)[preset.weights]
    try:
        return preset.builder(weights=weights)
    except Exception as exc:  # urllib errors, hash mismatches, truncated files: all mean "no weights"
        reason = one_line(exc, first_line=True)
        raise WeightsError(
            f"could not obtain ImageNet weights {weights} for {name} ({reason}); {_download_hint(name)}"
        ) from exc


def _load_state_dict_file(path: Path) -> dict[str, Tensor]:
    """Read a state_dict from a file, also accepting the common {"state_dict": ...}/{"model": ...} wrappers."""
    if not path.is_file():
        raise WeightsError(f"teacher weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot read teacher weights {path}: {one_line(exc, first_line=True)}") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsError(f"teacher weights {path} do not contain a state_dict")
    return state


def _load_local(name: str, preset: BackbonePreset, path: Path) -> nn.Module:
    model = preset.builder(weights=None)
    state = _load_state_dict_file(path)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(
            f"teacher weights {path} do not fit {name}: {len(result.missing_keys)} missing keys "
            f"(e.g. {result.missing_keys[:2]}), {len(result.unexpected_keys)} unexpected "
            f"(e.g. {result.unexpected_keys[:2]}); is it a torchvision {name} state_dict?"
        )
    return model


def build_backbone(
    name: str, chosen: tuple[str, ...], weights: str | None, frozen: bool
) -> FeatureExtractor:
    """Build a truncated backbone.

    ``weights``: ``"imagenet"`` (torchvision's weights API), a path to a local state_dict file, ``"random"``
    (explicit random init, warns when used for a teacher) or ``None`` (random init without warning: the
    student, or a model whose weights are about to be loaded from a checkpoint).
    """
    preset = get_preset(name)
    if weights == "imagenet":
        model = _load_imagenet(name, preset)
    elif weights in (None, "random"):
        if weights == "random" and frozen:
            log.warning(
                "teacher %s uses RANDOM weights (--teacher-weights random): anomaly scores will be near chance "
                "on real defects; use this for tests and research only",
                name,
            )
        model = preset.builder(weights=None)
    else:
        model = _load_local(name, preset, Path(weights).expanduser())
    return truncate(model, name, chosen, frozen)
