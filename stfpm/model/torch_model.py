"""The STFPM network in plain PyTorch: usable without Lightning and exportable (TorchScript/ONNX)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from stfpm.data.io import as_hw
from stfpm.errors import WeightsError
from stfpm.model.anomaly_map import AnomalyMapGenerator, layer_anomaly_maps
from stfpm.model.backbones import build_backbone, get_preset, layer_channels, layer_strides, resolve_layers
from stfpm.model.tiling import Tiler

STUDENT_INITS = ("random", "teacher")


class STFPMModel(nn.Module):
    """A frozen pretrained teacher and a trainable student with the same feature pyramid.

    When the student's channel counts differ from the teacher's (a heterogeneous pair, e.g. a ResNet-152
    teacher with a ResNet-18 student) the student gets a learned 1x1 convolution per level that maps its
    features to the teacher's width. This is an extension of this project; the paper uses identical
    architectures, where no projection exists.

    ``student_init``: ``random`` (the paper) or ``teacher``, a student that starts as a copy of the teacher's
    pretrained weights (same architecture only). ``score_levels``: the levels the image score is fused from
    (:data:`stfpm.model.anomaly_map.SCORE_LEVELS`).
    """

    def __init__(
        self,
        backbone: str = "resnet152",
        student_backbone: str | None = None,
        layers: list[str] | tuple[str, ...] | None = None,
        teacher_weights: str | None = "imagenet",
        map_fusion: str = "product",
        map_sigma: float = 0.0,
        image_size: int | Sequence[int] | None = None,
        tile_size: int | Sequence[int] | None = None,
        tile_overlap: float = 0.25,
        map_normalization: str = "none",
        score_fraction: float = 0.0,
        student_init: str = "random",
        score_levels: str | Sequence[int] = "all",
    ) -> None:
        super().__init__()
        if student_init not in STUDENT_INITS:
            raise ValueError(f"unknown student_init {student_init!r}; choose one of {', '.join(STUDENT_INITS)}")
        student_backbone = student_backbone or backbone
        if student_init == "teacher" and student_backbone != backbone:
            raise WeightsError(
                f"--student-init teacher copies the teacher's weights, so the student must be a {backbone} too "
                f"(got --student-backbone {student_backbone})"
            )
        self.layers = resolve_layers(backbone, layers)
        student_layers = _matching_student_layers(backbone, student_backbone, self.layers)
        self.teacher = build_backbone(backbone, self.layers, teacher_weights, frozen=True)
        self.student = build_backbone(student_backbone, student_layers, None, frozen=False)
        if student_init == "teacher":
            self.student.load_state_dict(self.teacher.state_dict())
        t_channels = layer_channels(backbone, self.layers)
        s_channels = layer_channels(student_backbone, student_layers)
        self.projections = nn.ModuleList(
            nn.Identity() if s == t else nn.Conv2d(s, t, kernel_size=1) for s, t in zip(s_channels, t_channels)
        )
        self.tiler: Tiler | None = None
        if tile_size is not None:
            if image_size is None:
                raise ValueError("tiling needs the input size")
            self.tiler = Tiler(as_hw(image_size), as_hw(tile_size), tile_overlap)
        size = as_hw(image_size) if image_size is not None else None
        self.anomaly_map = AnomalyMapGenerator(
            len(self.layers), map_fusion, map_sigma, self.tiler, map_normalization, size, score_fraction, score_levels
        )

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
        return self.anomaly_map(self.layer_maps(images), (images.shape[-2], images.shape[-1]))


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
