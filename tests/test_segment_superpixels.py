"""ndd.segment.superpixels: pixel-accurate regions of an edge map."""

from __future__ import annotations

import numpy as np
import pytest

from ndd.segment import absorb_small_regions, split_components, watershed_superpixels


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


def test_absorb_small_regions_joins_the_weakest_border() -> None:
    # four vertical strips 0 | 1 | 2 | 3; strip 1 is a sliver between a strong and a weak border
    labels = np.repeat(np.array([[0] * 6 + [1] * 2 + [2] * 6 + [3] * 6]), 5, axis=0)
    e = np.zeros(labels.shape)
    e[:, 5] = 0.9  # 0 | 1
    e[:, 8] = 0.2  # 1 | 2
    e[:, 14] = 0.5  # 2 | 3
    out = absorb_small_regions(labels, e, min_size=11)
    assert out.max() + 1 == 3 and int(split_components(out).max()) + 1 == 3
    assert out[0, 6] == out[0, 9] != out[0, 0]  # the sliver joined 2, behind its weaker border
    np.testing.assert_array_equal(absorb_small_regions(labels, e, min_size=1), labels)
