"""Boundary benchmark of one image: boundary maps, thinning and match counts.

Follows ``evaluation_bdry_image.m`` of the official BSDS500 benchmark (see
``shared/notes/bsds-benchmark.md`` section B): for every threshold, the machine
boundary map is thinned and matched one-to-one against each human
``Boundaries`` map within 0.0075 of the image diagonal; recall counts the GT
pixels matched per annotation, precision the machine pixels matched to at
least one annotation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ndd.evaluation.matching import Tiebreak, match_radius_graph, max_distance_px, neighbour_table, radius_edges

__all__ = [
    "BoundaryCounts",
    "boundary_counts",
    "seg2bdry",
    "thin_boundary",
    "ucm2_boundary_maps",
    "segs_boundary_maps",
]


@dataclass(frozen=True)
class BoundaryCounts:
    """Per-threshold counts of one image (the official ``_ev1.txt``).

    All arrays have shape (T,).  ``cnt_r``/``sum_r``: GT boundary pixels
    matched / present, summed over the annotations; ``cnt_p``/``sum_p``:
    machine pixels matched to at least one annotation / present (after
    thinning).
    """

    thresholds: np.ndarray
    cnt_r: np.ndarray
    sum_r: np.ndarray
    cnt_p: np.ndarray
    sum_p: np.ndarray


def seg2bdry(seg: np.ndarray, fmt: str = "imageSize") -> np.ndarray:
    """Boundary map of a label map, as the official ``seg2bdry``.

    ``seg``: (h, w) labels.  With ``fmt="doubleSize"`` returns the (2h+1, 2w+1)
    map of edge elements (1 between 4-neighbours with different labels),
    junctions (max of the incident edges) and a frame copying its inner
    neighbour; with ``"imageSize"`` the (h, w) map of the junctions to the lower
    right of each pixel, ``[2::2, 2::2]`` of the former.  Boolean.
    """
    seg = np.asarray(seg)
    if seg.ndim != 2:
        raise ValueError(f"seg must be a 2-D label map, got shape {seg.shape}")
    if fmt not in ("imageSize", "doubleSize"):
        raise ValueError("fmt must be 'imageSize' or 'doubleSize'")
    h, w = seg.shape
    edge_v = np.zeros((h, w), dtype=bool)  # between (i, j) and (i+1, j)
    edge_v[:-1] = seg[:-1] != seg[1:]
    edge_h = np.zeros((h, w), dtype=bool)  # between (i, j) and (i, j+1)
    edge_h[:, :-1] = seg[:, :-1] != seg[:, 1:]
    bdry = np.zeros((2 * h + 1, 2 * w + 1), dtype=bool)
    bdry[2::2, 1::2] = edge_v
    bdry[1::2, 2::2] = edge_h
    bdry[2:-1:2, 2:-1:2] = (edge_h[:-1, :-1] | edge_h[1:, :-1]) | (edge_v[:-1, :-1] | edge_v[:-1, 1:])
    bdry[0, :] = bdry[1, :]
    bdry[:, 0] = bdry[:, 1]
    bdry[-1, :] = bdry[-2, :]
    bdry[:, -1] = bdry[:, -2]
    if fmt == "imageSize":
        return bdry[2::2, 2::2].copy()
    return bdry


def _thin_luts() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables of the two Guo-Hall subiterations, indexed by neighbourhood code.

    Neighbour bits: E=1, NE=2, N=4, NW=8, W=16, SW=32, S=64, SE=128 (x1..x8).
    A pixel is deleted when X_H = 1 (one 4-connected run of background
    neighbours), 2 <= min(n1, n2) <= 3, and (x2 | x3 | ~x8) & x1 = 0 in the
    first subiteration, (x6 | x7 | ~x4) & x5 = 0 in the second.  These are the
    tables of MATLAB ``bwmorph(.., 'thin')`` and ``skimage.morphology.thin``
    (checked equal in the tests).
    """
    code = np.arange(256)
    x = [None] + [(code >> k) & 1 for k in range(8)] + [code & 1]  # x[1..8], x[9] = x1
    x_h = sum((1 - x[2 * i - 1]) & (x[2 * i] | x[2 * i + 1]) for i in range(1, 5))
    n1 = sum(x[2 * k - 1] | x[2 * k] for k in range(1, 5))
    n2 = sum(x[2 * k] | x[2 * k + 1] for k in range(1, 5))
    common = (x_h == 1) & (np.minimum(n1, n2) >= 2) & (np.minimum(n1, n2) <= 3)
    first = common & (((x[2] | x[3] | (1 - x[8])) & x[1]) == 0)
    second = common & (((x[6] | x[7] | (1 - x[4])) & x[5]) == 0)
    return first, second


_THIN_LUTS = _thin_luts()


def thin_boundary(bmap: np.ndarray) -> np.ndarray:
    """Morphological thinning to convergence (MATLAB ``bwmorph(b, 'thin', Inf)``).

    The algorithm of ``skimage.morphology.thin`` (same tables, same parallel
    subiterations, same stopping rule), evaluated at the foreground pixels
    only: ``thin`` correlates the whole image in every subiteration, which is
    ~10x slower on sparse boundary maps, and the benchmark thins tens of
    thousands of them.  (h, w) bool → (h, w) bool.
    """
    bmap = np.asarray(bmap, dtype=bool)
    if bmap.ndim != 2:
        raise ValueError(f"boundary map must be 2-D, got shape {bmap.shape}")
    h, w = bmap.shape
    img = np.zeros((h + 2, w + 2), dtype=np.uint8)  # background frame
    img[1:-1, 1:-1] = bmap
    W = w + 2
    # flat offsets of E, NE, N, NW, W, SW, S, SE and their bit weights
    offsets = np.array([1, -W + 1, -W, -W - 1, -1, W - 1, W, W + 1])
    weights = (1 << np.arange(8)).astype(np.int64)
    flat = img.ravel()
    fg = np.flatnonzero(flat)
    while True:
        n_before = fg.size
        for lut in _THIN_LUTS:
            code = (flat[fg[:, None] + offsets[None, :]] * weights[None, :]).sum(axis=1)
            delete = lut[code]
            flat[fg[delete]] = 0  # all decisions of a subiteration use the same image
            fg = fg[~delete]
        if fg.size == n_before:
            break
    return img[1:-1, 1:-1].astype(bool)


def ucm2_boundary_maps(ucm2: np.ndarray, thresholds: np.ndarray) -> Iterable[np.ndarray]:
    """Machine boundary maps of a doubleSize ucm2: ``ucm2[2::2, 2::2] >= t``.

    Note the inclusive test (the region benchmark keeps ``ucm2 > t`` as
    boundary).  Yields one (h, w) bool map per threshold.
    """
    pb = np.asarray(ucm2, dtype=np.float64)[2::2, 2::2]
    for t in thresholds:
        yield pb >= t


def segs_boundary_maps(segs: Sequence[np.ndarray]) -> Iterable[np.ndarray]:
    """Machine boundary maps of a stack of label maps: ``seg2bdry(seg, 'imageSize')``."""
    for seg in segs:
        yield seg2bdry(seg, "imageSize")


def boundary_counts(
    machine_maps: Iterable[np.ndarray],
    gt_boundaries: Sequence[np.ndarray],
    thresholds: np.ndarray,
    max_dist: float = 0.0075,
    thin_maps: bool = True,
    tiebreak: Tiebreak = "greedy",
) -> BoundaryCounts:
    """Match counts of one image for every threshold.

    ``machine_maps``: one (h, w) bool map per threshold (before thinning);
    ``gt_boundaries``: the K human (h, w) boundary maps (used as given, as the
    official code uses ``groundTruth{k}.Boundaries``); ``thresholds``: (T,).
    Consecutive identical machine maps (common for a ucm2, whose levels are
    few at high thresholds) reuse the previous counts.
    """
    gts = [np.asarray(g, dtype=bool) for g in gt_boundaries]
    if not gts:
        raise ValueError("no ground-truth annotation")
    shape = gts[0].shape
    radius = max_distance_px(shape, max_dist)
    tables = [neighbour_table(g, radius) for g in gts]
    gt_offsets = np.cumsum([0] + [t.n_gt for t in tables])[:-1]
    n_gt_total = int(sum(t.n_gt for t in tables))
    sum_r_k = int(sum(int(g.sum()) for g in gts))
    thresholds = np.asarray(thresholds, dtype=np.float64)
    n = thresholds.size
    cnt_r = np.zeros(n, dtype=np.int64)
    cnt_p = np.zeros(n, dtype=np.int64)
    sum_p = np.zeros(n, dtype=np.int64)
    prev: np.ndarray | None = None
    i = -1
    for i, bmap in enumerate(machine_maps):
        if i >= n:
            raise ValueError("more machine maps than thresholds")
        bmap = np.asarray(bmap, dtype=bool)
        if bmap.shape != shape:
            raise ValueError(f"machine boundary map has shape {bmap.shape}, ground truth {shape}")
        if prev is not None and np.array_equal(bmap, prev):
            cnt_r[i], cnt_p[i], sum_p[i] = cnt_r[i - 1], cnt_p[i - 1], sum_p[i - 1]
            continue
        prev = bmap
        if thin_maps:
            bmap = thin_boundary(bmap)
        machine = np.flatnonzero(bmap)
        n1 = machine.size
        # The K matchings (one per annotation) are solved as one block-diagonal
        # problem: machine pixel copies k*n1 + b, GT pixels offset per table.
        # The blocks never interact, so each gets exactly the matching it would
        # get alone, and the per-call overhead is paid once instead of K times.
        parts = [radius_edges(table, machine) for table in tables]
        b = np.concatenate([k * n1 + e[0] for k, e in enumerate(parts)])
        g = np.concatenate([off + e[1] for off, e in zip(gt_offsets, parts)])
        d2 = np.concatenate([e[2] for e in parts])
        mate1, mate2 = match_radius_graph(b, g, d2, len(tables) * n1, n_gt_total, tiebreak)
        cnt_r[i] = int(np.count_nonzero(mate2 >= 0))
        cnt_p[i] = int(np.count_nonzero((mate1 >= 0).reshape(len(tables), n1).any(axis=0)))
        sum_p[i] = n1
    if i != n - 1:
        raise ValueError(f"{i + 1} machine maps for {n} thresholds")
    return BoundaryCounts(thresholds, cnt_r, np.full(n, sum_r_k, dtype=np.int64), cnt_p, sum_p)
