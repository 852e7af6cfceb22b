"""ndd.segment.pipeline: from a similarity (and an edge map) to a ``Hierarchy``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ndd.segment import (
    BSDS_THRESHOLDS,
    GridClustering,
    Hierarchy,
    hierarchy_from_segments,
    hierarchy_from_superpixels,
    labels_from_ucm2,
    region_adjacency,
    segment_from_edges,
    segment_from_similarity,
    split_components,
    watershed_superpixels,
)
from segment_helpers import H, W, block_hierarchy, block_kernel, block_labels, same_partition


# ----------------------------------------------------------------------------- grid (paper §6)
def test_finest_level_recovers_blocks() -> None:
    hierarchy = block_hierarchy()
    assert hierarchy.shape == (H, W)
    assert same_partition(hierarchy.finest, block_labels())


def test_authors_clustering_and_any_run() -> None:
    g = block_labels()
    K = block_kernel(g, noise=0.1)
    authors = segment_from_similarity(K, (H, W), clustering=GridClustering.authors())
    assert authors.n_segments <= 9  # their cap on centres; largest piece kept, so one segment per cluster
    capped = segment_from_similarity(K, (H, W), clustering=GridClustering(max_centers=2, cleanup="largest"))
    assert capped.n_segments <= 2
    anyh = segment_from_similarity(K, (H, W), adjacency="any", merge_similarity=K * 0.5)
    assert anyh.levels([1])[0].max() == 0


def test_single_segment() -> None:
    hier = segment_from_similarity(torch.ones(12, 12), (3, 4))
    assert hier.n_segments == 1 and hier.merges.shape == (0, 2)
    assert np.all(hier.to_ucm2() == 0) and np.all(hier.labels_at(1) == 0)


# ----------------------------------------------------------------------------- merging given segments
def naive_average_linkage(labels: np.ndarray, K: np.ndarray, allowed: np.ndarray | None) -> list[tuple[int, int]]:
    """Recompute the mean similarity over pixels at every step (reference for the fast one)."""
    n = labels.max() + 1
    clusters = {i: [i] for i in range(n)}
    flat = labels.ravel()
    out = []
    for m in range(n - 1):
        best, pair = -np.inf, None
        keys = sorted(clusters)
        for ia, a in enumerate(keys):
            for b in keys[ia + 1:]:
                if allowed is not None and not allowed[np.ix_(clusters[a], clusters[b])].any():
                    continue
                pa, pb = np.isin(flat, clusters[a]), np.isin(flat, clusters[b])
                s = 0.5 * (K[np.ix_(pa, pb)].mean() + K[np.ix_(pb, pa)].mean())
                if s > best + 1e-12:
                    best, pair = s, (a, b)
        a, b = pair
        out.append((a, b))
        clusters[n + m] = clusters.pop(a) + clusters.pop(b)
    return out


@pytest.mark.parametrize("adjacency", ["adjacent", "any"])
def test_incremental_linkage_matches_naive(adjacency: str) -> None:
    rng = np.random.default_rng(1)
    lab = split_components(rng.integers(0, 4, size=(6, 7)))
    K = rng.uniform(0, 1, (42, 42))  # deliberately not symmetric
    hier = hierarchy_from_segments(lab, torch.tensor(K), adjacency=adjacency)
    allowed = region_adjacency(lab) if adjacency == "adjacent" else None
    assert [(a, b) for a, b in hier.merges.tolist()] == naive_average_linkage(lab, K, allowed)


def test_merging_respects_adjacency() -> None:
    # blocks 0 | 1 | 2 in a row: 0 and 2 look alike but do not touch
    lab = np.repeat(np.repeat(np.array([[0, 1, 2]]), 4, axis=1), 4, axis=0)
    S = np.array([[1.0, 0.2, 0.9], [0.2, 1.0, 0.3], [0.9, 0.3, 1.0]])
    f = lab.ravel()
    K = torch.tensor(S[f][:, f])
    adjacent = hierarchy_from_segments(lab, K, "adjacent")
    assert tuple(adjacent.merges[0]) == (1, 2)
    assert tuple(hierarchy_from_segments(lab, K, "any").merges[0]) == (0, 2)
    sims = adjacent.similarities
    assert sims[0] == pytest.approx(0.3)
    assert sims[1] == pytest.approx((0.2 * 16 + 0.9 * 16) / 32)  # average linkage of 0 vs {1, 2}
    with pytest.raises(ValueError, match="adjacency"):
        hierarchy_from_segments(lab, K, "diagonal")


def test_feature_merging_follows_appearance_where_kd_follows_size() -> None:
    """Three strips: a large one A and two small look-alikes B, C (A | B | C).

    Between separated regions the diffusion similarity is about ``exp(-tau (1/pi_a + 1/pi_b))``
    (pi = area fraction), largest for the pair with the large region; the feature kernel
    instead says B and C look alike. Merging by ``K_D`` joins A and B first (size), merging by
    features joins B and C first (appearance, paper §6).
    """
    labels = np.zeros((6, 20), dtype=np.int64)
    labels[:, 12:16] = 1
    labels[:, 16:] = 2
    f = labels.ravel()
    pi = np.bincount(f) / f.size  # 0.6, 0.2, 0.2
    tau = 0.3
    kd = np.exp(-tau * (1 / pi[f][:, None] + 1 / pi[f][None, :]))
    kd[f[:, None] == f[None, :]] = 1.0
    look = np.array([[1.0, 0.0], [0.0, 1.0], [0.05, 1.0]])  # C a slightly different shade of B
    feats = look[f]
    kernel = np.exp(-5.0 * ((feats[:, None] - feats[None, :]) ** 2).sum(-1))
    by_kd = hierarchy_from_segments(labels, torch.tensor(kd))
    by_features = hierarchy_from_segments(labels, torch.tensor(kernel))
    assert tuple(by_kd.merges[0]) == (0, 1)
    assert tuple(by_features.merges[0]) == (1, 2)


# ----------------------------------------------------------------------------- pixel-accurate (edge map)
def cross_edges(h: int = 30, w: int = 40, row: int = 12, col: int = 25) -> np.ndarray:
    """A ridge along one row and one column, low noise elsewhere."""
    rng = np.random.default_rng(0)
    e = 0.05 * rng.random((h, w))
    e[row, :] = 0.9
    e[:, col] = 0.6
    return e


def test_hierarchy_from_superpixels_weakest_contour_first() -> None:
    # three vertical strips; the left border is weak (0.2), the right one strong (0.8)
    labels = np.repeat(np.array([[0] * 5 + [1] * 5 + [2] * 5]), 6, axis=0)
    e = np.zeros(labels.shape)
    e[:, 5] = 0.2
    e[:, 10] = 0.8
    hier = hierarchy_from_superpixels(labels, e, edge_weight=1.0)
    assert [tuple(m) for m in hier.merges] == [(0, 1), (2, 3)]
    np.testing.assert_allclose(hier.heights, [0.2, 0.8])  # height = mean contour strength
    u = hier.to_ucm2()
    assert labels_from_ucm2(u, 0.5).max() + 1 == 2
    # a region similarity that strongly joins 1 and 2 overrides a weak contour preference
    S = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 1.0, 1.0]]) * 30.0 * 30.0
    sizes = np.full(3, 30.0)
    mixed = hierarchy_from_superpixels(labels, e, S, sizes, edge_weight=0.3)
    assert tuple(mixed.merges[0]) == (1, 2)


def test_superpixel_hierarchy_levels_all_reachable_in_ucm2() -> None:
    e = cross_edges()
    e[5, :25] = 0.4
    e[20, 25:] = 0.3
    sp = watershed_superpixels(e, depth=0.1)
    hier = hierarchy_from_superpixels(sp, e, edge_weight=1.0)
    assert hier.n_segments <= 100
    u = hier.to_ucm2(values="rank")
    seen = {int(labels_from_ucm2(u, t).max()) + 1 for t in BSDS_THRESHOLDS}
    assert seen == set(range(1, hier.n_segments + 1))


def test_segment_from_edges_separates_the_regions_an_edge_map_draws() -> None:
    # a 41x57 image: a strong vertical contour at column 28, a weaker horizontal one at row 20
    # on the left half only; grid similarity says left-top and left-bottom look alike
    e = np.zeros((41, 57))
    e[:, 28] = 0.9
    e[20, :28] = 0.5
    grid = (6, 8)  # ceil(41 / 8), ceil(57 / 8)
    ys, xs = np.meshgrid(np.arange(6), np.arange(8), indexing="ij")
    side = (xs.ravel() * 8 >= 28).astype(float)
    K = np.where(side[:, None] == side[None, :], 1.0, 0.0)
    hier = segment_from_edges(e, torch.tensor(K), grid, depth=0.1, min_size=20, edge_weight=0.5)
    assert isinstance(hier, Hierarchy)
    assert hier.shape == (41, 57) and hier.n_segments == 3
    two = hier.labels_at(2)
    assert two[5, 5] == two[35, 5] != two[5, 50]  # the weak contour inside one look goes first
    edges_only = segment_from_edges(e, depth=0.1, min_size=20)
    assert edges_only.n_segments == 3
    np.testing.assert_allclose(edges_only.heights, [0.5, 0.9])
    with pytest.raises(ValueError, match="grid_shape"):
        segment_from_edges(e, torch.tensor(K))
