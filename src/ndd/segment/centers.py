"""Cluster-centre initialisation by greedy coverage of the similarity maps (paper Eq. 9)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["coverage_centers"]


def coverage_centers(
    K: Tensor,
    threshold: float = 0.02,
    max_centers: int | None = None,
    first: Literal["argmax", "fixed"] | int = "argmax",
) -> Tensor:
    """Pick cluster centres whose similarity maps greedily cover the image (Eq. 9).

    Starting from ``U_cov = 0`` the centre ``i* = argmax_i K_i · (1 - U_cov)`` is added and
    ``U_cov = min(U_cov + K_i*, 1)``, until the residual coverage ``mean(1 - U_cov)`` falls
    below ``threshold`` or ``max_centers`` centres were chosen.

    Args:
        K: (N, N) similarity matrix with values in [0, 1]; row ``i`` is the similarity map of
            grid point ``i`` (e.g. the neural diffusion similarity ``K_D``).
        threshold: stop once ``mean(1 - U_cov) < threshold`` (paper: 0.02).
        max_centers: hard cap on the number of centres (authors' code: 9); ``None`` = no cap.
        first: ``"argmax"`` (paper: the first centre is the argmax with ``U_cov = 0``),
            ``"fixed"`` (authors' code: a fixed first centre at the middle of the grid, index
            ``N // 2`` in row-major order, the centre cell of an odd-sized grid), or an explicit
            index (the authors' 41x41 grid used 841).

    Returns:
        (C,) int64 tensor of distinct centre indices in the order they were added, ``C >= 1``.
    """
    K = torch.as_tensor(K)
    if K.ndim != 2 or K.shape[0] != K.shape[1] or K.shape[0] == 0:
        raise ValueError(f"K must be a non-empty square (N, N) matrix, got shape {tuple(K.shape)}")
    if max_centers is not None and max_centers < 1:
        raise ValueError("max_centers must be >= 1")
    n = K.shape[0]
    K = K.to(torch.float64 if K.dtype == torch.float64 else torch.float32)
    residual = torch.ones(n, dtype=K.dtype, device=K.device)  # 1 - U_cov
    chosen = torch.zeros(n, dtype=torch.bool, device=K.device)
    centers: list[int] = []
    cap = n if max_centers is None else min(max_centers, n)

    while len(centers) < cap:
        if not centers and first != "argmax":
            i = n // 2 if first == "fixed" else int(first)
            if not 0 <= i < n:
                raise ValueError(f"first centre index {i} out of range for N={n}")
        else:
            scores = K @ residual
            # A centre already chosen covers nothing new in a sane kernel, but a kernel
            # that is not diagonal-dominant could pick it again and loop forever.
            scores[chosen] = -torch.inf
            i = int(torch.argmax(scores))
            if not torch.isfinite(scores[i]) or scores[i] <= 0:
                break  # nothing left that any candidate can cover
        centers.append(i)
        chosen[i] = True
        residual = torch.clamp(residual - K[i].clamp(min=0), min=0.0)
        if float(residual.mean()) < threshold:
            break
    return torch.tensor(centers, dtype=torch.int64, device=K.device)
