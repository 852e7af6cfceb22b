"""The scales at which the benchmark evaluates a result: the one place that defines them.

A ``ucm2`` and a soft boundary map are evaluated at ``nthresh`` thresholds
(the official ``linspace(1/(n+1), 1 - 1/(n+1), n)``, 0.01 ... 0.99 for the
default 99); a stack of S label maps at its own levels, whose "thresholds" are
the indices 1 ... S (``shared/notes/bsds-benchmark.md`` A.1).
"""

from __future__ import annotations

import numpy as np

__all__ = ["level_scales", "thresholds_linspace"]


def thresholds_linspace(nthresh: int = 99) -> np.ndarray:
    """The official ucm2 / soft-map scales: ``linspace(1/(n+1), 1 - 1/(n+1), n)``, shape (n,)."""
    if nthresh < 1:
        raise ValueError("nthresh must be >= 1")
    d1, d2 = 1.0 / (nthresh + 1), 1.0 - 1.0 / (nthresh + 1)
    if nthresh == 1:
        return np.array([d2])
    # MATLAB's linspace: [d1 + (0:n-2)*(d2-d1)/(n-1), d2], in that order of
    # operations, so that a map value equal to a threshold compares the same way
    return np.append(d1 + np.arange(nthresh - 1) * (d2 - d1) / (nthresh - 1), d2)


def level_scales(n_levels: int) -> np.ndarray:
    """The scales of a stack of ``n_levels`` label maps: 1.0 ... n_levels, shape (n_levels,)."""
    return np.arange(1, n_levels + 1, dtype=np.float64)
