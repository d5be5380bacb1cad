"""MVTec-AD-style folder layout: finding categories, indexing images and masks, splitting, datasets.

Expected layout (any category name works, so users can drop in their own data the same way)::

    <data_root>/<category>/train/good/*.png
    <data_root>/<category>/test/<defect_type or good>/*.png
    <data_root>/<category>/ground_truth/<defect_type>/<stem>_mask.png   (or <stem>.<ext>)

Training only ever needs ``train/good``; the test split is indexed separately (:func:`scan_test`) so a
training run can never read, or leak, test images.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

import numpy as np

from stfpm.data.io import IMAGE_EXTENSIONS, ImageTransform, image_header, list_images, load_image, load_mask, resize_mask
from stfpm.data.categories import MVTEC_CATEGORIES
from stfpm.core.errors import DataError, ImageReadError

logger = logging.getLogger(__name__)


GOOD = "good"
_MAX_EXAMPLES = 5


# --------------------------------------------------------------------------------------------- locating


def _missing_root_message(root: Path) -> str:
    return (
        f"data root {root} does not exist; get MVTec AD with: "
        f"python scripts/download_mvtec.py --data-root {root}"
    )


def _is_category_dir(path: Path) -> bool:
    return (path / "train" / GOOD).is_dir()


def list_categories(data_root: str | Path) -> list[str]:
    """Sorted names of the subfolders of ``data_root`` that contain ``train/good``."""
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise DataError(_missing_root_message(root))
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and _is_category_dir(p))


def _found_text(root: Path) -> str:
    found = list_categories(root)
    return f"found {', '.join(found)}" if found else "found no category folders (with train/good)"


def resolve_category_dir(data_root: str | Path, category: str | None) -> Path:
    """``<data_root>/<category>``, or ``data_root`` itself when it already is a category folder.

    Fails early with a one-line :class:`DataError` that tells the user what exists, since a typo in a
    category name is the most common first-run mistake.
    """
    root = Path(data_root).expanduser()
    if not root.exists():
        raise DataError(_missing_root_message(root))
    if not root.is_dir():
        raise DataError(f"data root {root} is not a folder")
    if category is None:
        if (root / "train").is_dir():
            return _require_train_good(root)
        raise DataError(
            f"no category given and {root} is not a category folder (no train/ inside); {_found_text(root)}"
        )
    candidate = root / category
    if candidate.is_dir():
        return _require_train_good(candidate)
    if root.name == category and (root / "train").is_dir():  # --data-root data/bottle --category bottle
        return _require_train_good(root)
    raise DataError(f"unknown category {category!r} in {root}: {_found_text(root)}")


def _require_train_good(category_dir: Path) -> Path:
    if not (category_dir / "train" / GOOD).is_dir():
        raise DataError(f"{category_dir} has no train/good folder (expected <category>/train/good/*.png)")
    return category_dir


# --------------------------------------------------------------------------------------------- indexing


@dataclass(frozen=True)
class TestSample:
    """One test image with its ground truth; ``mask_path`` is None for good images and missing masks."""

    __test__ = False  # not a pytest test class despite the name

    image_path: Path
    defect_type: str
    label: int
    mask_path: Path | None = None


@dataclass
class CategoryIndex:
    """Everything found in one category folder."""

    root: Path
    train: list[Path] = field(default_factory=list)
    test: list[TestSample] = field(default_factory=list)


def scan_train(category_dir: str | Path) -> list[Path]:
    """Sorted images of ``train/good``; raises when there are none, as nothing could be trained."""
    good_dir = Path(category_dir) / "train" / GOOD
    if not good_dir.is_dir():
        raise DataError(f"{category_dir} has no train/good folder (expected <category>/train/good/*.png)")
    images = list_images(good_dir)
    if not images:
        raise DataError(f"no training images in {good_dir} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return images


def _examples(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_EXAMPLES])
    return shown + (", ..." if len(names) > _MAX_EXAMPLES else "")


def _key(path: Path, base: Path) -> str:
    """Path relative to its defect folder without suffix: the part an image and its mask share."""
    return path.relative_to(base).with_suffix("").as_posix()


def _index_masks(gt_dir: Path) -> dict[str, dict[str, Path]]:
    """``{defect_type: {relative stem: mask path}}`` for every mask under ``ground_truth/``."""
    if not gt_dir.is_dir():
        return {}
    masks: dict[str, dict[str, Path]] = {}
    for defect_dir in sorted(p for p in gt_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        masks[defect_dir.name] = {_key(m, defect_dir): m for m in list_images(defect_dir)}
    return masks


def _match_mask(stem: str, masks: dict[str, Path]) -> str | None:
    """MVTec's ``<stem>_mask`` wins over a same-named mask, so either naming convention works."""
    for candidate in (f"{stem}_mask", stem):
        if candidate in masks:
            return candidate
    return None


def _scan_defect_dir(
    defect_dir: Path, masks: dict[str, Path], used: set[Path]
) -> tuple[list[TestSample], list[str]]:
    """Samples of one ``test/<defect>`` folder, plus the names of defective images lacking a mask."""
    defect, label = defect_dir.name, int(defect_dir.name != GOOD)
    samples: list[TestSample] = []
    unmasked: list[str] = []
    for image in list_images(defect_dir):
        mask_path = None
        if label:
            key = _match_mask(_key(image, defect_dir), masks)
            if key is None:
                unmasked.append(f"{defect}/{image.relative_to(defect_dir).as_posix()}")
            else:
                mask_path = masks[key]
                used.add(mask_path)
        samples.append(TestSample(image_path=image, defect_type=defect, label=label, mask_path=mask_path))
    return samples, unmasked


def _orphan_masks(masks: dict[str, dict[str, Path]], used: set[Path]) -> list[Path]:
    """Masks in ground_truth that no test image claimed."""
    return [mask for by_key in masks.values() for mask in by_key.values() if mask not in used]


def scan_test_split(category_dir: str | Path, require_test: bool = False) -> tuple[list[TestSample], list[Path]]:
    """Index ``test/<defect>/*`` and match masks from ``ground_truth/<defect>/``; also return the masks that
    match no test image. Every subfolder of ``test/`` is a defect type (``good`` -> label 0). Without ``test/``
    the result is empty, or a :class:`DataError` when ``require_test`` (evaluation needs test images)."""
    category_dir = Path(category_dir)
    test_dir = category_dir / "test"
    if not test_dir.is_dir():
        if require_test:
            raise DataError(f"{category_dir} has no test/ folder")
        return [], []
    defect_dirs = sorted(p for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = list_images(test_dir, recursive=False)
    if loose:
        logger.warning(
            "%d images directly in %s are ignored (put them in test/good or test/<defect>): %s",
            len(loose), test_dir, _examples([p.name for p in loose]),
        )
    masks = _index_masks(category_dir / "ground_truth")
    samples: list[TestSample] = []
    used: set[Path] = set()
    for defect_dir in defect_dirs:
        found, _ = _scan_defect_dir(defect_dir, masks.get(defect_dir.name, {}), used)
        samples.extend(found)
    if require_test and not samples:
        raise DataError(f"no test images in {test_dir} (expected test/good/*.png and test/<defect>/*.png)")
    return samples, _orphan_masks(masks, used)


def scan_test(category_dir: str | Path, require_test: bool = False) -> list[TestSample]:
    """:func:`scan_test_split` with one warning per kind of mismatch (defective images without a mask, masks
    without an image), however many files are involved."""
    samples, orphans = scan_test_split(category_dir, require_test)
    gt_dir = Path(category_dir) / "ground_truth"
    unmasked = [f"{s.defect_type}/{s.image_path.name}" for s in samples if s.label and s.mask_path is None]
    if unmasked:
        logger.warning(
            "%d defective test images have no mask (pixel metrics skip them): %s", len(unmasked), _examples(unmasked)
        )
    if orphans:
        names = [m.relative_to(gt_dir).as_posix() for m in orphans]
        logger.warning("%d masks in ground_truth have no test image; ignored: %s", len(orphans), _examples(names))
    return samples


def scan_category(category_dir: str | Path, require_test: bool = False) -> CategoryIndex:
    """Full index of a category folder: training images and test samples with their masks."""
    category_dir = Path(category_dir)
    return CategoryIndex(root=category_dir, train=scan_train(category_dir), test=scan_test(category_dir, require_test))


# --------------------------------------------------------------------------------------------- splitting


def split_train_val(
    paths: Sequence[Path], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Path], list[Path]]:
    """Seeded, disjoint train/val split of ``paths``; both halves are returned sorted.

    Uses its own ``random.Random(seed)`` on the sorted input, so the split depends only on the file
    names and the seed, never on global RNG state or directory order. Validation gets
    ``round(n * val_fraction)`` images, at least one when ``val_fraction > 0`` and ``n >= 2``, and
    training always keeps at least one.
    """
    try:
        fraction = float(val_fraction)
    except (TypeError, ValueError):
        fraction = math.nan
    if math.isnan(fraction) or not 0 <= fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    ordered = sorted(paths)
    n = len(ordered)
    n_val = 0
    if fraction > 0 and n >= 2:
        n_val = min(max(1, round(n * fraction)), n - 1)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    train = [p for i, p in enumerate(ordered) if i not in val_idx]
    val = [p for i, p in enumerate(ordered) if i in val_idx]
    return train, val


def split_folds(paths: Sequence[Path], count: int, seed: int = 0) -> list[list[Path]]:
    """``paths`` in ``count`` disjoint, seeded folds of (nearly) equal size, each sorted; like
    :func:`split_train_val`, they depend only on the file names and the seed."""
    if count < 2 or len(paths) < count:
        raise DataError(f"cross-fitting in {count} folds needs at least {max(count, 2)} good training images, found "
                        f"{len(paths)} (lower --folds, or --calibration holdout)")
    ordered = sorted(paths)
    order = list(range(len(ordered)))
    random.Random(seed).shuffle(order)
    return [sorted(ordered[i] for i in order[k::count]) for k in range(count)]


# --------------------------------------------------------------------------------------------- datasets


class ImageFolderDataset(Dataset):
    """Image files -> ``{"image": tensor[3, H, W], "path": str, "index": int}``: training, validation and
    predict.py's folders. The index lets validation drop the repeats that a distributed sampler pads with.

    ``keep_source`` adds the decoded image (``"source"``, uint8 HxWx3, for heatmap overlays); with
    ``skip_unreadable`` a file that cannot be read becomes ``{"index": i, "error": message}`` instead of an
    exception (:func:`collate_readable` batches such items).
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        transform: Callable[[Image.Image], torch.Tensor],
        keep_source: bool = False,
        skip_unreadable: bool = False,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.transform = transform
        self.keep_source = keep_source
        self.skip_unreadable = skip_unreadable

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        try:
            image = load_image(path)
        except ImageReadError as exc:
            if not self.skip_unreadable:
                raise
            return {"index": index, "error": str(exc)}
        item = {"image": self.transform(image), "path": str(path), "index": index}
        if self.keep_source:
            item["source"] = np.asarray(image)
        return item


def collate_readable(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch of :class:`ImageFolderDataset` items: the readable images stacked into one tensor (None when
    there are none), their indices and decoded sources, and ``errors`` as (index, message) pairs."""
    good = [i for i in items if "error" not in i]
    return {
        "image": torch.stack([i["image"] for i in good]) if good else None,
        "index": [i["index"] for i in good],
        "source": [i.get("source") for i in good],  # numpy: stays on the CPU
        "errors": [(i["index"], i["error"]) for i in items if "error" in i],
    }


class TestDataset(Dataset):
    """Test samples -> image, boolean mask [1, H, W], label and metadata, for image and pixel metrics.

    ``has_mask`` is True for good images (their all-zero mask is genuine ground truth) and for defective
    images with a mask, False for defective images whose mask is missing, so pixel metrics can skip
    exactly those instead of treating them as defect-free.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        samples: Sequence[TestSample],
        transform: ImageTransform,
        warn_mask_sizes: bool,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.size = transform.size
        if warn_mask_sizes:
            self._warn_mask_sizes()

    def _warn_mask_sizes(self) -> None:
        """Warn once per mismatched mask, up front in the main process (workers would repeat it)."""
        for sample in self.samples:
            if sample.mask_path is None:
                continue
            (image_dims, _), (mask_dims, _) = image_header(sample.image_path), image_header(sample.mask_path)
            if image_dims and mask_dims and image_dims != mask_dims:
                logger.warning(
                    "mask %s is %dx%d but image is %dx%d; resized",
                    sample.mask_path, *mask_dims, *image_dims,
                )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        image = self.transform(load_image(sample.image_path))
        if sample.mask_path is not None:
            mask = resize_mask(load_mask(sample.mask_path), self.size)
        else:
            mask = torch.zeros((1, *self.size), dtype=torch.bool)
        return {
            "image": image,
            "mask": mask,
            "has_mask": sample.label == 0 or sample.mask_path is not None,
            "label": sample.label,
            "defect_type": sample.defect_type,
            "path": str(sample.image_path),
        }


__all__ = [
    "MVTEC_CATEGORIES",
    "CategoryIndex",
    "ImageFolderDataset",
    "TestDataset",
    "collate_readable",
    "TestSample",
    "list_categories",
    "resolve_category_dir",
    "scan_category",
    "scan_test",
    "scan_test_split",
    "scan_train",
    "split_train_val",
]
