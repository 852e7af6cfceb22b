"""Deprecated: the kernel accuracy (paper Table 1) has one owner, :mod:`ndd.train.kernel_eval`.

``ndd.evaluation.kernel_cosine`` still imports (without torch) and works, with a
``DeprecationWarning``; it calls :func:`ndd.train.kernel_eval.kernel_cosine`, importing torch
on first use.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["kernel_cosine"]


def kernel_cosine(K: np.ndarray, K_gt: np.ndarray) -> np.ndarray:
    """Deprecated: :func:`ndd.train.kernel_eval.kernel_cosine` (same arguments), as a NumPy array."""
    warnings.warn("ndd.evaluation.kernel_cosine is deprecated: use ndd.train.kernel_cosine "
                  "(the kernel accuracy lives in ndd.train.kernel_eval)", DeprecationWarning, stacklevel=2)
    from ndd.train.kernel_eval import kernel_cosine as owner  # torch: imported on first use only

    return owner(np.asarray(K), np.asarray(K_gt)).numpy()
