"""Tests of ndd.segment on synthetic block-structured similarity matrices (fast, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ndd.segment import (
    hierarchy_from_segments,
    BSDS_THRESHOLDS,
    Hierarchy,
    absorb_small_segments,
    agglomerate,
    coverage_centers,
    keep_largest_component,
    kernel_kmeans,
    label_stack_from_ucm2,
    labels_from_ucm2,
    merge_hierarchy,
    region_adjacency,
    segment_from_similarity,
    segment_similarity_sums,
    split_components,
    ucm2_from_label_stack,
    upsample_hierarchy,
    upsample_labels,
)

H, W = 20, 24


def block_labels() -> np.ndarray:
    """Six rectangular blocks tiling a 20x24 grid."""
    g = np.zeros((H, W), dtype=np.int64)
    g[:, 8:] = 1
    g[10:, 8:16] = 2
    g[10:, 16:] = 3
    g[3:7, 2:6] = 4
    g[2:6, 18:22] = 5
    return g


def block_kernel(labels: np.ndarray, off: float = 0.05, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    """K_ij = 1 within a label, ``off`` across, plus optional symmetric noise, clipped to [0, 1]."""
    f = labels.ravel()
    K = np.where(f[:, None] == f[None, :], 1.0, off)
    if noise:
        rng = np.random.default_rng(seed)
        E = rng.uniform(-noise, noise, K.shape)
        K = np.clip(K + (E + E.T) / 2, 0.0, 1.0)
        np.fill_diagonal(K, 1.0)
    return torch.tensor(K)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to renaming labels."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    pairs = len(np.unique(a * (b.max() + 1) + b))
    return pairs == len(np.unique(a)) == len(np.unique(b))


def is_refinement(fine: np.ndarray, coarse: np.ndarray) -> bool:
    """Every fine segment lies inside one coarse segment."""
    pairs = np.unique(fine.ravel() * (coarse.max() + 1) + coarse.ravel())
    return len(pairs) == len(np.unique(fine))


def four_connected(labels: np.ndarray) -> bool:
    return int(split_components(labels).max()) + 1 == len(np.unique(labels))


def image_size_boundary(labels: np.ndarray) -> np.ndarray:
    """BSDS seg2bdry 'imageSize': a pixel is marked when an edge at its lower-right junction
    separates two labels (last row / column: only the edges along it)."""
    h, w = labels.shape
    right = np.zeros((h, w), dtype=bool)
    right[:, :-1] = labels[:, :-1] != labels[:, 1:]
    down = np.zeros((h, w), dtype=bool)
    down[:-1] = labels[:-1] != labels[1:]
    out = right | down
    out[:-1] |= right[1:]  # edge between the two pixels below the junction
    out[:, :-1] |= down[:, 1:]  # edge between the two pixels right of the junction
    return out


def assert_ucm2_reproduces(hier: Hierarchy, values: str = "height") -> None:
    u = hier.to_ucm2(values=values)
    h, w = hier.shape
    assert u.shape == (2 * h + 1, 2 * w + 1)
    assert u.dtype == np.float64 and u.min() >= 0.0 and u.max() <= 1.0
    assert np.all(u[1::2, 1::2] == 0.0)  # pixel positions
    inner = u[1:-1, 1:-1]
    junctions = np.maximum.reduce([inner[:-2:2, 1::2], inner[2::2, 1::2], inner[1::2, :-2:2], inner[1::2, 2::2]])
    assert np.array_equal(u[2:-1:2, 2:-1:2], junctions)
    seen = set()
    for t in BSDS_THRESHOLDS:
        k = hier.n_segments_at(t, values)
        got = labels_from_ucm2(u, t)
        assert got.max() + 1 == k, (t, k)
        assert same_partition(got, hier.labels_at(k)), t
        # the boundary benchmark reads the junctions with >= t: same level
        assert np.array_equal(u[2::2, 2::2] >= t, image_size_boundary(hier.labels_at(k))), t
        seen.add(k)
    if values == "rank" and hier.n_segments <= 100:
        assert seen == set(range(1, hier.n_segments + 1))  # every level has a threshold
        assert not np.isin(hier.merge_values("rank"), BSDS_THRESHOLDS).any()


# ----------------------------------------------------------------------------- centres / k-means
def test_coverage_centers_one_per_block() -> None:
    g = block_labels()
    c = coverage_centers(block_kernel(g))
    assert c.dtype == torch.int64
    assert sorted(g.ravel()[c.numpy()]) == list(range(6))


def test_coverage_centers_options() -> None:
    g = block_labels()
    K = block_kernel(g)
    assert len(coverage_centers(K, max_centers=3)) == 3
    c = coverage_centers(K, first="fixed")
    assert int(c[0]) == H * W // 2 and len(set(g.ravel()[c.numpy()])) == 6
    assert int(coverage_centers(K, first=7)[0]) == 7
    assert len(coverage_centers(K, threshold=1.01)) == 1  # stops after the first centre
    with pytest.raises(ValueError):
        coverage_centers(K[:5])


@pytest.mark.parametrize("temperature", [None, 50.0])
def test_kernel_kmeans_recovers_blocks(temperature: float | None) -> None:
    g = block_labels()
    K = block_kernel(g, noise=0.05)
    labels = kernel_kmeans(K, coverage_centers(K), temperature=temperature)
    assert labels.shape == (H * W,) and labels.dtype == torch.int64
    assert same_partition(labels.numpy(), g)


def test_kernel_kmeans_drops_empty_and_batches() -> None:
    g = block_labels()
    K = block_kernel(g)
    centers = coverage_centers(K)
    # a duplicated centre leaves one cluster empty after the first assignment: dropped
    labels = kernel_kmeans(K, torch.cat([centers, centers[:1]]))
    assert labels.max().item() + 1 == 6 and same_partition(labels.numpy(), g)
    batch = kernel_kmeans(torch.stack([K, K]), centers)
    assert batch.shape == (2, H * W)
    assert torch.equal(batch[0], batch[1]) and same_partition(batch[0].numpy(), g)


# ----------------------------------------------------------------------------- clean-up
def test_split_and_absorb() -> None:
    lab = np.zeros((6, 8), dtype=np.int64)
    lab[:, 4:] = 1
    lab[1, 1] = 1  # a one-pixel island of label 1 inside label 0
    lab[4, 6] = 0  # and one of label 0 inside label 1
    pieces = split_components(lab)
    assert pieces.max() + 1 == 4 and four_connected(pieces)
    cleaned = absorb_small_segments(pieces, min_size=2)
    assert cleaned.max() + 1 == 2 and same_partition(cleaned, np.repeat([[0] * 4 + [1] * 4], 6, 0))
    # with similarity sums the island joins its most similar neighbour
    assert absorb_small_segments(pieces, min_size=2, sums=np.ones((4, 4))).max() + 1 == 2
    largest = keep_largest_component(lab)
    assert largest.max() + 1 == 2 and four_connected(largest)


def test_diagonal_touch_is_not_connected() -> None:
    lab = np.array([[0, 1], [1, 0]])
    assert split_components(lab).max() + 1 == 4
    assert not region_adjacency(np.array([[0, 1], [2, 0]]))[1, 2]


# ----------------------------------------------------------------------------- merging
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
    merges = merge_hierarchy(lab, torch.tensor(K), adjacency=adjacency)
    allowed = region_adjacency(lab) if adjacency == "adjacent" else None
    assert [(a, b) for a, b, _ in merges] == naive_average_linkage(lab, K, allowed)


def test_merging_respects_adjacency() -> None:
    # blocks 0 | 1 | 2 in a row: 0 and 2 look alike but do not touch
    lab = np.repeat(np.repeat(np.array([[0, 1, 2]]), 4, axis=1), 4, axis=0)
    S = np.array([[1.0, 0.2, 0.9], [0.2, 1.0, 0.3], [0.9, 0.3, 1.0]])
    f = lab.ravel()
    K = torch.tensor(S[f][:, f])
    assert merge_hierarchy(lab, K, "adjacent")[0][:2] == (1, 2)
    assert merge_hierarchy(lab, K, "any")[0][:2] == (0, 2)
    sims = [s for *_, s in merge_hierarchy(lab, K, "adjacent")]
    assert sims[0] == pytest.approx(0.3)
    assert sims[1] == pytest.approx((0.2 * 16 + 0.9 * 16) / 32)  # average linkage of 0 vs {1, 2}


def test_agglomerate_falls_back_when_disconnected() -> None:
    allowed = np.zeros((3, 3), dtype=bool)
    allowed[0, 1] = True
    merges, sims = agglomerate(np.ones((3, 3)), np.ones(3), allowed)
    assert merges.tolist() == [[0, 1], [2, 3]]


# ----------------------------------------------------------------------------- hierarchy
@pytest.fixture(scope="module")
def hierarchy() -> Hierarchy:
    g = block_labels()
    return segment_from_similarity(block_kernel(g, noise=0.1), (H, W))


def test_finest_level_recovers_blocks(hierarchy: Hierarchy) -> None:
    assert hierarchy.shape == (H, W)
    assert same_partition(hierarchy.finest, block_labels())


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
    from ndd.segment import hierarchy_from_segments

    hier = hierarchy_from_segments(lab, K)
    assert hier.n_segments > 20
    assert_ucm2_reproduces(hier, "height")
    assert_ucm2_reproduces(hier, "rank")


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (6, 1), (9, 11), (10, 4)])
@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 512])
def test_ucm2_from_labels_in_bands_equals_the_edge_definition(shape, chunk_rows) -> None:
    """Band by band assembly == the whole-array definition, for every band size (odd sizes, one row)."""
    from ndd.segment import ucm2_from_edges, ucm2_from_labels

    rng = np.random.default_rng(sum(shape) + chunk_rows)
    L = rng.integers(0, 5, size=shape)
    V = rng.uniform(0, 1, (5, 5))
    V = (V + V.T) / 2
    np.fill_diagonal(V, 0)
    want = ucm2_from_edges(V[L[:, :-1], L[:, 1:]], V[L[:-1], L[1:]])
    np.testing.assert_array_equal(ucm2_from_labels(L, V, chunk_rows=chunk_rows), want)


def test_ucm2_resized(hierarchy: Hierarchy) -> None:
    u = hierarchy.to_ucm2(size=(45, 50))
    assert u.shape == (91, 101)
    big = hierarchy.resized((45, 50))
    assert big.n_segments == hierarchy.n_segments
    assert_ucm2_reproduces(big)


def test_label_stack_round_trip(hierarchy: Hierarchy) -> None:
    stack = hierarchy.levels([6, 4, 2, 1])
    u = ucm2_from_label_stack(stack)
    back = label_stack_from_ucm2(u, [0.1, 0.3, 0.6, 0.8])
    for a, b in zip(stack, back):
        assert same_partition(a, b)


def test_legacy_and_any_run() -> None:
    g = block_labels()
    K = block_kernel(g, noise=0.1)
    legacy = segment_from_similarity(K, (H, W), legacy=True)
    assert legacy.n_segments <= 9
    anyh = segment_from_similarity(K, (H, W), adjacency="any", merge_similarity=K * 0.5)
    assert anyh.levels([1])[0].max() == 0


def test_single_segment() -> None:
    hier = segment_from_similarity(torch.ones(12, 12), (3, 4))
    assert hier.n_segments == 1 and hier.merges.shape == (0, 2)
    assert np.all(hier.to_ucm2() == 0) and np.all(hier.labels_at(1) == 0)


# ----------------------------------------------------------------------------- full resolution
def test_upsample_labels_default_and_callable() -> None:
    lab = block_labels()
    up = upsample_labels(lab, (40, 48))
    assert up.shape == (40, 48) and same_partition(up[::2, ::2], lab)
    near = upsample_labels(lab, (40, 48),
                           upsample=lambda v: torch.nn.functional.interpolate(v, size=(40, 48), mode="nearest"))
    assert np.array_equal(near, np.kron(lab, np.ones((2, 2), dtype=np.int64)))
    soft = torch.nn.functional.one_hot(torch.tensor(lab)).permute(2, 0, 1).float()
    assert np.array_equal(upsample_labels(soft, (H, W), mode="nearest"), lab)


def test_upsample_hierarchy_nested_and_exact(hierarchy: Hierarchy) -> None:
    hr = upsample_hierarchy(hierarchy, (41, 53))
    assert hr.shape == (41, 53) and hr.n_segments == hierarchy.n_segments
    # same merge sequence as on the grid when up-sampling keeps the adjacencies
    assert np.array_equal(hr.merges, hierarchy.merges)
    for fine, coarse in zip(hr.levels()[:-1], hr.levels()[1:]):
        assert is_refinement(fine, coarse)
    assert_ucm2_reproduces(hr)


def test_upsample_hierarchy_with_noisy_upsampler(hierarchy: Hierarchy) -> None:
    gen = torch.Generator().manual_seed(0)

    def noisy(v: torch.Tensor) -> torch.Tensor:  # creates stray islands and vanishing labels
        up = torch.nn.functional.interpolate(v, size=(50, 60), mode="bilinear", align_corners=False)
        return up + 0.6 * torch.rand(up.shape, generator=gen)

    hr = hierarchy.upsample((50, 60), upsample=noisy)
    assert hr.shape == (50, 60)
    for lab in hr.levels():
        assert four_connected(lab)
    assert_ucm2_reproduces(hr)


# ----------------------------------------------------------------------------- merging criterion
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
