"""ndd.segment.hierarchy: the ``Hierarchy`` value type (levels, ultrametric, ``ucm2``, resizing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ndd.segment import BSDS_THRESHOLDS, Hierarchy, hierarchy_from_segments, labels_from_ucm2, segment_from_similarity, split_components
from segment_helpers import H, W, assert_ucm2_reproduces, block_hierarchy, block_kernel, block_labels, four_connected, is_refinement


@pytest.fixture(scope="module")
def hierarchy() -> Hierarchy:
    return block_hierarchy()


def test_levels_nested_with_exact_counts(hierarchy: Hierarchy) -> None:
    n = hierarchy.n_segments
    levels = hierarchy.levels()
    assert len(levels) == n
    for k, lab in zip(range(n, 0, -1), levels):
        assert lab.shape == (H, W) and lab.dtype == np.int64
        assert sorted(np.unique(lab)) == list(range(k))
        assert four_connected(lab)
    for fine, coarse in zip(levels[:-1], levels[1:]):
        assert is_refinement(fine, coarse)
    assert np.all(hierarchy.labels_at(1) == 0)
    assert np.all(np.diff(hierarchy.heights) >= 0)
    with pytest.raises(ValueError):
        hierarchy.labels_at(n + 1)


@pytest.mark.parametrize("values", ["height", "rank"])
def test_ucm2_thresholds_reproduce_levels(hierarchy: Hierarchy, values: str) -> None:
    assert_ucm2_reproduces(hierarchy, values)


def test_ucm2_on_many_segments() -> None:
    # a noisy kernel on random pieces gives a deep hierarchy with non-monotone raw linkage
    rng = np.random.default_rng(3)
    lab = split_components(rng.integers(0, 3, size=(12, 14)))
    K = torch.tensor(rng.uniform(0, 1, (168, 168)))
    hier = hierarchy_from_segments(lab, K)
    assert hier.n_segments > 20
    assert_ucm2_reproduces(hier, "height")
    assert_ucm2_reproduces(hier, "rank")


def test_ucm2_resized(hierarchy: Hierarchy) -> None:
    u = hierarchy.to_ucm2(size=(45, 50))
    assert u.shape == (91, 101)
    big = hierarchy.resized((45, 50))
    assert big.n_segments == hierarchy.n_segments
    assert_ucm2_reproduces(big)


def test_with_finest_prunes_absent_segments() -> None:
    hier = Hierarchy.from_merges(np.array([[0, 1, 2]]), [(0, 1, 0.75), (2, 3, 0.25)])
    pruned = hier.with_finest(np.array([[0, 2, 2]]))  # segment 1 is gone: its merge with 0 is dropped
    assert pruned.finest.tolist() == [[0, 1, 1]]
    assert pruned.merges.tolist() == [[0, 1]] and pruned.similarities.tolist() == [0.25]
    assert hier.with_finest(hier.finest[:, ::-1]).merges.tolist() == hier.merges.tolist()


def test_spread_values_make_every_level_reachable() -> None:
    # heights crowded near 1, as late merges of real hierarchies are (similarity < 0.01)
    g = block_labels()
    K = block_kernel(g, off=0.001)
    hier = segment_from_similarity(K, g.shape, min_size=1)
    assert np.all(hier.heights[-3:] > 0.99)  # "height" cannot tell these levels apart
    assert_ucm2_reproduces(hier, "spread")
    u = hier.to_ucm2(values="spread")
    seen = {int(labels_from_ucm2(u, t).max()) + 1 for t in BSDS_THRESHOLDS}
    assert seen == set(range(1, hier.n_segments + 1))
    assert not np.isin(hier.merge_values("spread"), BSDS_THRESHOLDS).any()


def test_spread_values_of_a_large_hierarchy_keep_order_and_the_coarse_levels() -> None:
    rng = np.random.default_rng(0)
    finest = np.arange(300).reshape(15, 20)
    merges, sims = [], []
    clusters = list(range(300))
    for m in range(299):  # random adjacent-free merges: any two clusters
        a, b = sorted(rng.choice(len(clusters), 2, replace=False))
        merges.append(sorted((clusters[a], clusters[b])))
        sims.append(1.0 - (m / 299) ** 0.1)  # heights crowded near 1
        clusters = [c for i, c in enumerate(clusters) if i not in (a, b)] + [300 + m]
    hier = Hierarchy.from_merges(finest, np.array(merges), np.array(sims))
    v = hier.merge_values("spread")
    assert np.all(np.diff(v) >= 0) and 0 <= v.min() and v.max() < 1
    steps = np.floor(v[-98:] * 100)
    assert len(np.unique(steps)) == 98  # levels 1 .. 99 each own a threshold step
    counts = {hier.n_segments_at(t, "spread") for t in BSDS_THRESHOLDS}
    assert set(range(1, 100)) <= counts
