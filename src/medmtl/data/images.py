"""Reading images and masks from disk, completely or not at all, with one clear error per bad file.

Files are decoded with Pillow, which refuses a truncated JPEG, PNG or TIFF ("image file is
truncated") where OpenCV fills the missing part with grey and only prints a warning without the
file's name. Decoding is complete (``Image.load``) before anything is returned.

REFUGE masks are 8-bit images with 0 = optic cup, 128 = disc rim, 255 = background (the
distributor's encoding); decoding turns them into two binary maps, OD = value < 255 (cup included)
and OC = value == 0. IDRiD masks are 1-bit palette TIFFs whose palette indices are {0, 1}.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from medmtl.data.errors import DatasetError

REFUGE_MASK_VALUES = (0, 128, 255)


def _decode(path: Path, what: str, expected: str, mode: str | None) -> np.ndarray:
    """The pixels of ``path`` (converted to ``mode`` unless None), or one DatasetError."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{what.capitalize()} file missing: {path}.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's warnings (EXIF) name no file; errors below do
            with Image.open(path) as opened:
                opened.load()
                image: Image.Image = opened.convert(mode) if mode is not None and opened.mode != mode else opened
                return np.array(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DatasetError(f"Cannot decode {what} {path}: the file is truncated, corrupt or not {expected} ({error}).") from None


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image file into an (H, W, 3) uint8 RGB array."""
    return _decode(path, "image", "a JPEG/PNG/BMP/TIFF image", "RGB")


def read_binary_mask(path: Path) -> np.ndarray:
    """A mask whose non-zero pixels are the foreground (IDRiD's 1-bit TIFFs) as (H, W) uint8 {0, 1}."""
    return (_decode(path, "mask", "a TIFF/PNG mask", None) > 0).astype(np.uint8)


def read_index_image(path: Path) -> np.ndarray:
    """A one-channel 8-bit image (grey or palette) as its stored values (H, W): label maps."""
    values = _decode(path, "label image", "a one-channel 8-bit PNG", None)
    if values.ndim != 2:
        raise DatasetError(f"Label image {path} has {values.shape[2]} channels; expected one (grey or palette).")
    return values


def read_refuge_mask(path: Path) -> np.ndarray:
    """Read a REFUGE disc/cup mask as (H, W) uint8 and check its values are within {0, 128, 255}."""
    mask = _decode(path, "mask", "an 8-bit BMP/PNG image", "L")
    unexpected = np.setdiff1d(np.unique(mask), REFUGE_MASK_VALUES)
    if unexpected.size:
        raise DatasetError(
            f"Mask {path} has values {unexpected[:8].tolist()} outside {{0, 128, 255}} "
            "(REFUGE encoding: 0 = cup, 128 = disc rim, 255 = background)."
        )
    return mask


def decode_refuge_mask(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(OD, OC) binary uint8 maps: OD = value < 255, OC = value == 0."""
    return (mask < 255).astype(np.uint8), (mask == 0).astype(np.uint8)


def encode_refuge_mask(od: np.ndarray, oc: np.ndarray) -> np.ndarray:
    """Inverse of :func:`decode_refuge_mask` (the cup must lie inside the disc)."""
    mask = np.full(od.shape, 255, dtype=np.uint8)
    mask[od.astype(bool)] = 128
    mask[oc.astype(bool)] = 0
    return mask


def check_point_inside(point: tuple[float, float] | None, width: int, height: int, where: str) -> None:
    """A point (x, y) annotated on an image of ``width`` x ``height`` pixels lies on the image."""
    if point is None:
        return
    x, y = point
    if not (0 <= x < width and 0 <= y < height):
        raise DatasetError(f"{where}: the point ({x:g}, {y:g}) lies outside the {width}x{height} image.")
