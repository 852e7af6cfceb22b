"""ndd.segment.merge: greedy agglomeration from pair sums."""

from __future__ import annotations

import numpy as np

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
