"""Reading images and masks from disk and turning them into model tensors.

Real anomaly-detection folders are messy: grey scans, 16-bit microscope PNGs, palette GIF-like PNGs,
RGBA screenshots, CMYK JPEGs, half-written files. Everything here funnels those into one well-defined
form (8-bit RGB for images, boolean HxW for masks) and turns every decoding failure into a one-line
:class:`~stfpm.core.errors.ImageReadError` naming the file, so a single bad file never surfaces as a PIL
traceback.
"""

from __future__ import annotations

import io
import logging
import math
import struct
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from stfpm.core.errors import DataError, OneLineImageReadError, one_line
from stfpm.core.files import atomic_write_bytes

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
"""Lower-case suffixes treated as images; matching is case-insensitive (``.PNG`` counts)."""

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Everything PIL may raise for a missing, unreadable, truncated or malformed file. UnidentifiedImageError
# is an OSError; the others come out of individual decoders on corrupt data.
READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    struct.error,
    Image.DecompressionBombError,
)


def is_image_file(path: Path) -> bool:
    """True when ``path`` has an image suffix (case-insensitive); used to ignore notes, CSVs, etc."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _is_hidden(path: Path, root: Path) -> bool:
    """Whether any component below ``root`` starts with a dot (.DS_Store, ._x.png, .ipynb_checkpoints)."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        parts = (path.name,)
    return any(part.startswith(".") for part in parts)


def list_images(path: Path, recursive: bool = True) -> list[Path]:
    """Sorted image files under ``path`` (or ``[path]`` for a single file), hidden files skipped.

    Sorting makes dataset order, and therefore seeded splits and reports, identical across machines and
    file systems whose directory order differs.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path} does not exist")
    candidates = path.rglob("*") if recursive else path.iterdir()
    found = [p for p in candidates if is_image_file(p) and not _is_hidden(p, path) and p.is_file()]
    return sorted(found)


def _sixteen_bit_to_uint8(values: np.ndarray) -> np.ndarray:
    """Scale by the full 16-bit range (/257) so brightness is comparable across images, unlike min-max."""
    clipped = np.clip(values.astype(np.float64), 0, 65535)
    return np.rint(clipped / 257.0).astype(np.uint8)


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    """'F' images: [0, 1] data is scaled to [0, 255]; anything else is taken as already 8-bit and clipped."""
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    if values.size and values.min() >= 0.0 and values.max() <= 1.0:
        values = values * 255.0
    return np.rint(np.clip(values, 0, 255)).astype(np.uint8)


def _composite_on_black(img: Image.Image) -> Image.Image:
    """Premultiply by alpha: transparent pixels hold arbitrary colours that must not reach the model."""
    rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
    rgb = rgba[..., :3] * (rgba[..., 3:4] / 255.0)
    return Image.fromarray(np.rint(rgb).astype(np.uint8))


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB without the surprises of a bare ``convert('RGB')``.

    PIL's own conversion clips 16-bit data at 255 (turning most of a 16-bit scan white) and simply drops
    alpha; both are handled explicitly here.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I"):  # 'I;16', 'I;16B', 'I;16L', 'I;16N', 'I'
        return Image.fromarray(_sixteen_bit_to_uint8(np.asarray(img))).convert("RGB")
    if mode == "F":
        return Image.fromarray(_float_to_uint8(np.asarray(img))).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
        return _composite_on_black(img)
    return img.convert("RGB")  # 'L', '1', 'P', 'CMYK', 'YCbCr', ...


ORIENTATION = 0x0112  # the EXIF tag
TURNED = (5, 6, 7, 8)  # orientations that swap width and height


def image_header(path: Path, verify: bool = False) -> tuple[tuple[int, int] | None, str | None]:
    """((width, height), None) from the file's header, without decoding its pixels, or (None, reason) for a
    file that is not a readable image; ``verify`` also runs PIL's check of the file's structure (for PNG, every
    chunk's checksum, which catches truncated files)."""
    try:
        with Image.open(path) as img:
            size = img.size
            if verify:
                img.verify()  # must come first after opening, and leaves the image unusable
            else:
                turned = img.getexif().get(ORIENTATION, 1) in TURNED
        if verify:
            with Image.open(path) as img:
                turned = img.getexif().get(ORIENTATION, 1) in TURNED
        if turned:
            size = (size[1], size[0])  # as a viewer shows it, and as load_image returns it
    except READ_ERRORS as exc:
        return None, one_line(exc)
    if size[0] < 1 or size[1] < 1:
        return None, f"empty image {size[0]}x{size[1]}"
    return size, None


def upright(img: Image.Image) -> Image.Image:
    """The image as a viewer shows it: turned and mirrored as its EXIF orientation says (camera and phone photos);
    the image itself when it says nothing or "as stored"."""
    if img.getexif().get(ORIENTATION, 1) == 1:
        return img
    return ImageOps.exif_transpose(img)


class ImageTooLarge(OneLineImageReadError):
    """An image whose pixel count is over the limit (a decompression bomb, or simply too large to score)."""


def _open_decoded(source: Path | io.BytesIO, what: str, max_pixels: int | None = None) -> Image.Image:
    """Open and fully decode a file (or an upload's bytes), so truncated data fails here rather than deep inside a
    DataLoader; the pixels come upright (:func:`upright`). With ``max_pixels``, a larger image is refused from its
    header, before decoding."""
    name = f"{what} {source}" if isinstance(source, Path) else what
    try:
        with warnings.catch_warnings():
            if max_pixels is not None:  # the limit given is the one that applies
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                if max_pixels is not None and img.width * img.height > max_pixels:
                    raise ImageTooLarge(f"{name} of {img.width}x{img.height} pixels is over the limit of "
                                        f"{max_pixels} pixels")
                img.load()
                return upright(img.copy())
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{name} refused as a decompression bomb: {one_line(exc)}") from exc
    except UnidentifiedImageError as exc:
        if isinstance(source, Path):
            raise OneLineImageReadError(f"cannot read {name}: {one_line(exc)}") from exc
        raise OneLineImageReadError(f"{name} is not an image: no image format recognised") from exc
    except READ_ERRORS as exc:
        raise OneLineImageReadError(f"cannot read {name}: {one_line(exc)}") from exc


def load_image(path: str | Path) -> Image.Image:
    """Read an image as 8-bit RGB; any decoding problem becomes an :class:`ImageReadError`.

    The file is only opened for reading, never modified.
    """
    img = _open_decoded(Path(path), "image")
    try:
        return to_rgb(img)
    except READ_ERRORS as exc:
        raise OneLineImageReadError(f"cannot read image {path}: {one_line(exc)}") from exc


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Bytes of an image file (an upload) as 8-bit RGB, upright, as :func:`load_image` reads a file; refused in one
    line when empty, not an image, truncated or of more than ``max_pixels`` pixels (:class:`ImageTooLarge`)."""
    if not data:
        raise OneLineImageReadError("empty upload: no image bytes")
    img = _open_decoded(io.BytesIO(data), "upload", max_pixels)
    try:
        return to_rgb(img)
    except READ_ERRORS as exc:
        raise OneLineImageReadError(f"cannot read upload: {one_line(exc)}") from exc


def load_mask(path: str | Path) -> np.ndarray:
    """Read a ground-truth mask as a boolean HxW array where any nonzero pixel marks a defect.

    Masks come as 0/255 'L', 0/1 palette, RGB exports or 16-bit PNGs; "nonzero in any colour channel"
    is the one rule that is right for all of them. An alpha channel is ignored.
    """
    img = _open_decoded(Path(path), "mask")
    if img.mode == "P":
        img = img.convert("RGB")  # palette index 0 is not necessarily black
    values = np.asarray(img)
    if values.ndim == 3:
        channels = values.shape[2]
        color = values[..., :3] if channels >= 3 else values[..., :1]
        return np.asarray(color.max(axis=2) > 0)
    return np.asarray(values > 0)


def _array_to_pil(array: np.ndarray) -> Image.Image:
    """Wrap a uint8 HxW / HxWx1 / HxWx3 / HxWx4 array as a PIL RGB image (for the inference API)."""
    if array.dtype != np.uint8:
        raise DataError(f"image arrays must be uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return to_rgb(Image.fromarray(np.ascontiguousarray(array)))
    raise DataError(f"image arrays must be HxW or HxWxC with C in (1, 3, 4), got shape {tuple(array.shape)}")


ImageSize = tuple[int, int]
"""(height, width) of the network input."""

SIZE_MULTIPLE = 16
"""Sides derived from an aspect ratio are rounded to this multiple: the deepest default level has stride 16."""


def as_hw(size: int | Sequence[int]) -> ImageSize:
    """``S`` or ``[S]`` -> (S, S); ``[H, W]`` -> (H, W); anything else is a one-line :class:`DataError`."""
    values: list[object] = list(size) if isinstance(size, (list, tuple)) else [size]
    sides = [v for v in values if isinstance(v, int) and not isinstance(v, bool) and v >= 1]
    if not values or len(values) > 2 or len(sides) != len(values):
        raise DataError(f"image size must be one positive integer S (S x S) or two, H W; got {size!r}")
    return (sides[0], sides[-1])


def size_record(size: ImageSize) -> int | list[int]:
    """How a size is written into checkpoints and configs: ``S`` when square, else ``[H, W]``."""
    return size[0] if size[0] == size[1] else [size[0], size[1]]


def aspect_preserving_size(side: int, aspect: float, multiple: int = SIZE_MULTIPLE) -> ImageSize:
    """An (H, W) with about ``side * side`` pixels and H / W close to ``aspect``, sides multiples of ``multiple``.

    Keeps the compute of a square ``side`` input while not squeezing wide or tall parts: a 565x230 photo at
    ``side`` 128 becomes 80x208 instead of 128x128, so thin horizontal structures keep their width.
    """
    if not (aspect > 0 and math.isfinite(aspect)):
        raise DataError(f"aspect ratio must be positive, got {aspect!r}")
    height = side * math.sqrt(aspect)
    width = side / math.sqrt(aspect)
    return (max(multiple, round(height / multiple) * multiple), max(multiple, round(width / multiple) * multiple))


def median_aspect(paths: Sequence[Path]) -> float:
    """Median height / width of the images, read from their headers only; unreadable files are left out."""
    ratios = []
    for path in paths:
        size, _ = image_header(path)
        if size is not None:
            ratios.append(size[1] / size[0])
    if not ratios:
        raise DataError("cannot determine the aspect ratio: no readable training image")
    return float(np.median(ratios))


class Normalize(torch.nn.Module):
    """Per-channel ``(x - mean) / std`` of float images in [0, 1] ([3,H,W] or [B,3,H,W]).

    The one normalisation of the project: :class:`ImageTransform` applies it in the data loaders and the
    exported network carries this same module, so deployments feed un-normalised images.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor([float(m) for m in mean], dtype=torch.float32).view(3, 1, 1))
        self.register_buffer("std", torch.tensor([float(s) for s in std], dtype=torch.float32).view(3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std


class ImageTransform:
    """PIL image or uint8 array -> normalised float32 tensor [3, H, W]: the project's one preprocessing.

    Mirrors the official STFPM preprocessing (``Resize`` + ``ToTensor`` + ``Normalize``): the whole image is
    resized to the network size without cropping, so defects near the border are never cut off and anomaly
    maps map back onto the full original image. The size is square (the official ``S x S``) or any (H, W),
    e.g. one that keeps the parts' aspect ratio (:func:`aspect_preserving_size`). The data module, the
    :class:`~stfpm.inference.predictor.Predictor`, predict.py and the export all take it from here; :attr:`resize`
    states the resize in words for deployments that do it themselves.
    """

    def __init__(self, size: int | Sequence[int], mean: Sequence[float], std: Sequence[float]) -> None:
        self.size = as_hw(size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.normalize = Normalize(self.mean, self.std)
        self._pipeline: Callable[[Image.Image], torch.Tensor] = transforms.Compose(
            [
                transforms.Resize(self.size, interpolation=InterpolationMode.BILINEAR),
                transforms.ToTensor(),
                self.normalize,
            ]
        )

    @property
    def resize(self) -> str:
        """The resize, exactly, in words."""
        height, width = self.size
        return (
            f"the whole image converted to 8-bit RGB, resized to height {height} x width {width} with PIL's bilinear "
            "filter (antialiased; no crop, aspect not kept), then scaled to [0, 1]"
        )

    def __call__(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        """Transform one image; non-RGB PIL modes are converted the same way :func:`load_image` does."""
        pil = _array_to_pil(image) if isinstance(image, np.ndarray) else to_rgb(image)
        with torch.no_grad():
            return self._pipeline(pil).to(torch.float32)

    def __repr__(self) -> str:
        return f"ImageTransform(size={self.size}, mean={self.mean}, std={self.std})"


def resize_mask(mask: np.ndarray, size: int | Sequence[int]) -> torch.Tensor:
    """Resize a boolean mask to a bool tensor [1, H, W] with nearest neighbour.

    Nearest keeps the mask strictly binary; bilinear would invent grey edge pixels whose thresholding
    would then shift the defect area and bias pixel-level metrics.
    """
    if mask.ndim != 2:
        raise DataError(f"masks must be 2-D, got shape {tuple(mask.shape)}")
    pil = Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255)
    height, width = as_hw(size)
    resized = np.asarray(pil.resize((width, height), resample=Image.Resampling.NEAREST)) > 0
    return torch.from_numpy(resized).unsqueeze(0)


def save_image(path: Path, array: np.ndarray) -> None:
    """Write an RGB or single-channel uint8 array atomically, in the format of the path's suffix (.png, .jpg)."""
    import cv2

    image = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array
    params = [cv2.IMWRITE_JPEG_QUALITY, 90] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, encoded = cv2.imencode(path.suffix.lower(), image, params)
    if not ok:
        raise OSError(f"cannot encode {path}")
    atomic_write_bytes(path, encoded.tobytes())
