"""ndd.segment.cleanup: spatially connected segments from k-means clusters."""

from __future__ import annotations

import numpy as np

from ndd.segment import absorb_small_segments, keep_largest_component, split_components
from segment_helpers import four_connected, same_partition


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
