"""Kernel accuracy (paper Table 1): cosine similarity of two similarity matrices."""

from __future__ import annotations

import numpy as np

__all__ = ["kernel_cosine"]


def kernel_cosine(K: np.ndarray, K_gt: np.ndarray) -> np.ndarray:
    """Cosine similarity between kernels, ``<K, K_gt>_F / (||K||_F ||K_gt||_F)``.

    ``K``, ``K_gt``: (..., N, N) similarity matrices (broadcastable leading
    batch dimensions).  Returns an array of the batch shape ((), for single
    matrices), in [-1, 1]; 0 where either kernel is all zeros.
    """
    K = np.asarray(K, dtype=np.float64)
    K_gt = np.asarray(K_gt, dtype=np.float64)
    if K.ndim < 2 or K_gt.ndim < 2 or K.shape[-2:] != K_gt.shape[-2:]:
        raise ValueError(f"kernels must be (..., N, N) of equal N, got {K.shape} and {K_gt.shape}")
    dot = np.einsum("...ij,...ij->...", K, K_gt)
    norm = np.sqrt(np.einsum("...ij,...ij->...", K, K)) * np.sqrt(np.einsum("...ij,...ij->...", K_gt, K_gt))
    return np.divide(dot, norm, out=np.zeros_like(dot), where=norm > 0)
