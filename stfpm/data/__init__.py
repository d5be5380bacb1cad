"""Data loading for STFPM: image/mask I/O, MVTec-AD-style folder indexing, the pre-flight and the Lightning data
module.

``MVTecDataModule`` is imported lazily, so inference code that only needs :mod:`stfpm.data.io` does not
pay for importing ``pytorch_lightning``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stfpm.data.io import (
    IMAGE_EXTENSIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageTransform,
    image_header,
    is_image_file,
    list_images,
    load_image,
    load_mask,
    resize_mask,
    save_image,
    to_rgb,
)
from stfpm.data.mvtec import (
    MVTEC_CATEGORIES,
    CategoryIndex,
    ImageFolderDataset,
    TestDataset,
    TestSample,
    collate_readable,
    list_categories,
    resolve_category_dir,
    scan_category,
    scan_test,
    scan_train,
    split_train_val,
)
from stfpm.data.settings import DEFAULT_DATA_ROOT, DataSettings

if TYPE_CHECKING:
    from stfpm.data.datamodule import MVTecDataModule


def __getattr__(name: str) -> Any:
    if name == "MVTecDataModule":
        from stfpm.data.datamodule import MVTecDataModule

        return MVTecDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_DATA_ROOT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "MVTEC_CATEGORIES",
    "CategoryIndex",
    "DataSettings",
    "ImageFolderDataset",
    "ImageTransform",
    "MVTecDataModule",
    "TestDataset",
    "TestSample",
    "collate_readable",
    "image_header",
    "is_image_file",
    "list_categories",
    "list_images",
    "load_image",
    "load_mask",
    "resize_mask",
    "resolve_category_dir",
    "save_image",
    "scan_category",
    "scan_test",
    "scan_train",
    "split_train_val",
    "to_rgb",
]
