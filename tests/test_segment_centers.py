"""ndd.segment.centers: cluster centres by greedy coverage (Eq. 9)."""

from __future__ import annotations

import pytest
import torch

from ndd.segment import coverage_centers
from segment_helpers import H, W, block_kernel, block_labels


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
