"""The default eigen-solver: block Lanczos with reorthogonalisation (by test, or where an estimate of
the loss of orthogonality asks for it), Rayleigh-Ritz, error
bounds from the last block's residuals, deeper or restarted spaces, wider blocks for repeated
eigenvalues, and the exact spectrum where the space would not fit.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import NamedTuple

import torch
from torch import Tensor

from .affinity import BandedAffinity
from .matrix_function import _power_and_derivatives
from .operators import _Operator, _SparseOperator


def krylov_start(
    num_nodes: int,
    block_size: int,
    grid_shape: tuple[int, int] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Start block of :func:`block_krylov`: smooth, global columns.

    On an ``h x w`` grid: the ``block_size`` lowest-frequency 2-D cosines (the DCT-II basis,
    ordered by ``(ky/h)^2 + (kx/w)^2``; the first is constant). The leading eigenvectors of a
    diffusion on an image are smooth inside regions, so these have large components along
    them from the start: at the same cost the error of ``D`` was 10-30x smaller than from
    one-hot or random columns (BSDS images, shipped model, 41x61 grid). Without a grid:
    Gaussian columns from a fixed seed (deterministic).

    Returns:
        ``(N, block_size)``, not orthonormalised.
    """
    if not 0 < block_size <= num_nodes:
        raise ValueError(f"block_size must be in [1, N={num_nodes}], got {block_size}")
    if grid_shape is None:
        g = torch.Generator().manual_seed(0)
        return torch.randn(num_nodes, block_size, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    h, w = grid_shape
    pairs = sorted(((ky, kx) for ky in range(min(h, block_size)) for kx in range(min(w, block_size))),
                   key=lambda k: ((k[0] / h) ** 2 + (k[1] / w) ** 2, k))[:block_size]
    ky, kx = torch.tensor(pairs, dtype=torch.float64).T
    cy = torch.cos(math.pi * (torch.arange(h, dtype=torch.float64) + 0.5)[:, None] * ky / h)  # (h, b)
    cx = torch.cos(math.pi * (torch.arange(w, dtype=torch.float64) + 0.5)[:, None] * kx / w)  # (w, b)
    return (cy[:, None, :] * cx[None, :, :]).reshape(h * w, block_size).to(dtype=dtype, device=device)


_cached_krylov_start = functools.lru_cache(maxsize=16)(krylov_start)  # read-only use inside this module


def _spike_columns(squared_row_norms: Tensor, count: int) -> Tensor:
    """One-hot columns ``(B, N, count)`` at the ``count`` nodes of largest ``(S^2)_ii``.

    ``(S^2)_ii = sum_j S_ij^2 = (P^2)_ii`` is the probability that a two-step random walk from
    ``i`` is back at ``i``: about ``1 / c`` for a node inside a nearly isolated group of ``c``
    nodes, about ``1 / K`` for a node linked evenly to its ``K`` window neighbours. A nearly isolated node
    (or pair) carries an eigenvector of its own, localised there, with an eigenvalue in the
    middle of the leading ones (0.957 among 0.959 and 0.955 on BSDS 51084 with
    ``BSDS500_HED_V6``): smooth start columns have almost no component along it and the
    Krylov space cannot resolve it from its neighbours in the spectrum, so it is missed
    outright while every pair found is converged (no residual shows it). A one-hot column at
    the node is that eigenvector to a few percent from the start. On the shipped models'
    affinities the localised eigenvectors that matter peaked at the nodes ranked first by
    this measure (docs/eigensolver.md, "Start columns at isolated nodes").
    """
    batch, n = squared_row_norms.shape
    top = squared_row_norms.topk(count, dim=-1).indices  # (B, count)
    spikes = squared_row_norms.new_zeros(batch, n, count)
    return spikes.scatter_(1, top.unsqueeze(1), 1.0)


def _default_start(op: _Operator | _SparseOperator, block_size: int, grid: tuple[int, int] | None,
                   dtype: torch.dtype) -> Tensor:
    """The default start block ``(B, N, b)``: ``b - b // 4`` smooth columns (:func:`krylov_start`)
    and ``b // 4`` one-hot columns at the most isolated nodes (:func:`_spike_columns`)."""
    spikes = block_size // 4
    norms = op.squared_row_norms()
    smooth = _cached_krylov_start(op.n, block_size - spikes, grid, dtype, norms.device).expand(op.batch, op.n, -1)
    return torch.cat([smooth, _spike_columns(norms.to(dtype), spikes)], -1) if spikes else smooth


#: Fewest Krylov blocks of the first space (:func:`krylov_size`: about ``2.4 Ne`` dimensions); a
#: deeper one is built (going on from it) while the error bound of the Ritz pairs exceeds
#: :data:`KRYLOV_TOLERANCE`, see :func:`_next_depth`.
KRYLOV_FIRST_DEPTH = 8


def _next_depth(blocks: int) -> int:
    """Depth of the next space: half as deep again, at least 4 blocks more (10, 15, 22, 33, ...)."""
    return blocks + max(4, blocks // 2)


def _restarted_block(block_size: int) -> int:
    """Block width on a graph whose space :func:`diffusion` will restart (no gradient, and the
    third space would pass :data:`KRYLOV_MAX_BASIS`): three quarters of the default, at least 8.

    Measured (``diffusion_embedding``-style eigenpairs, Ne 50, float64 unless said, one thread,
    best of 2; throwaway ``/tmp/s13/knn7.py`` and ``bigimg.py``), blocks of 16 / 12 / 8:
    k-nearest-neighbour graphs of 20,000 points 1.75 / 1.45 / 1.29 s and 1.69 / 1.35 / 1.17 s,
    of 40,000 points 4.61 / 4.12 / 4.21 s; a 128x192 image grid (window 17, t 10) 1.38 / 1.22 /
    1.22 s, in float32 0.66 / 0.57 / 0.61 s; eigenvalues the same to the solver's accuracy. 12
    is the steady choice, and holds more copies of a multiple eigenvalue than 8 before
    :func:`_widened` is needed (those blocks were three quarters of the then default 16; from the
    default 12 for ``Ne = 50`` it is 9). Image-sized graphs (N = 2501) never restart.
    """
    return max(8, (3 * block_size) // 4)


def _past_half(num_nodes: int, block_size: int, blocks: int) -> bool:
    """Whether a space of ``blocks`` blocks of ``block_size`` columns holds more than half the graph's
    ``num_nodes`` dimensions: there the exact spectrum is cheaper, and a space that close to ``N``
    loses orthogonality. The one rule for the first space (:func:`krylov_size`), a deeper one
    (:func:`_krylov_ritz`) and a wider block (:func:`_krylov_space`)."""
    return 2 * block_size * blocks > num_nodes


def krylov_size(n_eigs: int, num_nodes: int) -> tuple[int, int] | None:
    """Default ``(block_size, n_blocks)`` of the first block Krylov space for ``Ne`` eigenpairs.

    Blocks of ``b = ceil(0.24 Ne)`` columns (at least 8, at most ``Ne``; 12 for ``Ne = 50``), a
    first space of about ``2.4 Ne`` dimensions (at least :data:`KRYLOV_FIRST_DEPTH` blocks; 10
    products by ``S`` for ``Ne = 50``); :func:`diffusion` then makes the space deeper (10, 15,
    22, 33, ... blocks, each going on from the last) while the first-order error bound of its
    Ritz pairs exceeds :data:`KRYLOV_TOLERANCE`. Depth matters most: the leading eigenvalues of
    a learned affinity cluster near 1 (0.998, 0.989, 0.977, ...) and each product widens the
    polynomial degree, while a product costs in proportion to its columns (MKL's CSR product on
    8 / 16 / 32 float64 columns: 0.86 / 1.69 / 4.28 ms, N = 2501, K = 289), so narrower, deeper
    spaces pay. Measured on the shipped model's affinities of 30 BSDS500 val images (``t`` = 65,
    one thread; docs/eigensolver.md, "Orthogonality by estimate"): ``Ne`` = 50, 12 x 10 blocks
    first against the earlier 16 x 8: 2.59 against 3.10 s in all (float64), 1.66 against 1.94 s
    (float32), worst relative error of ``D`` 3.1e-5 against 5.2e-5; ``Ne`` = 30 (8 x 9 against
    10 x 8) and 100 (24 x 10 against 32 x 8), 15 of those images: 1.18 against 1.37 s and 2.18
    against 2.54 s, worst 6.5e-5 against 2.3e-4 and 5.0e-6 against 2.6e-5; on the README's
    benchmark graph (``t`` = 10) 46.4 against 46.1 ms, error 7.1e-6 against 4.1e-5. At least 8
    columns: a block narrower than a cluster of leading eigenvalues converges slowly (measured
    on 6-community graphs, ``Ne = 6``: 2e-1 with 2 columns, 2e-5 with 6); the one-hot start
    columns (:func:`_spike_columns`) find the localised eigenvectors that smooth columns miss.
    ``None`` when 16 blocks would exceed half the graph: solve exactly instead (cheap there).
    """
    block, blocks = _krylov_default(n_eigs)
    return None if _past_half(num_nodes, block, 16) else (block, blocks)


def _krylov_default(n_eigs: int) -> tuple[int, int]:
    block = min(n_eigs, max(8, math.ceil(0.24 * n_eigs)))
    return block, max(KRYLOV_FIRST_DEPTH, math.ceil(2.4 * n_eigs / block))


class _KrylovState(NamedTuple):
    """Where a block Lanczos run stopped, so that it can go on (:func:`_block_krylov`)."""

    rows: list[Tensor]  # the orthonormal blocks Q_j as rows, (B, b_j, N) each (b_0 may differ: kept Ritz vectors)
    pieces: list[Tensor]  # column j of H down to its last non-zero block, (B, rows so far, b_j)
    residual: Tensor  # (S Q_q)^T after the last projections, (B, b, N)
    coupling: Tensor | None = None  # (B, b, b_q): the next block's row of H is R @ coupling (None: R)
    buffer: Tensor | None = None  # the last run's block buffer, reused by a restart of the same size
    orthogonality: _OrthogonalityEstimate | None = None  # the run's estimate (None: it measured instead)


#: Estimated loss of orthogonality ``|Q_k^T Q_j|`` between Krylov blocks that a run without a
#: gradient leaves standing (:class:`_OrthogonalityEstimate`); above it the new block is
#: reorthogonalised against every earlier one. ``sqrt(eps)`` of float64: "semi-orthogonality",
#: under which the Lanczos ``H`` is the projection of ``S`` on an orthonormal basis of the same
#: space to rounding (Simon 1984), so the Ritz pairs lose nothing (the errors of D on the shipped
#: model's 29 graphs were those of the fully reorthogonalised run to three digits). Float32's
#: rounding is above it: float32 runs measure their coefficients instead (:func:`_needs_second_pass`).
KRYLOV_ORTHOGONALITY = 1.5e-8


class _OrthogonalityEstimate:
    """Simon's omega recurrence for block Lanczos: ``Omega_kj ~ Q_k^T Q_j`` from ``H`` alone.

    From ``S Q_j = Q_(j-1) C + Q_j A + Q_(j+1) B`` (``C = H_(j-1,j)``, ``A = H_jj``, ``B = R`` of
    the new block's QR) and the same relation for ``Q_k``, both multiplied out with ``S``
    symmetric: ``Omega_(k,j+1) B = sum_i H_ik^T Omega_ij - Omega_(k,j-1) C - Omega_kj A`` plus
    rounding, which the estimate adds with the sign that makes it grow (``delta = 8 eps
    sqrt(N) |S|``, ``|S|`` from the first step's coefficients, or a Cholesky QR's own loss of
    orthogonality where larger). A Krylov run that skips the Gram-Schmidt pass against all
    earlier blocks while the estimate stays below :data:`KRYLOV_ORTHOGONALITY` saves that
    pass's two products with the whole basis on most blocks. Measured (docs/eigensolver.md,
    "Orthogonality by estimate"): on the shipped model's 29 graphs, 20 blocks each and no
    reorthogonalisation, the estimate was at least 4x the measured ``max |Q_k^T Q_j|`` wherever
    that passed 1e-10 (typically 30x). All blocks have ``b`` rows; ``Omega_jj = I`` and the two
    nearest blocks, which every step projects out, are at rounding. A handful of small torch
    calls per step (NumPy's BLAS threads, outside torch's thread setting, slowed the products
    down by a third in a NumPy version).
    """

    def __init__(self, batch: int, block: int, n: int, size: int, dtype: torch.dtype, device: torch.device):
        self.block, self.eps_n = block, 8 * torch.finfo(dtype).eps * math.sqrt(n)
        self.H = torch.zeros(batch, size + block, size, dtype=dtype, device=device)  # the columns of H so far
        self.previous = self.H.new_zeros(batch, 0, block)  # Omega_(k,j-1), k < j - 1: (B, (j - 1) b, b)
        self.current = self.H.new_zeros(batch, 0, block)  # Omega_(k,j), k < j: (B, j b, b)
        self.delta: float | None = None  # rounding of one step, set by the first
        self.local = 0.0  # the last step's rounding (delta, or a Cholesky QR's loss if larger)

    @staticmethod
    def resolves(n: int, dtype: torch.dtype) -> bool:
        """Whether the rounding of an ``n``-node run in ``dtype`` (with ``|S| <= 1``) is below
        :data:`KRYLOV_ORTHOGONALITY`: float64, not float32 (which then measures, as before)."""
        return 8 * torch.finfo(dtype).eps * math.sqrt(n) < KRYLOV_ORTHOGONALITY

    def reserve(self, size: int) -> None:
        """Room for the columns of a space of ``size`` dimensions (a deeper space goes on)."""
        batch, rows, cols = self.H.shape
        if cols < size:
            grown = self.H.new_zeros(batch, size + self.block, size)
            grown[:, :rows, :cols] = self.H
            self.H = grown

    def record(self, j: int, column: Tensor) -> None:
        """Stores column ``j`` of ``H`` ``(B, rows, b)`` (coefficients on blocks ``0 .. j + 1``)."""
        self.H[:, : column.shape[-2], j * self.block : (j + 1) * self.block] = column

    def write(self, j: int, lo: int, c_near: Tensor, coefficients: Tensor | None, R: Tensor | None) -> Tensor:
        """Writes column ``j`` of ``H`` in place and returns it, ``(B, rows, b)``: the step's local
        coefficients ``c_near`` ``(B, b, top - lo)`` on rows ``lo .. top``, plus the Gram-Schmidt
        ``coefficients`` ``(B, b, top)`` on every earlier block if the step made that pass, and the
        next block's ``R`` ``(B, b, b)`` below (``None`` for the last block). What :meth:`record`
        stores, without building the column first (three torch calls less per step)."""
        b, top = self.block, lo + c_near.shape[-1]
        column = self.H[:, :, j * b : (j + 1) * b]
        if coefficients is None:  # rows above lo stay zero: H is block tridiagonal there
            column[:, lo:top] = c_near.transpose(-1, -2)
        else:
            column[:, :top] = coefficients.transpose(-1, -2)
            column[:, lo:top] += c_near.transpose(-1, -2)
        if R is None:
            return column[:, :top]
        column[:, top : top + b] = R
        return column[:, : top + b]

    def step(self, j: int, c_near: Tensor, R: Tensor, loss: float = 0.0) -> Tensor:
        """``Omega_(k,j+1)`` for the block ``Q_(j+1)`` that ``R`` ``(B, b, b)`` is the QR factor of,
        ``k <= j - 2``, ``(B, (j - 1) b, b)``, from ``c_near`` ``(B, b, 2b)`` (``(B, b, b)`` at
        ``j = 0``): the step's local projection coefficients, ``Q_j^T S [Q_(j-1), Q_j]``."""
        b = self.block
        if self.delta is None:
            self.delta = self.eps_n * float(torch.maximum(c_near.abs().amax(), R.abs().amax()))
        self.local = max(self.delta, loss)  # a Cholesky QR's block is orthonormal to its own loss
        if j < 2:
            return self.current[:, :0]
        kept = (j - 1) * b
        T = self.H[:, : j * b, :kept].transpose(-1, -2) @ self.current
        T = torch.baddbmm(T, self.previous, c_near[..., :b].transpose(-1, -2), alpha=-1)
        T = torch.baddbmm(T, self.current[:, :kept], c_near[..., b:].transpose(-1, -2), alpha=-1)
        T = T.add_(T.sign(), alpha=self.local)
        return torch.linalg.solve_triangular(R, T, upper=True, left=False)

    def exceeds(self, omega: Tensor) -> bool:
        """Whether the estimate ``omega`` (:meth:`step`) or the rounding of the two projected blocks
        is above :data:`KRYLOV_ORTHOGONALITY` (NaN from a singular ``R`` counts as above)."""
        largest = max(float(torch.linalg.vector_norm(omega, math.inf)) if omega.numel() else 0.0, self.local)
        return not largest <= KRYLOV_ORTHOGONALITY

    def advance(self, j: int, omega: Tensor | None) -> None:
        """Moves on to block ``j + 1``: its estimate ``omega`` from :meth:`step`, or ``None`` after
        a full reorthogonalisation (every ``Omega_(k,j+1)`` at rounding)."""
        batch, b = self.current.shape[0], self.block
        nxt = self.H.new_full((batch, (j + 1) * b, b), self.local if omega is not None else self.delta or 0.0)
        if omega is not None:
            nxt[:, : omega.shape[1]] = omega
        self.previous, self.current = self.current, nxt


def _householder_rows(Zt: Tensor) -> tuple[Tensor, Tensor]:
    """``Q^T`` and ``R`` of the QR factorisation of ``Zt^T`` (``Zt`` ``(B, b, N)`` rows)."""
    Q, R = torch.linalg.qr(Zt.transpose(-1, -2))
    return Q.transpose(-1, -2), R


def _cholesky_qr(Zt: Tensor, limit: float) -> tuple[Tensor, Tensor, float] | None:
    """``Q^T``, ``R`` and the loss of orthogonality of ``Q`` (about ``eps cond(R)^2``, bounded
    through Frobenius norms) of ``Zt^T`` by Cholesky QR (``R^T R = Zt Zt^T``, ``Q^T = R^-T Zt``),
    or ``None`` where that loss could pass ``limit`` (or the Gram matrix is not positive
    definite): Householder's QR is then needed."""
    L, info = torch.linalg.cholesky_ex(Zt @ Zt.transpose(-1, -2))
    if bool(info.any()):
        return None
    eye = torch.eye(L.shape[-1], dtype=L.dtype, device=L.device)
    L_inv = torch.linalg.solve_triangular(L, eye, upper=False)
    kappa = float((torch.linalg.matrix_norm(L) * torch.linalg.matrix_norm(L_inv)).max())
    loss = torch.finfo(L.dtype).eps * kappa * kappa
    if not loss <= limit:
        return None
    return L_inv @ Zt, L.transpose(-1, -2), loss


def _project_out(Zt: Tensor, basis: Tensor) -> tuple[Tensor, Tensor]:
    """One classical Gram-Schmidt pass: ``Zt`` ``(B, b, N)`` rows less their components along the
    orthonormal rows of ``basis`` ``(B, m, N)``, and the coefficients ``Zt basis^T`` ``(B, b, m)``."""
    column = Zt @ basis.transpose(-1, -2)
    return torch.baddbmm(Zt, column, basis, alpha=-1), column


def _needs_second_pass(column: Tensor, Zt: Tensor) -> bool:
    """Whether the Gram-Schmidt pass that follows a Lanczos step must subtract its coefficients
    ``column`` ``(B, b, m)`` from the block ``Zt`` ``(B, b, N)``: yes if one exceeds
    ``eps^0.8 |z|`` of its row (3.1e-13 in float64, 2.9e-6 in float32), if a gradient is
    tracked (the subtraction's backward projects the gradient, whatever the size of the
    coefficients: skipping it moved a test's gradient by 5e-3), and on a GPU (no host sync
    per step there).

    After the Lanczos step the coefficients are rounding: up to 4.3e-14 |z| (float64) and
    1.1e-5 |z| (float32) on the README's 41x61 grid, 5e-15 to 1.6e-13 |z| on the 20,000-point
    k-nearest-neighbour graph (float64). Below the threshold the blocks stay orthogonal to
    about that level, far inside the 1e-3 the solver aims at, and the subtraction, half of the
    pass, is saved: 13 % of ``diffusion_embedding`` on that graph (1.71 against 1.97 s).
    """
    if Zt.device.type != "cpu" or (torch.is_grad_enabled() and Zt.requires_grad):
        return True
    limit = torch.finfo(Zt.dtype).eps ** 0.8
    return bool((column.abs().amax(-1) > limit * Zt.norm(dim=-1)).any())


def _block_krylov(op, U0: Tensor | None, n_blocks: int,
                  state: _KrylovState | None = None) -> tuple[Tensor, Tensor, Tensor, _KrylovState]:
    """Block Lanczos with reorthogonalisation; see :func:`block_krylov`.

    Also returns ``R^T R`` ``(B, b, b)`` (no gradient) of the residual block left after the
    last step, ``S Q = Q H + Z E_q^T`` with ``Z = Q_(q+1) R``: the residual of a Ritz pair
    ``(theta, Q y)`` is ``|Z y_q|``, ``y_q`` the last ``b`` entries of ``y``, so every pair's
    residual costs no product. And the run's state: given back as ``state`` (``U0`` is then
    not used), the run goes on from where it stopped to ``n_blocks`` blocks in all, so a space
    made deeper costs only the new products. A state may also start from kept Ritz vectors
    (:func:`_thick_restart`): its first block then has their number of rows.

    The blocks are kept as rows (``(B, b, N)``): the projections are then products with a
    short first dimension, which BLAS runs ~4x faster than the same products on ``(N, b)``
    columns (measured). ``H`` comes from the projection coefficients, the block Arnoldi
    relation ``S Q_j = sum_i Q_i H_ij + Q_(j+1) R_j``, so no extra product is needed.

    In float64 on the CPU without a gradient the run estimates its loss of orthogonality
    (:class:`_OrthogonalityEstimate`) instead of measuring it against every block, takes
    ``Q_(j-1)^T S Q_j = R_(j-1)^T`` from the recurrence instead of a product, and factors each
    block by Cholesky QR where that is accurate enough (:func:`_cholesky_qr`): 21.4 against 23.4
    ms for a 16 x 8-block float64 space on the README's graph (docs/eigensolver.md, "Orthogonality
    by estimate").
    """
    if state is None:
        Q, _ = torch.linalg.qr(U0)
        rows, pieces, first = [Q.transpose(-1, -2)], [], 0
    else:  # the residual block left last time becomes the next block
        rows, pieces = list(state.rows), list(state.pieces)
        residual, tracker = state.residual, state.orthogonality
        if tracker is not None:  # the last step left its residual unchecked: reorthogonalise it now
            residual, column = _project_out(residual, torch.cat(rows, -2))
            pieces[-1] = pieces[-1] + column.transpose(-1, -2)
        Q, R = torch.linalg.qr(residual.transpose(-1, -2))
        rows.append(Q.transpose(-1, -2))
        pieces[-1] = torch.cat([pieces[-1], R if state.coupling is None else R @ state.coupling], -2)
        first = len(pieces)
        if tracker is not None:
            tracker.record(first - 1, pieces[-1])
            tracker.advance(first - 1, None)
    Qt = rows[-1]
    batch, b, n = Qt.shape
    starts = [0]
    for r in rows[:-1]:
        starts.append(starts[-1] + r.shape[-2])
    m = starts[-1] + b * (n_blocks - first)
    # Without autograd the blocks go into one buffer (no concatenation per step); with it,
    # writing into a buffer that earlier products saved for backward is not allowed.
    buffer = None
    if not torch.is_grad_enabled():
        # a restart of the same size writes over the last run's buffer (its Ritz vectors are
        # copied out already): no fresh tens of MB to fault in per cycle on a large graph
        spare = None if state is None else state.buffer
        buffer = spare if spare is not None and spare.shape == (batch, m, n) else Qt.new_empty(batch, m, n)
        if first:
            buffer[:, : starts[-1]] = torch.cat(rows[:-1], -2)
    # Without a gradient on the CPU the loss of orthogonality is estimated instead of measured
    # (not after a thick restart, whose first block is not a Lanczos block)
    if (buffer is None or Qt.device.type != "cpu" or (state is not None and state.orthogonality is None)
            or not _OrthogonalityEstimate.resolves(n, Qt.dtype)):
        tracker = None
    elif state is None:
        tracker = _OrthogonalityEstimate(batch, b, n, m, Qt.dtype, Qt.device)
    else:
        tracker.reserve(m)
    for j in range(first, n_blocks):
        top = starts[-1] + b
        if buffer is not None:
            buffer[:, starts[-1] : top] = Qt
            basis = buffer[:, :top]
        else:
            basis = Qt if j == 0 else torch.cat(rows, -2)
        Zt = op(Qt.transpose(-1, -2)).transpose(-1, -2)  # (S Q_j)^T
        # The Lanczos step proper (in exact arithmetic S Q_j only has components along
        # Q_(j-1) and Q_j), then one classical Gram-Schmidt pass against every block, which
        # removes the rounding the first pass left in all directions: with a gradient or on a
        # GPU always, else where the coefficients are above eps^0.8 (_needs_second_pass) or,
        # without a gradient on the CPU, where the estimated loss of orthogonality passes
        # KRYLOV_ORTHOGONALITY (_OrthogonalityEstimate: no product with the whole basis)
        lo = starts[-2] if j else 0
        near = basis[:, lo:]
        if tracker is not None and j:  # Q_(j-1)^T S Q_j is R_(j-1)^T (the Lanczos recurrence)
            c_near = torch.cat([R, Zt @ Qt.transpose(-1, -2)], -1)
        else:
            c_near = Zt @ near.transpose(-1, -2)
        Zt = torch.baddbmm(Zt, c_near, near, alpha=-1)
        last = j == n_blocks - 1
        column = None
        if tracker is None:
            column = Zt @ basis.transpose(-1, -2)
            if _needs_second_pass(column, Zt):
                Zt = torch.baddbmm(Zt, column, basis, alpha=-1)
        elif not last:  # the residual left by the last step is checked if the run goes on
            factors = _cholesky_qr(Zt, 0.01 * KRYLOV_ORTHOGONALITY)
            Qt_R = factors if factors is not None else (*_householder_rows(Zt), 0.0)
            omega = tracker.step(j, c_near, Qt_R[1], Qt_R[2])
            if tracker.exceeds(omega):
                Zt, column = _project_out(Zt, basis)
                omega = None
        if not last:
            # Householder's QR unless the estimate kept this step's Cholesky (or Householder) factors
            Qt, R = _householder_rows(Zt) if tracker is None or omega is None else Qt_R[:2]
            rows.append(Qt)
            starts.append(top)
        if tracker is not None:  # column j of H goes straight into the estimate's copy of H
            column = tracker.write(j, lo, c_near, column, None if last else R)
            if not last:
                tracker.advance(j, omega)
        else:
            if column is None:  # no pass against every block: H is block tridiagonal
                column = torch.cat([c_near.new_zeros(batch, b, lo), c_near], -1).transpose(-1, -2)
            else:
                column = torch.cat([column[..., :lo], column[..., lo:] + c_near], -1).transpose(-1, -2)
            if not last:
                column = torch.cat([column, R], -2)
        pieces.append(column)
    if tracker is not None:  # it holds every column of H in place already
        H = tracker.H[:, :m, :m]
    else:
        H = torch.cat([torch.cat([c, c.new_zeros(batch, m - c.shape[-2], c.shape[-1])], -2) for c in pieces], -1)
    Q = buffer if buffer is not None else torch.cat(rows, -2)
    residual = Zt.detach()
    return (Q.transpose(-1, -2), 0.5 * (H + H.transpose(-1, -2)), residual @ residual.transpose(-1, -2),
            _KrylovState(rows, pieces, Zt, buffer=buffer, orthogonality=tracker))


#: Largest Krylov basis, in entries per graph (``m N``), that :func:`diffusion` builds without
#: restarting. A deeper space is restarted instead from its best Ritz vectors
#: (:func:`_thick_restart`), so memory and the Gram-Schmidt passes stay bounded on large
#: graphs. 4e6 entries (32 MB in float64) is above every space image-sized graphs need
#: (N = 2501: 40 blocks of 16 are 1.6e6), so their path never restarts.
KRYLOV_MAX_BASIS = 4_000_000


#: Blocks added to the kept Ritz vectors in each restart cycle.
KRYLOV_RESTART_BLOCKS = 8


#: Restart cycles after which :func:`diffusion` gives up on the error bound (with a warning).
KRYLOV_MAX_RESTARTS = 100


def _thick_restart(U: Tensor, H: Tensor, eig: tuple[Tensor, Tensor], state: _KrylovState, keep: int) -> _KrylovState:
    """A Krylov state that goes on from the ``keep`` Ritz pairs of largest ``|theta|`` (thick restart).

    With ``S Q = Q H + Z E_q^T`` and the kept Ritz vectors ``V = Q Y_k``: ``S V = V Theta_k +
    Z (E_q^T Y_k)``, so the Lanczos run goes on from ``[V, Q_new]`` (``Z = Q_new R``) with the
    first column of ``H`` ``[Theta_k; R E_q^T Y_k]`` (Wu and Simon's thick restart, by blocks):
    the space keeps what it has found and its size stays ``keep + p b``. ``U`` ``(B, N, m)``,
    ``H`` ``(B, m, m)`` and ``eig = eigh(H)``, all without gradients: which vectors are kept
    depends on ``W``, so a gradient through a restart that holds that choice fixed is wrong
    (off by 0.5 on a test graph); :func:`diffusion` restarts only when no gradient is taken.
    """
    theta, Y = eig
    keep = min(keep, theta.shape[-1])  # a narrow user-given block: its whole first space
    top = theta.abs().topk(keep, dim=-1).indices
    Y_k = Y.gather(-1, top.unsqueeze(-2).expand(*Y.shape[:-1], keep)).to(H.dtype)  # (B, m, k)
    b = state.residual.shape[-2]
    rows = Y_k.transpose(-1, -2) @ U.transpose(-1, -2)  # V as rows, (B, k, N): U is a view of Krylov rows
    residual = state.residual
    if state.orthogonality is not None:  # a run that estimated its orthogonality left the residual unchecked
        residual, _ = _project_out(residual, U.transpose(-1, -2))
    return _KrylovState([rows], [Y_k.transpose(-1, -2) @ H @ Y_k], residual, Y_k[..., -b:, :], state.buffer)


def block_krylov(
    S: Tensor | BandedAffinity,
    block_size: int,
    n_blocks: int,
    U0: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Orthonormal basis of a block Krylov space of a symmetric ``S`` and ``H = Q^T S Q``.

    ``span[U0, S U0, ..., S^(q-1) U0]`` with ``q = n_blocks``, built by block Lanczos with
    reorthogonalisation (``q`` products by ``S`` on ``b = block_size`` columns; ``Q`` orthonormal
    to rounding, or, in float64 without a gradient, to :data:`KRYLOV_ORTHOGONALITY`). The
    space contains every ``p(S) U0`` of degree ``< q``, in particular the Chebyshev filters
    and ``S^(q-1) U0`` of the simultaneous iteration, so its Rayleigh-Ritz pairs converge
    much faster per product. Differentiable (autograd through the products and QRs).

    Args:
        S: symmetric operator, dense ``(B, N, N)`` or banded.
        block_size, n_blocks: ``b`` and ``q``; the space has ``m = b q`` dimensions, which
            must not exceed ``N``.
        U0: ``(N, b)`` or ``(B, N, b)`` start; default: ``b - b // 4`` columns of
            :func:`krylov_start` (cosines on the grid of a banded ``S``, else seeded Gaussian
            columns) and ``b // 4`` one-hot columns at the most isolated nodes (largest
            ``(S^2)_ii``), as :func:`diffusion` starts.

    Returns:
        ``Q`` ``(B, N, m)`` with orthonormal columns and ``H`` ``(B, m, m)`` (symmetrised).
    """
    op = _Operator(S)
    ref = S.weights if isinstance(S, BandedAffinity) else S
    if block_size < 1 or n_blocks < 1 or block_size * n_blocks > op.n:
        raise ValueError(f"need 1 <= block_size * n_blocks <= N={op.n}, got {block_size} x {n_blocks}")
    if U0 is None:
        U0 = _default_start(op, block_size, S.grid_shape if isinstance(S, BandedAffinity) else None, ref.dtype)
    return _block_krylov(op, U0.to(ref.dtype).expand(op.batch, op.n, block_size), n_blocks)[:2]


def _ritz_eigh(H: Tensor) -> tuple[Tensor, Tensor]:
    """``eigh`` of the small Rayleigh-Ritz matrix ``H`` ``(B, m, m)`` (no gradient).

    On a GPU a float32 ``H`` is diagonalised in float64 and the result cast back: cuSOLVER's
    float32 ``eigh`` of the 256 x 256 ``H`` of the paper-sized graph left D with a relative
    error of 1.7e-3 on an H200 (float64 there, or float32 on the CPU: 1e-6; README, "On a
    GPU"). ``m`` is a few hundred at most, so the float64 solve costs nothing.
    """
    if H.dtype == torch.float32 and H.device.type != "cpu":
        theta, Y = torch.linalg.eigh(H.double())
        return theta.float(), Y.float()
    return torch.linalg.eigh(H)


def _degenerate_top(theta: Tensor, block_size: int, n_eigs: int, residual: Tensor | None = None) -> bool:
    """Whether a Krylov space with Ritz values ``theta`` ``(B, m)`` may have missed copies of the
    eigenvalue 1 that belong among the top ``Ne``.

    A block Krylov space holds at most ``b`` vectors of one eigenspace (in exact arithmetic).
    The top eigenvalue of ``S`` is exactly 1, once for each disconnected part of the graph, and
    nearly disconnected regions put one eigenvalue per region within ~1e-9 of it: float64
    resolves those (they differ), float32 cannot, so there they are one multiple eigenvalue
    too. When ``b`` Ritz values or more lie within ``100 eps`` of 1 (or, given the
    ``residual`` of each, shaped as ``theta``, within their residual of 1: an eigenvalue lies
    within ``r`` of a Ritz value; for a converged space), and fewer than ``Ne``, copies past
    the ``b``-th may be missing and no residual shows it (measured: D off by 1.2e-3 on 20
    regions with ``b = 16`` in float32; eigenvalues off by 0.14 on a k-nearest-neighbour graph
    of 30 parts): the caller widens the block. With ``Ne`` of them or more the top ``Ne`` are
    all 1 and none is missing from them.
    """
    count = _count_at_one(theta, 0 if residual is None else residual)
    return bool(((count >= block_size) & (count < n_eigs)).any())


def _beyond_one(theta: Tensor) -> bool:
    """Whether a Ritz value ``theta`` ``(B, m)`` lies past 1 by more than ``100 eps``: ``S``'s
    spectrum is in ``[-1, 1]``, so only a basis that lost its orthogonality can give one. Seen in
    float32 on 12 nearly disconnected discs (41x61 grid, 17x17 window), where more eigenvalues sit
    at 1 within rounding than the block holds: Ritz values up to 1.0017 with one summation order
    of the products (D off by 3.3e-3, no residual showing it) and up to 17 with another. The
    caller treats it as :func:`_degenerate_top`: the space again from a wider block, and the exact
    spectrum where none fits (on that graph 24, 48 and 96 columns still gave values past 1, so it
    ended exact: D within 4.3e-6)."""
    return bool((theta.abs() > 1 + 100 * torch.finfo(theta.dtype).eps).any())


def _count_at_one(theta: Tensor, slack: Tensor | float = 0) -> Tensor:
    """How many of the eigenvalues ``theta`` ``(B, m)`` have modulus 1, ``(B,)``: within
    ``100 eps`` of it, plus ``slack`` (a number, or one per entry of ``theta``)."""
    return ((1 - theta.abs()).abs() <= 100 * torch.finfo(theta.dtype).eps + slack).sum(-1)


def _widened(start: Tensor) -> Tensor:
    """``start`` ``(B, N, b)`` and ``b`` more seeded Gaussian columns: a block twice as wide.

    Gaussian columns have a component along every eigenvector, so the wider space holds up to
    ``2 b`` copies of a multiple eigenvalue (the seed differs from :func:`krylov_start`'s, whose
    Gaussian columns the block may hold already)."""
    batch, n, b = start.shape
    extra = torch.randn(n, b, generator=torch.Generator().manual_seed(1000 + b), dtype=torch.float64)
    return torch.cat([start, extra.to(start).expand(batch, n, b)], -1)


#: Largest first-order error bound ``|f'(theta)| |S v - theta v|`` (``f(x) = (x^2)^t``) over the
#: kept Ritz pairs that the default Krylov space may leave; above it the space is made deeper
#: (:func:`_next_depth`), up to ``N`` dimensions. It bounds the relative error of ``D`` from
#: above in practice: over 115 spaces of 8-27 blocks on 59 graphs (docs/eigensolver.md) the error was at
#: most 0.62 of it where the error was below 1e-3 (median 0.08). The weight is the slope of
#: ``f``, not ``f``: an eigenvector's error is its residual over a spectral gap, and the change
#: of ``f`` across a gap is at most its slope times the gap (with ``|theta|^(2t) r`` instead,
#: errors reached 93 times the bound, on clustered leading eigenvalues).
KRYLOV_TOLERANCE = 1e-3


def _largest_slope(theta: Tensor, t_min: float, t_max: float) -> Tensor:
    """``max over t in [t_min, t_max]`` of ``|f_t'(theta)| = 2 t |theta|^(2t - 1)``, per entry.

    For fixed ``|theta| < 1`` the slope rises with ``t`` up to ``t* = -1 / (2 ln |theta|)`` and
    falls after it, so the maximum is at ``t*`` clamped to the range.
    """
    a = theta.abs().clamp(torch.finfo(theta.dtype).tiny, 1.0)
    log_a = a.log()
    peak = torch.where(log_a < 0, -0.5 / log_a, torch.full_like(log_a, math.inf)).clamp(t_min, t_max)
    return 2 * peak * a.pow(2 * peak - 1)


def _ritz_residuals(eig: tuple[Tensor, Tensor], tail: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` Ritz values of largest modulus ``(B, k)`` and their residuals ``|S v - theta v|``
    ``(B, k)``, from the last residual block of the Krylov run (no product by ``S``,
    :func:`_block_krylov`)."""
    theta, Y = eig
    top = theta.abs().topk(k, dim=-1).indices
    Y_k = Y.gather(-1, top.unsqueeze(-2).expand(*Y.shape[:-1], k))[..., -tail.shape[-1]:, :]  # (B, b, k)
    return theta.gather(-1, top), torch.einsum("bik,bij,bjk->bk", Y_k, tail, Y_k).clamp_min(0).sqrt()


def _ritz_error(theta: Tensor, residual: Tensor, t: Tensor, times: tuple[float, float] | None = None) -> float:
    """Largest ``|f'(theta)|``-weighted residual of Ritz pairs (:func:`_ritz_residuals`),
    ``f(x) = (x^2)^t``; with ``times = (t_min, t_max)`` the largest slope over that range of ``t``."""
    if times is None:
        _, slope, _ = _power_and_derivatives(theta, t.detach())
    else:
        slope = _largest_slope(theta, *times)
    return float((slope.abs() * residual).max())


class _KrylovRun(NamedTuple):
    """What :func:`_krylov_ritz` leaves: the space ``U`` ``(B, N, m)``, ``H`` ``(B, m, m)``,
    ``eigh(H)`` and the depth in blocks, with how it ended (``status``): ``"done"`` (the error
    bound holds, or the depth was given), ``"degenerate"`` (:func:`_degenerate_top` or
    :func:`_beyond_one`: a wider block is needed) or ``"full"`` (the next space would hold more
    than half the graph: the exact spectrum is cheaper there, and a space that close to ``N``
    loses orthogonality)."""

    U: Tensor
    H: Tensor
    eig: tuple[Tensor, Tensor]
    blocks: int
    status: str


def _krylov_ritz(op, start: Tensor, blocks: int, n_eigs: int, t: Tensor, times: tuple[float, float] | None,
                 deepen: bool, track: bool) -> _KrylovRun:
    """The default solver's space (:func:`diffusion`'s ``"krylov"``), see :class:`_KrylovRun`.

    Block Lanczos from ``start`` ``(B, N, b)`` on ``blocks`` blocks, with autograd if ``track``.
    While ``deepen`` and the error bound of the ``n_eigs`` kept pairs (:func:`_ritz_error`, at
    ``t`` or over ``times``) exceeds :data:`KRYLOV_TOLERANCE`, the space goes on from the last run:
    deeper (:func:`_next_depth`, up to half the graph) or, on a large graph without autograd,
    restarted from its best Ritz vectors (:func:`_thick_restart`).
    """
    batch, n, b = start.shape
    keep, restarts, state = n_eigs + 2 * b, 0, None
    while True:  # a deeper space goes on from the last one: only its new products are paid
        with torch.set_grad_enabled(track):
            U, H, tail, state = _block_krylov(op, start, blocks, state)
        eig = _ritz_eigh(H.detach())
        if _degenerate_top(eig[0], b, n_eigs) or _beyond_one(eig[0]):
            return _KrylovRun(U, H, eig, blocks, "degenerate")
        theta_k, residual = _ritz_residuals(eig, tail, n_eigs)
        error = _ritz_error(theta_k, residual, t, times)
        # converged: now a Ritz value counts as a copy of 1 if 1 is within its residual (the
        # copies a block holds converge at different rates: 2e-11 from 1 against 3e-15)
        if error <= KRYLOV_TOLERANCE and _degenerate_top(theta_k, b, n_eigs, residual):
            return _KrylovRun(U, H, eig, blocks, "degenerate")
        if not deepen or error <= KRYLOV_TOLERANCE:
            return _KrylovRun(U, H, eig, blocks, "done")
        more = _next_depth(blocks)
        restart_size = keep + KRYLOV_RESTART_BLOCKS * b
        # Only without autograd: which vectors a restart keeps depends on W, and holding that
        # choice fixed left the gradient off by 0.5 on a test graph.
        large = more * b * n > KRYLOV_MAX_BASIS and restart_size < min(more * b, n)
        if restarts or (large and not track):
            if restarts == KRYLOV_MAX_RESTARTS:
                warnings.warn(f"diffusion: the Krylov error bound is {error:.1e} after {restarts} restarts, "
                              f"above KRYLOV_TOLERANCE = {KRYLOV_TOLERANCE:g}; D may be off by about that much")
                return _KrylovRun(U, H, eig, blocks, "done")
            state = _thick_restart(U, H, eig, state, keep)  # a large graph: from the best Ritz vectors
            blocks, restarts = 1 + KRYLOV_RESTART_BLOCKS, restarts + 1
        elif _past_half(n, b, more):
            return _KrylovRun(U, H, eig, blocks, "full")
        else:
            blocks = more  # not accurate enough yet: a deeper space


def _warn_if_ones_are_split(theta: Tensor, n_eigs: int) -> None:
    """Warns when more than ``Ne`` eigenvalues ``theta`` ``(B, m)`` have modulus 1 (as many
    disconnected parts, or bipartite ones): the top ``Ne`` pairs are then a choice among them,
    and D truncated to ``Ne`` depends on it (the exact spectrum's too)."""
    count = int(_count_at_one(theta).max())
    if count > n_eigs:
        warnings.warn(f"diffusion: at least {count} eigenvalues have modulus 1 (the graph has that many "
                      f"disconnected parts) but n_eigs = {n_eigs}: D from the top {n_eigs} pairs depends on which "
                      f"of them are kept; give n_eigs > {count}")


#: Largest graph (nodes) whose exact spectrum :func:`diffusion` computes when its Krylov space
#: would need more than half the graph (``eigh`` of a dense ``N x N`` matrix: 0.5 GB in float64).
EXACT_MAX_NODES = 8192


def _will_restart(n: int, size: tuple[int, int]) -> bool:
    """Whether a space of ``size = (b, depth)`` blocks on an ``n``-node graph would be restarted if
    it had to go deeper twice (:func:`_krylov_ritz`): the third space holds more than
    :data:`KRYLOV_MAX_BASIS` entries. :func:`diffusion` then starts from :func:`_restarted_block`."""
    return n * size[0] * _next_depth(_next_depth(size[1])) > KRYLOV_MAX_BASIS


def _exact_space(S: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
    """The whole space for a dense ``S`` ``(B, N, N)``: basis ``I`` (expanded, no copy), ``H = S``
    and ``eigh(S)``, so that Rayleigh-Ritz on it is the exact spectrum."""
    batch, n, _ = S.shape
    return torch.eye(n, dtype=S.dtype, device=S.device).expand(batch, n, n), S, _ritz_eigh(S.detach())


def _krylov_space(op, start: Tensor, blocks: int, n_eigs: int, t: Tensor, times: tuple[float, float] | None,
                  deepen: bool, track: bool) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
    """The default solver's space ``U`` ``(B, N, m)``, ``H = U^T S U`` and ``eigh(H)``, from ``start``
    ``(B, N, b)`` and ``blocks`` blocks (:func:`_krylov_ritz`, deeper while ``deepen``).

    If the top of the spectrum holds more copies of 1 than the block (:func:`_degenerate_top`)
    the space is built again from a block twice as wide (:func:`_widened`), while that fits in
    the graph; where it does not, or the space would pass half the graph, the exact spectrum
    (:func:`_exact_space`, up to :data:`EXACT_MAX_NODES` nodes; above, the last Krylov result
    with a warning). Warns if more eigenvalues have modulus 1 than ``n_eigs``.
    """
    n = start.shape[-2]
    while True:
        run = _krylov_ritz(op, start, blocks, n_eigs, t, times, deepen=deepen, track=track)
        if run.status != "degenerate" or _past_half(n, 2 * start.shape[-1], blocks):
            break
        # more eigenvalues at 1 than the block holds (disconnected parts, or nearly
        # disconnected ones in float32): again, with a block twice as wide
        start = _widened(start)
    U, H, eig = run.U, run.H, run.eig
    if run.status != "done":
        if n <= EXACT_MAX_NODES:  # no room for the space or a wider block: exact, truncated to Ne
            U, H, eig = _exact_space(op.to_dense())
        else:
            warnings.warn(f"diffusion: the Krylov space of this {n}-node graph did not converge ("
                          f"{run.status}) and the graph is too large for the exact spectrum; D may be inaccurate")
    _warn_if_ones_are_split(eig[0], n_eigs)
    return U, H, eig
