"""Unit tests of ndd.evaluation: small synthetic cases checked against brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from skimage.measure import label as sk_label
from skimage.morphology import thin

from ndd.evaluation import (
    area_pr,
    collect_eval_reg,
    correspond_pixels,
    fmeasure,
    match_radius_graph,
    max_distance_px,
    max_f,
    region_counts,
    round_g10,
    seg2bdry,
    segs_hierarchy,
    thin_boundary,
    thresholds_linspace,
    ucm2_hierarchy,
)
from ndd.evaluation.boundary import _thin_luts
from ndd.evaluation.matching import _cost, _disk_offsets, neighbour_table, radius_edges

# ----------------------------------------------------------------------------- region


def test_thresholds_linspace():
    t = thresholds_linspace(99)
    assert t.shape == (99,)
    assert t[0] == pytest.approx(0.01) and t[-1] == pytest.approx(0.99)
    assert np.allclose(np.diff(t), 0.01)


def _rand_labels(rng, shape, n):
    return rng.integers(1, n + 1, size=shape)


def test_covering_of_itself_is_one():
    rng = np.random.default_rng(0)
    seg = sk_label(_rand_labels(rng, (20, 30), 4), connectivity=1)
    rc = region_counts(segs_hierarchy([seg]), [seg, seg])
    assert rc.cnt_r[0] / rc.sum_r[0] == pytest.approx(1.0)
    assert rc.cnt_p[0] / rc.sum_p[0] == pytest.approx(1.0)
    assert rc.cnt_r_best / rc.sum_r[0] == pytest.approx(1.0)
    assert rc.pri[0] == pytest.approx(1.0)
    assert rc.voi[0] == pytest.approx(0.0, abs=1e-12)
    assert np.allclose(rc.cover_k, 1.0)


def test_ri_voi_hand_computed():
    seg = np.array([[1, 1], [2, 2]])
    gt = np.array([[1, 2], [1, 2]])
    rc = region_counts(segs_hierarchy([seg]), [gt])
    # pairs: 6; disagreements: 4 (same in one, different in the other)
    assert rc.pri[0] == pytest.approx(1 / 3)
    # H(S) = H(G) = 1 bit, I = 0
    assert rc.voi[0] == pytest.approx(2.0)
    # covering: each GT column region meets each row region in 1 pixel: IoU 1/3
    assert rc.cnt_r[0] / rc.sum_r[0] == pytest.approx(1 / 3)


def _brute_region(seg, gts):
    """Covering (R, P), PRI and VOI by the definitions, with Python loops."""
    n = seg.size
    cnt_r = 0.0
    best_p = {}
    ri, vi = [], []
    for gt in gts:
        for j in np.unique(gt):
            gj = gt == j
            best = 0.0
            for i in np.unique(seg):
                if i == 0:
                    continue
                si = seg == i
                iou = (si & gj).sum() / (si | gj).sum()
                best = max(best, iou)
                best_p[i] = max(best_p.get(i, 0.0), iou)
            cnt_r += gj.sum() * best
        s, g = seg.ravel(), gt.ravel()
        agree = 0
        for a, b in itertools.combinations(range(n), 2):
            agree += (s[a] == s[b]) == (g[a] == g[b])
        ri.append(agree / (n * (n - 1) / 2))
        h = 0.0
        for i in np.unique(s):
            for j in np.unique(g):
                nij = np.sum((s == i) & (g == j))
                if nij:
                    pij, pi, pj = nij / n, np.mean(s == i), np.mean(g == j)
                    h += -pij * (math.log2(pij / pi) + math.log2(pij / pj))
        vi.append(h)
    cnt_p = sum(np.sum(seg == i) * v for i, v in best_p.items())
    return cnt_r / (len(gts) * n), cnt_p / np.sum(seg > 0), np.mean(ri), np.mean(vi)


def test_region_counts_match_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(5):
        shape = (6, 7)
        seg = _rand_labels(rng, shape, 4)
        gts = [_rand_labels(rng, shape, int(rng.integers(2, 5))) for _ in range(3)]
        rc = region_counts(segs_hierarchy([seg]), gts)
        r, p, ri, vi = _brute_region(seg, gts)
        assert rc.cnt_r[0] / rc.sum_r[0] == pytest.approx(r)
        assert rc.cnt_p[0] / rc.sum_p[0] == pytest.approx(p)
        assert rc.pri[0] == pytest.approx(ri)
        assert rc.voi[0] == pytest.approx(vi)


def _same_partition(a, b):
    """Equal up to renaming, with label 0 kept as 0."""
    if not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def test_ucm2_hierarchy_matches_labelling_each_threshold():
    rng = np.random.default_rng(2)
    for trial in range(4):
        h, w = 9, 11
        u = np.zeros((2 * h + 1, 2 * w + 1))
        # random contour strengths on edge elements and junctions, some pixels > 0
        u[0::2, :] = rng.random((h + 1, 2 * w + 1)) * (rng.random((h + 1, 2 * w + 1)) < 0.5)
        u[:, 0::2] = rng.random((2 * h + 1, w + 1)) * (rng.random((2 * h + 1, w + 1)) < 0.5)
        if trial % 2:
            u[1::2, 1::2] = rng.random((h, w)) * (rng.random((h, w)) < 0.1)
        t = thresholds_linspace(9)
        if trial >= 2:  # any order, and thresholds at or below zero
            t = np.random.default_rng(trial).permutation(np.append(t, [0.0, -0.1]))
        hier = ucm2_hierarchy(u, t)
        for i, ti in enumerate(t):
            ref = sk_label(u <= ti, connectivity=2)[1::2, 1::2]  # MATLAB bwlabel: 8-connected
            assert _same_partition(hier.segmentation(i), ref), (trial, ti)


def test_collect_eval_reg_conventions():
    """ODS/OIS/Best pooling and the first/last arg-max rules on hand-made counts."""
    from ndd.evaluation.region import RegionCounts

    t = np.array([0.25, 0.5, 0.75])
    a = RegionCounts(
        t,
        np.array([1.0, 3.0, 3.0]),
        np.full(3, 4.0),
        np.array([1.0, 2.0, 3.0]),
        np.full(3, 4.0),
        3.5,
        np.array([0.5, 0.7, 0.7]),
        np.array([2.0, 1.0, 1.5]),
        np.zeros((3, 1)),
    )
    b = RegionCounts(
        t,
        np.array([6.0, 2.0, 1.0]),
        np.full(3, 8.0),
        np.full(3, 1.0),
        np.full(3, 8.0),
        7.0,
        np.array([0.9, 0.1, 0.1]),
        np.array([1.0, 2.0, 3.0]),
        np.zeros((3, 1)),
    )
    s = collect_eval_reg([a, b])
    assert np.allclose(s.covering_curve, [7 / 12, 5 / 12, 4 / 12])
    assert s.covering_ods == pytest.approx(7 / 12) and s.covering_ods_threshold == 0.25
    assert s.covering_ois == pytest.approx((3 + 6) / 12)
    assert s.covering_best == pytest.approx((3.5 + 7) / 12)
    assert list(s.img_best_t) == [0.5, 0.25]  # first maximiser
    assert s.img_best_p[0] == pytest.approx(0.5)
    assert s.pri_ois == pytest.approx(0.8) and s.voi_ois == pytest.approx(1.0)
    assert s.pri_ods == pytest.approx(0.7) and s.pri_ods_threshold == 0.25


def test_round_g10():
    assert np.allclose(round_g10(np.array([1234567.0, 0.123456789, 2.0])), [1234570.0, 0.123457, 2.0], rtol=0, atol=0)


# ----------------------------------------------------------------------------- boundary maps


def test_seg2bdry_hand_example():
    seg = np.array([[1, 1, 2], [1, 1, 2], [3, 3, 3]])
    bd = seg2bdry(seg, "imageSize")
    # a pixel is marked when an edge touching its lower-right junction separates
    # labels; in the last column only the edge below it counts (frame copy)
    expected = np.array([[0, 1, 0], [1, 1, 1], [0, 0, 0]], dtype=bool)
    assert np.array_equal(bd, expected)
    dbl = seg2bdry(seg, "doubleSize")
    assert dbl.shape == (7, 7) and np.array_equal(dbl[2::2, 2::2], bd)


def test_thinning_equals_skimage():
    first, second = _thin_luts()
    from skimage.morphology import _skeletonize as sk  # private tables, test-only

    assert np.array_equal(first, sk.G123_LUT.astype(bool)) and np.array_equal(second, sk.G123P_LUT.astype(bool))
    rng = np.random.default_rng(3)
    for _ in range(50):
        img = rng.random((int(rng.integers(1, 30)), int(rng.integers(1, 30)))) < rng.random()
        assert np.array_equal(thin_boundary(img), thin(img))


# ----------------------------------------------------------------------------- aggregation


def _official_max_f(t, r, p):
    best = (t[0], r[0], p[0], fmeasure(r[0], p[0]))
    for i in range(1, len(t)):
        for d in np.linspace(0, 1, 100):
            tt, rr, pp = t[i] * d + t[i - 1] * (1 - d), r[i] * d + r[i - 1] * (1 - d), p[i] * d + p[i - 1] * (1 - d)
            f = fmeasure(rr, pp)
            if f > best[3]:
                best = (tt, rr, pp, f)
    return best


def test_max_f_interpolates():
    t = np.array([0.1, 0.2, 0.3])
    r = np.array([0.9, 0.5, 0.1])
    p = np.array([0.3, 0.8, 0.95])
    got = max_f(t, r, p)
    assert np.allclose(got, _official_max_f(t, r, p))
    assert 0.1 < got[0] < 0.2 and got[3] > max(fmeasure(r, p))  # strictly between thresholds
    rng = np.random.default_rng(4)
    for _ in range(20):
        r, p = np.sort(rng.random(7))[::-1], np.sort(rng.random(7))
        assert np.allclose(max_f(np.arange(7) / 7, r, p), _official_max_f(np.arange(7) / 7, r, p))
    assert max_f(t, np.zeros(3), np.zeros(3)) == (0.1, 0.0, 0.0, 0.0)  # ties keep the first point


def test_area_pr():
    # P = 1 - R sampled at R = 0, 0.01, ..., 1: 0.01 * sum = 0.505 (a sum, not a trapezoid)
    r = np.linspace(1, 0, 11)
    assert area_pr(r, 1 - r) == pytest.approx(0.505)
    # outside the recall range P counts as 0
    assert area_pr(np.array([0.5, 0.0]), np.array([1.0, 1.0])) == pytest.approx(0.51)
    assert area_pr(np.array([0.3, 0.3]), np.array([1.0, 0.5])) == 0.0


def test_kernel_cosine_is_deprecated_here():
    """The kernel accuracy has one owner, ndd.train.kernel_eval; the old name warns and agrees."""
    import ndd.evaluation

    K = np.random.default_rng(5).random((3, 6, 6))
    with pytest.warns(DeprecationWarning, match="ndd.train.kernel_cosine"):
        got = ndd.evaluation.kernel_cosine(K, 2 * K)
    assert isinstance(got, np.ndarray) and got.shape == (3,) and np.allclose(got, 1.0)
    assert "kernel_cosine" not in ndd.evaluation.__all__


# ----------------------------------------------------------------------------- matching


def _brute_matching(b, g, d2, n1, n2):
    """(max cardinality, min total cost among maximum matchings) by exhaustive search."""
    edges = list(zip(b.tolist(), g.tolist(), _cost(d2).tolist()))
    best = (0, 0)
    for k in range(min(n1, n2), 0, -1):
        costs = []
        for sub in itertools.combinations(edges, k):
            if len({e[0] for e in sub}) == k and len({e[1] for e in sub}) == k:
                costs.append(sum(e[2] for e in sub))
        if costs:
            return k, min(costs)
    return best


def _random_maps(rng, shape, p1, p2):
    return rng.random(shape) < p1, rng.random(shape) < p2


@pytest.mark.parametrize("seed", range(30))
def test_matcher_is_exact_on_tiny_cases(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(3, 9)), int(rng.integers(3, 9)))
    m1, m2 = _random_maps(rng, shape, 0.12, 0.12)
    radius = float(rng.uniform(1.0, 3.0))
    table = neighbour_table(m2, radius)
    machine = np.flatnonzero(m1)
    b, g, d2 = radius_edges(table, machine)
    if b.size > 14:  # keep the brute force small
        keep = np.sort(rng.choice(b.size, 14, replace=False))
        b, g, d2 = b[keep], g[keep], d2[keep]
    k_ref, cost_ref = _brute_matching(b, g, d2, machine.size, table.n_gt)
    edge_set = set(zip(b.tolist(), g.tolist()))
    for tiebreak in ("greedy", "exact"):
        mate1, mate2 = match_radius_graph(b, g, d2, machine.size, table.n_gt, tiebreak)
        ok = np.flatnonzero(mate1 >= 0)
        assert ok.size == k_ref  # maximum cardinality
        assert np.array_equal(mate2[mate1[ok]], ok)  # one-to-one and consistent
        assert all((i, mate1[i]) in edge_set for i in ok)  # only within the radius
        if tiebreak == "exact":
            cost = {(i, j): c for i, j, c in zip(b.tolist(), g.tolist(), _cost(d2).tolist())}
            assert sum(cost[(i, mate1[i])] for i in ok) == cost_ref


def test_matcher_maximum_on_larger_random_maps():
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching

    rng = np.random.default_rng(7)
    for _ in range(5):
        m1, m2 = _random_maps(rng, (60, 80), 0.08, 0.05)
        table = neighbour_table(m2, 4.3)
        machine = np.flatnonzero(m1)
        b, g, d2 = radius_edges(table, machine)
        mate1, _ = match_radius_graph(b, g, d2, machine.size, table.n_gt)
        graph = csr_matrix((np.ones(b.size), (b, g)), shape=(machine.size, table.n_gt))
        assert (mate1 >= 0).sum() == (maximum_bipartite_matching(graph, perm_type="column") >= 0).sum()


def test_radius_edges_and_tolerance():
    assert max_distance_px((321, 481)) == pytest.approx(0.0075 * math.hypot(321, 481))
    dy, dx, d2 = _disk_offsets(max_distance_px((321, 481)))
    assert d2.max() == 18 and dy.size == 61  # all offsets with d² <= 4.337²
    m2 = np.zeros((10, 10), bool)
    m2[5, 5] = True
    table = neighbour_table(m2, 2.0)
    machine = np.array([5 * 10 + 7, 5 * 10 + 8, 3 * 10 + 3])  # distances 2, 3, 2*sqrt(2)
    b, g, d2 = radius_edges(table, machine)
    assert b.tolist() == [0] and d2.tolist() == [4]


def test_correspond_pixels():
    rng = np.random.default_rng(8)
    m = rng.random((40, 50)) < 0.1
    a, b = correspond_pixels(m, m)
    assert np.array_equal(a, m) and np.array_equal(b, m)
    shifted = np.roll(m, 1, axis=1)
    shifted[:, 0] = False
    a, b = correspond_pixels(m, shifted, max_dist=0.03)  # 1.9 px on 40x50
    assert a.sum() == b.sum() and b.sum() == shifted.sum()
    a, b = correspond_pixels(m, np.zeros_like(m))
    assert not a.any() and not b.any()


def _same_regions(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to renaming (every label a region, 0 included)."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1).shape[1]
    return pairs == np.unique(a).size == np.unique(b).size


def test_ucm2_hierarchy_equals_the_formats_thresholding():
    """The benchmark's compact thresholding gives the partitions of ndd.formats.labels_from_ucm2."""
    from ndd.formats import BSDS_THRESHOLDS, labels_from_ucm2, ucm2_from_edges

    rng = np.random.default_rng(3)
    u = ucm2_from_edges(np.round(rng.uniform(0, 1, (9, 11)), 2), np.round(rng.uniform(0, 1, (8, 12)), 2))
    stack = ucm2_hierarchy(u, thresholds_linspace(99))
    assert np.array_equal(stack.thresholds, BSDS_THRESHOLDS)
    for i, t in enumerate(BSDS_THRESHOLDS):
        assert _same_regions(stack.segmentation(i), labels_from_ucm2(u, t)), t


def test_kernels_compile_where_no_cache_folder_can_be_written(monkeypatch):
    """A read-only install without a home folder: numba finds no cache locator and refuses
    ``cache=True`` at decoration; the benchmark's kernels must still compile and run."""
    from numba.core import caching

    from ndd.evaluation._jit import compiled

    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # its name differs between numba releases
    monkeypatch.setattr(impl, "_locator_classes", [])

    def add_one(x):
        return x + 1

    with pytest.raises(RuntimeError, match="no locator"):  # what numba does on its own
        import numba

        numba.njit(cache=True)(add_one)
    assert compiled(add_one)(41) == 42
