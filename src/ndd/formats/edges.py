"""Soft edge maps as 16-bit PNGs: the file every edge detector writes, and what ``ndd evaluate``
scores with its boundary benchmark (it reads 16-bit grey PNGs as ``value / 65535``)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

__all__ = ["write_edge_map"]

PathLike = str | os.PathLike[str]


def write_edge_map(path: PathLike, edges: np.ndarray) -> None:
    """Write a soft edge map ``(H, W)`` in ``[0, 1]`` as a 16-bit grey PNG, ``round(65535 p)``.

    16 bits keep the map to ``1 / 131070``, so the 99 thresholds of the BSDS benchmark see the
    same pixels as in the float map (8 bits would merge neighbouring thresholds).

    Example:
        >>> import numpy as np, tempfile, os
        >>> from PIL import Image
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
