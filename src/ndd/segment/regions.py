"""The region graph of a label map: which regions touch, and the pair sums that merging averages.

Every function here reads a label map (and a per-pixel or per-node quantity) and returns
region-level numbers: a (n, n) matrix over pairs of regions, plus sizes where a sum needs them.
The merging (:func:`ndd.segment.agglomerate`) works on these numbers only and never sees
pixels again.

* :func:`region_adjacency` - which regions share a pixel edge;
* :func:`boundary_sums` - summed edge strength and length of every shared border;
* :func:`segment_similarity_sums` - a pixel similarity summed over pairs of regions;
* :func:`pixel_grid_nodes`, :func:`grid_similarity_sums` - the same for a similarity that
  lives on the coarse feature grid, each pixel taking its nearest grid node.

Neighbourhoods are 4-connected throughout: a BSDS ``ucm2`` can only represent 4-connected
regions (see ``ucm.py``), so two regions that touch only at a corner are not neighbours.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

__all__ = ["region_adjacency", "boundary_sums", "segment_similarity_sums", "pixel_grid_nodes", "grid_similarity_sums"]


def region_adjacency(labels: np.ndarray, n_segments: int | None = None) -> np.ndarray:
    """Which segments touch along a pixel edge (4-neighbourhood).

    4- rather than 8-adjacency: two segments that touch only at a corner would form a region
    that a BSDS ``ucm2`` cannot represent (its regions are 4-connected), see ``ucm.py``.

    Args:
        labels: (h, w) integer labels in ``0 .. n_segments-1``.
        n_segments: number of segments (default ``labels.max() + 1``).

    Returns:
        (n, n) symmetric boolean matrix with a False diagonal.

    Example:
        >>> region_adjacency(np.array([[0, 1], [2, 0]])).astype(int).tolist()
        [[0, 1, 1], [1, 0, 0], [1, 0, 0]]
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


def boundary_sums(labels: np.ndarray, strength: np.ndarray, n_segments: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Summed edge strength and length of the border between every pair of regions.

    A border element is a pair of 4-neighbouring pixels with different labels; its strength is
    the larger of ``strength`` at the two pixels (the ridge of an edge map lies on one side).

    Args:
        labels: (H, W) int labels ``0 .. n-1``.
        strength: (H, W) edge strength.
        n_segments: ``n`` (default ``labels.max() + 1``).

    Returns:
        ``(sums, lengths)``: (n, n) symmetric float64; ``sums / lengths`` is the mean contour
        strength between two adjacent regions (``lengths == 0`` for non-adjacent pairs).

    Example:
        >>> labels = np.array([[0, 0, 1], [0, 0, 1]])
        >>> sums, lengths = boundary_sums(labels, np.array([[0.0, 0.5, 0.1], [0.0, 0.3, 0.1]]))
        >>> sums[0, 1].item(), lengths[0, 1].item()
        (0.8, 2.0)
    """
    labels = np.asarray(labels, dtype=np.int64)
    strength = np.asarray(strength, dtype=np.float64)
    if labels.shape != strength.shape or labels.ndim != 2:
        raise ValueError(f"labels {labels.shape} and strength {strength.shape} must be the same (H, W)")
    n = int(labels.max()) + 1 if n_segments is None else int(n_segments)
    pairs, values = [], []
    for (la, lb), (sa, sb) in (
        ((labels[:, :-1], labels[:, 1:]), (strength[:, :-1], strength[:, 1:])),
        ((labels[:-1, :], labels[1:, :]), (strength[:-1, :], strength[1:, :])),
    ):
        cut = la != lb
        pairs.append(la[cut] * n + lb[cut])
        values.append(np.maximum(sa[cut], sb[cut]))
    idx = np.concatenate(pairs)
    val = np.concatenate(values)
    sums = np.bincount(idx, weights=val, minlength=n * n).reshape(n, n)
    lengths = np.bincount(idx, minlength=n * n).reshape(n, n).astype(np.float64)
    return sums + sums.T, lengths + lengths.T


def segment_similarity_sums(labels: np.ndarray, similarity: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Block sums of a pixel similarity matrix over pairs of segments.

    Args:
        labels: (h, w) or (N,) integer labels ``0 .. n-1`` in the row-major order of ``similarity``.
        similarity: (N, N) pixel similarity (``K_D`` or a feature kernel ``W``).

    Returns:
        ``(S, sizes)``: (n, n) float64 ``S_ab = Σ_{i∈a, j∈b} (K_ij + K_ji) / 2`` (symmetrised)
        and (n,) float64 segment sizes.

    Example:
        >>> S, sizes = segment_similarity_sums(np.array([0, 0, 1]), np.eye(3))
        >>> S.tolist(), sizes.tolist()
        ([[2.0, 0.0], [0.0, 1.0]], [2.0, 1.0])
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


def pixel_grid_nodes(size: tuple[int, int], grid_shape: tuple[int, int], stride: int = 8) -> np.ndarray:
    """(H, W) index of the grid node nearest to each pixel (node ``j`` sits on pixel ``stride j``).

    Example:
        >>> pixel_grid_nodes((1, 12), (1, 2))[0].tolist()
        [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]
    """
    H, W = int(size[0]), int(size[1])
    h, w = int(grid_shape[0]), int(grid_shape[1])
    rows = np.minimum(np.floor(np.arange(H) / stride + 0.5).astype(np.int64), h - 1)
    cols = np.minimum(np.floor(np.arange(W) / stride + 0.5).astype(np.int64), w - 1)
    return rows[:, None] * w + cols[None, :]


def grid_similarity_sums(labels: np.ndarray, similarity: Tensor | np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Block sums over pixel regions of a similarity that lives on a coarse grid.

    Every pixel takes the similarity of its grid node (``nodes``), so ``S_ab`` sums
    ``similarity[node(p), node(q)]`` over the pixels ``p`` of region ``a`` and ``q`` of ``b``:
    ``S = Z K Z^T`` with ``Z`` the (n, N) count of each region's pixels at each node.

    Args:
        labels: (H, W) int labels ``0 .. n-1``.
        similarity: (N, N) grid similarity (e.g. ``K_D``).
        nodes: (H, W) grid node of each pixel (:func:`pixel_grid_nodes`).

    Returns:
        ``(S, sizes)``: (n, n) symmetric float64 sums and (n,) pixel counts.

    Example:
        >>> labels = np.array([[0, 0, 1, 1]])
        >>> nodes = np.array([[0, 0, 0, 1]])  # the third pixel sits nearest node 0
        >>> S, sizes = grid_similarity_sums(labels, np.array([[1.0, 0.5], [0.5, 1.0]]), nodes)
        >>> S.tolist(), sizes.tolist()
        ([[4.0, 3.0], [3.0, 3.0]], [2.0, 2.0])
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    nodes = np.asarray(nodes, dtype=np.int64).reshape(-1)
    K = torch.as_tensor(similarity).detach().to("cpu", torch.float64).numpy()
    N = K.shape[0]
    if K.shape != (N, N) or nodes.shape != labels.shape or nodes.max() >= N:
        raise ValueError(f"similarity {K.shape} does not fit the pixel-to-node map (max node {nodes.max()})")
    n = int(labels.max()) + 1
    Z = sp.csr_matrix((np.ones(labels.size), (labels, nodes)), shape=(n, N))
    ZK = np.asarray(Z @ K)  # (n, N)
    S = np.asarray(Z @ ZK.T)  # (n, n)
    S = 0.5 * (S + S.T)
    return S, np.asarray(Z.sum(axis=1)).reshape(-1)
