"""ndd.segment.regions: the region graph of a label map (adjacency and pair sums)."""

from __future__ import annotations

import numpy as np
import torch

from ndd.segment import boundary_sums, grid_similarity_sums, pixel_grid_nodes, region_adjacency, segment_similarity_sums


def test_diagonal_touch_is_not_adjacent() -> None:
    assert not region_adjacency(np.array([[0, 1], [2, 0]]))[1, 2]


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
    # the adjacency is exactly "shares a border"
    np.testing.assert_array_equal(region_adjacency(labels, 4), ref_l > 0)


def test_segment_similarity_sums_is_the_symmetrised_block_sum() -> None:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 5, size=(4, 6))
    K = rng.random((24, 24))  # deliberately not symmetric
    for similarity in (K, torch.tensor(K)):
        S, sizes = segment_similarity_sums(labels, similarity)
        flat = labels.reshape(-1)
        block = np.array([[K[np.ix_(flat == a, flat == b)].sum() for b in range(5)] for a in range(5)])
        np.testing.assert_allclose(S, 0.5 * (block + block.T), rtol=1e-12)
        np.testing.assert_array_equal(sizes, np.bincount(flat, minlength=5))


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
