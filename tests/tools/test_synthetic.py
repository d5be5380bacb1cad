"""Tests of the synthetic MVTec-style category generator (stfpm.tools.synthetic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stfpm.core.errors import DataError
from stfpm.tools.synthetic import (
    DEFECT_TYPES,
    MARKER_NAME,
    main,
    make_synthetic_category,
    render_sample,
)

SMALL = dict(image_size=64, n_train=4, n_test_good=3, n_test_per_defect=2)


def _files(category_dir: Path) -> dict[str, bytes]:
    return {
        p.relative_to(category_dir).as_posix(): p.read_bytes()
        for p in sorted(category_dir.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory) -> Path:
    return make_synthetic_category(tmp_path_factory.mktemp("small"), "widget", **SMALL)


def test_layout_counts_modes_and_masks(small_tree: Path):
    assert small_tree.name == "widget" and small_tree.is_dir()
    assert sorted(p.name for p in small_tree.iterdir()) == sorted([MARKER_NAME, "ground_truth", "test", "train"])
    assert sorted(p.name for p in (small_tree / "train").iterdir()) == ["good"]
    assert sorted(p.name for p in (small_tree / "test").iterdir()) == sorted(["good", *DEFECT_TYPES])
    assert sorted(p.name for p in (small_tree / "ground_truth").iterdir()) == sorted(DEFECT_TYPES)

    assert [p.name for p in sorted((small_tree / "train/good").iterdir())] == ["000.png", "001.png", "002.png", "003.png"]
    assert [p.name for p in sorted((small_tree / "test/good").iterdir())] == ["000.png", "001.png", "002.png"]
    # No masks for good images, anywhere.
    assert not (small_tree / "ground_truth" / "good").exists()

    size = SMALL["image_size"]
    for image_path in sorted((small_tree / "train").rglob("*.png")) + sorted((small_tree / "test").rglob("*.png")):
        with Image.open(image_path) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (size, size), image_path

    for defect in DEFECT_TYPES:
        images = sorted((small_tree / "test" / defect).iterdir())
        masks = sorted((small_tree / "ground_truth" / defect).iterdir())
        assert [p.name for p in images] == ["000.png", "001.png"]
        assert [p.name for p in masks] == ["000_mask.png", "001_mask.png"]
        for mask_path in masks:
            with Image.open(mask_path) as im:
                assert im.format == "PNG" and im.mode == "L" and im.size == (size, size), mask_path
                mask = np.asarray(im)
            assert set(np.unique(mask).tolist()) == {0, 255}, mask_path  # binary and nonzero area
            assert 0.01 <= (mask > 0).mean() <= 0.15, mask_path


def test_deterministic_bytes(tmp_path: Path, small_tree: Path):
    a = make_synthetic_category(tmp_path / "a", "widget", **SMALL)
    b = make_synthetic_category(tmp_path / "b", "widget", **SMALL)
    files_a, files_b = _files(a), _files(b)
    assert files_a == files_b
    assert files_a == _files(small_tree)
    assert len(files_a) == 1 + 4 + 3 + 2 * 2 * len(DEFECT_TYPES)
    # The seed matters.
    c = make_synthetic_category(tmp_path / "c", "widget", **SMALL, seed=1)
    assert _files(c)["train/good/000.png"] != files_a["train/good/000.png"]


def test_images_do_not_depend_on_counts_or_defect_subset(tmp_path: Path, small_tree: Path):
    sub = make_synthetic_category(
        tmp_path, "widget", image_size=64, n_train=2, n_test_good=1, n_test_per_defect=1, defect_types=["missing", "hole"]
    )
    assert sorted(p.name for p in (sub / "test").iterdir()) == ["good", "hole", "missing"]
    full, part = _files(small_tree), _files(sub)
    for rel in ("train/good/001.png", "test/good/000.png", "test/hole/000.png", "ground_truth/missing/000_mask.png"):
        assert part[rel] == full[rel], rel


def test_existing_identical_tree_is_not_rewritten(tmp_path: Path):
    first = make_synthetic_category(tmp_path, "widget", **SMALL)
    before = {p: p.stat().st_mtime_ns for p in first.rglob("*")}
    second = make_synthetic_category(tmp_path, "widget", **SMALL)
    assert second == first
    assert {p: p.stat().st_mtime_ns for p in first.rglob("*")} == before
    # Nothing else was left next to the category (no temporary folders).
    assert [p.name for p in tmp_path.iterdir()] == ["widget"]


def test_incomplete_tree_with_same_parameters_is_repaired(tmp_path: Path):
    category_dir = make_synthetic_category(tmp_path, "widget", **SMALL)
    before = _files(category_dir)
    (category_dir / "test/hole/001.png").unlink()
    assert make_synthetic_category(tmp_path, "widget", **SMALL) == category_dir
    assert _files(category_dir) == before


def test_different_parameters_raise_without_overwrite(tmp_path: Path):
    category_dir = make_synthetic_category(tmp_path, "widget", **SMALL)
    before = _files(category_dir)
    with pytest.raises(FileExistsError, match="overwrite"):
        make_synthetic_category(tmp_path, "widget", **SMALL, seed=3)
    with pytest.raises(DataError):  # also a project error, so the CLIs print it as one line
        make_synthetic_category(tmp_path, "widget", **{**SMALL, "n_train": 5})
    assert _files(category_dir) == before


def test_overwrite_replaces_only_the_generated_tree(tmp_path: Path):
    category_dir = make_synthetic_category(tmp_path, "widget", **SMALL)
    (category_dir / "notes.txt").write_text("keep me")
    (tmp_path / "sibling.txt").write_text("keep me too")
    new = make_synthetic_category(tmp_path, "widget", **{**SMALL, "n_train": 2}, seed=5, overwrite=True)
    assert new == category_dir
    assert sorted(p.name for p in (new / "train/good").iterdir()) == ["000.png", "001.png"]
    assert (category_dir / "notes.txt").read_text() == "keep me"
    assert (tmp_path / "sibling.txt").read_text() == "keep me too"
    reference = make_synthetic_category(tmp_path / "ref", "widget", **{**SMALL, "n_train": 2}, seed=5)
    generated = {k: v for k, v in _files(new).items() if k != "notes.txt"}
    assert generated == _files(reference)


def test_foreign_folder_raises_and_empty_folder_is_filled(tmp_path: Path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.txt").write_text("not ours")
    with pytest.raises(FileExistsError):
        make_synthetic_category(tmp_path, "foreign", **SMALL)
    assert [p.name for p in foreign.iterdir()] == ["data.txt"]

    (tmp_path / "empty").mkdir()
    out = make_synthetic_category(tmp_path, "empty", **SMALL)
    assert (out / MARKER_NAME).is_file() and (out / "train/good/000.png").is_file()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"defect_types": ["scratch", "crack"]},
        {"defect_types": ["hole", "hole"]},
        {"image_size": 8},
        {"n_train": 0},
        {"n_test_per_defect": -1},
    ],
)
def test_invalid_arguments(tmp_path: Path, kwargs):
    with pytest.raises(ValueError):
        make_synthetic_category(tmp_path, "widget", **kwargs)
    assert not (tmp_path / "widget").exists()


@pytest.mark.parametrize("category", ["", "..", "a/b", "../escape"])
def test_invalid_category_name(tmp_path: Path, category: str):
    with pytest.raises(ValueError):
        make_synthetic_category(tmp_path / "root", category, **SMALL)


@pytest.mark.parametrize("defect", DEFECT_TYPES)
def test_mask_is_exactly_the_changed_pixels(defect: str):
    for i in range(4):
        key = [0, 7, i]
        clean, no_mask = render_sample(96, None, key)
        image, mask = render_sample(96, defect, key)
        assert no_mask is None and mask is not None and mask.dtype == bool and mask.shape == (96, 96)
        changed = np.any(image != clean, axis=-1)
        assert not np.any(changed & ~mask), "pixels changed outside the mask"
        assert changed[mask].mean() > 0.9, "mask covers pixels the defect did not change"
        assert 0.012 <= mask.mean() <= 0.12


def test_defects_are_detectable_by_a_trivial_statistic(tmp_path: Path):
    # Default parameters: also checks that the demo category is generated quickly enough for a test.
    category_dir = make_synthetic_category(tmp_path, "demo")

    def load(path: Path) -> np.ndarray:
        with Image.open(path) as im:
            return np.asarray(im, dtype=np.float64) / 255.0

    mean_normal = np.mean([load(p) for p in sorted((category_dir / "train/good").iterdir())], axis=0)
    good_scores = [np.abs(load(p) - mean_normal).mean() for p in sorted((category_dir / "test/good").iterdir())]
    for defect in DEFECT_TYPES:
        inside, outside = [], []
        for image_path in sorted((category_dir / "test" / defect).iterdir()):
            with Image.open(category_dir / "ground_truth" / defect / f"{image_path.stem}_mask.png") as im:
                mask = np.asarray(im) > 0
            diff = np.abs(load(image_path) - mean_normal).mean(axis=-1)
            inside.append(diff[mask].mean())
            outside.append(diff[~mask].mean())
        assert np.mean(inside) > 1.5 * np.mean(outside), defect
        # Outside the defect, a defective image looks like a normal one.
        assert np.mean(outside) < 1.3 * np.mean(good_scores), defect


def test_command_line(tmp_path: Path, capsys):
    argv = ["--root", str(tmp_path), "--category", "cli", "--image-size", "48", "--n-train", "2",
            "--n-test-good", "1", "--n-test-per-defect", "1", "--defect-types", "stain", "missing"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli")
    assert sorted(p.name for p in (tmp_path / "cli" / "ground_truth").iterdir()) == ["missing", "stain"]
    assert main(argv) == 0  # identical tree: fine
    assert main(argv + ["--seed", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert main(argv + ["--seed", "4", "--overwrite"]) == 0
