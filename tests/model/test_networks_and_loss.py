"""The method itself: truncated extractors, loss, anomaly map, frozen teacher, weights loading."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from stfpm.core.errors import ConfigError, WeightsError
from stfpm.model.anomaly_map import fuse, image_scores, layer_anomaly_maps
from stfpm.model.backbones import build_backbone, resolve_layers
from stfpm.model.loss import stfpm_loss
from stfpm.model.settings import ModelSettings, OptimizerSettings
from stfpm.model.torch_model import STFPMModel

REPO = Path(__file__).resolve().parents[2]
OFFICIAL_RECIPE = REPO / "stfpm" / "configs" / "official.yaml"


def _model(backbone: str, **options) -> STFPMModel:
    """The network with the paper's map and score (no normalization, the maximum of the map of every level)."""
    return STFPMModel(ModelSettings.of(backbone=backbone, map_normalization="none", score_fraction=0.0,
                                       score_levels="all", **options))


def _official_product(teacher: list[torch.Tensor], student: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """The official fused anomaly map: the levels' maps upsampled and multiplied, no smoothing."""
    return fuse(layer_anomaly_maps(teacher, student), size, "product", range(len(teacher)), None)


def _reference_loss(teacher: list[np.ndarray], student: list[np.ndarray]) -> float:
    """The official formula, restated with explicit loops: per position, L2-normalise the channel vectors,
    sum the squared differences over channels, average over batch and positions; sum the levels."""
    total = 0.0
    for t, s in zip(teacher, student):
        b, _, h, w = t.shape
        acc = 0.0
        for i in range(b):
            for y in range(h):
                for x in range(w):
                    tv = t[i, :, y, x] / max(np.linalg.norm(t[i, :, y, x]), 1e-12)
                    sv = s[i, :, y, x] / max(np.linalg.norm(s[i, :, y, x]), 1e-12)
                    acc += float(((tv - sv) ** 2).sum())
        total += acc / (b * h * w)
    return total


def _features(seed: int, batch: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, s, s, generator=g, dtype=torch.float64) for c, s in ((4, 8), (6, 4), (8, 2))]


def test_loss_matches_reference_formula() -> None:
    teacher, student = _features(0), _features(1)
    expected = _reference_loss([t.numpy() for t in teacher], [s.numpy() for s in student])
    assert stfpm_loss(teacher, student, 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_loss_is_batch_size_invariant() -> None:
    teacher, student = _features(2), _features(3)
    doubled = stfpm_loss([torch.cat([t, t]) for t in teacher], [torch.cat([s, s]) for s in student], 1.0)
    assert doubled.item() == pytest.approx(stfpm_loss(teacher, student, 1.0).item(), rel=1e-6)


def test_loss_is_zero_for_identical_features_and_positive_otherwise() -> None:
    teacher = _features(4)
    assert stfpm_loss(teacher, [t.clone() for t in teacher], 1.0).item() == pytest.approx(0.0, abs=1e-12)
    assert stfpm_loss(teacher, _features(5), 1.0).item() > 0.1


def test_anomaly_map_is_product_of_upsampled_layer_maps() -> None:
    teacher, student = _features(6), _features(7)
    maps = _official_product(teacher, student, (32, 32))
    assert maps.shape == (2, 1, 32, 32)
    expected = torch.ones(2, 1, 32, 32, dtype=torch.float64)
    for t, s in zip(teacher, student):
        cos = torch.nn.functional.cosine_similarity(t, s, dim=1).unsqueeze(1)
        expected = expected * torch.nn.functional.interpolate(1 - cos, size=(32, 32), mode="bilinear")
    torch.testing.assert_close(maps.double(), expected, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(image_scores(maps, 0.0), maps.flatten(1).amax(1))


def test_anomaly_map_is_zero_where_student_equals_teacher() -> None:
    teacher, student = _features(8), _features(9)
    # make the student equal to the teacher on the left half of every level
    student = [torch.cat([t[..., : t.shape[-1] // 2], s[..., s.shape[-1] // 2 :]], dim=-1) for t, s in zip(teacher, student)]
    layer_maps = layer_anomaly_maps(teacher, student)
    for layer_map in layer_maps:
        assert torch.all(layer_map[..., : layer_map.shape[-1] // 2].abs() < 1e-6)
        assert torch.all(layer_map[..., layer_map.shape[-1] // 2 :] > 0)
    # one level equal everywhere makes the fused map zero everywhere
    same_first = [teacher[0].clone(), *student[1:]]
    fused = _official_product(teacher, same_first, (16, 16))
    assert fused.abs().max().item() < 1e-6
    assert fuse(layer_maps, (16, 16), "product", range(3), None).shape == (2, 1, 16, 16)


def _hooked_outputs(model: nn.Module, names: tuple[str, ...], images: torch.Tensor) -> list[torch.Tensor]:
    outputs: dict[str, torch.Tensor] = {}
    for name in names:
        model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o))
    model(images)
    return [outputs[name] for name in names]


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2"])
def test_truncated_extractor_equals_full_model_intermediates(name: str) -> None:
    torch.manual_seed(0)
    full = getattr(torchvision.models, name)(weights=None).eval()
    layers = resolve_layers(name, None)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = _hooked_outputs(full, layers, images)
        extractor = build_backbone(name, layers, None, frozen=True)
        extractor.stages.load_state_dict(_truncated_state(full, extractor))
        got = extractor(images)
    assert len(got) == len(expected) == 3
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
    # the deepest stage used is the last one kept: nothing beyond it exists
    n_stages = len(extractor.stages)
    assert n_stages == 3


def _truncated_state(full: nn.Module, extractor: nn.Module) -> dict[str, torch.Tensor]:
    """Copy the full model's weights into the extractor, parameter by parameter, in order."""
    full_state = full.state_dict()
    target = extractor.stages.state_dict()
    values = [v for k, v in full_state.items()][: len(target)]
    return dict(zip(target.keys(), values))


def test_local_teacher_weights_are_used_exactly(tmp_path) -> None:
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": reference.state_dict()}, path)
    model = _model("resnet18", teacher_weights=str(path))
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = _hooked_outputs(reference, ("layer1", "layer2", "layer3"), images)
        got = model.teacher(images)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_teacher_weights_of_another_architecture_are_refused(tmp_path) -> None:
    path = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v2(weights=None).state_dict(), path)
    with pytest.raises(WeightsError, match="do not fit resnet18"):
        _model("resnet18", teacher_weights=str(path))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read teacher weights"):
        _model("resnet18", teacher_weights=str(tmp_path / "junk.pth"))
    with pytest.raises(WeightsError, match="does not exist"):
        _model("resnet18", teacher_weights=str(tmp_path / "missing.pth"))


def test_failed_imagenet_download_explains_offline_use(monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", lambda self, *a, **k: offline())
    with pytest.raises(WeightsError, match="--teacher-weights PATH"):
        _model("resnet18", teacher_weights="imagenet")


def test_teacher_is_frozen_and_stays_in_eval_mode() -> None:
    model = _model("resnet18", teacher_weights=None)
    model.train()
    assert not model.teacher.training and model.student.training
    model.teacher.train()
    assert not model.teacher.training
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert all(p.requires_grad for p in model.student.parameters())


def test_random_teacher_warns(caplog) -> None:
    _model("resnet18", teacher_weights="random")
    assert "RANDOM weights" in caplog.text


def test_heterogeneous_pair_projects_student_to_teacher_channels() -> None:
    model = _model("resnet50", student_backbone="resnet18", teacher_weights=None)
    teacher, student = model(torch.randn(2, 3, 64, 64))
    assert [t.shape for t in teacher] == [s.shape for s in student]
    assert all(isinstance(p, nn.Conv2d) for p in model.projections)
    same = _model("resnet18", student_backbone="resnet34", teacher_weights=None)
    assert all(isinstance(p, nn.Identity) for p in same.projections)


def test_student_init_from_the_teacher_copies_its_weights() -> None:
    random_student = _model("resnet18", teacher_weights="random")
    model = _model("resnet18", teacher_weights="random", student_init="teacher")
    teacher, student = model.teacher.state_dict(), model.student.state_dict()
    assert teacher.keys() == student.keys()
    assert all(torch.equal(teacher[k], student[k]) for k in teacher)
    random_teacher, random_init = random_student.teacher.state_dict(), random_student.student.state_dict()
    assert not all(torch.equal(random_teacher[k], random_init[k]) for k in random_teacher)
    # copies, not shared tensors: training the student leaves the teacher as it was
    assert all(t.data_ptr() != s.data_ptr() for t, s in zip(model.teacher.parameters(), model.student.parameters()))
    assert all(p.requires_grad for p in model.student.parameters())
    model.eval()
    assert torch.count_nonzero(model.predict(torch.randn(2, 3, 64, 64))[0]) == 0  # identical networks: an empty map
    with pytest.raises(WeightsError, match="student must be a resnet18"):
        _model("resnet18", student_backbone="resnet34", teacher_weights=None, student_init="teacher")
    with pytest.raises(ConfigError, match="--student-init must be one of random, teacher, got 'imagenet'"):
        _model("resnet18", teacher_weights=None, student_init="imagenet")


def test_unknown_backbone_and_layer_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="--backbone must be one of .*, got 'resnet9000'"):
        _model("resnet9000", teacher_weights=None)
    with pytest.raises(WeightsError, match="has no layer"):
        _model("resnet18", layers=["layer7"], teacher_weights=None)


def test_hard_feature_loss_averages_only_the_hardest_positions() -> None:
    teacher, student = _features(6), _features(7)
    # 1: every position, the paper's loss
    paper = _reference_loss([t.numpy() for t in teacher], [s.numpy() for s in student])
    assert stfpm_loss(teacher, student, 1.0).item() == pytest.approx(paper, rel=1e-6)
    expected = 0.0
    for t, s in zip(teacher, student):
        distance = ((torch.nn.functional.normalize(t, dim=1) - torch.nn.functional.normalize(s, dim=1)) ** 2).sum(1)
        values = np.sort(distance.numpy().ravel())[::-1]
        k = max(1, round(0.25 * values.size))
        expected += values[:k].mean()
    assert stfpm_loss(teacher, student, 0.25).item() == pytest.approx(expected, rel=1e-6)
    assert stfpm_loss(teacher, student, 0.25).item() > stfpm_loss(teacher, student, 1.0).item()
    with pytest.raises(ConfigError, match="--hard-fraction must be a finite number in \\(0, 1\\]"):
        OptimizerSettings(hard_fraction=0.0)


ADDED_OPTIONS = ("map_fusion", "map_sigma", "map_normalization", "score_fraction", "calibration", "hard_fraction",
                 "lr_schedule", "augment", "student_init", "score_levels")
"""Options beyond the paper, added after the first checkpoints were written: an old checkpoint may lack them."""


def test_checkpoints_older_than_an_option_load_with_the_paper_value(format_1, tmp_path) -> None:
    """A checkpoint written before an option existed was trained without it: it must not pick up today's default,
    but the value of the paper's recipe (configs/official.yaml)."""
    import yaml

    from stfpm.model.checkpoint import load_checkpoint

    recipe = {name: value for section in yaml.safe_load(OFFICIAL_RECIPE.read_text()).values()
              for name, value in section.items()}
    paper_values = {option: recipe[option] for option in ADDED_OPTIONS}
    saved = torch.load(format_1["format_1"], map_location="cpu", weights_only=True)
    assert saved["stfpm"]["format_version"] == 1 and set(ADDED_OPTIONS) <= set(saved["hyper_parameters"])
    saved["state_dict"] = {k: v for k, v in saved["state_dict"].items() if "reference" not in k}
    written = {}
    for name, hparams in (("old", {k: v for k, v in saved["hyper_parameters"].items() if k not in ADDED_OPTIONS}),
                          ("paper", {**saved["hyper_parameters"], **paper_values})):
        written[name] = tmp_path / f"{name}.ckpt"
        torch.save({**saved, "hyper_parameters": hparams}, written[name])
    old, paper = load_checkpoint(written["old"]), load_checkpoint(written["paper"])
    sections = {name: section.name for section in ModelSettings.SECTIONS for name in section.names()}
    resolved = {**paper_values, "score_levels": list(range(len(old.settings.networks.layers or ())))}  # `all`, resolved
    assert {option: getattr(getattr(old.settings, sections[option]), option) for option in ADDED_OPTIONS} == resolved
    assert old.settings.map.map_normalization == "none" and not old.model.reference.enabled
    images = torch.rand(2, 3, *old.settings.input.size)
    with torch.no_grad():
        torch.testing.assert_close(old.model.predict(images), paper.model.predict(images))
