"""Greedy agglomeration of clusters from pair sums: numbers in, merges out.

Everything here works on region-level quantities (the pair sums of :mod:`ndd.segment.regions`),
never on label maps: with ``S_ab`` = sum of similarities over all cross pairs and ``n_a`` =
sizes, the average linkage of a merged pair is updated by adding rows of ``S`` and sizes, so
no merge ever looks at pixels again. Further :class:`LinkageTerm` s (e.g. the mean contour
strength along shared borders) add to the score the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["LinkageTerm", "agglomerate"]


@dataclass(frozen=True)
class LinkageTerm:
    """One additive term of a merging score: ``weight * numerator / denominator``.

    Both matrices are pair sums that add up when clusters merge (``N[a+b, k] = N[a, k] +
    N[b, k]``), so every term is an average over the union: similarity sums over sizes
    products (average linkage), or boundary-strength sums over boundary lengths (the mean
    contour strength between two regions, as OWT-UCM). ``empty`` is the ratio used where the
    denominator is 0 (e.g. regions that share no boundary).

    ``small_weight`` makes the weight depend on the pair: ``weight + (small_weight - weight)
    exp(-m / small_size)`` with ``m`` the size of the smaller of the two clusters (sizes from
    :func:`agglomerate`'s ``cluster_sizes``), so pairs with a tiny member are scored mostly by
    ``small_weight`` and pairs of large clusters by ``weight``. A pair's weight changes only
    when one of its clusters merges, as its ratios do.
    """

    numerator: np.ndarray
    denominator: np.ndarray
    weight: float = 1.0
    empty: float = 0.0
    small_weight: float | None = None
    small_size: float = 1.0


def agglomerate(
    sums: np.ndarray | None,
    sizes: np.ndarray | None,
    allowed: np.ndarray | None = None,
    fallback: np.ndarray | None = None,
    terms: Sequence[LinkageTerm] = (),
    cluster_sizes: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy agglomeration: always merge the allowed pair of largest score.

    The score of two clusters is ``sums_ab / (size_a size_b)`` (average linkage) plus the
    weighted ratios of ``terms`` (each ``weight * numerator_ab / denominator_ab``); all are
    updated by adding rows when clusters merge, so no merge ever looks at pixels again.

    Clusters follow the scipy linkage convention: leaves are ``0 .. n-1`` and the cluster made
    by merge ``m`` is ``n + m``. Ties go to the lowest slot indices, so the result is
    deterministic. Row maxima are cached: only rows whose best partner was one of the merged
    pair are recomputed in full; the others only compare against the new row.

    Args:
        sums: (n, n) symmetric sums of cross similarities (:func:`ndd.segment.segment_similarity_sums`),
            or ``None`` when only ``terms`` score.
        sizes: (n,) positive sizes (ignored when ``sums`` is None, except for ``n``).
        allowed: optional (n, n) boolean: which pairs may merge (unions inherit their members'
            permissions). ``None`` = any pair.
        fallback: optional (n, n) boolean used once no allowed pair is left; if that runs out
            too (or is None) any pair may merge, so the result always ends in one cluster.
        terms: further :class:`LinkageTerm` s added to the score.
        cluster_sizes: (n,) positive sizes of the leaves (added up as clusters merge) that
            terms with a ``small_weight`` weigh pairs by; needed only by such terms.

    Returns:
        ``(merges, scores)``: (n-1, 2) int64 cluster ids (smaller first) and (n-1,) float64
        score of each merged pair (the average similarity when only ``sums`` is given).

    Example:
        >>> S = np.array([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
        >>> merges, scores = agglomerate(S, np.ones(3))
        >>> merges.tolist(), scores.tolist()
        ([[0, 1], [2, 3]], [1.0, 0.0])
    """
    all_terms = list(terms)
    if sums is not None:
        size = np.asarray(sizes, dtype=np.float64)
        all_terms.insert(0, LinkageTerm(np.asarray(sums, dtype=np.float64), np.outer(size, size)))
    if not all_terms:
        raise ValueError("agglomerate needs sums and sizes or at least one term")
    n = len(all_terms[0].numerator)
    nums = [np.array(t.numerator, dtype=np.float64) for t in all_terms]
    dens = [np.array(t.denominator, dtype=np.float64) for t in all_terms]
    for num, den in zip(nums, dens):
        if num.shape != (n, n) or den.shape != (n, n):
            raise ValueError(f"every linkage matrix must be ({n}, {n})")
    weights = [float(t.weight) for t in all_terms]
    empties = [float(t.empty) for t in all_terms]
    scheduled = [t.small_weight is not None for t in all_terms]
    size_of = None
    if any(scheduled):
        if cluster_sizes is None or np.shape(cluster_sizes) != (n,) or not np.all(np.asarray(cluster_sizes) > 0):
            raise ValueError(f"terms with a small_weight need ({n},) positive cluster_sizes")
        if any(t.small_weight is not None and not t.small_size > 0 for t in all_terms):
            raise ValueError("small_size must be > 0")
        size_of = np.asarray(cluster_sizes, dtype=np.float64).copy()

    def score(rows: np.ndarray | slice) -> np.ndarray:
        total = 0.0
        smaller = None
        if size_of is not None:  # (rows, n) size of the smaller cluster of each pair
            smaller = np.minimum(size_of[rows][..., None] if isinstance(rows, slice) else size_of[rows], size_of)
        for term, num, den, w, e, sched in zip(all_terms, nums, dens, weights, empties, scheduled):
            if sched:
                w = w + (term.small_weight - w) * np.exp(-smaller / term.small_size)
            with np.errstate(divide="ignore", invalid="ignore"):
                total = total + w * np.where(den[rows] > 0, num[rows] / den[rows], e)
        return total

    active = np.ones(n, dtype=bool)
    node = np.arange(n)
    slot_of = np.arange(n)  # leaf -> slot holding its cluster
    stages = [m for m in (allowed, fallback) if m is not None] + [np.ones((n, n), dtype=bool)]
    stage = 0
    adj = _start_permissions(stages[0], n)
    A, best_val, best_j = _linkage(score(slice(None)), adj)
    merges = np.zeros((max(n - 1, 0), 2), dtype=np.int64)
    sims = np.zeros(max(n - 1, 0), dtype=np.float64)

    for m in range(n - 1):
        i = int(np.argmax(best_val))
        while not np.isfinite(best_val[i]):  # disconnected under current permissions
            stage += 1
            # a cluster may merge with whatever any of its leaves may merge with
            M = np.zeros((n, n))
            M[np.arange(n), slot_of] = 1.0
            adj = (M.T @ _start_permissions(stages[stage], n) @ M) > 0
            adj &= np.outer(active, active)
            np.fill_diagonal(adj, False)
            A, best_val, best_j = _linkage(score(slice(None)), adj)
            i = int(np.argmax(best_val))
        a, b = sorted((i, int(best_j[i])))
        merges[m] = sorted((node[a], node[b]))
        sims[m] = A[a, b]
        # fold b into a
        for mat in (*nums, *dens):
            mat[a] += mat[b]
            mat[:, a] += mat[:, b]
        if size_of is not None:
            size_of[a] += size_of[b]
        adj[a] |= adj[b]
        adj[:, a] |= adj[:, b]
        adj[a, a] = False
        adj[b] = adj[:, b] = False
        active[b] = False
        slot_of[slot_of == b] = a
        node[a] = n + m
        row = np.where(adj[a], score(a), -np.inf)
        A[a] = A[:, a] = row
        A[b] = A[:, b] = -np.inf
        best_val[b] = -np.inf
        stale = active & ((best_j == a) | (best_j == b))
        stale[a] = True
        for k in np.flatnonzero(stale):
            best_j[k] = int(np.argmax(A[k]))
            best_val[k] = A[k, best_j[k]]
        better = active & ~stale & (row > best_val)
        best_val[better] = row[better]
        best_j[better] = a
    return merges, sims


def _start_permissions(mask: np.ndarray, n: int) -> np.ndarray:
    mask = np.array(mask, dtype=bool)
    if mask.shape != (n, n):
        raise ValueError(f"permission matrix must be ({n}, {n}), got {mask.shape}")
    mask = mask | mask.T
    np.fill_diagonal(mask, False)
    return mask


def _linkage(scores: np.ndarray, adj: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    A = np.where(adj, scores, -np.inf)
    n = len(A)
    best_j = np.argmax(A, axis=1) if n else np.zeros(0, dtype=np.int64)
    return A, A[np.arange(n), best_j], best_j
