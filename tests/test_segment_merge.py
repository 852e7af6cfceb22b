"""ndd.segment.merge: greedy agglomeration from pair sums."""

from __future__ import annotations

import numpy as np
import pytest

from ndd.segment import LinkageTerm, agglomerate


def test_agglomerate_falls_back_when_disconnected() -> None:
    allowed = np.zeros((3, 3), dtype=bool)
    allowed[0, 1] = True
    merges, sims = agglomerate(np.ones((3, 3)), np.ones(3), allowed)
    assert merges.tolist() == [[0, 1], [2, 3]]


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


def _greedy_by_definition(edge_num, edge_den, sim_num, sizes, w_of_min_size):
    """The scheduled two-term merging score evaluated from scratch at every step (O(n^3)):
    w(m) * edge_num/edge_den + (1 - w(m)) * sim_num/(size_a size_b), m the smaller cluster's
    size, over pairs with a shared border (edge_den > 0) while any is left."""
    n = len(sizes)
    EN, ED, SN = edge_num.copy(), edge_den.copy(), sim_num.copy()
    size, active, ids = sizes.astype(float).copy(), np.ones(n, bool), np.arange(n)
    merges = []
    for m in range(n - 1):
        pair = active[:, None] & active[None, :] & ~np.eye(n, dtype=bool)
        ok = pair & (ED > 0) if (pair & (ED > 0)).any() else pair
        with np.errstate(divide="ignore", invalid="ignore"):
            e = np.where(ED > 0, EN / ED, 0.0)
        w = w_of_min_size(np.minimum(size[:, None], size[None, :]))
        score = np.where(ok, w * e + (1 - w) * SN / np.outer(size, size), -np.inf)
        a, b = sorted(np.unravel_index(np.argmax(score), score.shape))
        merges.append(sorted((int(ids[a]), int(ids[b]))))
        for M in (EN, ED, SN):
            M[a] += M[b]
            M[:, a] += M[:, b]
            M[b] = M[:, b] = 0
        size[a] += size[b]
        active[b], ids[a] = False, n + m
    return np.array(merges)


def test_size_scheduled_weights_follow_their_definition() -> None:
    rng = np.random.default_rng(7)
    n = 14
    border = np.triu(rng.random((n, n)) < 0.35, 1)
    length = np.where(border | border.T, rng.integers(1, 30, (n, n)), 0).astype(float)
    length = np.triu(length, 1) + np.triu(length, 1).T
    strength = length * rng.random((n, n))
    strength = np.triu(strength, 1) + np.triu(strength, 1).T
    S = rng.random((n, n))
    S = S + S.T
    sizes = rng.integers(5, 400, size=n).astype(float)
    w, w_small, scale = 0.2, 0.8, 60.0
    merges, _ = agglomerate(None, None, length > 0, cluster_sizes=sizes, terms=[
        LinkageTerm(length - strength, length, weight=w, small_weight=w_small, small_size=scale),
        LinkageTerm(S, np.outer(sizes, sizes), weight=1 - w, small_weight=1 - w_small, small_size=scale)])
    expected = _greedy_by_definition(length - strength, length, S, sizes,
                                     lambda m: w + (w_small - w) * np.exp(-m / scale))
    np.testing.assert_array_equal(merges, expected)
    constant, _ = agglomerate(None, None, length > 0, terms=[LinkageTerm(length - strength, length, weight=w),
                                                               LinkageTerm(S, np.outer(sizes, sizes), weight=1 - w)])
    assert not np.array_equal(merges, constant)  # the schedule changed the order here


def test_a_small_fragment_goes_by_its_contour_when_the_schedule_says_so() -> None:
    # a fragment (0, 10 px) between two large regions: a faint contour to 1, a strong one to 2,
    # but it looks like 2; the large pair (1, 2) share a strong contour and look unlike
    sizes = np.array([10.0, 5000.0, 5000.0])
    length = np.array([[0, 20, 20], [20, 0, 50], [20, 50, 0]], float)
    strength = np.array([[0, 2, 18], [2, 0, 45], [18, 45, 0]], float)  # mean 0.1 to 1, 0.9 to 2
    mean_sim = np.array([[1, 0.2, 0.9], [0.2, 1, 0.1], [0.9, 0.1, 1]])
    S = mean_sim * np.outer(sizes, sizes)

    def first_merge(**small):
        rest = {} if not small else {"small_weight": 1 - small["small_weight"], "small_size": small["small_size"]}
        merges, _ = agglomerate(None, None, length > 0, cluster_sizes=sizes, terms=[
            LinkageTerm(length - strength, length, weight=0.2, **small),
            LinkageTerm(S, np.outer(sizes, sizes), weight=0.8, **rest)])
        return merges[0].tolist()

    assert first_merge() == [0, 2]  # by looks
    assert first_merge(small_weight=1.0, small_size=100.0) == [0, 1]  # by its faint contour
    assert first_merge(small_weight=1.0, small_size=0.1) == [0, 2]  # 10 px is not small at this scale
    with pytest.raises(ValueError, match="cluster_sizes"):
        agglomerate(None, None, terms=[LinkageTerm(length, length + 1, small_weight=0.5)])
