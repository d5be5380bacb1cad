"""Deterministic generator of a small synthetic anomaly-detection category in MVTec AD layout.

The "product" is a woven fabric (plain weave of beige warp and weft threads) seen from above under a slightly
uneven light. Every normal image shows the same weave with a random phase, a slight random rotation and
thread pitch, mild per-thread colour variation, a smooth illumination gradient and light sensor noise, so
that all normal images share the same statistics while no two are identical.

Four defect types are rendered as clearly visible local structures, each covering roughly 1.5-10 % of the
image at a random position:

``scratch``
    a thin bright or dark curved line (a few pixels wide) across part of the image;
``hole``
    a dark, slightly irregular filled ellipse (the dark background seen through the fabric);
``stain``
    a soft-edged, irregular blob that tints the fabric (brown, red, blue or green) while keeping its weave;
``missing``
    a rotated rectangle or polygon where the weave is absent and the backing shows as a flat, darker
    version of the fabric's average colour.

The ground-truth mask of a defective image is exactly the set of pixels the defect changed (before the
sensor noise, which every image gets everywhere): pixels outside the mask are identical to those of the same
image rendered without the defect (see :func:`render_sample`). For ``stain`` the mask is where the stain's
opacity exceeds 0.5; the opacity is cut to 0 below that, so the soft edge lies inside the mask.

Layout written by :func:`make_synthetic_category`::

    <root>/<category>/train/good/000.png ...
    <root>/<category>/test/good/000.png ...
    <root>/<category>/test/<defect>/000.png ...
    <root>/<category>/ground_truth/<defect>/000_mask.png ...
    <root>/<category>/.synthetic.json          (parameters; written last, marks a complete tree)

Images are RGB PNGs, masks single-channel ('L') PNGs holding only 0 and 255. Output is byte-for-byte
deterministic given the arguments: every image is drawn from its own generator seeded with
``(seed, split, defect, index)``, so an image does not depend on how many others are generated.

Command line::

    python -m stfpm.tools.synthetic --root ./data/demo_data --category demo
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from stfpm.core.errors import DataError, SyntheticDataExistsError

__all__ = [
    "DEFECT_TYPES",
    "MARKER_NAME",
    "SyntheticDataExistsError",
    "make_synthetic_category",
    "render_sample",
    "main",
]

DEFECT_TYPES = ("scratch", "hole", "stain", "missing")
MARKER_NAME = ".synthetic.json"

# Bumped whenever the rendering changes, so that an old tree is not mistaken for a current one.
_GENERATOR_VERSION = 1
_MIN_IMAGE_SIZE = 32

# Split codes used in the per-image seeds; defect codes are 2 + index in DEFECT_TYPES (a fixed global order,
# so an image does not depend on the order or subset of ``defect_types``).
_SPLIT_TRAIN = 0
_SPLIT_TEST_GOOD = 1

# Stream ids inside one image's seed: the defect-free texture and the defect use independent generators,
# so rendering the same key without a defect gives the defect-free counterpart of a defective image.
_STREAM_TEXTURE = 0
_STREAM_DEFECT = 1
_STREAM_NOISE = 2


# --------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------

_WARP_COLOUR = np.array([0.66, 0.60, 0.49])  # vertical threads
_WEFT_COLOUR = np.array([0.58, 0.53, 0.44])  # horizontal threads
_STAIN_TINTS = np.array(
    [
        [0.72, 0.50, 0.30],  # coffee / rust brown
        [0.95, 0.42, 0.38],  # red
        [0.42, 0.55, 0.95],  # blue ink
        [0.55, 0.85, 0.42],  # green
    ]
)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(x, y)`` in pixels, each of shape (size, size)."""
    c = np.arange(size, dtype=np.float64) + 0.5
    return np.meshgrid(c, c, indexing="xy")


def _texture(size: int, rng: np.random.Generator) -> np.ndarray:
    """A defect-free plain-weave fabric image, float RGB in [0, 1] of shape (size, size, 3), without noise."""
    x, y = _grid(size)
    pitch = size / 16.0 * rng.uniform(0.97, 1.03)  # width of one thread in pixels
    angle = np.deg2rad(rng.uniform(-3.0, 3.0))
    ca, sa = np.cos(angle), np.sin(angle)
    cx = cy = size / 2.0
    u = (ca * (x - cx) + sa * (y - cy)) / pitch + rng.uniform(0.0, 2.0)  # across the warp threads
    v = (-sa * (x - cx) + ca * (y - cy)) / pitch + rng.uniform(0.0, 2.0)  # across the weft threads

    # Which thread lies on top alternates like a checkerboard; a steep but smooth switch avoids aliasing.
    checker = np.sin(np.pi * u) * np.sin(np.pi * v)
    warp_on_top = np.clip(0.5 + 2.5 * checker, 0.0, 1.0)[..., None]

    # Thread cross-section: bright in the middle of a thread, dark in the gap between two threads.
    warp_profile = np.abs(np.sin(np.pi * u)) ** 0.6
    weft_profile = np.abs(np.sin(np.pi * v)) ** 0.6
    # Fine twist of the fibres along each thread.
    warp_profile = warp_profile * (0.92 + 0.08 * np.sin(2.0 * np.pi * (3.0 * v + 1.5 * u)))
    weft_profile = weft_profile * (0.92 + 0.08 * np.sin(2.0 * np.pi * (3.0 * u + 1.5 * v)))

    # Mild colour variation: per image, and per individual thread.
    n_threads = int(np.ceil(np.sqrt(2.0) * size / pitch)) + 8
    warp_gain = 1.0 + 0.035 * rng.standard_normal(n_threads)
    weft_gain = 1.0 + 0.035 * rng.standard_normal(n_threads)
    iu = np.floor(u).astype(np.int64) % n_threads
    iv = np.floor(v).astype(np.int64) % n_threads
    shift = 0.008 * rng.standard_normal(3)
    warp = (_WARP_COLOUR + shift) * (warp_gain[iu] * (0.45 + 0.55 * warp_profile))[..., None]
    weft = (_WEFT_COLOUR + shift) * (weft_gain[iv] * (0.45 + 0.55 * weft_profile))[..., None]
    img = warp_on_top * warp + (1.0 - warp_on_top) * weft

    # Smooth, low-frequency illumination change.
    xn, yn = x / size - 0.5, y / size - 0.5
    gx, gy = rng.uniform(-0.12, 0.12, size=2)
    bx, by = rng.uniform(-0.3, 0.3, size=2)
    bump = rng.uniform(-0.06, 0.08) * np.exp(-((xn - bx) ** 2 + (yn - by) ** 2) / 0.18)
    light = 1.0 + gx * xn + gy * yn + bump
    return img * light[..., None]


def _blob(size: int, rng: np.random.Generator, area_frac: float, roughness: float) -> np.ndarray:
    """Normalised radius field of an irregular ellipse of about ``area_frac`` of the image (<= 1 inside)."""
    x, y = _grid(size)
    aspect = rng.uniform(0.55, 1.0)
    ab = area_frac * size * size / np.pi
    a = np.sqrt(ab / aspect)
    b = a * aspect
    reach = a * (1.0 + 3 * roughness)
    lo, hi = min(reach, 0.45 * size), max(size - reach, 0.55 * size)
    cx, cy = rng.uniform(lo, hi, size=2)
    theta = rng.uniform(0.0, np.pi)
    ct, st = np.cos(theta), np.sin(theta)
    dx, dy = x - cx, y - cy
    xr, yr = ct * dx + st * dy, -st * dx + ct * dy
    phi = np.arctan2(yr / b, xr / a)
    boundary = np.ones_like(phi)
    for k in (2, 3, 5):
        boundary += roughness * rng.uniform(0.3, 1.0) * np.cos(k * phi + rng.uniform(0.0, 2.0 * np.pi))
    return np.sqrt((xr / a) ** 2 + (yr / b) ** 2) / boundary


def _polyline_distance(size: int, points: np.ndarray) -> np.ndarray:
    """Distance (pixels) from every pixel centre to a polyline given as an (n, 2) array of (x, y)."""
    x, y = _grid(size)
    dist = np.full((size, size), np.inf)
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        ex, ey = x1 - x0, y1 - y0
        t = np.clip(((x - x0) * ex + (y - y0) * ey) / max(ex * ex + ey * ey, 1e-12), 0.0, 1.0)
        dist = np.minimum(dist, np.hypot(x - x0 - t * ex, y - y0 - t * ey))
    return dist


def _scratch(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    width = size * rng.uniform(0.03, 0.045)
    length = size * rng.uniform(0.55, 0.9)
    for _ in range(100):  # endpoints inside the image, away from the border
        p0 = rng.uniform(0.05 * size, 0.95 * size, size=2)
        ang = rng.uniform(0.0, 2.0 * np.pi)
        p2 = p0 + length * np.array([np.cos(ang), np.sin(ang)])
        if np.all((p2 > 0.05 * size) & (p2 < 0.95 * size)):
            break
    else:  # pragma: no cover - practically unreachable
        p0, p2 = np.array([0.2, 0.3]) * size, np.array([0.8, 0.7]) * size
    normal = np.array([-(p2 - p0)[1], (p2 - p0)[0]]) / length
    p1 = (p0 + p2) / 2.0 + normal * length * rng.uniform(-0.25, 0.25)
    t = np.linspace(0.0, 1.0, 33)[:, None]
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # quadratic Bezier
    dist = _polyline_distance(size, curve)
    mask = dist <= width / 2.0
    if rng.random() < 0.5:
        colour = np.array([0.95, 0.94, 0.90]) * rng.uniform(0.95, 1.0)  # bright: torn, exposed fibres
    else:
        colour = np.array([0.12, 0.11, 0.10]) * rng.uniform(0.8, 1.2)  # dark: cut / burn line
    # Stronger in the middle of the line, never below 0.7 so the whole mask is visibly changed.
    alpha = (0.7 + 0.3 * (1.0 - dist / (width / 2.0)).clip(0.0, 1.0)) * mask
    out = img * (1.0 - alpha[..., None]) + colour * alpha[..., None]
    return out, mask


def _hole(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    rho = _blob(size, rng, rng.uniform(0.03, 0.08), roughness=0.07)
    mask = rho <= 1.0
    # Dark background seen through the hole, slightly lighter towards the frayed rim.
    depth = np.clip(rho, 0.0, 1.0)[..., None]
    colour = np.array([0.07, 0.06, 0.06]) * rng.uniform(0.8, 1.2) + 0.10 * depth**4
    out = np.where(mask[..., None], colour, img)
    return out, mask


def _stain(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    rho = _blob(size, rng, rng.uniform(0.04, 0.10), roughness=0.12)
    soft = rng.uniform(0.3, 0.5)
    alpha = np.clip((1.0 - rho) / soft + 0.5, 0.0, 1.0)  # 0.5 at rho == 1, full opacity further in
    mask = alpha > 0.5
    alpha = np.where(mask, alpha, 0.0)[..., None]
    tint = _STAIN_TINTS[rng.integers(len(_STAIN_TINTS))] * rng.uniform(0.8, 0.95)
    out = img * (1.0 - alpha) + img * tint * alpha
    return out, mask


def _missing(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[0]
    x, y = _grid(size)
    area = rng.uniform(0.03, 0.09) * size * size
    n_vertices = int(rng.choice([4, 4, 5, 6]))
    # Convex polygon: vertices on an ellipse at sorted random angles (a rotated rectangle when regular).
    if n_vertices == 4 and rng.random() < 0.5:
        angles = np.array([0.25, 0.75, 1.25, 1.75]) * np.pi
    else:
        angles = np.sort(
            (np.arange(n_vertices) + rng.uniform(-0.3, 0.3, n_vertices)) * 2.0 * np.pi / n_vertices
        )
    aspect = rng.uniform(0.5, 1.0)
    # Area of the polygon inscribed in the unit circle, used to hit the target area.
    unit_area = 0.5 * np.sum(np.sin(np.diff(np.append(angles, angles[0] + 2.0 * np.pi))))
    r = np.sqrt(area / (unit_area * aspect))
    theta = rng.uniform(0.0, np.pi)
    lo, hi = min(r, 0.45 * size), max(size - r, 0.55 * size)
    cx, cy = rng.uniform(lo, hi, size=2)
    px, py = r * np.cos(angles), r * aspect * np.sin(angles)
    vx = cx + np.cos(theta) * px - np.sin(theta) * py
    vy = cy + np.sin(theta) * px + np.cos(theta) * py
    mask = np.ones((size, size), dtype=bool)
    for i in range(n_vertices):  # counter-clockwise vertices: inside is left of every edge
        j = (i + 1) % n_vertices
        mask &= (vx[j] - vx[i]) * (y - vy[i]) - (vy[j] - vy[i]) * (x - vx[i]) >= 0.0
    # The backing shows through: a flat, darker version of the fabric's average colour.
    colour = img.reshape(-1, 3).mean(axis=0) * rng.uniform(0.5, 0.6) * np.array([1.0, 0.98, 1.05])
    out = np.where(mask[..., None], colour, img)
    return out, mask


_DEFECT_RENDERERS = {"scratch": _scratch, "hole": _hole, "stain": _stain, "missing": _missing}


def render_sample(
    image_size: int, defect: str | None = None, key: Sequence[int] = (0,)
) -> tuple[np.ndarray, np.ndarray | None]:
    """Render one image in memory.

    Returns ``(image, mask)``: ``image`` is uint8 RGB of shape (image_size, image_size, 3); ``mask`` is None for
    a defect-free image, else a bool array of shape (image_size, image_size) marking exactly the pixels the
    defect changed. ``key`` is a sequence of non-negative ints that seeds the image; the same key with
    ``defect=None`` renders the defect-free counterpart (identical outside the mask).
    """
    if defect is not None and defect not in _DEFECT_RENDERERS:
        raise ValueError(f"unknown defect type {defect!r}; expected one of {', '.join(DEFECT_TYPES)}")
    key = [int(k) for k in key]
    img = _texture(image_size, np.random.default_rng(key + [_STREAM_TEXTURE]))
    mask = None
    if defect is not None:
        rng = np.random.default_rng(key + [_STREAM_DEFECT])
        min_area = 0.012 * image_size * image_size
        for _ in range(50):  # redraw the (rare) defect that mostly fell off the image
            out, mask = _DEFECT_RENDERERS[defect](img, rng)
            if mask.sum() >= min_area:
                break
        img = out
    noise = np.random.default_rng(key + [_STREAM_NOISE]).standard_normal(img.shape)
    img = img + 0.015 * noise
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8), mask


# --------------------------------------------------------------------------------------------------------
# Writing the MVTec tree
# --------------------------------------------------------------------------------------------------------


def _index_names(count: int) -> list[str]:
    width = max(3, len(str(max(count - 1, 0))))
    return [f"{i:0{width}d}" for i in range(count)]


def _expected_files(params: dict) -> list[str]:
    """Relative paths (POSIX) of every file of a complete tree, marker excluded."""
    files = [f"train/good/{n}.png" for n in _index_names(params["n_train"])]
    files += [f"test/good/{n}.png" for n in _index_names(params["n_test_good"])]
    for defect in params["defect_types"]:
        for n in _index_names(params["n_test_per_defect"]):
            files += [f"test/{defect}/{n}.png", f"ground_truth/{defect}/{n}_mask.png"]
    return files


def _read_marker(category_dir: Path) -> dict | None:
    try:
        return json.loads((category_dir / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_complete(category_dir: Path, params: dict) -> bool:
    if _read_marker(category_dir) != params:
        return False
    return all((category_dir / rel).is_file() for rel in _expected_files(params))


def _save_png(array: np.ndarray, path: Path) -> None:
    mode = "L" if array.ndim == 2 else "RGB"
    # Fixed options and no metadata: identical arrays give identical bytes.
    Image.fromarray(array, mode=mode).save(path, format="PNG", compress_level=6)


def _write_tree(target: Path, params: dict) -> None:
    size, seed = params["image_size"], params["seed"]
    jobs: list[tuple[str, str | None, list[int]]] = []
    for i, name in enumerate(_index_names(params["n_train"])):
        jobs.append((f"train/good/{name}.png", None, [seed, _SPLIT_TRAIN, 0, i]))
    for i, name in enumerate(_index_names(params["n_test_good"])):
        jobs.append((f"test/good/{name}.png", None, [seed, _SPLIT_TEST_GOOD, 0, i]))
    for defect in params["defect_types"]:
        code = 2 + DEFECT_TYPES.index(defect)
        for i, name in enumerate(_index_names(params["n_test_per_defect"])):
            jobs.append((f"test/{defect}/{name}.png", defect, [seed, code, 0, i]))

    for rel, defect, key in jobs:
        image, mask = render_sample(size, defect, key)
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        _save_png(image, path)
        if mask is not None and defect is not None:
            mask_path = target / "ground_truth" / defect / (Path(rel).stem + "_mask.png")
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            _save_png(np.where(mask, 255, 0).astype(np.uint8), mask_path)
    # Marker last: its presence means the tree is complete.
    (target / MARKER_NAME).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n", encoding="utf-8")


_OWNED = ("train", "test", "ground_truth", MARKER_NAME)  # what this generator writes in a category folder


def _remove_owned(category_dir: Path) -> None:
    """Remove what this generator writes inside ``category_dir`` (marker first); leave anything else."""
    for name in reversed(_OWNED):
        path = category_dir / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)


def _check_args(
    category: str,
    image_size: int,
    n_train: int,
    n_test_good: int,
    n_test_per_defect: int,
    defect_types: Sequence[str],
    seed: int,
) -> tuple[str, ...]:
    if not isinstance(category, str) or not category or category in (".", "..") or any(
        sep in category for sep in ("/", "\\", os.sep)
    ):
        raise ValueError(f"category must be a plain folder name, got {category!r}")
    for name, value, minimum in (
        ("image_size", image_size, _MIN_IMAGE_SIZE),
        ("n_train", n_train, 1),
        ("n_test_good", n_test_good, 0),
        ("n_test_per_defect", n_test_per_defect, 0),
        ("seed", seed, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if isinstance(defect_types, str):
        defect_types = (defect_types,)
    defect_types = tuple(defect_types)
    unknown = [d for d in defect_types if d not in DEFECT_TYPES]
    if unknown:
        raise ValueError(f"unknown defect type(s) {unknown}; expected a subset of {list(DEFECT_TYPES)}")
    if len(set(defect_types)) != len(defect_types):
        raise ValueError(f"duplicate defect types in {list(defect_types)}")
    return defect_types


def _marker_params(
    category: str,
    image_size: int,
    n_train: int,
    n_test_good: int,
    n_test_per_defect: int,
    defect_types: tuple[str, ...],
    seed: int,
) -> dict:
    """The parameters recorded in the marker; a tree is reused only when its marker holds exactly these."""
    return {
        "generator": "stfpm.data.synthetic",  # the format's name in every marker ever written: kept as is
        "version": _GENERATOR_VERSION,
        "category": category,
        "image_size": int(image_size),
        "n_train": int(n_train),
        "n_test_good": int(n_test_good),
        "n_test_per_defect": int(n_test_per_defect),
        "defect_types": list(defect_types),
        "seed": int(seed),
    }


def _existing_is_complete(category_dir: Path, params: dict, overwrite: bool) -> bool:
    """Whether ``category_dir`` already holds the complete tree for ``params``.

    Raises :class:`SyntheticDataExistsError` when it holds something else that may not be replaced.
    """
    if not (category_dir.exists() or category_dir.is_symlink()):
        return False
    if not category_dir.is_dir():
        raise SyntheticDataExistsError(f"{category_dir} exists and is not a folder")
    if _is_complete(category_dir, params):
        return True
    old = _read_marker(category_dir)
    # A tree of ours with the same parameters but missing files is repaired: the output is deterministic.
    if any(category_dir.iterdir()) and not overwrite and old != params:
        what = (
            "a synthetic category written with different parameters"
            if isinstance(old, dict) and old.get("generator") == params["generator"]
            else "other data"
        )
        raise SyntheticDataExistsError(
            f"{category_dir} already exists and holds {what}; choose another root or category, "
            "or pass overwrite=True (--overwrite) to regenerate it"
        )
    return False


def _install_tree(tmp: Path, category_dir: Path, params: dict, overwrite: bool) -> None:
    """Move the finished tree ``tmp`` to ``category_dir``: as a whole when it is absent, else entry by entry.

    A complete tree that a concurrent run installed first is kept; what this generator owns in an existing
    folder is replaced (marker moved last), anything else in it is left alone.
    """
    if not category_dir.exists():
        try:
            os.replace(tmp, category_dir)  # atomic; on POSIX also replaces an empty folder
            return
        except OSError:
            if _is_complete(category_dir, params):  # a concurrent run finished first
                return
            if category_dir.is_dir() and any(category_dir.iterdir()) and not overwrite:
                raise SyntheticDataExistsError(
                    f"{category_dir} was created by someone else while generating; pass overwrite=True "
                    "to regenerate it"
                ) from None
    category_dir.mkdir(parents=True, exist_ok=True)
    if _is_complete(category_dir, params):
        return
    _remove_owned(category_dir)
    for name in _OWNED:  # marker moved last
        if (tmp / name).exists():
            os.replace(tmp / name, category_dir / name)


def make_synthetic_category(
    root: str | Path,
    category: str = "demo",
    *,
    image_size: int = 128,
    n_train: int = 30,
    n_test_good: int = 10,
    n_test_per_defect: int = 5,
    defect_types: Sequence[str] = DEFECT_TYPES,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic category in MVTec AD layout under ``root/category`` and return that folder.

    If the folder already holds a complete tree written with the same parameters it is returned untouched.
    If it holds anything else, :class:`SyntheticDataExistsError` (a :class:`FileExistsError`) is raised
    unless ``overwrite`` is true, in which case the ``train``, ``test`` and ``ground_truth`` folders and the
    marker are replaced (other files in the category folder, and anything outside it, are left alone).
    An existing empty folder, or a tree of ours with the same parameters but missing files, is (re)filled.
    """
    defect_types = _check_args(category, image_size, n_train, n_test_good, n_test_per_defect, defect_types, seed)
    params = _marker_params(category, image_size, n_train, n_test_good, n_test_per_defect, defect_types, seed)
    root = Path(root)
    category_dir = root / category
    if _existing_is_complete(category_dir, params, overwrite):
        return category_dir

    # Render into a private folder next to the target, then move it into place, so that an interrupted run
    # never leaves a half-written tree that looks complete and concurrent runs do not mix their files.
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{category}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()  # honours the umask, unlike tempfile.mkdtemp (0700)
    try:
        _write_tree(tmp, params)
        _install_tree(tmp, category_dir, params, overwrite)
        return category_dir
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stfpm.tools.synthetic",
        description="Generate a small synthetic anomaly-detection category (woven fabric) in MVTec AD layout.",
    )
    parser.add_argument("--root", required=True, type=Path, help="folder that will contain the category")
    parser.add_argument("--category", default="demo", help="category folder name (default: demo)")
    parser.add_argument("--image-size", type=int, default=128, help="image side in pixels (default: 128)")
    parser.add_argument("--n-train", type=int, default=30, help="normal training images (default: 30)")
    parser.add_argument("--n-test-good", type=int, default=10, help="normal test images (default: 10)")
    parser.add_argument("--n-test-per-defect", type=int, default=5, help="test images per defect (default: 5)")
    parser.add_argument(
        "--defect-types",
        nargs="+",
        default=list(DEFECT_TYPES),
        choices=DEFECT_TYPES,
        metavar="DEFECT",
        help=f"defect types to generate (default: all of {' '.join(DEFECT_TYPES)})",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="regenerate if the category folder differs")
    args = parser.parse_args(argv)
    try:
        path = make_synthetic_category(
            args.root,
            args.category,
            image_size=args.image_size,
            n_train=args.n_train,
            n_test_good=args.n_test_good,
            n_test_per_defect=args.n_test_per_defect,
            defect_types=args.defect_types,
            seed=args.seed,
            overwrite=args.overwrite,
        )
    except (ValueError, OSError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())


def write_photos(folder: Path, n: int, width: int, height: int, seed: int = 0) -> list[Path]:
    """``n`` smooth random JPEG photos of ``width`` x ``height`` (they compress like real ones, unlike white
    noise), for speed benchmarks; returns their paths."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    paths = []
    for i in range(n):
        small = rng.integers(0, 256, (max(1, height // 16), max(1, width // 16), 3), dtype=np.uint8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths
