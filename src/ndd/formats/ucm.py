"""Ultrametric contour maps in the BSDS "doubleSize" layout (``ucm2``) <-> label maps and stacks.

Layout of a ``ucm2`` for an (H, W) image, 0-based numpy indices, shape (2H+1, 2W+1):

* pixel (r, c) sits at (2r+1, 2c+1) and holds 0;
* the edge between (r, c) and (r, c+1) sits at (2r+1, 2c+2), the edge between (r, c) and
  (r+1, c) at (2r+2, 2c+1); an edge holds the level at which its two pixels join;
* the junction at (2r+2, 2c+2) holds the max of its four incident edges (as gPb files);
* the outer frame copies the adjacent inner row / column, so a contour reaching the border
  continues into it (an all-zero frame would connect every border pixel to its neighbours
  under the 8-connectivity of the benchmark).

The BSDS region procedure (connected components, 8-connected, of ``ucm2 <= t`` on the
doubleSize grid, sampled at ``[1::2, 1::2]``) then returns the 4-connected components of the
regions at level ``t``: a cell at or below ``t`` only ever links pixels that are already in one
region. A partition whose regions are 4-connected is therefore reproduced exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .bsds import BSDS_THRESHOLDS
from .labels import relabel_consecutive

__all__ = [
    "ucm2_from_edges",
    "ucm2_from_labels",
    "ucm2_from_label_stack",
    "labels_from_ucm2",
    "label_stack_from_ucm2",
]


def ucm2_from_edges(horizontal: np.ndarray, vertical: np.ndarray) -> np.ndarray:
    """Assemble a doubleSize ``ucm2`` from edge strengths between 4-neighbours.

    Args:
        horizontal: (H, W-1) strength of the edge between pixel (r, c) and (r, c+1).
        vertical: (H-1, W) strength of the edge between pixel (r, c) and (r+1, c).

    Returns:
        (2H+1, 2W+1) float64 map: pixels 0, junctions = max of incident edges, frame copied.
    """
    horizontal = np.asarray(horizontal, dtype=np.float64)
    vertical = np.asarray(vertical, dtype=np.float64)
    H, W = horizontal.shape[0], horizontal.shape[1] + 1
    if vertical.shape != (H - 1, W):
        raise ValueError(f"vertical edges must be ({H - 1}, {W}), got {vertical.shape}")
    u = np.zeros((2 * H + 1, 2 * W + 1), dtype=np.float64)
    u[1:-1:2, 2:-1:2] = horizontal
    u[2:-1:2, 1:-1:2] = vertical
    _finish_ucm2(u)
    return u


def ucm2_from_labels(labels: np.ndarray, pair_values: np.ndarray, chunk_rows: int = 512) -> np.ndarray:
    """The ``ucm2`` whose edge between 4-neighbours ``p, q`` is ``pair_values[labels[p], labels[q]]``.

    The same map as ``ucm2_from_edges(V[L[:, :-1], L[:, 1:]], V[L[:-1], L[1:]])``, built a
    band of rows at a time, so that a 24-megapixel label map needs the output and little more.

    Args:
        labels: (H, W) integer ids ``0 .. n-1``.
        pair_values: (n, n) value between two ids (0 on the diagonal), e.g. an ultrametric.
        chunk_rows: rows per band.

    Returns:
        (2H+1, 2W+1) float64.

    Example:
        >>> L = np.array([[0, 1]]); V = np.array([[0.0, 0.5], [0.5, 0.0]])
        >>> ucm2_from_labels(L, V)[1]
        array([0. , 0. , 0.5, 0. , 0. ])
    """
    L = np.asarray(labels)
    V = np.asarray(pair_values, dtype=np.float64)
    H, W = L.shape
    u = np.zeros((2 * H + 1, 2 * W + 1), dtype=np.float64)
    for r0 in range(0, H, chunk_rows):
        r1 = min(H, r0 + chunk_rows)
        band = L[r0:r1]
        u[2 * r0 + 1 : 2 * r1 : 2, 2:-1:2] = V[band[:, :-1], band[:, 1:]]
        below = L[r0 + 1 : min(H, r1 + 1)]  # vertical edges between row r and r + 1, r in [r0, r1)
        if len(below):
            u[2 * r0 + 2 : 2 * (r0 + len(below)) + 1 : 2, 1:-1:2] = V[band[: len(below)], below]
    _finish_ucm2(u, chunk_rows)
    return u


def _finish_ucm2(u: np.ndarray, chunk_rows: int = 512) -> None:
    """Junctions = max of their four edges, then the frame copied from the next row/column, in place."""
    n_junction_rows = (u.shape[0] - 3) // 2  # junction rows sit at 2, 4, .., 2H - 2
    if u.shape[1] > 3:
        for j0 in range(0, n_junction_rows, chunk_rows):
            rows = 2 + 2 * np.arange(j0, min(n_junction_rows, j0 + chunk_rows))
            u[rows, 2:-1:2] = np.maximum(
                np.maximum(u[rows - 1, 2:-1:2], u[rows + 1, 2:-1:2]), np.maximum(u[rows, 1:-2:2], u[rows, 3::2])
            )
    u[0, :], u[-1, :] = u[1, :], u[-2, :]
    u[:, 0], u[:, -1] = u[:, 1], u[:, -2]


def ucm2_from_label_stack(stack: Sequence[np.ndarray], values: Sequence[float] | None = None) -> np.ndarray:
    """``ucm2`` of a stack of nested segmentations, finest first.

    The edge between two 4-neighbours holds ``values[k]`` for the first level ``k`` at which
    they share a label (0 if already at level 0, 1 if never). Thresholding at any ``t`` in
    ``[values[k], values[k+1])`` then gives level ``k`` (as 4-connected components).

    Args:
        stack: L label maps (H, W), finest first, each coarser one a union of the previous.
        values: L increasing numbers in [0, 1]; ``values[0]`` is not used (level 0 edges that
            separate pixels always get 1 or a later level's value). Default ``k / L``.

    Returns:
        (2H+1, 2W+1) float64 ``ucm2``.
    """
    stack = [np.asarray(s) for s in stack]
    if not stack:
        raise ValueError("empty label stack")
    L = len(stack)
    v = np.arange(L) / L if values is None else np.asarray(values, dtype=np.float64)
    if v.shape != (L,):
        raise ValueError(f"need {L} values, got {v.shape}")

    def edges(sl_a: tuple, sl_b: tuple) -> np.ndarray:
        out = np.ones(stack[0][sl_a].shape, dtype=np.float64)
        for k in range(L - 1, -1, -1):  # coarse to fine: the finest shared level wins
            same = stack[k][sl_a] == stack[k][sl_b]
            out[same] = v[k] if k > 0 else 0.0
        return out

    return ucm2_from_edges(
        edges((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
        edges((slice(None, -1), slice(None)), (slice(1, None), slice(None))),
    )


def labels_from_ucm2(ucm2: np.ndarray, threshold: float) -> np.ndarray:
    """Segmentation at one threshold by the BSDS region procedure.

    Connected components (8-connectivity, as MATLAB ``bwlabel``) of ``ucm2 <= threshold`` on
    the doubleSize grid, kept at the pixel positions ``[1::2, 1::2]``.

    Args:
        ucm2: (2H+1, 2W+1) map.
        threshold: boundaries strictly above it survive.

    Returns:
        (H, W) int64 labels ``0 .. n-1``.
    """
    from skimage.measure import label as cc_label  # deferred: ndd.io (which imports formats) needs no skimage

    return relabel_consecutive(cc_label(np.asarray(ucm2) <= threshold, connectivity=2)[1::2, 1::2])


def label_stack_from_ucm2(ucm2: np.ndarray, thresholds: Sequence[float] | np.ndarray = BSDS_THRESHOLDS) -> list[np.ndarray]:
    """:func:`labels_from_ucm2` at every threshold (default: the 99 BSDS ones, :data:`~ndd.formats.bsds.BSDS_THRESHOLDS`).

    Example:
        >>> u = ucm2_from_label_stack([np.array([[0, 1]]), np.array([[0, 0]])], values=[0.0, 0.5])
        >>> [m.tolist() for m in label_stack_from_ucm2(u, [0.25, 0.75])]
        [[[0, 1]], [[0, 0]]]
    """
    return [labels_from_ucm2(ucm2, t) for t in thresholds]
