"""The authors' released procedure, for comparison (official-code notes §3-4)."""

from __future__ import annotations

import torch
from torch import Tensor

from .affinity import BandedAffinity, _affinity_values, _cast_affinity, _validate_affinity, degree
from .distance import _check_spectral_dtype, _check_time, _pairwise_from_gram
from .operators import _Operator
from .subspace import initial_subspace


def legacy_diffusion_distance(
    W: Tensor | BandedAffinity,
    t: Tensor | float = 0.5,
    n_iter: int = 2,
    n_power: int = 40,
    lattice: int = 7,
    *,
    spectral_dtype: torch.dtype | None = None,
) -> Tensor:
    """The distance as computed by the authors' released code.

    Non-symmetric ``P = D^-1 W`` multiplied ``n_power`` times per QR step,
    ``n_iter`` QR steps from ``lattice**2`` one-hot columns, then
    ``D_ij = sum_m g_m^(2t) (Q_im - Q_jm)^2`` with ``g = |diag R|`` and ``Q`` the
    last QR factor: no density weight, no Rayleigh-Ritz, trivial vector kept.
    Its scale differs from Eq. (3) (``Q`` has unit-norm columns), and it is only an
    approximation of a diffusion distance; offered for reproducing their numbers.
    ``spectral_dtype`` as in :func:`diffusion`, but ``None`` (the affinity's dtype,
    float32 as in their code) by default.

    Returns:
        ``(B, N, N)`` (or ``(N, N)`` for unbatched dense input) in ``W``'s dtype.
    """
    _check_time(t)
    _check_spectral_dtype(spectral_dtype)
    W, batched = _validate_affinity(W)
    out_dtype = _affinity_values(W).dtype
    W = _cast_affinity(W, spectral_dtype)
    d = degree(W)
    if isinstance(W, BandedAffinity):
        P = BandedAffinity(W.weights / d.unsqueeze(-1), W.grid_shape, W.window)
        grid = W.grid_shape
    else:
        P = W / d.unsqueeze(-1)
        grid = None
    op = _Operator(P)
    ref = d
    U = initial_subspace(op.n, min(lattice * lattice, op.n), grid, ref.dtype, ref.device).expand(op.batch, op.n, -1)
    R = None
    for _ in range(n_iter):
        Z = U
        for _ in range(n_power):
            Z = op(Z)
        U, R = torch.linalg.qr(Z)
    g = R.diagonal(dim1=-2, dim2=-1).abs()
    t = torch.as_tensor(t, dtype=g.dtype, device=g.device)
    weights = torch.exp(2 * t * torch.log(g.clamp_min(torch.finfo(g.dtype).tiny)))
    M = (U * weights.unsqueeze(-2)) @ U.transpose(-1, -2)
    D = _pairwise_from_gram(M).to(out_dtype)
    return D if batched else D.squeeze(0)
