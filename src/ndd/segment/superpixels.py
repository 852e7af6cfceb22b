"""Pixel-accurate finest segments from an edge map, and the region statistics merging needs.

The grid hierarchy of paper §6 lives on the stride-8 feature grid: its finest segments are
blocks of 8x8 pixels (or FAI-snapped versions of them) and it has only a few dozen of them.
A learned edge map (the HED head of ``vgg16_hed``) locates boundaries to the pixel, so its
watershed gives hundreds of small regions whose borders follow the contours; merging them
(:func:`ndd.segment.hierarchy_from_superpixels`) with the mean contour strength along shared
borders (as OWT-UCM does) and the neural diffusion similarity between regions gives a
hierarchy with pixel-accurate boundaries at every level.

* :func:`watershed_superpixels` - watershed of the edge map from its h-minima;
* :func:`boundary_sums` - per pair of adjacent regions: summed edge strength and border length;
* :func:`grid_similarity_sums` - a grid similarity (``K_D`` on the stride-8 grid) summed over
  pairs of pixel regions.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from skimage.measure import label as cc_label
from skimage.morphology import local_minima, reconstruction
from skimage.segmentation import watershed
from torch import Tensor

from .cleanup import relabel_consecutive

__all__ = ["watershed_superpixels", "absorb_small_regions", "boundary_sums", "grid_similarity_sums", "pixel_grid_nodes"]


def watershed_superpixels(edges: np.ndarray, depth: float = 0.02) -> np.ndarray:
    """Regions of the watershed of an edge map, one per basin deeper than ``depth``.

    Markers are the h-minima of ``edges`` (minima at least ``depth`` below the lowest pass to a
    lower basin), so flat noise in smooth areas does not make a region of its own; flooding is
    4-connected, so every region is one 4-connected piece (what a ``ucm2`` can represent).

    Args:
        edges: (H, W) float edge strength in [0, 1] (higher = more likely a boundary).
        depth: the h of the h-minima; 0 keeps every local minimum.

    Returns:
        (H, W) int64 labels ``0 .. n-1``.

    Example:
        >>> e = np.zeros((5, 7)); e[:, 3] = 1.0
        >>> np.unique(watershed_superpixels(e)).tolist()
        [0, 1]
    """
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 2 or edges.size == 0:
        raise ValueError(f"edges must be a non-empty (H, W) map, got shape {edges.shape}")
    if not np.isfinite(edges).all():
        raise ValueError("edges contain NaN or Inf")
    markers = None
    if depth > 0:
        # h-minima transform: basins shallower than depth are filled up to their pass, so each
        # remaining basin is one flat regional minimum of the filled map (one marker)
        filled = reconstruction(edges + depth, edges, method="erosion")
        markers = cc_label(local_minima(filled, connectivity=1, allow_borders=True), background=0, connectivity=1)
    labels = watershed(edges, markers=markers, connectivity=1)
    # watershed regions grown from one connected marker are connected; relabel to 0 .. n-1
    return relabel_consecutive(labels)


def absorb_small_regions(labels: np.ndarray, edges: np.ndarray, min_size: int) -> np.ndarray:
    """Merge regions smaller than ``min_size`` pixels into the neighbour behind their weakest border.

    Watershed basins between the two flanks of a thick or doubled contour are thin slivers
    whose every border is strong: left alone they would survive to the coarsest levels of a
    contour-driven hierarchy. The smallest region goes first, into the 4-adjacent neighbour of
    lowest mean border strength; repeated until every region has ``min_size`` pixels.

    Args:
        labels: (H, W) labels ``0 .. n-1``, regions 4-connected.
        edges: (H, W) edge strength.
        min_size: minimum region size in pixels; ``<= 1`` returns the labels unchanged.

    Returns:
        (H, W) int64 labels ``0 .. n'-1``, still 4-connected.
    """
    labels = relabel_consecutive(labels)
    n = int(labels.max()) + 1
    sizes = np.bincount(labels.ravel(), minlength=n).astype(np.float64)
    if min_size <= 1 or n == 1 or sizes.min() >= min_size:
        return labels
    strength, length = boundary_sums(labels, edges, n)
    alive = np.ones(n, dtype=bool)
    target = np.arange(n)
    while alive.sum() > 1:
        s = int(np.argmin(np.where(alive, sizes, np.inf)))
        if sizes[s] >= min_size:
            break
        nbrs = np.flatnonzero(length[s] > 0)
        t = int(nbrs[np.argmin(strength[s, nbrs] / length[s, nbrs])])
        for m in (strength, length):
            m[t] += m[s]
            m[:, t] += m[:, s]
            m[t, t] = 0.0
            m[s] = 0.0
            m[:, s] = 0.0
        sizes[t] += sizes[s]
        alive[s] = False
        target[target == s] = t
    return relabel_consecutive(target[labels])


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


def pixel_grid_nodes(size: tuple[int, int], grid_shape: tuple[int, int], stride: int = 8) -> np.ndarray:
    """(H, W) index of the grid node nearest to each pixel (node ``j`` sits on pixel ``stride j``)."""
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
