"""The scales at which the benchmark evaluates a result.

A ``ucm2`` and a soft boundary map are evaluated at ``nthresh`` thresholds
(the official ``linspace(1/(n+1), 1 - 1/(n+1), n)``, 0.01 ... 0.99 for the
default 99); a stack of S label maps at its own levels, whose "thresholds" are
the indices 1 ... S (``shared/notes/bsds-benchmark.md`` A.1).  The thresholds are
:func:`ndd.formats.bsds_thresholds` (also ``segment``'s ``BSDS_THRESHOLDS``), named
``thresholds_linspace`` here.
"""

from __future__ import annotations

import numpy as np

#: the official ucm2 / soft-map scales, ``linspace(1/(n+1), 1 - 1/(n+1), n)`` as MATLAB computes it
#: (defined once, in the formats layer, with the BSDS files)
from ndd.formats.bsds import bsds_thresholds as thresholds_linspace

__all__ = ["level_scales", "thresholds_linspace"]


def level_scales(n_levels: int) -> np.ndarray:
    """The scales of a stack of ``n_levels`` label maps: 1.0 ... n_levels, shape (n_levels,)."""
    return np.arange(1, n_levels + 1, dtype=np.float64)
