"""Label maps: consecutive ids, nearest-neighbour resizing, label PNGs.

A label map is an (H, W) integer array; ids need not be consecutive until
:func:`relabel_consecutive` makes them ``0 .. n-1``. Label PNGs hold the ids as they are
(8-bit, or 16-bit when an id exceeds 255); colour-coded PNGs are read as one code per colour.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import FormatError, MissingFileError

__all__ = ["relabel_consecutive", "nearest_indices", "resize_labels", "read_labels", "write_labels"]

PathLike = str | os.PathLike[str]

_LUT_LIMIT = 1 << 22  # label spans up to this use a lookup table (32 MiB at most) instead of a sort


def relabel_consecutive(labels: np.ndarray, ignore_index: int | None = None) -> np.ndarray:
    """Map the distinct ids of ``labels`` to ``0 .. n-1``, keeping their order.

    Args:
        labels: integer array of any shape (relabelled jointly).
        ignore_index: a value left out of the numbering: its pixels become ``-1``. ``None``
            (default) numbers every value.

    Returns:
        int64 array of the same shape.

    Example:
        >>> relabel_consecutive(np.array([[5, 5, 9], [-1, 2, 9]])).tolist()
        [[2, 2, 3], [0, 1, 3]]
        >>> relabel_consecutive(np.array([[5, 5, 9], [-1, 2, 9]]), ignore_index=-1).tolist()
        [[1, 1, 2], [-1, 0, 2]]
    """
    arr = np.asarray(labels)
    flat = arr.reshape(-1).astype(np.int64, copy=False)
    out = np.full(flat.shape, -1, dtype=np.int64)
    valid = flat != ignore_index if ignore_index is not None else np.ones(flat.shape, dtype=bool)
    if valid.any():
        values = flat[valid]
        lo, hi = int(values.min()), int(values.max())
        if hi - lo <= _LUT_LIMIT:  # O(n) lookup table instead of a sort
            present = np.zeros(hi - lo + 1, dtype=np.int64)
            present[values - lo] = 1
            out[valid] = (np.cumsum(present) - 1)[values - lo]
        else:
            out[valid] = np.unique(values, return_inverse=True)[1].reshape(-1)
    return out.reshape(arr.shape)


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out,)`` int64: the input position each output position reads in a nearest-neighbour resize.

    Pixel-centre sampling: output ``i`` reads input ``floor((i + 0.5) n_in / n_out)``, computed
    in integers, so it is exact for every size (``F.interpolate(mode="nearest-exact")``'s rule).
    The one definition behind :func:`resize_labels` and the tensor resizes of :mod:`ndd.data`.

    Example:
        >>> nearest_indices(2, 4).tolist(), nearest_indices(5, 2).tolist()
        ([0, 0, 1, 1], [1, 3])
    """
    n_in, n_out = int(n_in), int(n_out)
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be >= 1, got {n_in} -> {n_out}")
    return ((2 * np.arange(n_out, dtype=np.int64) + 1) * n_in) // (2 * n_out)


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (h, w) label map to ``size = (H, W)`` (pixel-centre sampling).

    Output pixel ``(r, c)`` takes input pixel ``(floor((r + 0.5) h / H), floor((c + 0.5) w / W))``
    (:func:`nearest_indices`); enlarging turns each pixel into a block, so segments keep their
    4-connectivity. Returns ``labels`` itself when the size is already right.

    Example:
        >>> resize_labels(np.array([[1, 2]]), (2, 4)).tolist()
        [[1, 1, 2, 2], [1, 1, 2, 2]]
    """
    labels = np.asarray(labels)
    h, w = labels.shape
    H, W = int(size[0]), int(size[1])
    if (h, w) == (H, W):
        return labels
    return labels[np.ix_(nearest_indices(h, H), nearest_indices(w, W))]


def read_labels(path: PathLike, *, colours: bool = True) -> np.ndarray:
    """Read an integer label map saved as an image (PNG recommended), ids as stored.

    Single-channel files (8/16/32-bit grey or palette) give their stored integer values (for
    palette images: the palette *index*); RGB(A) files give the colour code
    ``R * 65536 + G * 256 + B`` per pixel, so colour-coded segmentations work too, unless
    ``colours=False`` (class-id masks, where colours are a mistake: an error).

    Returns:
        (H, W) int64 array of raw ids (not relabelled).

    Raises:
        MissingFileError (a ``FileNotFoundError``) or FormatError (a ``ValueError``), naming the file.
    """
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"{p}: label map not found")
    try:
        with Image.open(p) as im:
            im.load()
            if im.mode in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
                return np.asarray(im, dtype=np.int64).copy()
            if im.mode in ("RGB", "RGBA"):
                if not colours:
                    raise FormatError(f"{p} is an RGB image: store ids (palette or grey PNG), not colours")
                rgb = np.asarray(im.convert("RGB"), dtype=np.int64)
                return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
            if im.mode == "LA":
                return np.asarray(im.getchannel(0), dtype=np.int64).copy()
            raise FormatError(f"{p}: cannot read label map (unsupported image mode {im.mode!r})")
    except FormatError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:  # PIL raises all three on bad data
        raise FormatError(f"{p}: cannot read label map ({' '.join(str(exc).split())})") from None


def write_labels(path: PathLike, labels: np.ndarray) -> None:
    """Write an (H, W) label map of non-negative ids as a PNG (uint8, or uint16 above 255).

    Example:
        >>> import tempfile
        >>> p = tempfile.mkdtemp() + "/l.png"
        >>> write_labels(p, np.array([[0, 300]])); read_labels(p).tolist()
        [[0, 300]]
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 2-D integer array, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 65535):
        raise ValueError("label ids must be in 0 .. 65535 to fit a PNG")
    dtype = np.uint8 if labels.size == 0 or labels.max() <= 255 else np.uint16
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labels.astype(dtype)).save(p, format="PNG")
