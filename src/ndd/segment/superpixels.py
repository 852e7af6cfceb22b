"""Pixel-accurate finest regions from an edge map.

The grid hierarchy of paper §6 lives on the stride-8 feature grid: its finest segments are
blocks of 8x8 pixels (or FAI-snapped versions of them) and it has only a few dozen of them.
A learned edge map (the HED head of ``vgg16_hed``) locates boundaries to the pixel, so its
watershed gives hundreds of small regions whose borders follow the contours; merging them
(:func:`ndd.segment.hierarchy_from_superpixels`) with the mean contour strength along shared
borders (as OWT-UCM does) and the neural diffusion similarity between regions gives a
hierarchy with pixel-accurate boundaries at every level.

* :func:`watershed_superpixels` - watershed of the edge map from its h-minima;
* :func:`absorb_small_regions` - slivers between the flanks of a contour join the neighbour
  behind their weakest border.

The region statistics the merging needs (:func:`ndd.segment.boundary_sums`,
:func:`ndd.segment.grid_similarity_sums`) live in :mod:`ndd.segment.regions`.
"""

from __future__ import annotations

import numpy as np
from skimage.measure import label as cc_label
from skimage.morphology import local_minima, reconstruction
from skimage.segmentation import watershed

from .cleanup import relabel_consecutive
from .regions import boundary_sums

__all__ = ["watershed_superpixels", "absorb_small_regions"]


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

    Example:
        >>> labels = np.array([[0, 0, 1, 2, 2]] * 3)  # region 1: a 3-pixel sliver
        >>> edges = np.array([[0.0, 0.9, 0.0, 0.3, 0.0]] * 3)
        >>> absorb_small_regions(labels, edges, min_size=4)[0].tolist()  # joins 2: weaker border
        [0, 0, 1, 1, 1]
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
