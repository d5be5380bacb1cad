"""--score-levels: the image score fused from a subset of the pyramid levels, the map (and masks) from all of them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stfpm.core.errors import ConfigError
from stfpm.model.anomaly_map import AnomalyMap, resolve_score_levels
from stfpm.model.calibrate import conformal_threshold
from stfpm.model.reference import ReferenceNormalizer
from stfpm.model.settings import MapSettings, ModelSettings

SIZE = (16, 24)
MODEL_SIZE = (32, 48)  # a model's input: the smallest sides the settings take are 32
MODEL_TOP = 15  # the default score of a MODEL_SIZE map: the mean of its 1% highest pixels, 15.36 rounded
PLAIN_MAP = dict(map_fusion="product", map_sigma=0.0, map_normalization="none", score_fraction=0.0, score_levels="all")
"""The map options at the official recipe's values (the paper's map and score)."""


def _map(num_levels: int = 3, size: tuple[int, int] = SIZE, **options) -> tuple[AnomalyMap, ReferenceNormalizer]:
    """A stateless map and the reference it reads its fitted statistics from; options not given: :data:`PLAIN_MAP`."""
    settings = MapSettings(**{**PLAIN_MAP, **options})
    generator = AnomalyMap(settings, num_levels, None)
    return generator, ReferenceNormalizer(num_levels, settings.map_normalization, size, generator.separate_score)


def _run(levels: list[torch.Tensor], size: tuple[int, int] = SIZE, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps and scores of a fresh (unfitted) map of ``options``."""
    generator, reference = _map(len(levels), size, **options)
    return generator(levels, size, reference)


def _levels(seed: int, batch: int, offset: float = 0.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(batch, 1, h, w, generator=g) * 0.2 + 0.5 + offset for h, w in ((8, 12), (4, 6), (2, 3))]


def _product(levels: list[torch.Tensor], size: tuple[int, int] = SIZE) -> torch.Tensor:
    """The official fusion, written out: every level upsampled bilinearly, multiplied."""
    out = torch.ones(len(levels[0]), 1, *size)
    for level in levels:
        out = out * F.interpolate(level, size=size, mode="bilinear", align_corners=False)
    return out


def _top_mean(maps: torch.Tensor, k: int) -> torch.Tensor:
    """The default image score written out: the mean of each map's k highest pixels (k = 1% of them, rounded)."""
    return maps.flatten(1).sort(dim=1, descending=True).values[:, :k].mean(1)


def test_resolve_score_levels() -> None:
    assert resolve_score_levels("all", 3) == (0, 1, 2)
    assert resolve_score_levels("coarser", 3) == (1, 2)
    assert resolve_score_levels("coarser", 1) == (0,)  # nothing coarser than a single level
    assert resolve_score_levels([2, 1, 2], 3) == (1, 2)
    for bad in ([3], [-1], []):
        with pytest.raises(ConfigError, match="indices 0 \\(the finest\\) to 2"):
            resolve_score_levels(bad, 3)
    with pytest.raises(ConfigError, match="all or coarser"):
        resolve_score_levels("finest", 3)


def test_the_score_ignores_the_excluded_level_and_the_map_keeps_every_level() -> None:
    levels = _levels(0, 2)
    levels[0][1, 0, 3, 5] = 50.0  # a hot spot seen by the finest level only, in image 1
    maps, scores = _run(levels, score_levels=[1, 2])
    torch.testing.assert_close(maps, _product(levels))  # the map: every level, as without the option
    torch.testing.assert_close(scores, _product(levels[1:]).flatten(1).amax(1))
    all_maps, all_scores = _run(levels)
    torch.testing.assert_close(maps, all_maps, rtol=0, atol=0)
    assert float(all_scores[1]) > 10 * float(scores[1])  # the hot spot decides the paper's score, not this one
    assert _run(levels, score_levels="all")[1].equal(all_scores)


def test_sum_fusion_scales_the_score_levels_by_their_own_factors() -> None:
    val, test = _levels(1, 5), _levels(2, 3)
    val[2] = val[2] * 10.0
    gen, reference = _map(map_fusion="sum", score_levels=[0, 2])
    reference.fit_level_scale(val)
    _, scores = gen(test, SIZE, reference)
    expected = sum(F.interpolate(test[i], size=SIZE, mode="bilinear", align_corners=False) / float(val[i].mean())
                   for i in (0, 2))
    torch.testing.assert_close(scores, expected.flatten(1).amax(1), rtol=1e-5, atol=1e-6)


def test_reference_normalization_gives_the_score_its_own_reference_and_held_out_calibration() -> None:
    """Under the reference normalization the score's fused map has its own reference (the validation mean of the
    score levels' fused maps); calibration scores each validation image against the mean of the others."""
    from stfpm.model.lightning_model import STFPM

    torch.manual_seed(0)
    val, test = _levels(3, 30), _levels(4, 3, offset=0.3)
    options = dict(backbone="resnet18", teacher_weights="random", image_size=list(MODEL_SIZE),
                   map_normalization="reference", target_false_alarms=0.5, pixel_threshold_quantile=0.9)
    model = STFPM(ModelSettings.of(**options, score_levels="coarser"))
    plain = STFPM(ModelSettings.of(**options, score_levels="all"))
    image_thr, pixel_thr, _ = model.calibrate_on(val)
    plain_image_thr, plain_pixel_thr, _ = plain.calibrate_on(val)
    gen, fitted = model.model.anomaly_map, model.model.reference
    assert fitted.in_use
    score_fused = _product(val[1:], MODEL_SIZE)
    torch.testing.assert_close(fitted.reference, _product(val, MODEL_SIZE).mean(0, keepdim=True))
    torch.testing.assert_close(fitted.score_reference, score_fused.mean(0, keepdim=True))
    held_out = []
    for i in range(len(score_fused)):
        others = torch.cat([score_fused[:i], score_fused[i + 1:]]).mean(0, keepdim=True)
        held_out.append(float(_top_mean(score_fused[i: i + 1] / (others + others.mean()), MODEL_TOP)))
    assert image_thr == pytest.approx(float(np.sort(held_out)[15]), rel=1e-5)  # conformal: the 16th of 30 (k/31 >= 0.5)
    assert image_thr != pytest.approx(plain_image_thr, rel=1e-3)
    assert pixel_thr == pytest.approx(plain_pixel_thr, rel=1e-6)  # the pixel threshold: the same map as before
    maps, scores = gen(test, MODEL_SIZE, fitted)
    torch.testing.assert_close(maps, plain.model.anomaly_map(test, MODEL_SIZE, plain.model.reference)[0])
    reference = fitted.score_reference
    torch.testing.assert_close(scores, _top_mean(_product(test[1:], MODEL_SIZE) / (reference + reference.mean()),
                                                 MODEL_TOP))
    assert {"reference", "score_reference"} <= {k.split(".")[-1] for k in model.state_dict()}


def test_few_validation_images_leave_both_maps_as_they_are() -> None:
    from stfpm.model.calibrate import held_out_maps
    from stfpm.model.torch_model import STFPMModel

    few = _levels(5, 5)
    model = STFPMModel(ModelSettings.of(backbone="resnet18", teacher_weights=None, image_size=list(MODEL_SIZE),
                                        **{**PLAIN_MAP, "map_normalization": "reference", "score_levels": [1, 2]}))
    maps, scores = held_out_maps(model, few)
    assert not model.reference.in_use and bool((model.reference.score_reference == 0.5).all())
    torch.testing.assert_close(maps, _product(few, MODEL_SIZE))
    torch.testing.assert_close(scores, _product(few[1:], MODEL_SIZE).flatten(1).amax(1))


def test_train_records_the_score_levels_and_prediction_and_export_use_them(tiny_data, tmp_path, capsys) -> None:
    from conftest import TRAIN_ARGS
    from stfpm.cli import run
    from stfpm.cli.train import main as train_main
    from stfpm.data import MVTecDataModule
    from stfpm.data.settings import DataSettings
    from stfpm.inference.export import deployable, export
    from stfpm.model.checkpoint import load_checkpoint

    config = tmp_path / "c.yaml"
    config.write_text("model:\n  score_levels: coarser\n  map_normalization: none\n")
    assert train_main(["--config", str(config), "--category", "tiny", "--data-root", str(tiny_data), "--output-dir",
                       str(tmp_path), *TRAIN_ARGS, "--epochs", "1", "--target-false-alarms", "0.5"]) == 0
    run_dir = tmp_path / "tiny" / "version_0"
    model = load_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    assert model.settings.map.score_levels == [1, 2] and model.model.anomaly_map.score_levels == (1, 2)
    dm = MVTecDataModule(DataSettings(category="tiny", data_root=str(tiny_data), batch_size=4, num_workers=0),
                         model.preprocessing(), seed=0)
    dm.setup("fit")
    batch = torch.stack([dm.val_dataset[i]["image"] for i in range(len(dm.val_dataset))])
    with torch.no_grad():
        maps, scores = model.model.predict(batch)
        levels = model.model.layer_maps(batch)
    torch.testing.assert_close(scores, _top_mean(_product(levels[1:], (64, 64)), 41))  # the default: 1% of 64x64 px
    torch.testing.assert_close(maps, _product(levels, (64, 64)))
    assert model.thresholds[0] == pytest.approx(conformal_threshold(scores, 0.5)[0], rel=1e-5)
    path = export(model, tmp_path / "m.torchscript", "torchscript")
    assert json.loads((tmp_path / "m.torchscript.json").read_text())["settings"]["map"]["score_levels"] == [1, 2]
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(path))(images)[1], deployable(model)(images)[1])
    # flags given again with the run's saved config give the same option; a bad value is a one-line error
    saved = (run_dir / "config.yaml").read_text()
    assert "score_levels: coarser" in saved
    for bad, message in ((["5"], "indices 0 (the finest) to 2"), (["finest"], "--score-levels must be all or coarser"),
                         (["all", "1"], "--score-levels must be")):
        code = run(train_main, ["--category", "tiny", "--data-root", str(tiny_data), "--output-dir", str(tmp_path),
                                *TRAIN_ARGS, "--score-levels", *bad])
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 2 and last.startswith("error: ") and message in last, last

