"""From a similarity (and an edge map) to a :class:`Hierarchy`: the two segmentation pipelines.

* :func:`segment_from_similarity` - paper §6 on the feature grid ("Ours-LR"): coverage centres
  (Eq. 9) → kernel k-means → spatially connected finest segments → :func:`hierarchy_from_segments`;
  :func:`ndd.segment.upsample_hierarchy` brings the result to full resolution ("Ours-HR").
* :func:`segment_from_edges` - pixel-accurate: watershed regions of an edge map, slivers
  absorbed → :func:`hierarchy_from_superpixels`.

Both merge steps read region statistics off the finest labels (:mod:`ndd.segment.regions`),
hand them to :func:`ndd.segment.agglomerate` and wrap the merges in a :class:`Hierarchy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from .centers import coverage_centers
from .cleanup import absorb_small_segments, keep_largest_component, split_components
from .hierarchy import Hierarchy
from .kernel_kmeans import kernel_kmeans
from .merge import LinkageTerm, agglomerate
from .regions import boundary_sums, grid_similarity_sums, pixel_grid_nodes, region_adjacency, segment_similarity_sums
from .superpixels import absorb_small_regions, watershed_superpixels

__all__ = ["GridClustering", "segment_from_similarity", "hierarchy_from_segments", "segment_from_edges", "hierarchy_from_superpixels"]


@dataclass(frozen=True)
class GridClustering:
    """How :func:`segment_from_similarity` finds the finest segments on the grid.

    Attributes:
        first: first centre, see :func:`coverage_centers` (``"argmax"``: the node covering
            the most; ``"fixed"``: node 0, the authors').
        max_centers: cap on centres (``None``: none).
        temperature: ``None`` for hard kernel k-means, else the soft variant's temperature.
        n_iter: k-means iterations.
        cleanup: ``"split"`` (every 4-connected piece of a cluster is a segment, pieces below
            ``min_size`` join their most similar neighbour) or ``"largest"`` (keep each
            cluster's largest piece, the others join the most frequent neighbouring label).

    Example:
        >>> GridClustering.authors()
        GridClustering(first='fixed', max_centers=9, temperature=50.0, n_iter=30, cleanup='largest')
    """

    first: Literal["argmax", "fixed"] | int = "argmax"
    max_centers: int | None = None
    temperature: float | None = None
    n_iter: int = 30
    cleanup: Literal["split", "largest"] = "split"

    @classmethod
    def authors(cls) -> GridClustering:
        """The authors' released choices: node 0 first, at most 9 centres, soft k-means at
        temperature 50, each cluster's largest piece kept."""
        return cls(first="fixed", max_centers=9, temperature=50.0, cleanup="largest")


def segment_from_similarity(
    K: Tensor,
    grid_shape: tuple[int, int],
    merge_similarity: Tensor | None = None,
    coverage_threshold: float = 0.02,
    clustering: GridClustering = GridClustering(),
    min_size: int | None = None,
    adjacency: Literal["adjacent", "any"] = "adjacent",
) -> Hierarchy:
    """Hierarchical segmentation on the feature grid from a similarity matrix ("Ours-LR").

    Coverage centres (Eq. 9) → kernel k-means with ``K`` as the kernel → spatially connected
    finest segments → greedy merging by largest average similarity down to one segment.

    Args:
        K: (N, N) similarity in [0, 1] with ``N = h * w`` in row-major grid order (``K_D``).
        grid_shape: (h, w).
        merge_similarity: (N, N) similarity used for merging (default ``K``; the authors' code
            used the feature kernel ``W``).
        coverage_threshold: residual coverage at which centre selection stops (paper 0.02).
        clustering: centres, k-means and clean-up (:class:`GridClustering`;
            ``GridClustering.authors()`` for the authors' choices).
        min_size: ``cleanup="split"`` only: minimum segment size in grid cells (default
            ``max(2, N // 400)``, i.e. 0.25 % of the grid).
        adjacency: merge only 4-adjacent segments (default) or ``"any"`` pair.

    Returns:
        :class:`Hierarchy` on the (h, w) grid.

    Example:
        >>> right = torch.arange(16) % 4 >= 2  # a 4x4 grid: left and right halves
        >>> K = (right[:, None] == right[None, :]).float()
        >>> segment_from_similarity(K, (4, 4)).labels_at(2).tolist()
        [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]]
    """
    h, w = int(grid_shape[0]), int(grid_shape[1])
    K = torch.as_tensor(K)
    if K.shape != (h * w, h * w):
        raise ValueError(f"K must be ({h * w}, {h * w}) for grid {h}x{w}, got {tuple(K.shape)}")
    K = K.detach()
    cleanup = clustering.cleanup
    if min_size is None:
        min_size = max(2, (h * w) // 400)
    M = K if merge_similarity is None else torch.as_tensor(merge_similarity).detach()

    centers = coverage_centers(K, coverage_threshold, clustering.max_centers, clustering.first)
    clusters = kernel_kmeans(K, centers, n_iter=clustering.n_iter, temperature=clustering.temperature)
    clusters = clusters.cpu().numpy().reshape(h, w)
    if cleanup == "split":
        finest = split_components(clusters)
        if min_size > 1:
            sums, _ = segment_similarity_sums(finest, M)
            finest = absorb_small_segments(finest, min_size, sums)
    elif cleanup == "largest":
        finest = keep_largest_component(clusters)
    else:
        raise ValueError(f"cleanup must be 'split' or 'largest', got {cleanup!r}")
    return hierarchy_from_segments(finest, M, adjacency)


def hierarchy_from_segments(
    finest: np.ndarray,
    similarity: Tensor | np.ndarray,
    adjacency: Literal["adjacent", "any"] = "adjacent",
) -> Hierarchy:
    """Merge segments pairwise by largest average similarity until one segment is left.

    The average similarity of two segments is the mean of ``similarity`` over all their
    cross pairs (average linkage, updated from block sums as segments grow). By default only
    segments sharing a pixel edge merge: merging by similarity alone joins far-apart look-alike
    regions into spatially disconnected segments (a known failure mode), and a disconnected
    region is not representable in a BSDS ``ucm2``.

    Args:
        finest: (h, w) labels ``0 .. n-1`` (every id present), row-major w.r.t. ``similarity``.
        similarity: (h*w, h*w) pixel similarity: ``K_D`` or the feature kernel (paper §6), or
            the banded feature kernel ``W`` (authors' code).
        adjacency: ``"adjacent"`` (4-neighbour touching segments only) or ``"any"``.

    Returns:
        :class:`Hierarchy` on the (h, w) grid; its ``similarities`` are the average
        similarities of the merged pairs, and it keeps ``segment_similarity`` and
        ``segment_sizes`` so that :func:`ndd.segment.upsample_hierarchy` can re-run the merging.

    Example:
        >>> K = np.array([[1.0, 0.2, 0.9], [0.2, 1.0, 0.3], [0.9, 0.3, 1.0]])
        >>> hierarchy_from_segments(np.array([[0, 1, 2]]), K).merges.tolist()  # 0, 2 do not touch
        [[1, 2], [0, 3]]
        >>> hierarchy_from_segments(np.array([[0, 1, 2]]), K, adjacency="any").merges.tolist()
        [[0, 2], [1, 3]]
    """
    finest = np.asarray(finest, dtype=np.int64)
    n = int(finest.max()) + 1
    sums, sizes = segment_similarity_sums(finest, similarity)
    if adjacency not in ("adjacent", "any"):
        raise ValueError(f"adjacency must be 'adjacent' or 'any', got {adjacency!r}")
    allowed = region_adjacency(finest, n) if adjacency == "adjacent" else None
    pairs, sims = agglomerate(sums, sizes, allowed)
    return Hierarchy.from_merges(finest, pairs, sims, sums / np.outer(sizes, sizes), sizes)


def hierarchy_from_superpixels(
    superpixels: np.ndarray,
    edges: np.ndarray,
    similarity_sums: np.ndarray | None = None,
    sizes: np.ndarray | None = None,
    edge_weight: float = 0.5,
    small_edge_weight: float | None = None,
    small_size: float = 1.0,
) -> Hierarchy:
    """Merge pixel-accurate regions by contour strength and region similarity.

    Adjacent regions ``a, b`` merge in order of the largest score
    ``w * (1 - mean edge strength on their border) + (1 - w) * mean similarity``, both
    averages over the unions as regions grow (the mean-boundary rule of OWT-UCM plus average
    linkage); merge heights are ``1 - score``. ``w`` is ``edge_weight``, or, with
    ``small_edge_weight``, ``edge_weight + (small_edge_weight - edge_weight) exp(-m /
    small_size)`` with ``m`` the pixel count of the smaller region: small fragments go by
    their contours (OWT-UCM), large regions by how alike they look.

    Args:
        superpixels: (H, W) labels ``0 .. n-1``, every region 4-connected
            (e.g. :func:`ndd.segment.watershed_superpixels`).
        edges: (H, W) edge strength in [0, 1].
        similarity_sums: optional (n, n) similarity sums over region pairs
            (:func:`ndd.segment.grid_similarity_sums` of ``K_D``); ``None`` merges by edges only.
        sizes: (n,) region sizes that ``similarity_sums`` are averaged by.
        edge_weight: weight of the contour term in [0, 1].
        small_edge_weight: weight of the contour term for pairs with a tiny region, in [0, 1]
            (``None``: ``edge_weight`` for every pair).
        small_size: pixels: the size scale of "tiny" (> 0).

    Returns:
        :class:`Hierarchy` at the resolution of ``superpixels``.
    """
    for name, w in (("edge_weight", edge_weight), ("small_edge_weight", small_edge_weight)):
        if w is not None and not 0.0 <= w <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {w}")
    if small_edge_weight is not None and not small_size > 0:
        raise ValueError(f"small_size must be > 0, got {small_size}")
    superpixels = np.asarray(superpixels, dtype=np.int64)
    n = int(superpixels.max()) + 1
    strength, length = boundary_sums(superpixels, edges, n)
    if similarity_sums is None:
        edge_weight, small_edge_weight = 1.0, None  # contours alone
    small = {} if small_edge_weight is None else {"small_weight": small_edge_weight, "small_size": float(small_size)}
    terms = [LinkageTerm(length - strength, length, weight=edge_weight, **small)]
    if edge_weight < 1.0 or small:
        if sizes is None:
            raise ValueError("similarity_sums need the region sizes")
        size = np.asarray(sizes, dtype=np.float64)
        rest = {} if not small else {"small_weight": 1.0 - small_edge_weight, "small_size": float(small_size)}
        terms.append(LinkageTerm(np.asarray(similarity_sums, dtype=np.float64), np.outer(size, size),
                                 weight=1.0 - edge_weight, **rest))
    pixels = np.bincount(superpixels.reshape(-1), minlength=n).astype(np.float64) if small else None
    pairs, scores = agglomerate(None, None, allowed=length > 0, terms=terms, cluster_sizes=pixels)
    return Hierarchy.from_merges(superpixels, pairs, scores)


def segment_from_edges(
    edges: np.ndarray,
    similarity: Tensor | np.ndarray | None = None,
    grid_shape: tuple[int, int] | None = None,
    depth: float = 0.02,
    min_size: int = 200,
    edge_weight: float = 0.2,
    small_edge_weight: float | None = None,
    small_size: float = 1.0,
) -> Hierarchy:
    """Pixel-accurate hierarchy from an edge map and a grid similarity.

    Watershed regions of ``edges`` (:func:`ndd.segment.watershed_superpixels`), slivers under
    ``min_size`` pixels absorbed (:func:`ndd.segment.absorb_small_regions`), then merged by
    contour strength and the average of ``similarity`` between regions
    (:func:`hierarchy_from_superpixels`).

    Args:
        edges: (H, W) edge strength in [0, 1].
        similarity: optional (N, N) similarity on an ``(h, w)`` grid whose node ``j`` sits on
            pixel ``8 j`` (the feature kernel or ``K_D`` of a model); ``None``: edges only.
        grid_shape: ``(h, w)`` of ``similarity``.
        depth, min_size, edge_weight, small_edge_weight, small_size: see the functions above.

    Returns:
        :class:`Hierarchy` at (H, W).

    Example::

        hier = segment_from_edges(out.edges[0, 0].numpy(), K, out.grid_shape)
        ucm2 = hier.to_ucm2()
    """
    edges = np.asarray(edges, dtype=np.float64)
    regions = absorb_small_regions(watershed_superpixels(edges, depth), edges, int(min_size))
    if similarity is None:
        return hierarchy_from_superpixels(regions, edges, edge_weight=1.0)
    if grid_shape is None:
        raise ValueError("a grid similarity needs its grid_shape")
    nodes = pixel_grid_nodes(edges.shape, grid_shape)
    sums, sizes = grid_similarity_sums(regions, similarity, nodes)
    return hierarchy_from_superpixels(regions, edges, sums, sizes, edge_weight=edge_weight,
                                      small_edge_weight=small_edge_weight, small_size=small_size)
