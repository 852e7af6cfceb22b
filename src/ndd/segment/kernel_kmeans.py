"""Kernel k-means with a given similarity matrix as the kernel (Dhillon et al. 2004)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["kernel_kmeans", "kernel_kmeans_distances"]


def kernel_kmeans_distances(K: Tensor, Z: Tensor, diag: Tensor | None = None) -> Tensor:
    """Feature-space squared distances of every point to every (soft) cluster mean.

    ``d_ik = K_ii - 2/n_k Σ_j K_ij Z_jk + 1/n_k² Σ_jl Z_jk Z_lk K_jl`` with ``n_k = Σ_j Z_jk``;
    with one-hot ``Z`` this is the hard kernel k-means distance.

    Args:
        K: (..., N, N) kernel.
        Z: (..., N, k) non-negative memberships; every column must have a positive sum.
        diag: optional (..., N) diagonal of K (computed when omitted).

    Returns:
        (..., N, k) distances.
    """
    n = Z.sum(dim=-2)  # (..., k)
    KZ = K @ Z  # (..., N, k): Σ_j K_ij Z_jk, one batched matmul for all clusters
    within = (Z * KZ).sum(dim=-2)  # (..., k): Z_k^T K Z_k
    if diag is None:
        diag = torch.diagonal(K, dim1=-2, dim2=-1)
    return diag.unsqueeze(-1) - 2.0 * KZ / n.unsqueeze(-2) + (within / n.square()).unsqueeze(-2)


def kernel_kmeans(
    K: Tensor,
    centers: Tensor,
    n_iter: int = 30,
    temperature: float | None = None,
    tol: float = 1.0,
) -> Tensor:
    """Cluster the N points of a kernel matrix, starting from given centre points.

    Every point is first assigned to its most similar centre (``argmax_k K[c_k, i]``). The
    default (``temperature=None``) is hard kernel k-means: points move to the cluster with
    the smallest :func:`kernel_kmeans_distances`, clusters that become empty are dropped,
    and the loop stops when no label changes. With a ``temperature`` T the authors' soft
    variant runs instead: ``Z = softmax(T · K[c, :])`` initially, then
    ``Z = softmax(-T · d)`` until ``Σ|ΔZ| < tol`` (authors: T = 50, tol = 1, ~20 iterations),
    and the hard labels are ``argmax Z``.

    Args:
        K: (N, N) kernel (e.g. ``K_D``), or (B, N, N) for a batch of images of equal size.
        centers: (C,) centre indices, or (B, C) for a batch.
        n_iter: maximum number of iterations.
        temperature: ``None`` for hard k-means, else the softmax temperature of the soft one.
        tol: soft variant only: stop when the total absolute change of ``Z`` is below this.

    Returns:
        (N,) int64 labels (or (B, N)), consecutive ``0 .. k'-1`` ordered by first occurrence
        of the surviving clusters in centre order (``k' <= C`` after dropping empty ones).
    """
    K = torch.as_tensor(K)
    centers = torch.as_tensor(centers, dtype=torch.int64, device=K.device)
    if K.ndim == 3:
        if centers.ndim == 1:
            centers = centers.expand(K.shape[0], -1)
        return torch.stack([kernel_kmeans(k, c, n_iter, temperature, tol) for k, c in zip(K, centers)])
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"K must be (N, N) or (B, N, N), got {tuple(K.shape)}")
    if centers.ndim != 1 or centers.numel() == 0:
        raise ValueError("centers must be a non-empty 1-D index tensor")
    K = K.to(torch.float64 if K.dtype == torch.float64 else torch.float32)
    diag = torch.diagonal(K)
    init = K[centers]  # (C, N): similarity map of each centre

    if temperature is None:
        labels = _hard(K, diag, init.argmax(dim=0), n_iter)
    else:
        labels = _soft(K, diag, init, n_iter, float(temperature), tol)
    # consecutive ids, in order of the centre that seeded each surviving cluster
    _, labels = torch.unique(labels, return_inverse=True)
    return labels


def _hard(K: Tensor, diag: Tensor, labels: Tensor, n_iter: int) -> Tensor:
    N = K.shape[0]
    rows = torch.arange(N, device=K.device)
    for _ in range(n_iter):
        _, labels = torch.unique(labels, return_inverse=True)  # drop empty clusters
        k = int(labels.max()) + 1
        # one-hot Z without building it: K @ Z adds the columns of each cluster (N² adds, not N²k)
        KZ = torch.zeros(N, k, dtype=K.dtype, device=K.device).index_add_(1, labels, K)
        n = torch.bincount(labels, minlength=k).to(K.dtype)
        within = torch.zeros(k, dtype=K.dtype, device=K.device).index_add_(0, labels, KZ[rows, labels])
        d = diag.unsqueeze(1) - 2.0 * KZ / n + within / n.square()  # kernel_kmeans_distances
        new = d.argmin(dim=1)
        if torch.equal(new, labels):
            break
        labels = new
    return labels


def _soft(K: Tensor, diag: Tensor, init: Tensor, n_iter: int, temperature: float, tol: float) -> Tensor:
    Z = torch.softmax(temperature * init.T, dim=1)  # (N, C)
    for _ in range(n_iter):
        keep = Z.sum(dim=0) > 1e-8  # a vanished soft cluster would divide by zero
        Z = Z[:, keep]
        new = torch.softmax(-temperature * kernel_kmeans_distances(K, Z, diag), dim=1)
        change = float((new - Z).abs().sum())
        Z = new
        if change < tol:
            break
    return Z.argmax(dim=1)
