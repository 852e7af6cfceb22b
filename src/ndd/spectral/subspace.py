"""The paper's accelerated simultaneous iteration (§4.2): ``T`` QR steps after ``round(2t)`` products
by ``S`` each, then Rayleigh-Ritz.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from . import krylov
from .affinity import BandedAffinity, _affinity_values
from .krylov import _ritz_error
from .operators import _Operator, _SparseOperator


def initial_subspace(
    num_nodes: int,
    n_eigs: int,
    grid_shape: tuple[int, int] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """``U0``: ``n_eigs`` one-hot columns spread uniformly over the grid (paper §5).

    The ones sit at the cell centres of an ``r x c`` lattice with ``r / c`` close to
    the grid's aspect ratio (``r * c >= n_eigs``; surplus lattice points are dropped
    evenly). Without ``grid_shape`` the nodes are spread evenly by index.

    Returns:
        ``(N, n_eigs)``.
    """
    if not 0 < n_eigs <= num_nodes:
        raise ValueError(f"n_eigs must be in [1, N={num_nodes}], got {n_eigs}")
    if grid_shape is None:
        nodes = torch.linspace(0, num_nodes - 1, n_eigs).round().long()
    else:
        h, w = grid_shape
        rows = max(1, min(h, round(math.sqrt(n_eigs * h / w))))
        cols = min(w, math.ceil(n_eigs / rows))
        while rows * cols < n_eigs:
            rows = min(h, rows + 1)
            cols = min(w, math.ceil(n_eigs / rows))
        ys = ((torch.arange(rows) + 0.5) * h / rows).long()
        xs = ((torch.arange(cols) + 0.5) * w / cols).long()
        lattice = (ys.unsqueeze(1) * w + xs.unsqueeze(0)).reshape(-1)
        keep = torch.linspace(0, lattice.numel() - 1, n_eigs).round().long()
        nodes = lattice[keep]
    U0 = torch.zeros(num_nodes, n_eigs, dtype=dtype, device=device)
    U0[nodes, torch.arange(n_eigs)] = 1
    return U0


def subspace_iteration(
    S: Tensor | BandedAffinity,
    n_eigs: int,
    n_iter: int = 2,
    n_power: int = 20,
    U0: Tensor | None = None,
    orth_every: int = 4,
) -> tuple[Tensor, Tensor]:
    """Orthonormal basis of the dominant invariant subspace of a symmetric ``S``.

    Accelerated simultaneous iteration (paper Eq. 5 with ``P^2t`` in place of
    ``P``): ``n_iter`` QR steps, each after ``n_power`` multiplications by ``S``.
    Then a Rayleigh-Ritz step: ``H = U^T S U``, whose spectrum is that of ``S``
    restricted to the subspace. Only the *subspace* converges quickly; reading
    eigenvectors off the QR factors directly (the literal Eq. 5) is far less
    accurate, which is why ``H`` is returned for the caller to diagonalise.

    Args:
        S: symmetric operator, dense ``(B, N, N)`` or banded (or the internal operator
            :func:`diffusion` built, with ``U0`` given).
        n_eigs: subspace dimension ``Ne``.
        n_iter: number of QR steps ``T``.
        n_power: multiplications by ``S`` per QR step (``2t`` in the paper).
        orth_every: re-orthonormalise the block after this many products inside a
            QR step. The span, hence the result in exact arithmetic, is unchanged; but
            ``S^20 U`` has nearly dependent columns, and in float32 back-propagating
            through one QR of it amplified gradient errors ~700x (measured on a
            BSDS crop), while blocks of 4 products stay well conditioned.
        U0: ``(N, Ne)`` or ``(B, N, Ne)`` start; default :func:`initial_subspace`.

    Returns:
        ``U`` of shape ``(B, N, Ne)`` with orthonormal columns, and
        ``H = U^T S U`` of shape ``(B, Ne, Ne)`` (symmetrised).
    """
    if n_iter < 1 or n_power < 1 or orth_every < 1:
        raise ValueError(f"n_iter, n_power and orth_every must be >= 1, got {n_iter}, {n_power}, {orth_every}")
    if isinstance(S, (_Operator, _SparseOperator)):
        if U0 is None:
            raise ValueError("subspace_iteration on an operator needs U0")
        op, dtype = S, U0.dtype
    else:
        op, dtype = _Operator(S), _affinity_values(S).dtype
    if not 0 < n_eigs <= op.n:
        raise ValueError(f"n_eigs must be in [1, N={op.n}], got {n_eigs}")
    if U0 is None:
        grid = S.grid_shape if isinstance(S, BandedAffinity) else None
        U0 = initial_subspace(op.n, n_eigs, grid, dtype, _affinity_values(S).device)
    U = U0.to(dtype).expand(op.batch, op.n, n_eigs)
    for _ in range(n_iter):
        Z = U
        for k in range(1, n_power + 1):
            Z = op(Z)
            if k % orth_every == 0 and k < n_power:
                Z, _ = torch.linalg.qr(Z)
        U, _ = torch.linalg.qr(Z)
    H = U.transpose(-1, -2) @ op(U)
    return U, 0.5 * (H + H.transpose(-1, -2))


def _warn_if_unconverged(op, U: Tensor, eig: tuple[Tensor, Tensor], t: Tensor,
                         times: tuple[float, float] | None) -> None:
    """Warns (once per process: the message is fixed) when the paper's subspace iteration ended
    with Ritz pairs whose error bound (:func:`_ritz_error`) exceeds ``10 KRYLOV_TOLERANCE``.

    It runs a fixed number of products with no check of its own; the residuals cost one more
    product on its ``Ne`` columns (1/40 of its work at the paper's settings). Measured: D off by
    0.97 on 24 chains of 40 nodes (``t = 2``: 2 x 4 products; bound 1.1) and on a 20x24 grid of
    random features (``Ne = 12``, ``t = 4``; bound 5.4e-2), with no sign of it before. The bound
    over-estimates (README graph with ``n_power=6``: 2.8e-3 for an error of 2.2e-4), hence the
    factor 10; at the paper's settings there it is 1.8e-11.
    """
    with torch.no_grad():
        V = U.detach() @ eig[1]
        residual = (op(V) - V * eig[0].unsqueeze(-2)).norm(dim=-2)
    tolerance = krylov.KRYLOV_TOLERANCE  # read at the call: a caller may set it on ndd.spectral.krylov
    if _ritz_error(eig[0], residual, t, times) > 10 * tolerance:
        warnings.warn("diffusion: the subspace iteration (solver='subspace') has not converged: its error "
                      f"bound is above {10 * tolerance:g}, so D may be inaccurate; raise n_iter or "
                      "n_power, or use solver='krylov'")
