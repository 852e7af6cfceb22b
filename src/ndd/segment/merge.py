"""Greedy average-linkage merging of segments, one pair at a time, down to one segment.

Everything after one block sum of the pixel similarity matrix works on segment-level
quantities: with ``S_ab`` = sum of similarities over all cross pairs and ``n_a`` = sizes,
the average linkage of a merged pair is updated by adding rows of ``S`` and sizes, so no
merge ever looks at pixels again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = ["LinkageTerm", "agglomerate", "merge_hierarchy", "region_adjacency", "segment_similarity_sums"]


def region_adjacency(labels: np.ndarray, n_segments: int | None = None) -> np.ndarray:
    """Which segments touch along a pixel edge (4-neighbourhood).

    4- rather than 8-adjacency: two segments that touch only at a corner would form a region
    that a BSDS ``ucm2`` cannot represent (its regions are 4-connected), see ``ucm.py``.

    Args:
        labels: (h, w) integer labels in ``0 .. n_segments-1``.
        n_segments: number of segments (default ``labels.max() + 1``).

    Returns:
        (n, n) symmetric boolean matrix with a False diagonal.
    """
    labels = np.asarray(labels)
    n = int(labels.max()) + 1 if n_segments is None else n_segments
    adj = np.zeros((n, n), dtype=bool)
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        diff = a != b
        adj[a[diff], b[diff]] = True
    adj |= adj.T
    np.fill_diagonal(adj, False)
    return adj


def segment_similarity_sums(labels: np.ndarray, similarity: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Block sums of a pixel similarity matrix over pairs of segments.

    Args:
        labels: (h, w) or (N,) integer labels ``0 .. n-1`` in the row-major order of ``similarity``.
        similarity: (N, N) pixel similarity (``K_D`` or a feature kernel ``W``).

    Returns:
        ``(S, sizes)``: (n, n) float64 ``S_ab = Σ_{i∈a, j∈b} (K_ij + K_ji) / 2`` (symmetrised)
        and (n,) float64 segment sizes.
    """
    K = torch.as_tensor(similarity).detach()
    flat = torch.as_tensor(np.asarray(labels).reshape(-1), dtype=torch.int64, device=K.device)
    if K.ndim != 2 or K.shape != (flat.numel(), flat.numel()):
        raise ValueError(f"similarity must be ({flat.numel()}, {flat.numel()}), got {tuple(K.shape)}")
    # Z^T K Z with one-hot Z as two index-adds (N² + nN adds, on K's device); the second stage,
    # which sums up to N values per entry, runs in float64
    n = int(flat.max()) + 1
    rows = torch.zeros(n, K.shape[1], dtype=K.dtype, device=K.device).index_add_(0, flat, K)
    S = torch.zeros(n, n, dtype=torch.float64, device=K.device).index_add_(1, flat, rows.to(torch.float64))
    S = S.cpu().numpy()
    S = 0.5 * (S + S.T)
    return S, torch.bincount(flat, minlength=n).cpu().numpy().astype(np.float64)


@dataclass(frozen=True)
class LinkageTerm:
    """One additive term of a merging score: ``weight * numerator / denominator``.

    Both matrices are pair sums that add up when clusters merge (``N[a+b, k] = N[a, k] +
    N[b, k]``), so every term is an average over the union: similarity sums over sizes
    products (average linkage), or boundary-strength sums over boundary lengths (the mean
    contour strength between two regions, as OWT-UCM). ``empty`` is the ratio used where the
    denominator is 0 (e.g. regions that share no boundary).
    """

    numerator: np.ndarray
    denominator: np.ndarray
    weight: float = 1.0
    empty: float = 0.0


def agglomerate(
    sums: np.ndarray | None,
    sizes: np.ndarray | None,
    allowed: np.ndarray | None = None,
    fallback: np.ndarray | None = None,
    terms: Sequence[LinkageTerm] = (),
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
        sums: (n, n) symmetric sums of cross similarities (:func:`segment_similarity_sums`),
            or ``None`` when only ``terms`` score.
        sizes: (n,) positive sizes (ignored when ``sums`` is None, except for ``n``).
        allowed: optional (n, n) boolean: which pairs may merge (unions inherit their members'
            permissions). ``None`` = any pair.
        fallback: optional (n, n) boolean used once no allowed pair is left; if that runs out
            too (or is None) any pair may merge, so the result always ends in one cluster.
        terms: further :class:`LinkageTerm` s added to the score.

    Returns:
        ``(merges, scores)``: (n-1, 2) int64 cluster ids (smaller first) and (n-1,) float64
        score of each merged pair (the average similarity when only ``sums`` is given).
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

    def score(rows: np.ndarray | slice) -> np.ndarray:
        total = 0.0
        for num, den, w, e in zip(nums, dens, weights, empties):
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


def merge_hierarchy(
    labels: np.ndarray,
    similarity: Tensor | np.ndarray,
    adjacency: Literal["adjacent", "any"] = "adjacent",
) -> list[tuple[int, int, float]]:
    """Merge segments pairwise by largest average similarity until one segment is left.

    The average similarity of two segments is the mean of ``similarity`` over all their
    cross pairs. By default only segments sharing a pixel edge merge: merging by similarity
    alone joins far-apart look-alike regions into spatially disconnected segments (a known
    failure mode), and a disconnected region is not representable in a BSDS ``ucm2``.

    Args:
        labels: (h, w) integer labels ``0 .. n-1`` (every id present), row-major w.r.t.
            ``similarity``.
        similarity: (h*w, h*w) pixel similarity: ``K_D`` (default of the pipeline) or the
            feature kernel ``W`` (authors' code).
        adjacency: ``"adjacent"`` (4-neighbour touching segments only) or ``"any"``.

    Returns:
        ``n - 1`` merges ``(a, b, average_similarity)`` in order, with scipy-linkage cluster
        ids: leaves ``0 .. n-1``, merge ``m`` creates cluster ``n + m``.
    """
    labels = np.asarray(labels)
    n = _check_labels(labels)
    S, sizes = segment_similarity_sums(labels, similarity)
    if adjacency == "adjacent":
        allowed = region_adjacency(labels, n)
    elif adjacency == "any":
        allowed = None
    else:
        raise ValueError(f"adjacency must be 'adjacent' or 'any', got {adjacency!r}")
    merges, sims = agglomerate(S, sizes, allowed)
    return [(int(a), int(b), float(s)) for (a, b), s in zip(merges, sims)]


def _check_labels(labels: np.ndarray) -> int:
    if labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError("labels must be a non-empty integer array")
    n = int(labels.max()) + 1
    if labels.min() < 0 or len(np.unique(labels)) != n:
        raise ValueError("labels must use every id in 0 .. n-1")
    return n
