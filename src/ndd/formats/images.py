"""Reading photos: :func:`read_image`, the one image reader of the package, and :func:`check_image`.

EXIF orientation and the output dtype are arguments, never implicit: the segmentation commands
read photos as ``float32`` in ``[0, 1]`` upright (``exif_orientation=True``, the default); the
training data sets read the stored ``uint8`` pixels as they are (``exif_orientation=False``), so
that they stay aligned with label maps saved from the raw data.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import FormatError, MissingFileError

__all__ = ["ImageReadError", "ImageNotFoundError", "ImageDtype", "read_image", "check_image", "check_points"]

PathLike = str | os.PathLike[str]

#: what :func:`read_image` returns: float RGB in [0, 1], 8-bit RGB, or the pixels as stored (None)
ImageDtype = Literal["float32", "uint8"] | None

_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class ImageReadError(FormatError):
    """An input image could not be used; the message starts with the file name."""


class ImageNotFoundError(ImageReadError, MissingFileError):
    """The image file does not exist (an :class:`ImageReadError` and a :class:`FileNotFoundError`)."""


def read_image(
    path: PathLike,
    dtype: ImageDtype = "float32",
    *,
    exif_orientation: bool = True,
    min_size: int = 2,
) -> np.ndarray:
    """Read an image file (first frame of an animated one).

    Args:
        path: image file.
        dtype: ``"float32"``: (H, W, 3) RGB in [0, 1]; grey is repeated into three channels,
            palettes are expanded, transparency is composited onto white and 16-bit images keep
            their precision (scaled by 1/65535). ``"uint8"``: (H, W, 3) the stored 8-bit pixels
            as RGB (grey repeated, palettes expanded, alpha dropped); 16-bit and float images
            raise. ``None``: the pixels as stored, no conversion ((H, W) uint8 / uint16 for grey,
            palette indices for a palette image, (H, W, C) for colour).
        exif_orientation: turn the pixels upright as the EXIF orientation tag says.
        min_size: smallest allowed height and width in pixels.

    Raises:
        ImageReadError (a ``ValueError``) naming the file when it is not an image, truncated /
        corrupt, of a depth ``dtype`` cannot hold, or smaller than ``min_size``;
        :class:`ImageNotFoundError` (also a ``FileNotFoundError``) when it is missing.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> p = tempfile.mkdtemp() + "/grey.png"
        >>> Image.fromarray(np.full((2, 3), 255, np.uint8)).save(p)
        >>> rgb = read_image(p)
        >>> rgb.shape, rgb.dtype.name, float(rgb.max())
        ((2, 3, 3), 'float32', 1.0)
        >>> read_image(p, "uint8").dtype.name, read_image(p, None).shape
        ('uint8', (2, 3))
    """
    if dtype not in ("float32", "uint8", None):
        raise ValueError(f"dtype must be 'float32', 'uint8' or None, got {dtype!r}")
    p = Path(path)
    with _reading(p):
        with Image.open(p) as im:
            im.load()  # decode now so that truncated data raises here
            if exif_orientation:
                im = ImageOps.exif_transpose(im)
            if dtype == "float32":
                pixels = _to_float_rgb(im)
            elif dtype == "uint8":
                if im.mode in _HIGH_DEPTH_MODES:
                    raise ImageReadError(f"{p}: image mode {im.mode!r} does not fit uint8 (expected 8-bit RGB, "
                                         "grey or palette); read it as float32")
                pixels = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
            else:
                pixels = np.asarray(im).copy()
    _check_size(p, pixels.shape[:2], min_size)
    return pixels


def check_image(path: PathLike, min_size: int = 2) -> tuple[int, int]:
    """Check that ``path`` is an image :func:`read_image` can use, from its header only.

    Milliseconds, without decoding the pixels: what a command checks for every input before
    it loads a model. Truncated pixel data is found only by :func:`read_image`.

    Returns:
        ``(H, W)`` of the image as stored (before any EXIF rotation).

    Raises:
        ImageReadError: as :func:`read_image`, for a missing file, a folder, a file that is
            not an image, one that cannot be read, or one smaller than ``min_size``.

    Example:
        >>> check_image("no/such.png")
        Traceback (most recent call last):
        ...
        ndd.formats.images.ImageNotFoundError: no/such.png: no such file
    """
    p = Path(path)
    with _reading(p):
        with Image.open(p) as im:
            w, h = im.size
    _check_size(p, (h, w), min_size)
    return h, w


@contextmanager
def _reading(p: Path) -> Iterator[None]:
    """Pillow's and the file system's errors while reading ``p`` as one-line :class:`ImageReadError`."""
    if not p.exists():
        raise ImageNotFoundError(f"{p}: no such file")
    if p.is_dir():
        raise ImageReadError(f"{p}: is a directory, not an image")
    try:
        yield
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{p}: image too large to decode safely ({_one_line(e)})") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{p}: not an image file (or a format Pillow cannot read)") from None
    except PermissionError:
        raise ImageReadError(f"{p}: cannot read the file (permission denied)") from None
    except (OSError, SyntaxError, ValueError) as e:  # Pillow's truncated / corrupt data errors
        raise ImageReadError(f"{p}: unreadable or truncated image ({_one_line(e)})") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _check_size(p: Path, size: tuple[int, ...], min_size: int) -> None:
    h, w = size[0], size[1]
    if h < min_size or w < min_size:
        raise ImageReadError(f"{p}: image is {h}x{w} pixels; at least {min_size}x{min_size} is needed")


def _to_float_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im).astype(np.float64)
        # 16-bit PNGs come as I;16 or (older Pillow) I; anything above 16 bits is clipped
        grey = np.clip(a / 65535.0, 0.0, 1.0)
        return np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    if im.mode == "F":
        grey = np.clip(np.asarray(im, dtype=np.float64), 0.0, 1.0)
        return np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:4]
        return (rgba[..., :3] * alpha + (1.0 - alpha)).astype(np.float32)  # over white
    # one float32 array, divided into in place: a 24-megapixel photo in 0.5 s instead of 1.6-2.2 s
    # (NumPy's float32 conversion then a division allocated 288 MB twice); the same values to the bit
    rgb = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    return np.divide(rgb, np.float32(255), out=np.empty(rgb.shape, np.float32))


def check_points(points: Sequence[tuple[float, float]], image_size: tuple[int, int]) -> list[tuple[float, float]]:
    """``points`` ``(x, y)`` as floats; ``ValueError`` for none, or one outside the ``(H, W)``
    image (the message in the image's own pixels: call it before any resizing or model load).

    Example:
        >>> check_points([(10, 5)], (20, 30))
        [(10.0, 5.0)]
        >>> check_points([(30, 5)], (20, 30))
        Traceback (most recent call last):
        ...
        ValueError: point (30, 5) lies outside the 30x20 image (x in 0..29, y in 0..19)
    """
    H, W = image_size
    pts = [(float(x), float(y)) for x, y in points]
    if not pts:
        raise ValueError("no points given")
    for px, py in pts:
        if not (np.isfinite(px) and np.isfinite(py) and 0 <= px <= W - 1 and 0 <= py <= H - 1):
            raise ValueError(f"point ({px:g}, {py:g}) lies outside the {W}x{H} image (x in 0..{W - 1}, y in 0..{H - 1})")
    return pts
