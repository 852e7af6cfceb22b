"""Pixel-accurate regions from edge maps and their hierarchy (ndd.segment.superpixels)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ndd.segment import (
    BSDS_THRESHOLDS,
    LinkageTerm,
    agglomerate,
    boundary_sums,
    grid_similarity_sums,
    hierarchy_from_superpixels,
    labels_from_ucm2,
    pixel_grid_nodes,
    split_components,
    watershed_superpixels,
)


def cross_edges(h: int = 30, w: int = 40, row: int = 12, col: int = 25) -> np.ndarray:
    """A ridge along one row and one column, low noise elsewhere."""
    rng = np.random.default_rng(0)
    e = 0.05 * rng.random((h, w))
    e[row, :] = 0.9
    e[:, col] = 0.6
    return e


def test_watershed_superpixels_one_region_per_quadrant() -> None:
    e = cross_edges()
    sp = watershed_superpixels(e, depth=0.2)
    assert sp.dtype == np.int64 and sp.min() == 0
    assert sp.max() + 1 == 4  # the noise basins are shallower than depth
    assert int(split_components(sp).max()) + 1 == 4  # each region is one 4-connected piece
    # off the ridges, the quadrants are whole
    for r, c in ((0, 0), (0, 39), (29, 0), (29, 39)):
        quad = sp[(slice(0, 12) if r == 0 else slice(13, 30)), (slice(0, 25) if c == 0 else slice(26, 40))]
        assert len(np.unique(quad)) == 1
    # depth 0 keeps the noise minima: many more regions
    assert watershed_superpixels(e, depth=0.0).max() + 1 > 4


def test_watershed_superpixels_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="NaN"):
        watershed_superpixels(np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="non-empty"):
        watershed_superpixels(np.zeros((3, 4, 2)))


def test_boundary_sums_against_a_loop() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=(7, 9))
    strength = rng.random((7, 9))
    sums, lengths = boundary_sums(labels, strength, 4)
    ref_s, ref_l = np.zeros((4, 4)), np.zeros((4, 4))
    for r in range(7):
        for c in range(9):
            for rr, cc in ((r, c + 1), (r + 1, c)):
                if rr < 7 and cc < 9 and labels[r, c] != labels[rr, cc]:
                    a, b = labels[r, c], labels[rr, cc]
                    v = max(strength[r, c], strength[rr, cc])
                    ref_s[a, b] += v
                    ref_s[b, a] += v
                    ref_l[a, b] += 1
                    ref_l[b, a] += 1
    np.testing.assert_allclose(sums, ref_s)
    np.testing.assert_array_equal(lengths, ref_l)


def test_grid_similarity_sums_is_the_pixel_level_block_sum() -> None:
    rng = np.random.default_rng(2)
    size, grid = (17, 22), (3, 3)
    nodes = pixel_grid_nodes(size, grid)
    # node j sits on pixel 8j: pixel 4 still belongs to node 0 (4/8 rounds to 0.5 -> up to 1? no: floor(0.5+0.5)=1)
    assert nodes[0, 0] == 0 and nodes[0, 3] == 0 and nodes[0, 4] == 1 and nodes[0, 21] == 2
    assert nodes[16, 0] == 2 * 3 and nodes.max() == 8
    K = rng.random((9, 9))
    K = 0.5 * (K + K.T)
    labels = rng.integers(0, 5, size=size)
    S, sizes = grid_similarity_sums(labels, torch.tensor(K), nodes)
    Kp = K[nodes.reshape(-1)][:, nodes.reshape(-1)]  # pixel-level similarity
    flat = labels.reshape(-1)
    ref = np.array([[Kp[np.ix_(flat == a, flat == b)].sum() for b in range(5)] for a in range(5)])
    np.testing.assert_allclose(S, ref, rtol=1e-12)
    np.testing.assert_array_equal(sizes, np.bincount(flat, minlength=5))


def test_agglomerate_terms_reproduce_average_linkage() -> None:
    rng = np.random.default_rng(3)
    n = 12
    S = rng.random((n, n))
    S = S + S.T
    sizes = rng.integers(1, 9, size=n).astype(float)
    allowed = rng.random((n, n)) < 0.4
    a = agglomerate(S, sizes, allowed)
    b = agglomerate(None, None, allowed, terms=[LinkageTerm(S, np.outer(sizes, sizes))])
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1])


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
    from ndd.segment import segment_from_edges

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
    assert hier.shape == (41, 57) and hier.n_segments == 3
    two = hier.labels_at(2)
    assert two[5, 5] == two[35, 5] != two[5, 50]  # the weak contour inside one look goes first
    edges_only = segment_from_edges(e, depth=0.1, min_size=20)
    assert edges_only.n_segments == 3
    np.testing.assert_allclose(edges_only.heights, [0.5, 0.9])
    with pytest.raises(ValueError, match="grid_shape"):
        segment_from_edges(e, torch.tensor(K))
