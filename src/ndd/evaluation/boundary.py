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

from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from ndd.evaluation.matching import (
    Tiebreak,
    _first_of_runs,
    match_radius_graph,
    max_distance_px,
    neighbour_table,
    radius_edges,
)

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


# offsets (dy, dx) of the neighbours E, NE, N, NW, W, SW, S, SE: bit k of a neighbourhood code
_NEIGHBOURS = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))


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
    W = w + 2
    img = np.zeros((h + 2, W), dtype=np.uint8)  # background frame
    img[1:-1, 1:-1] = bmap
    flat = img.ravel()
    offsets = [dy * W + dx for dy, dx in _NEIGHBOURS]
    code = np.zeros(flat.size, dtype=np.uint8)  # neighbourhood code, valid at set pixels
    n_set = int(np.count_nonzero(bmap))
    if n_set * 8 < bmap.size:  # sparse map: gather the codes of its pixels
        fg = np.flatnonzero(flat)
        for k in range(8):
            code[fg] |= flat[fg + offsets[k]] << k
        border = fg[code[fg] != 255]
    else:  # dense map: shifted whole-image slices are cheaper
        inner = code.reshape(h + 2, W)[1:-1, 1:-1]
        for k, (dy, dx) in enumerate(_NEIGHBOURS):
            inner |= img[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] << k
        ys, xs = np.nonzero(bmap & (inner != 255))
        border = ((ys + 1) * W + (xs + 1)).astype(np.intp)
    # deleting q clears, in its neighbour q + offsets[k], the bit of direction k + 4 (back to q)
    clear = [np.uint8(0xFF ^ (1 << ((k + 4) % 8))) for k in range(8)]
    stamp = np.zeros(flat.size, dtype=np.intp)

    def distinct(idx: np.ndarray) -> np.ndarray:
        """``idx`` without repeats (the order is irrelevant: a subiteration decides in parallel)."""
        r = np.arange(idx.size)
        stamp[idx] = r
        return idx[stamp[idx] == r]

    def delete(gone: np.ndarray) -> np.ndarray:
        """Delete the distinct pixels ``gone``; their neighbours still set (with repeats)."""
        flat[gone] = 0
        around = []
        for k in range(8):
            n = gone + offsets[k]
            code[n] &= clear[k]
            around.append(n)
        n = np.concatenate(around)
        return n[flat[n] != 0]

    first, second = _THIN_LUTS
    gone0 = border[first[code[border]]]
    near0 = delete(gone0)
    cand = np.concatenate([border[flat[border] != 0], near0])
    gone1 = distinct(cand[second[code[cand]]])
    near1 = delete(gone1)
    step = 2
    # stop after a whole iteration (both subiterations) deleted nothing, as skimage
    while step % 2 or gone0.size or gone1.size:
        cand = np.concatenate([near0[flat[near0] != 0], near1])
        gone = distinct(cand[_THIN_LUTS[step % 2][code[cand]]])
        near = delete(gone)
        gone0, gone1, near0, near1, step = gone1, gone, near1, near, step + 1
    return img[1:-1, 1:-1].astype(bool)


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


class _ComponentReuse:
    """The matchings of one threshold's graph components, reused at the next threshold.

    The matcher works component by component of the radius graph (each
    connected component gets the matching it would get alone, see
    :func:`~ndd.evaluation.matching.match_radius_graph`), and a component is
    fixed by its machine pixels (its GT pixels and edges are then all those
    within the tolerance).  So a component whose machine pixels are exactly
    those of a component at the previous threshold gets the same matching, and
    only the others are solved again.  Nested maps (a ucm2: each threshold
    removes whole contours, most components survive) then cost a fraction of a
    full matching.  Machine pixels are identified across thresholds by a key,
    ``annotation * h * w + flat pixel index``.  The components remembered may
    be those of any earlier threshold: a component with the same machine
    pixels has the same matching whenever it was seen.
    """

    def __init__(self, n_keys: int) -> None:
        self.label = np.full(n_keys, -1, dtype=np.int64)  # key → its component, at the last threshold
        self.matched = np.zeros(n_keys, dtype=bool)  # key → matched there
        self.size = np.zeros(0, dtype=np.int64)  # machine nodes of each component
        self.keys = np.zeros(0, dtype=np.int64)  # keys set at the last threshold

    def match(
        self, b: np.ndarray, g: np.ndarray, d2: np.ndarray, keys: np.ndarray, n2: int, tiebreak: Tiebreak
    ) -> np.ndarray:
        """Matched flag of every machine node (``keys``: (n1,) key of each node), reusing what it can.

        ``b``, ``g``, ``d2``: the edges, sorted by ``(b, g)``, as for
        :func:`~ndd.evaluation.matching.match_radius_graph`.  Returns (n1,) bool
        and remembers this threshold's components for the next call.
        """
        n1 = keys.size
        if b.size == 0:  # nothing within the tolerance: nothing matches, nothing to remember
            return np.zeros(n1, dtype=bool)
        indptr = np.zeros(n1 + n2 + 1, dtype=np.int32)  # machine rows (b sorted), GT rows empty
        np.cumsum(np.bincount(b, minlength=n1), out=indptr[1 : n1 + 1])
        indptr[n1 + 1 :] = b.size
        graph = csr_matrix((np.ones(b.size), (n1 + g).astype(np.int32), indptr), shape=(n1 + n2, n1 + n2))
        _, comp = connected_components(graph, directed=True, connection="weak")
        nodes = b[_first_of_runs(b)]  # machine nodes with an edge (b is sorted); the others never match
        node_comp = comp[nodes]
        # a component is unchanged when all its machine nodes come from one
        # previous component and are as many as that component had
        prev = self.label[keys[nodes]]
        lo = np.full(comp.max() + 1, np.iinfo(np.int64).max)
        hi = np.full(comp.max() + 1, -1)
        np.minimum.at(lo, node_comp, prev)
        np.maximum.at(hi, node_comp, prev)
        count = np.bincount(node_comp, minlength=lo.size)
        same = (lo == hi) & (hi >= 0)
        same[same] = count[same] == self.size[hi[same]]
        matched = np.zeros(n1, dtype=bool)
        kept = same[node_comp]
        matched[nodes[kept]] = self.matched[keys[nodes[kept]]]
        solve = ~same[comp[b]]
        if solve.any():
            mate1, _ = match_radius_graph(b[solve], g[solve], d2[solve], n1, n2, tiebreak)
            matched |= mate1 >= 0
        # remember this threshold
        self.label[self.keys] = -1
        self.matched[self.keys] = False
        self.keys = keys[nodes]
        self.label[self.keys] = node_comp
        self.matched[self.keys] = matched[nodes]
        self.size = count
        return matched


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
    few at high thresholds) reuse the previous counts; when a thinned map
    keeps nearly all pixels of the previous one (a ucm2 losing contours), the
    matchings of unchanged graph components are reused (:class:`_ComponentReuse`).
    Either way the counts are those of solving every threshold afresh.
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
    key_start = (np.arange(n_ann, dtype=np.int64) * (h * w))[:, None]
    sum_r_k = int(table.n_gt)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    n = thresholds.size
    cnt_r = np.zeros(n, dtype=np.int64)
    cnt_p = np.zeros(n, dtype=np.int64)
    sum_p = np.zeros(n, dtype=np.int64)
    reuse = _ComponentReuse(n_ann * h * w)
    prev: np.ndarray | None = None
    prev_thin: np.ndarray | None = None
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
        # Components are worth finding when the map mostly keeps the pixels of
        # the previous one (a ucm2 losing contours); a soft map's skeleton moves
        # at every threshold and its components rarely repeat.
        nested = prev_thin is None or np.count_nonzero(bmap & ~prev_thin) <= 0.02 * n1
        if nested:
            matched = reuse.match(b, g, d2, (key_start + machine[None, :]).ravel(), sum_r_k, tiebreak)
        else:
            mate1, _ = match_radius_graph(b, g, d2, n_ann * n1, sum_r_k, tiebreak)
            matched = mate1 >= 0
        prev_thin = bmap
        cnt_r[i] = int(np.count_nonzero(matched))  # one machine node per matched pair
        cnt_p[i] = int(np.count_nonzero(matched.reshape(n_ann, n1).any(axis=0)))
        sum_p[i] = n1
    if i != n - 1:
        raise ValueError(f"{i + 1} machine maps for {n} thresholds")
    return BoundaryCounts(thresholds, cnt_r, np.full(n, sum_r_k, dtype=np.int64), cnt_p, sum_p)
