"""Tests for stfpm.data: image/mask I/O, MVTec-style indexing, splitting, datasets and the data module."""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import stfpm.data.datamodule as datamodule_module
from stfpm.core.errors import ConfigError, DataError, ImageReadError
from stfpm.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MVTEC_CATEGORIES,
    DataSettings,
    ImageFolderDataset,
    ImageTransform,
    MVTecDataModule,
    TestDataset,
    collate_readable,
    list_categories,
    list_images,
    load_image,
    load_mask,
    resize_mask,
    resolve_category_dir,
    scan_category,
    scan_test,
    split_train_val,
)

S = 16  # image size used throughout: tiny, so the whole file runs in a few seconds


def _transform() -> ImageTransform:
    return ImageTransform(S, IMAGENET_MEAN, IMAGENET_STD)


def _datamodule(root: Path, category: str, seed: int = 0, **data: object) -> MVTecDataModule:
    settings = DataSettings(category=category, data_root=str(root), num_workers=0, **data)  # type: ignore[arg-type]
    return MVTecDataModule(settings, _transform(), seed)


# ------------------------------------------------------------------------------------------ helpers


def _rgb(w: int = 20, h: int = 16, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _save(img: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def _mask(w: int, h: int, box: tuple[int, int, int, int] = (2, 2, 6, 6)) -> Image.Image:
    arr = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = 255
    return Image.fromarray(arr)


def _make_category(cat: Path, with_test: bool = True) -> None:
    """A small category with the real-world quirks: mixed modes, sizes, extensions, odd mask naming."""
    good = cat / "train" / "good"
    _save(_rgb(20, 16, 0), good / "000.png")
    _save(_rgb(18, 14, 1).convert("L"), good / "001.png")  # grey
    _save(_rgb(20, 16, 2).convert("RGBA"), good / "002.png")  # alpha
    _save(Image.fromarray(np.full((16, 20), 40000, np.uint16)), good / "003.png")  # 16-bit
    _save(_rgb(24, 20, 4), good / "004.jpg")
    _save(_rgb(20, 16, 5), good / "005.PNG")  # upper-case extension
    _save(_rgb(20, 16, 6), good / "006.bmp")
    _save(_rgb(20, 16, 7), good / ".hidden.png")  # skipped
    (good / "notes.txt").write_text("not an image")
    if not with_test:
        return
    test, gt = cat / "test", cat / "ground_truth"
    _save(_rgb(20, 16, 10), test / "good" / "000.png")
    _save(_rgb(20, 16, 11), test / "good" / "001.png")
    _save(_rgb(20, 16, 12), test / "broken" / "000.png")
    _save(_mask(20, 16), gt / "broken" / "000_mask.png")  # MVTec naming
    _save(_rgb(20, 16, 13), test / "broken" / "001.png")
    _save(_mask(20, 16), gt / "broken" / "001.png")  # same name as the image
    _save(_rgb(20, 16, 14), test / "broken" / "002.png")  # no mask at all
    _save(_rgb(20, 16, 15), test / "broken" / "003.png")
    _save(_mask(10, 8, (1, 1, 4, 4)), gt / "broken" / "003_mask.png")  # size differs from image
    _save(_mask(20, 16), gt / "broken" / "099_mask.png")  # mask without an image


@pytest.fixture()
def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    _make_category(root / "bottle")
    _make_category(root / "carpet", with_test=False)
    (root / "notacat" / "stuff").mkdir(parents=True)  # no train/good: not listed as a category
    return root


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


# ------------------------------------------------------------------------------------------ io


def test_list_images_sorted_filtered(data_root: Path) -> None:
    good = data_root / "bottle" / "train" / "good"
    names = [p.name for p in list_images(good)]
    assert names == ["000.png", "001.png", "002.png", "003.png", "004.jpg", "005.PNG", "006.bmp"]
    assert list_images(good / "004.jpg") == [good / "004.jpg"]
    assert list_images(data_root / "bottle" / "test", recursive=False) == []
    assert len(list_images(data_root / "bottle" / "test")) == 6
    with pytest.raises(DataError):
        list_images(data_root / "missing")


def test_load_image_modes(tmp_path: Path) -> None:
    gray = load_image(_save(Image.fromarray(np.full((4, 5), 77, np.uint8)), tmp_path / "g.png"))
    assert gray.mode == "RGB" and gray.size == (5, 4) and gray.getpixel((0, 0)) == (77, 77, 77)

    pal = Image.fromarray(np.full((4, 5, 3), (10, 20, 30), np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert load_image(_save(pal, tmp_path / "p.png")).getpixel((1, 1)) == (10, 20, 30)

    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[:, :2, 3] = 255  # opaque left part, fully transparent right part
    out = load_image(_save(Image.fromarray(rgba), tmp_path / "a.png"))
    assert out.getpixel((0, 0)) == (200, 100, 50) and out.getpixel((4, 0)) == (0, 0, 0)

    la = Image.fromarray(np.stack([np.full((4, 5), 90, np.uint8), np.full((4, 5), 255, np.uint8)], -1))
    assert load_image(_save(la, tmp_path / "la.png")).getpixel((0, 0)) == (90, 90, 90)

    cmyk = Image.new("CMYK", (5, 4), (0, 0, 0, 0))  # no ink = white
    assert load_image(_save(cmyk, tmp_path / "c.jpg")).getpixel((2, 2))[0] > 245

    fl = Image.fromarray(np.full((4, 5), 0.5, np.float32))
    assert load_image(_save(fl, tmp_path / "f.tiff")).getpixel((0, 0)) == (128, 128, 128)


def test_load_image_16bit_full_range_scaling(tmp_path: Path) -> None:
    arr = np.array([[0, 65535, 32896, 257]], dtype=np.uint16)
    path = _save(Image.fromarray(arr), tmp_path / "deep.png")
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
    out = np.asarray(load_image(path))
    assert out.dtype == np.uint8
    assert out[0, :, 0].tolist() == [0, 255, 128, 1]  # /257, not per-image min-max


def test_load_image_errors(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    before = corrupt.read_bytes()
    with pytest.raises(ImageReadError) as exc:
        load_image(corrupt)
    msg = str(exc.value)
    assert msg.startswith(f"cannot read image {corrupt}:") and "\n" not in msg
    assert corrupt.read_bytes() == before  # never modified

    full = _save(_rgb(64, 64, 3), tmp_path / "full.png").read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(full[: len(full) // 2])
    with pytest.raises(ImageReadError, match="truncated.png"):
        load_image(truncated)
    with pytest.raises(ImageReadError):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match="cannot read mask"):
        load_mask(corrupt)


def test_load_mask_binary(tmp_path: Path) -> None:
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[1, 1, 2] = 255  # defect only in the blue channel
    rgb[2, 3] = (1, 0, 0)  # any nonzero counts
    mask = load_mask(_save(Image.fromarray(rgb), tmp_path / "m.png"))
    assert mask.dtype == bool and mask.shape == (4, 5)
    assert mask.sum() == 2 and mask[1, 1] and mask[2, 3]
    deep = load_mask(_save(Image.fromarray(np.array([[0, 1000]], np.uint16)), tmp_path / "m16.png"))
    assert deep.tolist() == [[False, True]]


def test_image_transform(tmp_path: Path) -> None:
    transform = _transform()
    out = transform(Image.new("RGB", (30, 10), (255, 255, 255)))
    assert out.shape == (3, S, S) and out.dtype == torch.float32
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(out[:, 0, 0], expected, atol=1e-5)
    assert transform(np.zeros((7, 9), np.uint8)).shape == (3, S, S)
    from_array = transform(np.asarray(_rgb(20, 16, 3)))
    assert torch.allclose(from_array, transform(_rgb(20, 16, 3)))
    assert transform(Image.new("L", (5, 5))).shape == (3, S, S)
    with pytest.raises(DataError):
        transform(np.zeros((4, 4), np.float32))
    with pytest.raises(DataError):
        ImageTransform(0, IMAGENET_MEAN, IMAGENET_STD)


@pytest.mark.parametrize("size", [5, 16, 37])
def test_resize_mask_stays_binary(size: int) -> None:
    mask = np.random.default_rng(size).random((13, 21)) > 0.7
    out = resize_mask(mask, size)
    assert out.shape == (1, size, size) and out.dtype == torch.bool
    as_uint8 = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST))
    assert set(np.unique(as_uint8).tolist()) <= {0, 255}
    assert torch.equal(out[0], torch.from_numpy(as_uint8 > 0))


# ------------------------------------------------------------------------------------------ locating


def test_categories_and_resolution(data_root: Path) -> None:
    assert len(MVTEC_CATEGORIES) == 15 and "metal_nut" in MVTEC_CATEGORIES
    assert list_categories(data_root) == ["bottle", "carpet"]
    assert resolve_category_dir(data_root, "bottle") == data_root / "bottle"
    assert resolve_category_dir(data_root / "bottle", None) == data_root / "bottle"
    assert resolve_category_dir(data_root / "bottle", "bottle") == data_root / "bottle"


def test_unknown_category_lists_found(data_root: Path) -> None:
    with pytest.raises(DataError) as exc:
        resolve_category_dir(data_root, "foo")
    assert str(exc.value) == f"unknown category 'foo' in {data_root}: found bottle, carpet"
    with pytest.raises(DataError, match="found bottle, carpet"):
        resolve_category_dir(data_root, None)


def test_missing_root_and_missing_train_good(data_root: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as exc:
        resolve_category_dir(missing, "bottle")
    msg = str(exc.value)
    assert "does not exist" in msg and "scripts/download_mvtec.py --data-root" in msg and "\n" not in msg
    with pytest.raises(DataError, match="has no train/good"):
        resolve_category_dir(data_root, "notacat")


# ------------------------------------------------------------------------------------------ indexing


def test_scan_category(data_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    cat = data_root / "bottle"
    index = scan_category(cat)
    assert index.root == cat
    assert index.train == list_images(cat / "train" / "good") and len(index.train) == 7
    by_name = {f"{s.defect_type}/{s.image_path.name}": s for s in index.test}
    assert sorted(by_name) == [f"broken/00{i}.png" for i in range(4)] + ["good/000.png", "good/001.png"]
    assert all(s.label == 0 and s.mask_path is None for s in index.test if s.defect_type == "good")
    assert all(s.label == 1 for s in index.test if s.defect_type == "broken")
    gt = cat / "ground_truth" / "broken"
    assert by_name["broken/000.png"].mask_path == gt / "000_mask.png"
    assert by_name["broken/001.png"].mask_path == gt / "001.png"
    assert by_name["broken/002.png"].mask_path is None
    assert by_name["broken/003.png"].mask_path == gt / "003_mask.png"

    unmasked = _warnings(caplog, "have no mask")
    assert len(unmasked) == 1 and unmasked[0].getMessage().startswith("1 defective test images have no mask")
    assert "broken/002.png" in unmasked[0].getMessage()
    orphans = _warnings(caplog, "no test image")
    assert len(orphans) == 1 and orphans[0].getMessage().startswith("1 masks in ground_truth")
    assert "099_mask.png" in orphans[0].getMessage()


def test_scan_without_test_folder(data_root: Path) -> None:
    index = scan_category(data_root / "carpet")
    assert len(index.train) == 7 and index.test == []
    with pytest.raises(DataError, match="has no test/ folder"):
        scan_category(data_root / "carpet", require_test=True)
    (data_root / "carpet" / "test").mkdir()
    with pytest.raises(DataError, match="no test images"):
        scan_test(data_root / "carpet", require_test=True)


def test_empty_train_good(tmp_path: Path) -> None:
    (tmp_path / "cat" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match="no training images"):
        scan_category(tmp_path / "cat")


# ------------------------------------------------------------------------------------------ splitting


def test_split_deterministic_disjoint_complete() -> None:
    paths = [Path(f"img_{i:02d}.png") for i in range(10)]
    train, val = split_train_val(paths, 0.2, seed=3)
    assert len(val) == 2 and len(train) == 8
    assert set(train).isdisjoint(val) and sorted(train + val) == paths
    random.seed(123)
    torch.manual_seed(123)
    np.random.seed(123)
    assert split_train_val(list(reversed(paths)), 0.2, seed=3) == (train, val)  # order and global RNG ignored
    other_seeds = {tuple(split_train_val(paths, 0.2, seed=s)[1]) for s in range(10)}
    assert len(other_seeds) > 1


@pytest.mark.parametrize(
    ("n", "fraction", "n_val"), [(2, 0.1, 1), (1, 0.5, 0), (0, 0.2, 0), (10, 0.0, 0), (3, 0.9, 2), (7, 0.5, 4)]
)
def test_split_sizes(n: int, fraction: float, n_val: int) -> None:
    train, val = split_train_val([Path(f"{i}.png") for i in range(n)], fraction)
    assert len(val) == n_val and len(train) == n - n_val


@pytest.mark.parametrize("fraction", [1.0, -0.1, float("nan"), "x"])
def test_split_rejects_bad_fraction(fraction: object) -> None:
    with pytest.raises(DataError, match="val_fraction"):
        split_train_val([Path("a.png"), Path("b.png")], fraction)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ datasets


def test_image_folder_dataset_collates(data_root: Path) -> None:
    paths = list_images(data_root / "bottle" / "train" / "good")
    batch = next(iter(DataLoader(ImageFolderDataset(paths, _transform()), batch_size=4)))
    assert batch["image"].shape == (4, 3, S, S) and batch["path"] == [str(p) for p in paths[:4]]


def test_read_error_stays_one_line_from_worker(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"definitely not a png")
    loader = DataLoader(ImageFolderDataset([bad], _transform()), batch_size=1, num_workers=1)
    with pytest.raises(ImageReadError) as exc:
        next(iter(loader))
    assert str(exc.value).startswith(f"cannot read image {bad}:") and "\n" not in str(exc.value)


def test_test_dataset_items(data_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    samples = scan_test(data_root / "bottle")
    caplog.clear()
    dataset = TestDataset(samples, _transform(), warn_mask_sizes=True)
    size_warnings = _warnings(caplog, "resized")
    assert len(size_warnings) == 1
    assert size_warnings[0].getMessage() == (
        f"mask {data_root / 'bottle' / 'ground_truth' / 'broken' / '003_mask.png'} is 10x8 but image is 20x16; resized"
    )
    items = {f"{it['defect_type']}/{Path(it['path']).name}": it for it in (dataset[i] for i in range(len(dataset)))}
    assert len(_warnings(caplog, "resized")) == 1  # loading items does not repeat it
    for item in items.values():
        assert item["image"].shape == (3, S, S) and item["mask"].shape == (1, S, S)
        assert item["mask"].dtype == torch.bool
    assert items["good/000.png"]["has_mask"] and not items["good/000.png"]["mask"].any()
    assert items["good/000.png"]["label"] == 0
    assert items["broken/000.png"]["has_mask"] and items["broken/000.png"]["mask"].any()
    assert not items["broken/002.png"]["has_mask"] and not items["broken/002.png"]["mask"].any()
    assert items["broken/003.png"]["mask"].any() and items["broken/003.png"]["label"] == 1

    batch = next(iter(DataLoader(dataset, batch_size=len(dataset))))
    assert batch["image"].shape == (6, 3, S, S) and batch["mask"].shape == (6, 1, S, S)
    assert batch["has_mask"].dtype == torch.bool and batch["label"].tolist() == [1, 1, 1, 1, 0, 0]
    assert batch["defect_type"] == ["broken"] * 4 + ["good"] * 2


# ------------------------------------------------------------------------------------------ data module


def test_datamodule_fit_never_reads_test(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the test split was scanned during fit")

    monkeypatch.setattr(datamodule_module, "scan_test", forbidden)
    shutil.rmtree(data_root / "bottle" / "test")  # and it would not even be there to read
    dm = _datamodule(data_root, "bottle", seed=1, batch_size=3, val_fraction=0.3)
    dm.setup("fit")
    train_good = list_images(data_root / "bottle" / "train" / "good")
    assert dm.train_paths is not None and dm.val_paths is not None
    assert sorted(dm.train_paths + dm.val_paths) == train_good and len(dm.val_paths) == 2
    assert all("test" not in p.parts for p in dm.train_paths + dm.val_paths)
    batches = list(dm.train_dataloader())
    assert [b["image"].shape[0] for b in batches] == [3, 2]  # drop_last=False
    assert batches[0]["image"].shape[1:] == (3, S, S)
    val_batch = next(iter(dm.val_dataloader()))
    assert val_batch["image"].shape == (2, 3, S, S)
    assert dm.category == "bottle" and dm.transform.size == (S, S)


def test_datamodule_train_order_seeded(data_root: Path) -> None:
    def epoch_order(seed: int, epoch: int) -> list[str]:
        dm = _datamodule(data_root, "bottle", seed=seed, batch_size=2)
        dm.setup("fit")
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)  # what Lightning does before every epoch
        return [p for b in loader for p in b["path"]]

    assert epoch_order(5, 0) == epoch_order(5, 0)  # reproducible, also for a fresh process (resume)
    assert epoch_order(5, 3) == epoch_order(5, 3)
    orders = {tuple(epoch_order(5, e)) for e in range(4)}
    assert len(orders) == 4  # a new order every epoch


def test_datamodule_no_validation(data_root: Path) -> None:
    dm = _datamodule(data_root, "carpet", batch_size=4, val_fraction=0.0)
    dm.setup("fit")
    assert dm.val_paths == [] and len(dm.train_paths or []) == 7
    assert dm.val_dataloader() == []


def test_datamodule_test_stage(data_root: Path) -> None:
    dm = _datamodule(data_root, "bottle", batch_size=4)
    dm.setup("test")
    batches = list(dm.test_dataloader())
    assert [b["image"].shape for b in batches] == [(4, 3, S, S), (2, 3, S, S)]
    assert batches[0]["mask"].shape == (4, 1, S, S)
    assert dm.train_paths is None  # test stage does not split train/good
    assert len(dm.index.test) == 6 and len(dm.index.train) == 7


def test_datamodule_errors(data_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown category 'foo'"):
        _ = _datamodule(data_root, "foo").category_dir
    with pytest.raises(DataError, match="does not exist"):
        _datamodule(tmp_path / "nowhere", "bottle").setup("fit")
    with pytest.raises(DataError, match="has no test/ folder"):
        _datamodule(data_root, "carpet").setup("test")
    with pytest.raises(ConfigError, match="--val-fraction"):
        _datamodule(data_root, "bottle", val_fraction=1.0)
    with pytest.raises(ConfigError, match="--batch-size"):
        _datamodule(data_root, "bottle", batch_size=0)


def test_image_folder_dataset_skips_unreadable_files_and_keeps_sources(data_root: Path, tmp_path: Path) -> None:
    """predict.py's use of the one image-folder dataset: an unreadable file is a record, not an exception."""
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"definitely not a png")
    good = list_images(data_root / "bottle" / "train" / "good")[:2]
    dataset = ImageFolderDataset([good[0], bad, good[1]], _transform(), keep_source=True, skip_unreadable=True)
    batch = next(iter(DataLoader(dataset, batch_size=3, collate_fn=collate_readable)))
    assert batch["image"].shape == (2, 3, S, S) and batch["index"] == [0, 2]
    assert [s.shape for s in batch["source"]] == [np.asarray(load_image(p)).shape for p in good]
    assert len(batch["errors"]) == 1 and batch["errors"][0][0] == 1 and str(bad) in batch["errors"][0][1]
    assert collate_readable([dataset[1]])["image"] is None
