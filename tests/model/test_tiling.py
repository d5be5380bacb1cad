"""Tiling: tiles cover the input, stitching inverts cutting, and a tiled model runs through every path."""

from __future__ import annotations

import json

import pytest
import torch

from stfpm.model.settings import ModelSettings
from stfpm.model.tiling import Tiler, tile_starts
from stfpm.model.torch_model import STFPMModel


def _model(**options) -> STFPMModel:
    """A resnet18 pair with the paper's map and score (no normalization, the maximum of the map of every level)."""
    return STFPMModel(ModelSettings.of(backbone="resnet18", teacher_weights=None, map_normalization="none",
                                       score_fraction=0.0, score_levels="all", **options))


def test_tile_starts_cover_the_side_without_padding() -> None:
    assert tile_starts(100, 40, 0.25) == [0, 30, 60]
    assert tile_starts(100, 40, 0.0) == [0, 40, 60]  # the last tile is aligned to the end
    assert tile_starts(64, 64, 0.5) == [0]
    with pytest.raises(ValueError, match="larger"):
        tile_starts(30, 40, 0.25)
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(100, 40, 1.0)


def test_merge_of_split_is_the_identity() -> None:
    tiler = Tiler((50, 70), (20, 30), overlap=0.4)
    images = torch.rand(3, 1, 50, 70)
    tiles = tiler.split(images)
    assert tiles.shape == (3 * tiler.num_tiles, 1, 20, 30)
    torch.testing.assert_close(tiler.merge(tiles), images)
    assert torch.equal(tiles[tiler.num_tiles], images[1, :, :20, :30])  # tiles of one image are consecutive


def test_tiled_map_is_the_per_tile_map_where_tiles_do_not_overlap() -> None:
    torch.manual_seed(0)
    tiled = _model(image_size=(64, 96), tile_size=(32, 48), tile_overlap=0.0)
    plain = _model()
    plain.load_state_dict(tiled.state_dict())  # tiling adds no weights
    tiled.eval(), plain.eval()
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        maps, scores = tiled.predict(images)
        corner, corner_scores = plain.predict(images[:, :, 32:, 48:])
    assert maps.shape == (2, 1, 64, 96)
    torch.testing.assert_close(maps[:, :, 32:, 48:], corner)
    assert torch.all(scores >= corner_scores)


def test_tiled_run_trains_calibrates_tests_and_exports(tiny_data, tmp_path, caplog) -> None:
    from conftest import TRAIN_ARGS
    from stfpm.cli.test import main as test_main
    from stfpm.cli.train import main as train_main
    from stfpm.inference.export import export
    from stfpm.model.checkpoint import load_checkpoint

    args = [*TRAIN_ARGS, "--epochs", "1", "--tile-size", "32", "--tile-overlap", "0.5", "--map-fusion", "sum"]
    assert train_main(["--category", "tiny", "--data-root", str(tiny_data), "--output-dir", str(tmp_path), *args]) == 0
    checkpoint = tmp_path / "tiny" / "version_0" / "checkpoints" / "best.ckpt"
    assert "only 2 validation images" in caplog.text  # the 0.99 quantile of 2 scores cannot keep its promise
    model = load_checkpoint(checkpoint)
    assert model.settings.input.tile_size == 32 and model.model.tiler.num_tiles == 9
    assert all(torch.isfinite(torch.tensor(model.thresholds)))
    out = tmp_path / "eval"
    assert test_main(["--checkpoint", str(checkpoint), "--output-dir", str(out), "--num-workers", "0",
                      "--accelerator", "cpu"]) == 0
    assert 0 <= json.loads((out / "results.json").read_text())["pixel_auroc"] <= 1
    path = export(model, tmp_path / "tiled.pt2")
    program = torch.export.load(str(path)).module()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected, _ = model.model.predict((images - torch.tensor(model.settings.input.mean).view(1, 3, 1, 1))
                                          / torch.tensor(model.settings.input.std).view(1, 3, 1, 1))
        maps, _ = program(images)
    torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-6)


def test_tiles_larger_than_the_input_are_a_one_line_error(tiny_data, tmp_path, capsys) -> None:
    from conftest import TRAIN_ARGS
    from stfpm.cli import run
    from stfpm.cli.train import main as train_main

    code = run(train_main, ["--category", "tiny", "--data-root", str(tiny_data), "--output-dir", str(tmp_path),
                            *TRAIN_ARGS, "--tile-size", "96"])
    assert code == 2 and "larger than the input" in capsys.readouterr().err
