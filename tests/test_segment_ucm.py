"""ndd.segment.ucm: BSDS ``ucm2`` maps and label stacks."""

from __future__ import annotations

import numpy as np
import pytest

from ndd.segment import Hierarchy, label_stack_from_ucm2, ucm2_from_edges, ucm2_from_label_stack, ucm2_from_labels
from segment_helpers import block_hierarchy, same_partition


@pytest.fixture(scope="module")
def hierarchy() -> Hierarchy:
    return block_hierarchy()


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (6, 1), (9, 11), (10, 4)])
@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 512])
def test_ucm2_from_labels_in_bands_equals_the_edge_definition(shape, chunk_rows) -> None:
    """Band by band assembly == the whole-array definition, for every band size (odd sizes, one row)."""
    rng = np.random.default_rng(sum(shape) + chunk_rows)
    L = rng.integers(0, 5, size=shape)
    V = rng.uniform(0, 1, (5, 5))
    V = (V + V.T) / 2
    np.fill_diagonal(V, 0)
    want = ucm2_from_edges(V[L[:, :-1], L[:, 1:]], V[L[:-1], L[1:]])
    np.testing.assert_array_equal(ucm2_from_labels(L, V, chunk_rows=chunk_rows), want)


def test_label_stack_round_trip(hierarchy: Hierarchy) -> None:
    stack = hierarchy.levels([6, 4, 2, 1])
    u = ucm2_from_label_stack(stack)
    back = label_stack_from_ucm2(u, [0.1, 0.3, 0.6, 0.8])
    for a, b in zip(stack, back):
        assert same_partition(a, b)
