"""Robust readers for images, PNG label maps and BSDS ``groundTruth`` .mat files.

Every failure raises :class:`FileNotFoundError` (missing file) or
:class:`ValueError` (unreadable / malformed file) whose message names the file,
so that a bad file in a 500-image split is found at once.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["read_image", "read_label_png", "read_bsds_segmentations"]

StrPath = str | PathLike[str]


def _require_file(path: StrPath, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p}")
    return p


def read_image(path: StrPath) -> np.ndarray:
    """Read an image file as RGB.

    Returns:
        ``(H, W, 3)`` uint8 array. Grayscale, palette and RGBA images are
        converted to RGB (alpha dropped). EXIF orientation is *not* applied,
        so the pixels stay aligned with label maps saved from the raw data.
    """
    p = _require_file(path, "image")
    try:
        with Image.open(p) as im:
            im.load()  # decode now, so truncated files fail here
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                raise ValueError(f"unsupported image mode {im.mode!r} (expected 8-bit RGB or grayscale)")
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, ValueError, SyntaxError) as exc:  # PIL raises all three on bad data
        raise ValueError(f"cannot read image {p}: {exc}") from exc


def read_label_png(path: StrPath) -> np.ndarray:
    """Read an integer label map saved as an image (PNG recommended).

    Single-channel files (8/16/32-bit grayscale or palette) give their stored
    integer values (for palette images: the palette *index*). RGB(A) files give
    the colour code ``R * 65536 + G * 256 + B`` per pixel, so colour-coded
    segmentations work too.

    Returns:
        ``(H, W)`` int64 array of raw label values (not relabelled).
    """
    p = _require_file(path, "label map")
    try:
        with Image.open(p) as im:
            im.load()
            if im.mode in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
                return np.asarray(im, dtype=np.int64).copy()
            if im.mode in ("RGB", "RGBA"):
                rgb = np.asarray(im.convert("RGB"), dtype=np.int64)
                return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
            if im.mode == "LA":
                return np.asarray(im.getchannel(0), dtype=np.int64).copy()
            raise ValueError(f"unsupported label image mode {im.mode!r}")
    except (OSError, ValueError, SyntaxError) as exc:
        raise ValueError(f"cannot read label map {p}: {exc}") from exc


def _struct_field(entry: object, name: str) -> object | None:
    """Return field ``name`` of one MATLAB struct as loaded by ``scipy.io.loadmat``."""
    # loadmat gives a struct as a (1, 1) structured ndarray whose field values
    # are themselves arrays; unwrap either form.
    if isinstance(entry, np.ndarray):
        if entry.dtype.names is not None:
            if name not in entry.dtype.names or entry.size == 0:
                return None
            return entry.reshape(-1)[0][name]
        if entry.dtype == object and entry.size == 1:
            return _struct_field(entry.reshape(-1)[0], name)
    if isinstance(entry, np.void) and entry.dtype.names is not None and name in entry.dtype.names:
        return entry[name]
    return None


def read_bsds_segmentations(path: StrPath) -> list[np.ndarray]:
    """Read the human segmentations of one BSDS ground-truth ``.mat`` file.

    The file holds a 1xK MATLAB cell ``groundTruth`` whose entries are structs
    with ``Segmentation`` (uint16 labels from 1) and ``Boundaries``.

    Returns:
        K arrays ``(H, W)`` int64 with the raw labels (not relabelled).
    """
    import scipy.io  # deferred: scipy.io is only needed for BSDS files

    p = _require_file(path, "ground-truth file")
    try:
        mat = scipy.io.loadmat(p, squeeze_me=False, struct_as_record=True)
    except NotImplementedError as exc:  # MATLAB v7.3 (HDF5) files
        raise ValueError(f"cannot read MATLAB file {p}: v7.3/HDF5 .mat files are not supported ({exc})") from exc
    except Exception as exc:  # loadmat raises many types (ValueError, TypeError, zlib.error, ...) on corrupt data
        raise ValueError(f"cannot read MATLAB file {p} (corrupt or not a .mat file): {exc}") from exc

    if "groundTruth" not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{p}: no 'groundTruth' variable in the .mat file (found: {found})")
    cell = mat["groundTruth"]
    if not isinstance(cell, np.ndarray) or cell.size == 0:
        raise ValueError(f"{p}: 'groundTruth' is empty or not a MATLAB cell/struct array")
    # A cell array is an object array of structs; a struct array is itself structured.
    entries = [cell.reshape(-1)[i : i + 1] for i in range(cell.size)] if cell.dtype.names else list(cell.reshape(-1))

    segmentations: list[np.ndarray] = []
    for k, entry in enumerate(entries):
        seg = _struct_field(entry, "Segmentation")
        while isinstance(seg, np.ndarray) and seg.dtype == object and seg.size == 1:
            seg = seg.reshape(-1)[0]
        if seg is None:
            raise ValueError(f"{p}: groundTruth{{{k + 1}}} has no 'Segmentation' field")
        seg = np.asarray(seg)
        if seg.ndim != 2 or seg.size == 0 or not np.issubdtype(seg.dtype, np.number):
            raise ValueError(
                f"{p}: groundTruth{{{k + 1}}}.Segmentation must be a non-empty 2-D numeric array, "
                f"got shape {seg.shape} dtype {seg.dtype}"
            )
        if np.issubdtype(seg.dtype, np.floating) and not np.array_equal(seg, np.round(seg)):
            raise ValueError(f"{p}: groundTruth{{{k + 1}}}.Segmentation has non-integer values")
        segmentations.append(seg.astype(np.int64))
    shapes = {s.shape for s in segmentations}
    if len(shapes) != 1:
        raise ValueError(f"{p}: annotations have different shapes {sorted(shapes)}")
    return segmentations
