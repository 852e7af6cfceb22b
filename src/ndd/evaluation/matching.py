"""One-to-one correspondence of boundary pixels within a distance tolerance.

The official benchmark (``correspondPixels`` → ``matchEdgeMaps``, C++) solves an
assignment problem with Goldberg's CSA whose optimum is a maximum-cardinality
one-to-one matching between the machine and the ground-truth (GT) boundary
pixels that lie within ``max_dist`` pixels of each other, ties broken by the
smallest total distance (rounded to 0.01 px).  It takes 0.2-0.3 s per call, and
its result is itself random (clock-seeded sparse outlier edges): its matched
counts fluctuate between runs at the 1e-4 level.

Here the matching is computed on the *radius graph* (an edge for every
machine/GT pixel pair within the tolerance) in three vectorised steps:

1. a nearest-first greedy matching, one distance level at a time
   (:func:`_greedy_by_level`);
2. augmentation to a **maximum** matching (:func:`_augment_short`,
   :func:`_augment_to_maximum`): rounds of augmenting paths found by one
   compiled breadth-first search each, until no augmenting path is left (Berge's
   lemma), so the matched count (recall) is exact;
3. a distance refinement that keeps the cardinality (:func:`_improve_swaps`).

Which of the maximum matchings is returned (hence which machine pixels count as
matched for precision) follows the nearest-first rule rather than the global
minimum of the summed distance; ``tiebreak="exact"`` computes that minimum
(slow, for checks).  On the eight bsds500-mini test images the nearest-first
choice moves the pooled ODS F by +2e-4 and each image's best F by at most
4e-4 from the exact choice, about the official code's own run-to-run spread.

Why by hand: scipy's ``maximum_bipartite_matching`` cannot start from a given
matching (so the nearest-first choice would be lost) and, like
``min_weight_full_bipartite_matching`` (which needs a full matching), takes
tens to hundreds of milliseconds on these chain-like graphs; the steps here
only call compiled code (``breadth_first_order``) and whole-array numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import breadth_first_order, connected_components, min_weight_full_bipartite_matching

__all__ = [
    "NeighbourTable",
    "Tiebreak",
    "correspond_pixels",
    "match_radius_graph",
    "max_distance_px",
    "neighbour_table",
    "radius_edges",
]

Tiebreak = Literal["greedy", "exact"]


def max_distance_px(shape: tuple[int, int], max_dist: float = 0.0075) -> float:
    """Matching tolerance in pixels: ``max_dist`` times the image diagonal."""
    return float(max_dist) * math.hypot(shape[0], shape[1])


def _disk_offsets(radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Offsets (dy, dx) with dy² + dx² <= radius² (inclusive, as the official code).

    Returns three (M,) int64 arrays dy, dx, d2.
    """
    r = int(math.ceil(radius))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    dy, dx = dy.ravel(), dx.ravel()
    d2 = dy * dy + dx * dx
    keep = d2 <= radius * radius
    return dy[keep].astype(np.int64), dx[keep].astype(np.int64), d2[keep].astype(np.int64)


@dataclass(frozen=True)
class NeighbourTable:
    """For every image pixel, the GT boundary pixels within the tolerance.

    A CSR structure over flat (row-major) pixel indices of an image of
    ``shape``: the GT pixels near pixel ``p`` are
    ``gt_index[indptr[p]:indptr[p + 1]]`` (ascending indices into the GT pixels
    taken in row-major order), at squared distances ``d2``.  Built once per
    annotation and reused for every threshold.
    """

    shape: tuple[int, int]
    radius: float
    indptr: np.ndarray  # (h*w + 1,) int64
    gt_index: np.ndarray  # (nnz,) int64
    d2: np.ndarray  # (nnz,) int64
    gt_flat: np.ndarray  # (n_gt,) int64: flat index of each GT pixel

    @property
    def n_gt(self) -> int:
        return int(self.gt_flat.size)


def neighbour_table(gt_map: np.ndarray, radius: float) -> NeighbourTable:
    """Build the :class:`NeighbourTable` of a boolean (h, w) GT boundary map."""
    gt_map = np.asarray(gt_map, dtype=bool)
    if gt_map.ndim != 2:
        raise ValueError(f"boundary map must be 2-D, got shape {gt_map.shape}")
    h, w = gt_map.shape
    gt_flat = np.flatnonzero(gt_map).astype(np.int64)
    gy, gx = np.divmod(gt_flat, w)
    dy, dx, d2 = _disk_offsets(radius)
    # All (pixel q, GT pixel g) pairs with q = g + offset inside the image,
    # generated offset by offset: each offset gives a run ascending in g.
    qy = dy[:, None] + gy[None, :]
    qx = dx[:, None] + gx[None, :]
    inside = (qy >= 0) & (qy < h) & (qx >= 0) & (qx < w)
    q = (qy * w + qx)[inside]
    gi = np.broadcast_to(np.arange(gt_flat.size, dtype=np.int64)[None, :], qy.shape)[inside]
    dd = np.broadcast_to(d2[:, None], qy.shape)[inside]
    # Sort by (q, g); the key is ascending within each offset's run, which
    # the stable sort (timsort) merges quickly.
    order = np.argsort(q * max(gt_flat.size, 1) + gi, kind="stable")
    q, gi, dd = q[order], gi[order], dd[order]
    indptr = np.zeros(h * w + 1, dtype=np.int64)
    np.cumsum(np.bincount(q, minlength=h * w), out=indptr[1:])
    return NeighbourTable((h, w), float(radius), indptr, gi, dd, gt_flat)


def radius_edges(table: NeighbourTable, machine_flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges of the radius graph between machine pixels and the table's GT pixels.

    ``machine_flat``: (n1,) flat indices of the machine boundary pixels.
    Returns ``(b, g, d2)``, each (E,) int64: machine index (into
    ``machine_flat``), GT index, squared distance; sorted by ``(b, g)``.
    """
    machine_flat = np.asarray(machine_flat, dtype=np.int64)
    start = table.indptr[machine_flat]
    count = table.indptr[machine_flat + 1] - start
    total = int(count.sum())
    b = np.repeat(np.arange(machine_flat.size, dtype=np.int64), count)
    # position of each edge in the table: its run's start + its rank in the run
    run_first = np.repeat(np.cumsum(count) - count, count)
    pos = np.repeat(start, count) + (np.arange(total, dtype=np.int64) - run_first)
    return b, table.gt_index[pos], table.d2[pos]


def _first_of_runs(keys: np.ndarray) -> np.ndarray:
    """Boolean mask of the first element of every run of equal values in ``keys``."""
    first = np.empty(keys.size, dtype=bool)
    if keys.size:
        first[0] = True
        np.not_equal(keys[1:], keys[:-1], out=first[1:])
    return first


def _greedy_by_level(b: np.ndarray, g: np.ndarray, d2: np.ndarray, n1: int, n2: int) -> tuple[np.ndarray, np.ndarray]:
    """Maximal matching built nearest distance level first.

    Within a level, rounds of mutual proposals (each free machine pixel
    proposes to its first free GT neighbour at that distance, each GT pixel
    accepts its lowest-index proposer) until no edge of the level joins two
    free pixels.  Deterministic.  Edges sorted by ``(b, g)``.
    Returns ``mate1`` (n1,) and ``mate2`` (n2,), -1 where free.
    """
    mate1 = np.full(n1, -1, dtype=np.int64)
    mate2 = np.full(n2, -1, dtype=np.int64)
    if b.size == 0:
        return mate1, mate2
    # stable (radix) sort on the few level values keeps the (b, g) order within a level
    order = np.argsort(d2.astype(np.int16), kind="stable")
    b, g, lev = b[order], g[order], d2[order]
    cuts = np.flatnonzero(np.diff(lev)) + 1
    for bb, gg in zip(np.split(b, cuts), np.split(g, cuts)):
        keep = (mate1[bb] < 0) & (mate2[gg] < 0)
        bb, gg = bb[keep], gg[keep]
        while bb.size:
            first = _first_of_runs(bb)
            pb, pg = bb[first], gg[first]
            o = np.argsort(pg, kind="stable")
            pb, pg = pb[o], pg[o]
            acc = _first_of_runs(pg)
            mate1[pb[acc]] = pg[acc]
            mate2[pg[acc]] = pb[acc]
            keep = (mate1[bb] < 0) & (mate2[gg] < 0)
            bb, gg = bb[keep], gg[keep]
    return mate1, mate2


def _augment_short(
    b: np.ndarray, g: np.ndarray, d2: np.ndarray, mate1: np.ndarray, mate2: np.ndarray, max_iter: int = 1
) -> None:
    """Apply augmenting paths of length three, b0 - g1 = b1 - g2, in place.

    A matched machine pixel b1 moves to a free GT pixel g2 and a free machine
    pixel b0 takes its old partner g1; nearest choices first, conflicts
    dropped, for up to ``max_iter`` passes.  Many of the augmentations a
    greedy matching needs are of this kind, and they are cheaper to find here
    than by graph search.
    """
    for _ in range(max_iter):
        # b1 (matched) → nearest free GT g2
        e = np.flatnonzero((mate2[g] < 0) & (mate1[b] >= 0))
        if e.size == 0:
            return
        o = e[np.lexsort((d2[e], b[e]))]
        o = o[_first_of_runs(b[o])]
        mv_b, mv_g = b[o], g[o]
        # g1 = partner of b1 → nearest free machine b0
        f = np.flatnonzero((mate1[b] < 0) & (mate2[g] >= 0))
        if f.size == 0:
            return
        f = f[np.lexsort((d2[f], g[f]))]
        f = f[_first_of_runs(g[f])]
        take_g, take_b = g[f], b[f]
        g1 = mate1[mv_b]
        pos = np.searchsorted(take_g, g1)
        pos[pos >= take_g.size] = 0
        ok = take_g[pos] == g1
        if not ok.any():
            return
        b1, g2, g1, b0 = mv_b[ok], mv_g[ok], g1[ok], take_b[pos[ok]]
        # keep paths whose free endpoints are not claimed by an earlier path
        o = np.argsort(g2, kind="stable")
        o = o[_first_of_runs(g2[o])]
        o2 = np.argsort(b0[o], kind="stable")
        o = o[o2[_first_of_runs(b0[o][o2])]]
        b1, g2, g1, b0 = b1[o], g2[o], g1[o], b0[o]
        mate1[b1] = g2
        mate2[g2] = b1
        mate1[b0] = g1
        mate2[g1] = b0


def _augment_to_maximum(b: np.ndarray, g: np.ndarray, mate1: np.ndarray, mate2: np.ndarray) -> int:
    """Grow a matching to maximum cardinality, in place; returns the rounds run.

    Each round runs one compiled breadth-first search of the alternating graph
    from a virtual root joined to every free machine pixel (machine → GT along
    any edge, GT → its partner).  The BFS tree holds a shortest augmenting path
    to every reachable free GT pixel; paths leaving the root through different
    free machine pixels are different branches of the tree and share no
    vertex, so one path per branch is applied at once.  The loop ends when no
    free GT pixel is reachable, i.e. (Berge) when the matching is maximum.
    ``b``, ``g``: (E,) edges sorted by ``(b, g)``; ``mate1`` (n1,), ``mate2`` (n2,).
    """
    n1, n2 = mate1.size, mate2.size
    root = n1 + n2
    machine_ptr = np.zeros(n1 + 1, dtype=np.int64)
    np.cumsum(np.bincount(b, minlength=n1), out=machine_ptr[1:])
    machine_idx = n1 + g  # machine rows never change: every edge
    ones = np.ones(machine_idx.size + n2 + n1)  # float64: csgraph would convert anything else
    rounds = 0
    while True:
        matched2 = mate2 >= 0
        free1 = np.flatnonzero(mate1 < 0)
        if free1.size == 0 or matched2.all():
            return rounds
        n_m = int(matched2.sum())
        indptr = np.concatenate(
            [machine_ptr, machine_ptr[-1] + np.cumsum(matched2), [machine_ptr[-1] + n_m + free1.size]]
        )
        indices = np.concatenate([machine_idx, mate2[matched2], free1])
        graph = csr_matrix((ones[: indices.size], indices, indptr), shape=(root + 1, root + 1))
        _, pred = breadth_first_order(graph, root, directed=True, return_predecessors=True)
        targets = np.flatnonzero((pred[n1:root] >= 0) & ~matched2)
        if targets.size == 0:
            return rounds
        rounds += 1
        pairs_b, pairs_g = _tree_paths(pred, targets + n1, root, n1)
        mate1[pairs_b] = pairs_g
        mate2[pairs_g] = pairs_b


def _tree_paths(pred: np.ndarray, targets: np.ndarray, root: int, n1: int) -> tuple[np.ndarray, np.ndarray]:
    """The (machine, GT) pairs of one augmenting path per branch of a BFS tree.

    ``pred``: (root+1,) BFS predecessors (negative where none); ``targets``:
    nodes (free GT pixels, offset by ``n1``) reached by the tree.  For each
    branch (subtree of a root child, i.e. of one free machine pixel) the
    first target is kept; its path to the root alternates GT, machine, GT, ...
    and every (machine, GT-below-it) pair on it becomes matched.  Ancestors are
    found by binary lifting (log-depth gathers) rather than by walking the
    paths, which can be hundreds of steps long.
    """
    up = [np.where(pred < 0, root, pred)]
    up[0][root] = root
    while not np.all(up[-1][targets] == root):
        up.append(up[-1][up[-1]])
    # depth below the root child, and the root child (the branch)
    cur = targets.copy()
    depth = np.zeros(targets.size, dtype=np.int64)
    for k in range(len(up) - 1, -1, -1):
        nxt = up[k][cur]
        move = nxt != root
        cur[move] = nxt[move]
        depth[move] += 1 << k
    _, chosen = np.unique(cur, return_index=True)  # first target of each branch
    targets, depth = targets[chosen], depth[chosen]
    # enumerate the j-th ancestor of each chosen target, j = 0..depth
    count = depth + 1
    owner = np.repeat(np.arange(targets.size), count)
    j = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    node = targets[owner]
    for k in range(len(up)):
        bit = ((j >> k) & 1).astype(bool)
        node[bit] = up[k][node[bit]]
    # even j: GT pixels, odd j: the machine pixel above each
    return node[1::2], node[0::2] - n1


def _improve_swaps(
    b: np.ndarray, g: np.ndarray, d2: np.ndarray, mate1: np.ndarray, mate2: np.ndarray, rounds: int = 4
) -> None:
    """Distance refinement that keeps the cardinality, in place.

    A free machine pixel takes a GT pixel over from its partner when it is
    strictly nearer to it (an alternating path of length two: the total
    distance decreases, the matched machine set changes by one swap).  A few
    vectorised rounds; conflicts go to the nearest proposer.  Edges sorted by
    ``(b, g)``.
    """
    n2 = mate2.size
    key = b * n2 + g  # ascending
    for _ in range(rounds):
        cand = np.flatnonzero((mate1[b] < 0) & (mate2[g] >= 0))
        if cand.size == 0:
            return
        cb, cg, cd = b[cand], g[cand], d2[cand]
        cur_d2 = d2[np.searchsorted(key, mate2[cg] * n2 + cg)]
        better = cd < cur_d2
        if not better.any():
            return
        cb, cg, cd = cb[better], cg[better], cd[better]
        o = np.lexsort((cb, cd, cg))  # each GT pixel: its nearest proposer
        o = o[_first_of_runs(cg[o])]
        cb, cg, cd = cb[o], cg[o], cd[o]
        o = np.lexsort((cg, cd, cb))  # each machine pixel: one GT pixel
        o = o[_first_of_runs(cb[o])]
        cb, cg = cb[o], cg[o]
        mate1[mate2[cg]] = -1
        mate1[cb] = cg
        mate2[cg] = cb


def _cost(d2: np.ndarray) -> np.ndarray:
    """Official edge cost: the distance in units of 0.01 px, rounded."""
    return np.rint(100.0 * np.sqrt(d2)).astype(np.int64)


def _min_cost_max_matching(
    b: np.ndarray, g: np.ndarray, cost: np.ndarray, n1: int, n2: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact maximum-cardinality matching of minimum total cost (small graphs).

    One perfect assignment on 2(n1+n2) nodes, the construction the official
    matcher also uses, without its random sparsification: every vertex may
    take its own "outlier" twin at a cost above any possible saving, and the
    twins of a matched pair pair up with each other.  ``cost``: (E,) integers
    >= 0.  Returns ``mate1`` (n1,) and ``mate2`` (n2,).
    """
    mate1 = np.full(n1, -1, dtype=np.int64)
    mate2 = np.full(n2, -1, dtype=np.int64)
    if b.size == 0:
        return mate1, mate2
    big = float(cost.max() + 2) * (n1 + n2) + 1.0
    a1, a2 = np.arange(n1), np.arange(n2)
    # rows: machine pixels, then GT twins; columns: GT pixels, then machine twins
    rows = np.concatenate([b, a1, n1 + a2, n1 + g])
    cols = np.concatenate([g, n2 + a1, a2, n2 + b])
    vals = np.concatenate([cost + 1.0, np.full(n1, big), np.full(n2, big), np.ones(b.size)])
    n = n1 + n2
    r, c = min_weight_full_bipartite_matching(csr_matrix((vals, (rows, cols)), shape=(n, n)))
    real = (r < n1) & (c < n2)
    mate1[r[real]] = c[real]
    mate2[c[real]] = r[real]
    return mate1, mate2


def _exact_by_component(
    b: np.ndarray, g: np.ndarray, d2: np.ndarray, n1: int, n2: int
) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-distance maximum matching, solved per connected component."""
    mate1 = np.full(n1, -1, dtype=np.int64)
    mate2 = np.full(n2, -1, dtype=np.int64)
    if b.size == 0:
        return mate1, mate2
    adj = csr_matrix((np.ones(b.size), (b, n1 + g)), shape=(n1 + n2, n1 + n2))
    _, comp = connected_components(adj, directed=False)
    ecomp = comp[b]
    order = np.argsort(ecomp, kind="stable")
    cuts = np.flatnonzero(np.diff(ecomp[order])) + 1
    cost = _cost(d2)
    for idx in np.split(order, cuts):
        ub, ib = np.unique(b[idx], return_inverse=True)
        ug, ig = np.unique(g[idx], return_inverse=True)
        m1, _ = _min_cost_max_matching(ib, ig, cost[idx], ub.size, ug.size)
        ok = m1 >= 0
        mate1[ub[ok]] = ug[m1[ok]]
        mate2[ug[m1[ok]]] = ub[ok]
    return mate1, mate2


def match_radius_graph(
    b: np.ndarray, g: np.ndarray, d2: np.ndarray, n1: int, n2: int, tiebreak: Tiebreak = "greedy"
) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-cardinality one-to-one matching on a radius graph.

    ``b``, ``g``, ``d2``: (E,) edges (machine index < n1, GT index < n2,
    squared distance), sorted by ``(b, g)`` as :func:`radius_edges` returns
    them.  Returns ``mate1`` (n1,) and ``mate2`` (n2,): the partner's index,
    or -1.  The cardinality is always maximum; ``tiebreak`` picks which maximum
    matching: ``"greedy"`` (fast; nearest distance level first, then
    augmentation and nearer-pixel swaps) or ``"exact"`` (the minimum total
    rounded distance, the official optimum; slow, meant for checks).
    """
    b = np.asarray(b, dtype=np.int64)
    g = np.asarray(g, dtype=np.int64)
    d2 = np.asarray(d2, dtype=np.int64)
    if tiebreak == "exact":
        return _exact_by_component(b, g, d2, n1, n2)
    if tiebreak != "greedy":
        raise ValueError(f"unknown tiebreak {tiebreak!r}")
    mate1 = np.full(n1, -1, dtype=np.int64)
    mate2 = np.full(n2, -1, dtype=np.int64)
    if b.size == 0:
        return mate1, mate2
    # Work on the matchable pixels only (those with at least one edge).
    ub = np.flatnonzero(_first_of_runs(b))
    mb = b[ub]
    cb = np.repeat(np.arange(mb.size), np.diff(np.append(ub, b.size)))
    has_g = np.zeros(n2, dtype=bool)
    has_g[g] = True
    mg = np.flatnonzero(has_g)
    cg = np.cumsum(has_g) - 1
    cg = cg[g]
    m1, m2 = _greedy_by_level(cb, cg, d2, mb.size, mg.size)
    _augment_short(cb, cg, d2, m1, m2)
    _augment_to_maximum(cb, cg, m1, m2)
    _improve_swaps(cb, cg, d2, m1, m2)
    ok = m1 >= 0
    mate1[mb[ok]] = mg[m1[ok]]
    mate2[mg[m1[ok]]] = mb[ok]
    return mate1, mate2


def correspond_pixels(
    bmap1: np.ndarray, bmap2: np.ndarray, max_dist: float = 0.0075, tiebreak: Tiebreak = "greedy"
) -> tuple[np.ndarray, np.ndarray]:
    """Match two boundary maps one-to-one within ``max_dist`` × image diagonal.

    ``bmap1`` (machine) and ``bmap2`` (ground truth): (h, w) boolean maps.
    Returns two (h, w) boolean maps: the pixels of each map that are matched.
    The counterpart of the official ``correspondPixels`` (which returns the
    partner's linear index instead of a flag).
    """
    bmap1 = np.asarray(bmap1, dtype=bool)
    bmap2 = np.asarray(bmap2, dtype=bool)
    if bmap1.shape != bmap2.shape or bmap1.ndim != 2:
        raise ValueError(f"boundary maps must be 2-D and of equal shape, got {bmap1.shape} and {bmap2.shape}")
    table = neighbour_table(bmap2, max_distance_px(bmap1.shape, max_dist))
    machine = np.flatnonzero(bmap1)
    b, g, d2 = radius_edges(table, machine)
    mate1, mate2 = match_radius_graph(b, g, d2, machine.size, table.n_gt, tiebreak)
    m1 = np.zeros(bmap1.size, dtype=bool)
    m1[machine[mate1 >= 0]] = True
    m2 = np.zeros(bmap2.size, dtype=bool)
    m2[table.gt_flat[mate2 >= 0]] = True
    return m1.reshape(bmap1.shape), m2.reshape(bmap2.shape)
