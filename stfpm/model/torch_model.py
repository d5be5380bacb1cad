"""The STFPM network in plain PyTorch: usable without Lightning and exportable (torch.export, TorchScript, ONNX)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from stfpm.core.errors import WeightsError
from stfpm.model.anomaly_map import AnomalyMap, layer_anomaly_maps
from stfpm.model.backbones import build_backbone, get_preset, layer_channels, layer_strides
from stfpm.model.reference import ReferenceNormalizer
from stfpm.model.settings import ModelSettings
from stfpm.model.tiling import Tiler


class STFPMModel(nn.Module):
    """A frozen pretrained teacher and a trainable student with the same feature pyramid, the anomaly map, and what
    the calibration fitted on the validation normals (the map's reference, the decision thresholds).

    When the student's channel counts differ from the teacher's (a heterogeneous pair, e.g. a ResNet-152
    teacher with a ResNet-18 student) the student gets a learned 1x1 convolution per level that maps its
    features to the teacher's width. This is an extension of this project; the paper uses identical
    architectures, where no projection exists. ``load_teacher`` False builds the teacher without its pretrained
    weights (they are about to be loaded from a checkpoint: nothing is downloaded).
    """

    def __init__(self, settings: ModelSettings, load_teacher: bool = True) -> None:
        super().__init__()
        self.settings = settings = settings.resolved()
        b = settings.networks
        if b.student_init == "teacher" and b.student_backbone != b.backbone:
            raise WeightsError(
                f"--student-init teacher copies the teacher's weights, so the student must be a {b.backbone} too "
                f"(got --student-backbone {b.student_backbone})"
            )
        self.layers = tuple(b.layers or ())
        student_layers = _matching_student_layers(b.backbone, b.student_backbone or b.backbone, self.layers)
        weights = b.teacher_weights if load_teacher else None
        self.teacher = build_backbone(b.backbone, self.layers, weights, frozen=True)
        self.student = build_backbone(b.student_backbone or b.backbone, student_layers, None, frozen=False)
        if b.student_init == "teacher":
            self.student.load_state_dict(self.teacher.state_dict())
        t_channels = layer_channels(b.backbone, self.layers)
        s_channels = layer_channels(b.student_backbone or b.backbone, student_layers)
        self.projections = nn.ModuleList(
            nn.Identity() if s == t else nn.Conv2d(s, t, kernel_size=1) for s, t in zip(s_channels, t_channels)
        )
        self.size = settings.input.size
        tile = settings.input.tile
        self.tiler = None if tile is None else Tiler(self.size, tile, settings.input.tile_overlap)
        self.anomaly_map = AnomalyMap(settings.map, len(self.layers), self.tiler)
        self.reference = ReferenceNormalizer(
            len(self.layers), settings.map.map_normalization, self.size, self.anomaly_map.separate_score)
        self.image_threshold: Tensor
        self.pixel_threshold: Tensor
        self.register_buffer("image_threshold", torch.tensor(math.nan))
        self.register_buffer("pixel_threshold", torch.tensor(math.nan))
        # the share of good parts the image threshold was set to flag, and how many out-of-sample scores it rests on
        self.image_threshold_promise: Tensor
        self.image_threshold_support: Tensor
        self.register_buffer("image_threshold_promise", torch.tensor(math.nan, dtype=torch.float64))
        self.register_buffer("image_threshold_support", torch.tensor(0))

    def forward(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Teacher features (no gradient) and student features (projected to the teacher's channels).

        With tiling, the features are those of the tiles: B*T rows, the T tiles of each image consecutive.
        """
        if self.tiler is not None:
            images = self.tiler.split(images)
        teacher_features = self.teacher(images)
        student_features = [proj(f) for proj, f in zip(self.projections, self.student(images))]
        return teacher_features, student_features

    def layer_maps(self, images: Tensor) -> list[Tensor]:
        """Per-level anomaly maps [B,1,h,w] (B*T with tiling) at each level's own resolution."""
        return layer_anomaly_maps(*self(images))

    def predict(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Anomaly maps [B,1,H,W] at the input resolution and image scores [B]."""
        return self.anomaly_map(self.layer_maps(images), (images.shape[-2], images.shape[-1]), self.reference)

    @property
    def promise(self) -> dict[str, float | int]:
        """The image threshold's promise and support, as results and exports state them (NaN, 0: not recorded)."""
        return {"image_threshold_promise": float(self.image_threshold_promise),
                "image_threshold_support": int(self.image_threshold_support)}

    @property
    def thresholds(self) -> tuple[float, float]:
        """(image threshold, pixel threshold); NaN when the model was trained without validation images."""
        return float(self.image_threshold), float(self.pixel_threshold)


def _matching_student_layers(teacher: str, student: str, layers: tuple[str, ...]) -> tuple[str, ...]:
    """The student stages with the same strides as the teacher's, so features align position by position."""
    if teacher == student:
        return layers
    wanted = layer_strides(teacher, layers)
    by_stride = {stride: name for name, (_, _, stride) in get_preset(student).stages.items()}
    missing = [s for s in wanted if s not in by_stride]
    if missing:
        raise WeightsError(f"student {student} has no stage with stride(s) {missing} needed by teacher {teacher}")
    return tuple(by_stride[s] for s in wanted)
