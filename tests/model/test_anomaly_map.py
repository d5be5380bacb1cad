"""Map settings beyond the official recipe: smoothing, sum fusion with per-level scaling, a Gumbel tail,
non-square inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from stfpm.core.errors import ConfigError, DataError
from stfpm.data.io import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageTransform,
    as_hw,
    aspect_preserving_size,
    resize_mask,
    size_record,
)
from stfpm.model.anomaly_map import AnomalyMap, fuse
from stfpm.model.calibrate import conformal_threshold, held_out_maps
from stfpm.model.reference import ReferenceNormalizer
from stfpm.model.settings import MapSettings, ModelSettings
from stfpm.model.torch_model import STFPMModel

PLAIN_MAP = dict(map_fusion="product", map_sigma=0.0, map_normalization="none", score_fraction=0.0, score_levels="all")
"""The map options at the official recipe's values (the paper's map and score)."""


def _map(num_levels: int = 3, size: tuple[int, int] = (8, 8), **options) -> tuple[AnomalyMap, ReferenceNormalizer]:
    """A stateless map of ``num_levels`` levels and the reference it reads its fitted statistics from; the options
    not given are those of :data:`PLAIN_MAP`."""
    settings = MapSettings(**{**PLAIN_MAP, **options})
    generator = AnomalyMap(settings, num_levels, None)
    return generator, ReferenceNormalizer(num_levels, settings.map_normalization, size, generator.separate_score)


def _data_module(root, transform):
    """The tiny category's data module as train.py builds it (default split, seed 0)."""
    from stfpm.data import MVTecDataModule
    from stfpm.data.settings import DataSettings

    settings = DataSettings(category="tiny", data_root=str(root), batch_size=4, num_workers=0)
    return MVTecDataModule(settings, transform, seed=0)


def _levels(seed: int, batch: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(batch, 1, h, w, generator=g) for h, w in ((12, 20), (6, 10), (3, 5))]


@pytest.mark.parametrize("sigma", [1.0, 1.3, 2.0])
def test_smoothing_equals_scipy_gaussian_filter(sigma: float) -> None:
    levels = _levels(0)
    generator, reference = _map(map_sigma=sigma)
    maps, scores = generator(levels, (24, 40), reference)
    fused = fuse(levels, (24, 40), "product", range(3), None).numpy()
    expected = np.stack([ndimage.gaussian_filter(m[0].astype(np.float64), sigma, mode="mirror") for m in fused])
    np.testing.assert_allclose(maps[:, 0].numpy(), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(scores.numpy(), expected.reshape(3, -1).max(axis=1), rtol=1e-5)


def test_no_smoothing_is_the_official_product() -> None:
    levels = _levels(1)
    generator, reference = _map()
    maps, _ = generator(levels, (24, 40), reference)
    expected = np.ones((3, 24, 40))
    for level in levels:
        up = torch.nn.functional.interpolate(level, size=(24, 40), mode="bilinear", align_corners=False)
        expected = expected * up[:, 0].numpy()
    np.testing.assert_allclose(maps[:, 0].numpy(), expected, rtol=1e-6)


def test_sum_fusion_weighs_levels_by_their_validation_mean() -> None:
    val, test = _levels(2, batch=5), _levels(3)
    val[1] = val[1] * 10.0  # a level with a larger range must not dominate the sum
    generator, reference = _map(map_fusion="sum")
    assert generator.sums_levels
    reference.fit_level_scale(val)
    means = [float(v.mean()) for v in val]
    np.testing.assert_allclose(reference.level_scale.numpy(), [1 / m for m in means], rtol=1e-6)
    maps, _ = generator(test, (12, 20), reference)
    expected = sum(
        torch.nn.functional.interpolate(t, size=(12, 20), mode="bilinear", align_corners=False) / m
        for t, m in zip(test, means)
    )
    np.testing.assert_allclose(maps.numpy(), expected.numpy(), rtol=1e-5)
    product = STFPMModel(ModelSettings.of(backbone="resnet18", teacher_weights=None, image_size=32, **PLAIN_MAP))
    assert not product.anomaly_map.sums_levels
    held_out_maps(product, val)  # the calibration step of training
    assert torch.equal(product.reference.level_scale, torch.ones(3))  # the official fusion is never rescaled


def test_level_scale_travels_in_the_state_dict_and_old_ones_load(format_1, tmp_path) -> None:
    settings = ModelSettings.of(backbone="resnet18", teacher_weights=None, **{**PLAIN_MAP, "map_fusion": "sum",
                                                                              "map_sigma": 2.0})
    model = STFPMModel(settings)
    model.reference.level_scale.copy_(torch.tensor([1.0, 2.0, 3.0]))
    state = model.state_dict()
    assert "reference.level_scale" in state and "anomaly_map.kernel" not in state
    clone = STFPMModel(settings)
    clone.load_state_dict(state)
    assert torch.equal(clone.reference.level_scale, torch.tensor([1.0, 2.0, 3.0]))
    # a checkpoint written before the buffer existed (and before --map-fusion: the official product) loads with 1s
    from stfpm.model.checkpoint import load_checkpoint

    old = torch.load(format_1["format_1"], map_location="cpu", weights_only=True)
    assert old["stfpm"]["format_version"] == 1
    old["state_dict"] = {k: v for k, v in old["state_dict"].items() if "level_scale" not in k}
    old["hyper_parameters"] = {k: v for k, v in old["hyper_parameters"].items() if k != "map_fusion"}
    torch.save(old, tmp_path / "old.ckpt")
    loaded = load_checkpoint(tmp_path / "old.ckpt")
    assert loaded.settings.map.map_fusion == "product"
    assert torch.equal(loaded.model.reference.level_scale, torch.ones(len(loaded.settings.networks.layers or ())))


def test_bad_map_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="--map-fusion must be one of product, sum"):
        MapSettings(map_fusion="max")
    with pytest.raises(ConfigError, match="--map-sigma must be a finite number in \\[0, inf\\)"):
        MapSettings(map_fusion="product", map_sigma=-1.0)


def test_image_sizes_square_or_height_width() -> None:
    assert as_hw(64) == (64, 64) and as_hw([64]) == (64, 64) and as_hw([48, 80]) == (48, 80)
    assert size_record((64, 64)) == 64 and size_record((48, 80)) == [48, 80]
    for bad in (0, [1, 2, 3], [32, 0], "64", True, [], 2.5):
        with pytest.raises(DataError, match="image size"):
            as_hw(bad)


def test_aspect_preserving_size_keeps_area_and_ratio() -> None:
    height, width = aspect_preserving_size(128, 230 / 565)
    assert (height, width) == (80, 208)  # 565x230 photos: 16640 pixels against 128*128 = 16384
    assert height % 16 == 0 and width % 16 == 0
    assert aspect_preserving_size(256, 1.0) == (256, 256)
    assert aspect_preserving_size(128, 2.0) == (176, 96)
    with pytest.raises(DataError):
        aspect_preserving_size(128, 0.0)


def test_non_square_transform_and_mask() -> None:
    image = np.zeros((230, 565, 3), np.uint8)
    assert ImageTransform((80, 208), IMAGENET_MEAN, IMAGENET_STD)(image).shape == (3, 80, 208)
    mask = np.zeros((230, 565), bool)
    mask[100:130, 200:300] = True
    resized = resize_mask(mask, (80, 208))
    assert resized.shape == (1, 80, 208) and resized.dtype == torch.bool
    rows, cols = np.nonzero(resized[0].numpy())
    assert 33 <= rows.min() <= 36 and 43 <= rows.max() <= 46 and 72 <= cols.min() <= 75 and 109 <= cols.max() <= 111


def _wide_copy(tiny_data, tmp_path):
    """The tiny category with every image and mask stretched to 64x96 (height x width)."""
    import shutil

    from PIL import Image

    root = tmp_path / "wide"
    shutil.copytree(tiny_data, root)
    for path in (root / "tiny").rglob("*.png"):
        with Image.open(path) as img:
            resample = Image.NEAREST if "ground_truth" in path.parts else Image.BILINEAR
            img.resize((96, 64), resample).save(path)
    return root


def test_non_square_run_trains_tests_and_predicts_end_to_end(tiny_data, tmp_path) -> None:
    """--keep-aspect on 64x96 parts: the input keeps their ratio, and every path uses it."""
    import json

    from PIL import Image

    from conftest import TRAIN_ARGS
    from stfpm.cli.predict import main as predict_main
    from stfpm.cli.test import main as test_main
    from stfpm.cli.train import main as train_main
    from stfpm.inference.export import metadata
    from stfpm.model.checkpoint import load_checkpoint

    root = _wide_copy(tiny_data, tmp_path)
    args = [*TRAIN_ARGS, "--epochs", "1", "--keep-aspect", "--map-fusion", "sum", "--map-sigma", "2",
            "--tail", "gumbel"]
    assert train_main(["--category", "tiny", "--data-root", str(root), "--output-dir", str(tmp_path / "runs"), *args]) == 0
    checkpoint = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "best.ckpt"
    model = load_checkpoint(checkpoint)
    assert model.settings.input.image_size == [48, 80]  # 64*64 pixels at ratio 2/3, multiples of 16
    assert model.settings.map.map_fusion == "sum" and model.settings.map.map_sigma == 2.0
    assert not torch.equal(model.model.reference.level_scale, torch.ones(3))  # fitted on validation normals
    assert all(math.isfinite(t) for t in model.thresholds)
    maps, _ = model.model.predict(torch.randn(1, 3, 48, 80))
    assert maps.shape == (1, 1, 48, 80)
    meta = metadata(model, "exported_program")
    assert meta["settings"]["input"]["image_size"] == [48, 80] and "[B,3,48,80]" in meta["input"]

    out = tmp_path / "eval"
    base = ["--num-workers", "0", "--accelerator", "cpu"]
    assert test_main(["--checkpoint", str(checkpoint), "--data-root", str(root), "--output-dir", str(out), *base]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["image_size"] == [48, 80] and 0 <= results["pixel_auroc"] <= 1

    pred_out = tmp_path / "pred"
    image = next((root / "tiny" / "test" / "hole").glob("*.png"))
    assert predict_main(["--checkpoint", str(checkpoint), "--input", str(image), "--output", str(pred_out),
                         "--save-raw", "--num-workers", "0"]) == 0
    mask = np.asarray(Image.open(next(pred_out.rglob("*_mask.png"))))
    assert mask.shape == (64, 96) and set(np.unique(mask)) <= {0, 255}
    raw = np.load(next(pred_out.rglob("*_map.npy")))
    np.testing.assert_array_equal(mask > 0, raw >= model.thresholds[1])  # the mask is the saved map thresholded


def test_keep_aspect_takes_one_size(tiny_data, tmp_path, capsys) -> None:
    from conftest import TRAIN_ARGS
    from stfpm.cli import run
    from stfpm.cli.train import main as train_main

    args = list(TRAIN_ARGS)
    args[args.index("--image-size") + 1: args.index("--image-size") + 2] = ["48", "64"]
    code = run(train_main, ["--category", "tiny", "--data-root", str(tiny_data), "--output-dir", str(tmp_path),
                            *args, "--keep-aspect"])
    assert code == 2 and "--keep-aspect takes one --image-size" in capsys.readouterr().err
    code = run(train_main, ["--category", "tiny", "--data-root", str(tiny_data), "--output-dir", str(tmp_path),
                            *TRAIN_ARGS, "--map-sigma", "-1"])
    assert code == 2 and "--map-sigma must be a finite number in [0, inf)" in capsys.readouterr().err


def test_smoothing_a_map_smaller_than_the_kernel_keeps_a_constant_constant() -> None:
    levels = [torch.full((2, 1, 3, 3), 0.5), torch.full((2, 1, 2, 2), 0.5), torch.full((2, 1, 1, 1), 0.5)]
    generator, reference = _map(map_sigma=4.0)
    maps, scores = generator(levels, (5, 7), reference)  # radius 16 > the map's sides
    torch.testing.assert_close(maps, torch.full((2, 1, 5, 7), 0.125))
    torch.testing.assert_close(scores, torch.full((2,), 0.125))


def test_reference_normalization_divides_by_the_validation_mean_map() -> None:
    """map = fused / (R + mean(R)), R = mean fused map of the validation normals (stored, used at inference)."""
    torch.manual_seed(0)
    val = [torch.rand(30, 1, 4, 4) * 0.2 + 0.5, torch.rand(30, 1, 2, 2) * 0.2 + 0.5]  # alike: 29.8 images' worth
    test = [torch.rand(3, 1, 4, 4) + 0.1, torch.rand(3, 1, 2, 2) + 0.1]
    gen, gen_reference = _map(2, (8, 8), map_normalization="reference")
    plain, plain_reference = _map(2, (8, 8))
    val_fused = plain(val, (8, 8), plain_reference)[0]
    assert gen_reference.fit(gen.fused(val, (8, 8), gen.levels, gen_reference.level_scale)) and gen_reference.in_use
    reference = val_fused.mean(dim=0, keepdim=True)
    maps, scores = gen(test, (8, 8), gen_reference)
    expected = plain(test, (8, 8), plain_reference)[0] / (reference + reference.mean())
    torch.testing.assert_close(maps, expected)
    torch.testing.assert_close(scores, expected.flatten(1).amax(1))
    assert "reference" in gen_reference.state_dict()


def test_reference_thresholds_score_each_validation_image_without_itself(tiny_data, tmp_path, monkeypatch) -> None:
    """Calibration: validation image i is normalized by the mean of the other validation maps (leave-one-out);
    the stored reference is the mean of all of them."""
    import importlib

    # every module naming it
    for name in ("stfpm.model.reference", "stfpm.model.calibrate", "stfpm.model.lightning_model", "stfpm.training.fitting"):
        monkeypatch.setattr(importlib.import_module(name), "MIN_REFERENCE_IMAGES", 1)  # the tiny set: 2 validation images
    from conftest import TRAIN_ARGS
    from stfpm.cli.train import main as train_main
    from stfpm.model.anomaly_map import layer_anomaly_maps
    from stfpm.model.checkpoint import load_checkpoint

    assert train_main(["--category", "tiny", "--data-root", str(tiny_data), "--output-dir", str(tmp_path), *TRAIN_ARGS,
                       "--epochs", "1", "--map-normalization", "reference", "--target-false-alarms", "0.5",
                       "--score-levels", "all", "--score-fraction", "0"]) == 0  # the score: the same map's max
    model = load_checkpoint(tmp_path / "tiny" / "version_0" / "checkpoints" / "best.ckpt")
    dm = _data_module(tiny_data, model.preprocessing())
    dm.setup("fit")
    batch = torch.stack([dm.val_dataset[i]["image"] for i in range(len(dm.val_dataset))])
    with torch.no_grad():
        teacher, student = model.model(batch)
        # the official product, no normalization
        fused = fuse(layer_anomaly_maps(teacher, student), as_hw(64), "product", range(3), None)
    n = len(fused)
    torch.testing.assert_close(model.model.reference.reference, fused.mean(0, keepdim=True), rtol=1e-4, atol=1e-7)
    scores = []
    for i in range(n):
        others = torch.cat([fused[:i], fused[i + 1:]]).mean(0, keepdim=True)
        scores.append(float((fused[i] / (others + others.mean())).max()))
    assert model.thresholds[0] == pytest.approx(conformal_threshold(np.array(scores), 0.5)[0], rel=1e-4)


def test_score_fraction_is_the_mean_of_the_highest_pixels() -> None:
    from stfpm.model.anomaly_map import image_scores

    maps = torch.zeros(2, 1, 10, 10)
    maps[0, 0, 0, :5] = torch.tensor([9.0, 7.0, 5.0, 3.0, 1.0])
    maps[1, 0, 4, 4] = 2.0
    assert image_scores(maps, 0.0).tolist() == [9.0, 2.0]
    assert image_scores(maps, 0.03).tolist() == [7.0, pytest.approx(2 / 3)]  # 3 of 100 pixels
    assert image_scores(maps, 0.001).tolist() == [9.0, 2.0]  # at least one pixel
    gen, reference = _map(score_fraction=0.05)
    levels = _levels(4)
    out, scores = gen(levels, (24, 40), reference)
    k = round(0.05 * 24 * 40)
    torch.testing.assert_close(scores, out.flatten(1).sort(dim=1, descending=True).values[:, :k].mean(1))
    with pytest.raises(ConfigError, match="--score-fraction must be a finite number in \\[0, 1\\)"):
        MapSettings(**{**PLAIN_MAP, "score_fraction": 1.0})


def test_score_fraction_reaches_thresholds_and_export(tiny_data, tmp_path) -> None:
    """The image threshold is the quantile of the same scores that predict() gives, and the export scores alike."""
    import json

    from conftest import TRAIN_ARGS
    from stfpm.cli.train import main as train_main
    from stfpm.inference.export import deployable, export
    from stfpm.model.checkpoint import load_checkpoint

    assert train_main(["--category", "tiny", "--data-root", str(tiny_data), "--output-dir", str(tmp_path), *TRAIN_ARGS,
                       "--epochs", "1", "--score-fraction", "0.02", "--target-false-alarms", "0.5",
                       "--map-normalization", "none", "--score-levels", "all"]) == 0  # the reference: tested on its own
    model = load_checkpoint(tmp_path / "tiny" / "version_0" / "checkpoints" / "best.ckpt")
    assert model.model.anomaly_map.settings.score_fraction == 0.02
    dm = _data_module(tiny_data, model.preprocessing())
    dm.setup("fit")
    batch = torch.stack([dm.val_dataset[i]["image"] for i in range(len(dm.val_dataset))])
    with torch.no_grad():
        maps, scores = model.model.predict(batch)
    k = round(0.02 * 64 * 64)
    torch.testing.assert_close(scores, maps.flatten(1).topk(k, dim=1).values.mean(1))
    assert model.thresholds[0] == pytest.approx(conformal_threshold(scores, 0.5)[0], rel=1e-5)
    path = export(model, tmp_path / "m.torchscript", "torchscript")
    assert json.loads((tmp_path / "m.torchscript.json").read_text())["settings"]["map"]["score_fraction"] == 0.02
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(path))(images)[1], deployable(model)(images)[1])


def test_reference_needs_enough_validation_images_else_the_map_is_left_as_it_is(tiny_data, tmp_path, caplog) -> None:
    from conftest import TRAIN_ARGS
    from stfpm.cli.train import main as train_main
    from stfpm.model.checkpoint import load_checkpoint
    from stfpm.model.reference import MIN_REFERENCE_IMAGES

    few = [torch.rand(MIN_REFERENCE_IMAGES - 1, 1, 4, 4), torch.rand(MIN_REFERENCE_IMAGES - 1, 1, 2, 2)]
    gen, gen_reference = _map(2, (8, 8), map_normalization="reference")
    assert not gen_reference.fit(gen.fused(few, (8, 8), gen.levels, gen_reference.level_scale))
    test = [torch.rand(3, 1, 4, 4), torch.rand(3, 1, 2, 2)]
    plain, plain_reference = _map(2, (8, 8))
    torch.testing.assert_close(gen(test, (8, 8), gen_reference)[0], plain(test, (8, 8), plain_reference)[0],
                               rtol=0, atol=0)
    # train.py says so, up front, and the checkpoint's thresholds are those of the plain map
    with caplog.at_level("WARNING"):
        assert train_main(["--category", "tiny", "--data-root", str(tiny_data), "--output-dir", str(tmp_path),
                           *TRAIN_ARGS, "--epochs", "1", "--map-normalization", "reference", "--score-levels", "all"]) == 0
    assert "reference normalization needs at least" in caplog.text
    assert "the map is left as it is (no reference normalization)" in caplog.text  # and again after training
    model = load_checkpoint(tmp_path / "tiny" / "version_0" / "checkpoints" / "best.ckpt")
    assert bool((model.model.reference.reference == 0.5).all()) and not model.model.reference.in_use
    from stfpm.inference.export import metadata

    meta = metadata(model, "torchscript")  # what the exported network computes: no normalization
    assert meta["reference_normalization_in_use"] is False and meta["settings"]["map"]["map_normalization"] == "reference"
    plain = load_checkpoint(tmp_path / "tiny" / "version_0" / "checkpoints" / "best.ckpt")
    plain.model.anomaly_map, plain.model.reference = _map(
        3, plain.model.size, score_fraction=model.model.anomaly_map.settings.score_fraction)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.model.predict(images), plain.model.predict(images), rtol=0, atol=0)


def test_effective_image_count_on_hand_built_maps() -> None:
    from stfpm.model.reference import effective_image_count

    assert effective_image_count(torch.full((7, 1, 3, 4), 0.3)) == pytest.approx(7)  # all alike: every image
    one = torch.zeros(7, 1, 3, 4)
    one[2] = 5.0
    assert effective_image_count(one) == pytest.approx(1)  # one image holds the whole mean
    pair = torch.cat([torch.full((1, 1, 3, 4), 1.0), torch.full((1, 1, 3, 4), 3.0)])
    assert effective_image_count(pair) == pytest.approx(16 / 10)  # (1 + 3)^2 / (1 + 9)
    mixed = torch.full((4, 1, 1, 3), 1.0)
    mixed[0, 0, 0, 0] = 0.0
    mixed[:, 0, 0, 1] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    # positions: 3 alike of 4 (9/3 = 3), one alone (1), all alike (4): the median is 3
    assert effective_image_count(mixed) == pytest.approx(3)
    assert effective_image_count(torch.zeros(5, 1, 2, 2)) == pytest.approx(5)  # nothing to dominate


def test_reference_is_not_used_when_a_few_validation_images_dominate_their_mean(caplog) -> None:
    """Enough validation images, but one rare normal part holds most of the mean map: leave the map as it is, say
    so, and calibrate the thresholds on the plain map."""
    from stfpm.model.lightning_model import STFPM

    torch.manual_seed(0)
    alike = [torch.rand(40, 1, 4, 4) * 0.2 + 0.5, torch.rand(40, 1, 2, 2) * 0.2 + 0.5, torch.rand(40, 1, 1, 1) + 1]
    dominated = [level.clone() * 0.01 for level in alike]
    for level in dominated:
        level[:3] = 100.0  # three rare parts, much harder for the student than the other 37
    # the smallest input the settings take; the score: the map's maximum (at the 8x8 input this test had before, the
    # default 1% of the pixels was one pixel, the maximum)
    model = STFPM(ModelSettings.of(backbone="resnet18", teacher_weights="random", image_size=32,
                                   map_normalization="reference", target_false_alarms=0.5, score_levels="all",
                                   score_fraction=0.0))
    reference = model.model.reference
    with caplog.at_level("WARNING"):
        model.calibrate_on(alike)
        assert reference.in_use and "dominate" not in caplog.text
        image_thr, _, _ = model.calibrate_on(dominated)
    assert not reference.in_use and "average only 3.0 images' worth" in caplog.text
    plain_map, plain_reference = _map(3, (32, 32))
    plain = plain_map(dominated, (32, 32), plain_reference)[1]
    assert image_thr == pytest.approx(conformal_threshold(plain, 0.5)[0], rel=1e-6)
