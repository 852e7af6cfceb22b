"""Soft edge (boundary) maps: reading them as every edge detector stores them, and writing them as
16-bit PNGs. The one owner of their conventions: ``ndd evaluate`` scores what
:func:`edge_map_from_array` / :func:`read_edge_map` return, ``ndd segment --format edges`` writes
with :func:`write_edge_map`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import FormatError
from .images import read_image

__all__ = ["edge_map_from_array", "read_edge_map", "write_edge_map"]

PathLike = str | os.PathLike[str]


def edge_map_from_array(arr: Any, where: str) -> np.ndarray:
    """A soft edge map ``(h, w)`` float64 in ``[0, 1]`` from a stored array.

    uint8 is scaled by 1/255 and uint16 by 1/65535 (the PNG conventions), bool to 0/1, an RGB(A)
    save of a grey map gives its first channel; floats must be finite and within ``[0, 1]`` (a
    map outside it would be thresholded wrongly by the benchmark's scales, so it is an error).
    ``where`` starts every error message (the file, and the variable in it).

    Example:
        >>> edge_map_from_array(np.array([[0, 65535], [32768, 0]], np.uint16), "x.png").round(4).tolist()
        [[0.0, 1.0], [0.5, 0.0]]
    """
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):  # an RGB(A) save of a grey map
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise FormatError(f"{where}: soft boundary map must be 2-D, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float64) / 65535.0
    if arr.dtype == bool:
        return arr.astype(np.float64)
    if not np.issubdtype(arr.dtype, np.floating):
        raise FormatError(f"{where}: soft boundary map must be float in [0, 1], uint8 or uint16, got {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise FormatError(f"{where}: soft boundary map contains NaN/Inf")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise FormatError(f"{where}: soft boundary map values must lie in [0, 1], got [{lo:g}, {hi:g}]")
    return np.clip(arr, 0.0, 1.0)


def read_edge_map(path: PathLike) -> np.ndarray:
    """A soft edge map from an 8- or 16-bit grey PNG (or a colour save of one): ``value / 255``
    or ``value / 65535``, ``(h, w)`` float64 in ``[0, 1]``."""
    img = read_image(path, None, exif_orientation=False, min_size=1)  # the stored values
    if img.ndim == 3:
        img = img[..., 0]
    if img.dtype not in (np.uint8, np.uint16):
        raise FormatError(f"{Path(path)}: soft boundary PNG must be 8- or 16-bit grey, got {img.dtype}")
    return edge_map_from_array(img, str(path))


def write_edge_map(path: PathLike, edges: np.ndarray) -> None:
    """Write a soft edge map ``(H, W)`` in ``[0, 1]`` as a 16-bit grey PNG, ``round(65535 p)``.

    16 bits keep the map to ``1 / 131070``, so the 99 thresholds of the BSDS benchmark see the
    same pixels as in the float map (8 bits would merge neighbouring thresholds);
    :func:`read_edge_map` reads it back.

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "e.png")
        >>> write_edge_map(path, np.array([[0.0, 0.5], [0.25, 1.0]]))
        >>> np.asarray(Image.open(path)).tolist()
        [[0, 32768], [16384, 65535]]
    """
    edges = np.asarray(edges)
    if edges.ndim != 2 or edges.size == 0:
        raise ValueError(f"an edge map is (H, W), got shape {edges.shape}")
    if not np.issubdtype(edges.dtype, np.floating):
        raise ValueError(f"an edge map is float in [0, 1], got {edges.dtype}")
    if not np.isfinite(edges).all():
        raise ValueError("the edge map contains NaN or Inf")
    if edges.min() < 0 or edges.max() > 1:
        raise ValueError(f"edge map values must lie in [0, 1], got [{edges.min():g}, {edges.max():g}]")
    Image.fromarray(np.round(edges * 65535.0).astype(np.uint16)).save(path, compress_level=1)
