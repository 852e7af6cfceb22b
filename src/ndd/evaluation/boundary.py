"""Boundary benchmark of one image: boundary maps, thinning and match counts.

Follows ``evaluation_bdry_image.m`` of the official BSDS500 benchmark (see
``shared/notes/bsds-benchmark.md`` section B): for every threshold, the machine
boundary map is thinned and matched one-to-one against each human
``Boundaries`` map within 0.0075 of the image diagonal; recall counts the GT
pixels matched per annotation, precision the machine pixels matched to at
least one annotation.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ndd.evaluation._jit import compiled
from ndd.evaluation.matching import Tiebreak, match_radius_graph, max_distance_px, neighbour_table, radius_edges

__all__ = [
    "BoundaryCounts",
    "boundary_counts",
    "seg2bdry",
    "soft_boundary_maps",
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
    subiterations, same stopping rule), evaluated only where the result can
    change: a pixel whose eight neighbours are all set is never deleted, and a
    pixel kept by a subiteration is kept again by the next subiteration with
    the same table unless a neighbour was deleted in between.  So the first
    two subiterations look at the border pixels and every later one at the
    neighbours of the pixels deleted by the two before it, with every pixel's
    neighbourhood code kept up to date as pixels go.  A thick soft-map blob
    (HED maps at low thresholds cover most of the image and take up to 70
    iterations) then costs in proportion to its area, not to area times
    iterations.  (h, w) bool → (h, w) bool.
    """
    bmap = np.asarray(bmap, dtype=bool)
    if bmap.ndim != 2:
        raise ValueError(f"boundary map must be 2-D, got shape {bmap.shape}")
    h, w = bmap.shape
    img = np.zeros((h + 2, w + 2), dtype=np.uint8)  # background frame
    img[1:-1, 1:-1] = bmap
    _thin_in_place(img.ravel(), w + 2, *_THIN_LUTS)
    return img[1:-1, 1:-1].astype(bool)


@compiled
def _thin_in_place(flat: np.ndarray, row: int, first: np.ndarray, second: np.ndarray) -> None:
    """:func:`thin_boundary` on a framed image, flattened (``row``: its width), in place.

    Compiled (numba): the subiterations visit a few pixels each, one at a time.
    """
    n = flat.size
    offsets = np.array([1, 1 - row, -row, -row - 1, -1, row - 1, row, row + 1])
    code = np.zeros(n, dtype=np.uint8)  # neighbourhood code, kept up to date at set pixels
    n_set = 0
    for p in range(row, n - row):
        n_set += flat[p] != 0
    border = np.empty(n_set, dtype=np.int64)
    n_border = 0
    for p in range(row, n - row):
        if flat[p]:
            c = 0
            for k in range(8):
                c |= flat[p + offsets[k]] << k
            code[p] = c
            if c != 255:
                border[n_border] = p
                n_border += 1
    # near[s % 3]: the pixels next to those deleted by subiteration s, each
    # once; mark: 2 s when p is a candidate of subiteration s, 2 s + 1 when
    # p is in near[s % 3] (each list of distinct set pixels: at most n_set)
    near = np.empty((3, n_set), dtype=np.int64)
    n_near = np.zeros(3, dtype=np.int64)
    mark = np.full(n, -1, dtype=np.int32)
    cand = np.empty(n_set, dtype=np.int64)
    gone = np.empty(n_set, dtype=np.int64)
    n_gone = np.zeros(3, dtype=np.int64)  # deletions of the last subiterations, by s % 3
    step = 0
    while step < 2 or step % 2 == 1 or n_gone[(step - 1) % 3] > 0 or n_gone[(step - 2) % 3] > 0:
        lut = first if step % 2 == 0 else second
        # candidates: the border pixels (first iteration), else the neighbours
        # of the pixels deleted by the two subiterations before
        m = 0
        if step < 2:
            for i in range(n_border):
                p = border[i]
                if flat[p] and mark[p] != 2 * step:
                    mark[p] = 2 * step
                    cand[m] = p
                    m += 1
        if step >= 1:
            for back in (2, 1):
                if step - back < 0:
                    continue
                s = (step - back) % 3
                for i in range(n_near[s]):
                    p = near[s, i]
                    if flat[p] and mark[p] != 2 * step:
                        mark[p] = 2 * step
                        cand[m] = p
                        m += 1
        # decide all, then delete all (a parallel subiteration)
        n_del = 0
        for i in range(m):
            if lut[code[cand[i]]]:
                gone[n_del] = cand[i]
                n_del += 1
        s = step % 3
        n_near[s] = 0
        for i in range(n_del):
            flat[gone[i]] = 0
        for i in range(n_del):
            q = gone[i]
            for k in range(8):  # q's neighbour in direction k loses its bit k + 4 (back to q)
                p = q + offsets[k]
                code[p] &= 0xFF ^ (1 << ((k + 4) % 8))
                if flat[p] and mark[p] != 2 * step + 1:
                    mark[p] = 2 * step + 1
                    near[s, n_near[s]] = p
                    n_near[s] += 1
        n_gone[s] = n_del
        step += 1


def soft_boundary_maps(pb: np.ndarray, thresholds: np.ndarray) -> Iterator[np.ndarray]:
    """Machine boundary maps of an (h, w) soft map: ``pb >= t``, one (h, w) bool map per threshold.

    Inclusive, as the official ``evaluation_bdry_image`` (the region benchmark
    keeps ``ucm2 > t`` as boundary).
    """
    pb = np.asarray(pb, dtype=np.float64)
    for t in thresholds:
        yield pb >= t


def ucm2_boundary_maps(ucm2: np.ndarray, thresholds: np.ndarray) -> Iterator[np.ndarray]:
    """Machine boundary maps of a doubleSize ucm2: the soft map ``ucm2[2::2, 2::2]`` at each threshold.

    The junctions to the lower right of each pixel, as the official code
    (not the edge elements, and not the max of the neighbours).
    """
    return soft_boundary_maps(np.asarray(ucm2, dtype=np.float64)[2::2, 2::2], thresholds)


def segs_boundary_maps(segs: Sequence[np.ndarray]) -> Iterator[np.ndarray]:
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
    few at high thresholds) reuse the previous counts, which are those of
    solving that threshold afresh.
    """
    gts = [np.asarray(g, dtype=bool) for g in gt_boundaries]
    if not gts:
        raise ValueError("no ground-truth annotation")
    shape = gts[0].shape
    if any(g.shape != shape for g in gts):
        raise ValueError(f"annotations of different shapes: {sorted({g.shape for g in gts})}")
    h, w = shape
    n_ann = len(gts)
    radius = max_distance_px(shape, max_dist)
    # The K matchings (one per annotation) are solved as one block-diagonal
    # problem: the annotations are stacked into one tall map, separated by
    # empty rows wider than the tolerance, so that one neighbour table and one
    # gather give the edges of all of them, machine pixel copies numbered
    # k * n1 + b and GT pixels annotation after annotation.  The blocks never
    # interact, so each gets exactly the matching it would get alone.
    block = h + int(np.ceil(radius)) + 1
    tall = np.zeros((n_ann * block, w), dtype=bool)
    for k, g in enumerate(gts):
        tall[k * block : k * block + h] = g
    table = neighbour_table(tall, radius)
    block_start = (np.arange(n_ann, dtype=np.int64) * (block * w))[:, None]
    sum_r_k = int(table.n_gt)
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
        b, g, d2 = radius_edges(table, (block_start + machine[None, :]).ravel())
        mate1, _ = match_radius_graph(b, g, d2, n_ann * n1, sum_r_k, tiebreak)
        matched = mate1 >= 0
        cnt_r[i] = int(np.count_nonzero(matched))  # one machine node per matched pair
        cnt_p[i] = int(np.count_nonzero(matched.reshape(n_ann, n1).any(axis=0)))
        sum_p[i] = n1
    if i != n - 1:
        raise ValueError(f"{i + 1} machine maps for {n} thresholds")
    return BoundaryCounts(thresholds, cnt_r, np.full(n, sum_r_k, dtype=np.int64), cnt_p, sum_p)
