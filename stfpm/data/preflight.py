"""Data pre-flight: every file of a category checked once, before training or testing starts.

Images are checked without decoding their pixels (fast): the header (format, size) and PIL's ``verify``
(for PNG, every chunk's checksum, which catches truncated files); masks are decoded, since their values
matter. A file damaged in a way only full decoding reveals (e.g. a cut-off JPEG) still stops with one line
naming it when it is loaded. Every problem is collected into one :class:`PreflightReport`: unreadable or unsupported
images, masks without an image, defective images without a mask, masks whose size differs from their image's
or whose values are not 0/one level. By default what cannot be used is left out (one warning with the counts,
the full list saved beside the run); ``strict`` turns any problem into a one-line error instead.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from stfpm.core.errors import DataError, one_line
from stfpm.core.files import atomic_write_text
from stfpm.data.io import READ_ERRORS, image_header
from stfpm.data.mvtec import TestSample

log = logging.getLogger(__name__)

_SHOWN = 3


@dataclass
class PreflightReport:
    """What the scan found; each list holds ``(path, reason)`` pairs."""

    stage: str
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # left out
    masks_without_image: list[tuple[str, str]] = field(default_factory=list)  # ignored
    images_without_mask: list[tuple[str, str]] = field(default_factory=list)  # image metrics only
    odd_masks: list[tuple[str, str]] = field(default_factory=list)  # used, resized / binarised
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def problems(self) -> int:
        return sum(len(v) for v in (self.unreadable, self.masks_without_image, self.images_without_mask, self.odd_masks))

    def summary(self) -> str:
        parts = [f"{k} {v}" for k, v in self.counts.items()]
        found = [
            (len(self.unreadable), "unreadable images left out"),
            (len(self.masks_without_image), "masks without an image ignored"),
            (len(self.images_without_mask), "defective images without a mask (left out of pixel metrics)"),
            (len(self.odd_masks), "odd masks (size or values; resized / any nonzero = defect)"),
        ]
        issues = [f"{n} {what}" for n, what in found if n]
        return f"data pre-flight ({self.stage}): {', '.join(parts)}" + (f"; {'; '.join(issues)}" if issues else "; no problem")

    def examples(self) -> str:
        listed = self.unreadable + self.masks_without_image + self.images_without_mask + self.odd_masks
        shown = "; ".join(f"{p}: {r}" for p, r in listed[:_SHOWN])
        return shown + (f"; and {len(listed) - _SHOWN} more" if len(listed) > _SHOWN else "")

    def save(self, path: Path) -> None:
        data = {k: getattr(self, k) for k in ("stage", "counts", "unreadable", "masks_without_image",
                                              "images_without_mask", "odd_masks")}
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")

    def enforce(self, strict: bool, saved: Path | None) -> None:
        """Log the summary; with ``strict``, any problem is a one-line error."""
        where = f" (full list: {saved})" if saved else ""
        if strict and self.problems:
            raise DataError(f"{self.summary()}{where}; e.g. {self.examples()} (--strict; drop it to skip them)")
        if self.problems:
            log.warning("%s%s; e.g. %s", self.summary(), where, self.examples())
        else:
            log.info("%s", self.summary())


def check_train(images: Sequence[Path]) -> tuple[list[Path], PreflightReport]:
    """The readable training images, and the report."""
    report = PreflightReport("train")
    usable = []
    for path in images:
        size, error = image_header(path, verify=True)
        if error:
            report.unreadable.append((str(path), error))
        else:
            usable.append(path)
    report.counts = {"train/good images": len(images), "usable": len(usable)}
    if not usable:
        raise DataError(f"no readable training image among {len(images)}: e.g. {report.examples()}")
    return usable, report


def _mask_problem(mask_path: Path, image_dims: tuple[int, int]) -> str | None:
    """What is odd about a mask (size, values), decoded once; ``unreadable mask: ...`` when it cannot be read."""
    try:
        with Image.open(mask_path) as img:
            img.load()
            mask_size = img.size
            raw = np.asarray(img.convert("RGB") if img.mode == "P" else img)  # as load_mask reads it
    except READ_ERRORS as exc:
        return f"unreadable mask: {one_line(exc)}"
    color = raw[..., :3] if raw.ndim == 3 else raw  # an alpha channel is not part of the mask
    problems = []
    if mask_size != image_dims:
        problems.append(f"mask is {mask_size[0]}x{mask_size[1]}, image {image_dims[0]}x{image_dims[1]}")
    distinct = len(np.unique(color))
    if distinct > 2:
        problems.append(f"{distinct} distinct values, not 2 (anti-aliased or coloured?)")
    elif not color.any():
        problems.append("empty mask (no defect pixel)")
    return "; ".join(problems) or None


def check_test(samples: Sequence[TestSample], orphan_masks: Sequence[Path]) -> tuple[list[TestSample], PreflightReport]:
    """The usable test samples (unreadable images left out; an unreadable mask makes its image mask-less)."""
    report = PreflightReport("test")
    usable: list[TestSample] = []
    for sample in samples:
        size, error = image_header(sample.image_path, verify=True)
        if error or size is None:
            report.unreadable.append((str(sample.image_path), error or "unreadable"))
            continue
        if sample.label and sample.mask_path is None:
            report.images_without_mask.append((str(sample.image_path), "no mask in ground_truth"))
        elif sample.mask_path is not None:
            problem = _mask_problem(sample.mask_path, size)
            if problem and problem.startswith("unreadable"):
                report.images_without_mask.append((str(sample.image_path), f"{sample.mask_path}: {problem}"))
                sample = TestSample(sample.image_path, sample.defect_type, sample.label, None)
            elif problem:
                report.odd_masks.append((str(sample.mask_path), problem))
        usable.append(sample)
    report.masks_without_image = [(str(m), "no test image of that name") for m in orphan_masks]
    good = sum(1 for s in usable if not s.label)
    report.counts = {"test images": len(samples), "usable": len(usable), "good": good, "defective": len(usable) - good}
    if not usable:
        raise DataError(f"no readable test image among {len(samples)}: e.g. {report.examples()}")
    return usable, report
