"""Lightning data module for one MVTec-AD-style category.

Fitting reads only ``train/good`` (split into train/val); the ``test/`` folder is indexed only for the
``test``/``predict`` stages, so no test image can influence training or model selection.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from stfpm.data.io import ImageTransform
from stfpm.data.mvtec import (
    CategoryIndex,
    ImageFolderDataset,
    TestDataset,
    TestSample,
    resolve_category_dir,
    scan_test,
    scan_test_split,
    scan_train,
    split_train_val,
)
from stfpm.data.preflight import PreflightReport, check_test, check_train
from stfpm.data.settings import DataSettings
from stfpm.data.workers import worker_init
from stfpm.core.errors import DataError

logger = logging.getLogger(__name__)

_FIT_STAGES = ("fit", "validate")
_TEST_STAGES = ("test", "predict")


class EpochRandomSampler(RandomSampler):
    """A shuffle that depends only on (seed, epoch), so a resumed run sees the same order as an unbroken one.

    Lightning calls :meth:`set_epoch` before every epoch (as it does for a ``DistributedSampler``, which it puts
    in place of any ``RandomSampler`` under DDP). A plain shuffled DataLoader instead draws each epoch from one
    generator created at start-up, so after ``--resume`` epoch N would repeat epoch 1's order.
    """

    def __init__(self, data_source: Dataset, seed: int) -> None:
        super().__init__(data_source)  # type: ignore[arg-type]
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(len(self.data_source), generator=generator).tolist())


class MVTecDataModule(pl.LightningDataModule):
    """Train/val loaders from ``train/good`` and a test loader with masks for one category."""

    def __init__(self, settings: DataSettings, transform: ImageTransform, seed: int,
                 split: tuple[list[Path], list[Path]] | None = None) -> None:
        """``split``: the (training, validation) images, instead of the seeded ``val_fraction`` split of
        ``train/good`` (cross-fitting gives each student its folds)."""
        super().__init__()
        self.split = split
        self.settings = settings
        self.data_root = Path(settings.data_root)
        self.category = settings.category
        self.seed = seed
        self.transform = transform
        self._category_dir: Path | None = None
        self._train_images: list[Path] | None = None
        self._test_samples: list[TestSample] | None = None
        self.train_paths: list[Path] | None = None
        self.val_paths: list[Path] | None = None
        self.train_dataset: ImageFolderDataset | None = None
        self.val_dataset: ImageFolderDataset | None = None
        self.test_dataset: TestDataset | None = None
        self._checked_test = False

    # ------------------------------------------------------------------------------------ lazy index

    @property
    def category_dir(self) -> Path:
        """The category folder, resolved (and validated) on first access."""
        if self._category_dir is None:
            self._category_dir = resolve_category_dir(self.data_root, self.category)
        return self._category_dir

    @property
    def index(self) -> CategoryIndex:
        """Full index (train + test); scans on first access. Fitting never uses it, to keep test unread."""
        return CategoryIndex(root=self.category_dir, train=self._get_train_images(), test=self._get_test(False))

    @property
    def test_samples(self) -> list[TestSample]:
        """Test samples, requiring a non-empty test split."""
        return self._get_test(require=True)

    def good_images(self) -> list[Path]:
        """The good training images of ``train/good`` (after :meth:`preflight`, those it found readable)."""
        return list(self._get_train_images())

    def _get_train_images(self) -> list[Path]:
        if self._train_images is None:
            self._train_images = scan_train(self.category_dir)
        return self._train_images

    def _get_test(self, require: bool) -> list[TestSample]:
        """Scan the test split once (so mask warnings appear once); re-check if it is now required."""
        if self._test_samples is None:
            self._test_samples = scan_test(self.category_dir, require_test=require)
        elif require and not self._test_samples:
            scan_test(self.category_dir, require_test=True)  # raises the precise "no test" error
        return self._test_samples

    # ------------------------------------------------------------------------------------ pre-flight

    def preflight(self, stage: str, strict: bool = False, report_path: Path | None = None) -> PreflightReport:
        """Check every file of the stage's split once, before any loader starts, and leave out what cannot be
        used (``strict``: fail instead). ``fit`` looks at ``train/good`` only (the test split stays unread);
        ``test`` at the test images and their masks. ``report_path`` is where the caller saves the full list
        (:meth:`PreflightReport.save`) when there is a problem; the summary names it."""
        if stage in _FIT_STAGES:
            self._train_images, report = check_train(scan_train(self.category_dir))
            if self.settings.val_fraction > 0:
                train, val = split_train_val(self._train_images, self.settings.val_fraction, self.seed)
                report.counts.update({"training": len(train), "validation": len(val)})
        else:
            samples, orphans = scan_test_split(self.category_dir, require_test=True)
            self._test_samples, report = check_test(samples, orphans)
            self._checked_test = True
        report.enforce(strict, report_path)
        return report

    # ------------------------------------------------------------------------------------ setup

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets for ``stage``; ``None`` means fit only (the test split is opt-in)."""
        if stage is None or stage in _FIT_STAGES:
            self._setup_fit()
        elif stage in _TEST_STAGES:
            self._setup_test()
        else:
            raise DataError(f"unknown stage {stage!r}; expected fit, validate, test or predict")

    def _setup_fit(self) -> None:
        if self.train_dataset is not None:
            return
        self.train_paths, self.val_paths = self.split or split_train_val(
            self._get_train_images(), self.settings.val_fraction, self.seed)
        self.train_dataset = ImageFolderDataset(self.train_paths, self.transform)
        self.val_dataset = ImageFolderDataset(self.val_paths, self.transform)
        logger.info(
            "%s: %d training and %d validation images", self.category_dir, len(self.train_paths), len(self.val_paths)
        )

    def _setup_test(self) -> None:
        if self.test_dataset is None:
            self.test_dataset = TestDataset(self.test_samples, self.transform, warn_mask_sizes=not self._checked_test)

    # ------------------------------------------------------------------------------------ loaders

    def _loader(self, dataset: Dataset, shuffle: bool = False) -> DataLoader:
        workers = self.settings.num_workers
        return DataLoader(
            dataset,
            batch_size=self.settings.batch_size,
            sampler=EpochRandomSampler(dataset, self.seed) if shuffle else None,
            drop_last=False,
            num_workers=workers,
            worker_init_fn=worker_init if workers else None,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled by (seed, epoch): reproducible, different every epoch, and the same after ``--resume``."""
        self._setup_fit()
        assert self.train_dataset is not None
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        """Validation loader, or ``[]`` when ``val_fraction == 0`` (Lightning then skips validation)."""
        self._setup_fit()
        assert self.val_dataset is not None
        if len(self.val_dataset) == 0:
            return []
        return self._loader(self.val_dataset)

    def test_dataloader(self) -> DataLoader:
        """Test images in a fixed order, with masks and labels."""
        self._setup_test()
        assert self.test_dataset is not None
        return self._loader(self.test_dataset)

    def predict_dataloader(self) -> DataLoader:
        """Same as the test loader: prediction runs over the test split."""
        return self.test_dataloader()
