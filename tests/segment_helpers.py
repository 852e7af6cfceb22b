"""Synthetic inputs and checks shared by the ``test_segment_*`` modules (fast, CPU)."""

from __future__ import annotations

import numpy as np
import torch

from ndd.segment import BSDS_THRESHOLDS, Hierarchy, labels_from_ucm2, segment_from_similarity, split_components

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


def block_hierarchy() -> Hierarchy:
    """The grid hierarchy of the noisy block kernel (the ``hierarchy`` fixture of several modules)."""
    g = block_labels()
    return segment_from_similarity(block_kernel(g, noise=0.1), (H, W))


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
