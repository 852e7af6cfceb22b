"""The diffusion distance (paper Eqs. 3-4) from any of the solvers, the eigenpairs behind it, and
the similarity ``K_D = exp(-tau D)``.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import NamedTuple

import torch
from torch import Tensor

from .affinity import BandedAffinity
from .krylov import (
    _default_start, _exact_space, _krylov_default, _krylov_space, _restarted_block, _ritz_eigh,
    _warn_if_ones_are_split, _will_restart, krylov_size,
)
from .matrix_function import _power_and_derivatives, _spectral_power_eig
from .sparsity import _prepare
from .subspace import _warn_if_unconverged, initial_subspace, subspace_iteration


def _check_spectral_dtype(dtype: torch.dtype | None) -> None:
    if dtype is not None and dtype not in (torch.float32, torch.float64):
        raise ValueError(f"spectral_dtype must be torch.float32, torch.float64 or None, got {dtype!r}")


@functools.lru_cache(maxsize=8)
def _strictly_lower(rows: int, device: torch.device) -> Tensor:
    """``(rows, rows)`` mask of the entries below the diagonal (read-only use)."""
    return torch.ones(rows, rows, dtype=torch.bool, device=device).tril_(-1)


def _assemble_distance(G: Tensor, out_dtype: torch.dtype, rows: int = 128) -> Tensor:
    """``D_ij = |g_i|^2 + |g_j|^2 - 2 g_i.g_j`` clamped at 0, from ``G`` ``(B, N, r)``; ``(B, N, N)``.

    ``D`` is exactly symmetric with an exactly zero diagonal, as a distance matrix is (SciPy's
    ``squareform`` and ``linkage`` insist on both): each entry below the diagonal is a copy of
    its mirror, and ``D_ii`` is set to 0 (rounding left ~1e-13 there). On the CPU, in strips of
    ``rows`` rows, each finished (``|g_i|^2 + |g_j|^2`` added as one symmetric term, clamp) while in
    cache and written straight in ``out_dtype``: no ``N x N`` temporaries, and none in the
    wider compute dtype. Only the upper triangle is computed (each strip from its diagonal
    block on) and the lower one is copied from it, transposed: half the products, which is
    what the time is in. Measured on N = 2501, r = 50, one thread: float64 computed, float32
    out, 15.6 ms against 21.0 ms for whole strips (which were 5.5x faster than ``baddbmm`` +
    ``clamp`` + cast); float32 9.3 against 10.8 ms (there the transposed copy eats most of the gain).
    Strips of 128 rows, computed in one reused buffer and clamped after the cast (one pass less
    over the wider dtype): 14.8 against 15.8 ms for 256 rows clamped before it (float64 to float32;
    64 rows 17 ms, the transposed copy in 128- to 512-column tiles 15.3-17.4 ms).
    """
    sq = G.square().sum(-1)
    if G.device.type != "cpu":  # large GPU kernels beat a Python loop of small ones
        D = torch.baddbmm(sq.unsqueeze(-1) + sq.unsqueeze(-2), G, G.transpose(-1, -2), alpha=-2)
        D = D.clamp_min_(0).triu_(1)
        return (D + D.transpose(-1, -2)).to(out_dtype)
    batch, n, _ = G.shape
    D = torch.empty(batch, n, n, dtype=out_dtype)
    same = out_dtype == G.dtype
    buffer = None if same else G.new_empty(min(rows, n) * n)
    for b in range(batch):
        g, s = G[b], sq[b]
        for start in range(0, n, rows):
            end = min(n, start + rows)
            # written in place when the dtypes agree (0.9 ms less)
            strip = (D[b, start:end, start:] if same
                     else buffer[: (end - start) * (n - start)].view(end - start, n - start))
            torch.add(s[start:end, None], s[None, start:], out=strip)  # s_i + s_j: the same for (j, i)
            strip.addmm_(g[start:end], g[start:].T, alpha=-2)
            # clamp_min after the cast gives the same values (the cast is monotone and keeps 0)
            (strip if same else D[b, start:end, start:].copy_(strip)).clamp_min_(0)
            # a GEMM need not give g_i.g_j and g_j.g_i to the same bit (float64 BLAS did not
            # here, float32 did, and mostly so did float64 cast to float32): where the diagonal
            # block differs from its transpose, its lower triangle is copied from the upper one
            block = D[b, start:end, start:end]
            if not torch.equal(block, block.T):
                mirror = block.clone()
                torch.where(_strictly_lower(end - start, G.device), mirror.T, mirror, out=block)
            D[b, end:, start:end] = D[b, start:end, end:].transpose(0, 1)
        D[b].diagonal().zero_()
    return D


def _kept_ritz_pairs(U: Tensor, scale: Tensor, eig: tuple[Tensor, Tensor], k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` Ritz pairs of largest ``|theta|`` from ``eig = eigh(H)`` on the space ``U`` ``(B, N, m)``:
    their indices and values ``(B, k)`` and the eigenvectors ``C Y_k`` ``(B, N, k)`` of Eq. 4, with
    ``C = diag(scale) U``. Computed as ``scale * (Y_k^T U^T)^T``: ``U`` is a transposed row buffer, so
    this reads it in order, and ``C`` (``N x m``) is not formed (0.98 against 1.35 ms for N = 2501,
    m = 128, k = 50)."""
    theta, Y = eig
    top = theta.abs().topk(k, dim=-1).indices
    Y_k = Y.gather(-1, top.unsqueeze(-2).expand(*Y.shape[:-1], k))
    X = (Y_k.transpose(-1, -2) @ U.transpose(-1, -2)).transpose(-1, -2) * scale.unsqueeze(-1)
    return top, theta.gather(-1, top), X


class _RitzDistance(torch.autograd.Function):
    """Eq. 4 from a Rayleigh-Ritz step, keeping the ``k`` Ritz pairs of largest ``|theta|``.

    With ``C = sqrt(vol) D^-1/2 Q`` ``(B, N, m)`` (given as ``U = Q`` and ``scale = sqrt(vol)
    d^-1/2`` ``(B, N)``; ``C`` is formed only in the backward) and ``H = Q^T S Q`` ``(B, m, m)``:
    ``M = C f_k(H) C^T`` and ``D_ij = M_ii + M_jj - 2 M_ij``, where ``f_k(x) = (x^2)^t`` on
    the top ``k`` eigenvalues of ``H`` and 0 on the others (``k = m``: no truncation).
    Forward: ``D`` from the ``(B, N, k)`` factor ``G = C Y_k |theta_k|^t``.
    Backward: Daleckii-Krein divided differences of ``f_k``, so gradients stay finite
    for clustered eigenvalues (the nearly disconnected regions training leads to):
    ``dL/dM = diag(r) - (dD + dD^T)`` with ``r`` its row sums, ``dC = 2 dM C f_k(H)``,
    ``dH = Y (L o Y^T C^T dM C Y) Y^T`` with ``L_ij = (f_i - f_j) / (theta_i - theta_j)``;
    only the rows and columns of kept pairs of ``Y^T C^T dM C Y`` meet a non-zero ``L``, so
    the backward costs one ``N x N x k`` product more than the forward. The clamp at 0 is
    ignored by the gradient (it only removes rounding below 0).

    ``eig``: ``eigh(H)`` if the caller already has it. Returns ``D`` (in ``out_dtype``), the
    kept ``theta`` ``(B, k)`` and ``C Y_k`` ``(B, N, k)`` (the eigenvectors ``psi`` of
    Eq. 4), the last two without gradient.
    """

    @staticmethod
    def forward(ctx, U: Tensor, scale: Tensor, H: Tensor, t: Tensor, k: int, out_dtype: torch.dtype,
                eig: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        theta, Y = _ritz_eigh(H) if eig is None else eig
        top, theta_k, X = _kept_ritz_pairs(U, scale, (theta, Y), k)
        log_sq = torch.log(theta_k.square().clamp_min(torch.finfo(theta.dtype).tiny))
        D = _assemble_distance(X * torch.exp(0.5 * t * log_sq).unsqueeze(-2), out_dtype)
        ctx.save_for_backward(U, scale, theta, Y, top, t, X)
        ctx.mark_non_differentiable(theta_k, X)
        return D, theta_k, X

    @staticmethod
    def backward(ctx, grad: Tensor, _grad_theta: Tensor, _grad_X: Tensor) -> tuple[Tensor | None, ...]:
        U, scale, theta, Y, top, t, X = ctx.saved_tensors
        C = scale.unsqueeze(-1) * U
        grad = grad.to(C.dtype)
        keep = torch.zeros_like(theta, dtype=torch.bool).scatter_(-1, top, True)
        f, df, dft = _power_and_derivatives(theta, t)
        f, df, dft = f * keep, df * keep, dft * keep
        # P = dL/dM @ X without forming dD + dD^T (a transposed N x N read is slow).
        r = (grad.sum(-1) + grad.sum(-2)).unsqueeze(-1)
        P = r * X - grad @ X - grad.transpose(-1, -2) @ X
        Y_k = Y.gather(-1, top.unsqueeze(-2).expand(*Y.shape[:-1], top.shape[-1]))
        grad_U = grad_scale = grad_H = grad_t = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            grad_C = 2 * (P * f.gather(-1, top).unsqueeze(-2)) @ Y_k.transpose(-1, -2)
            grad_U = scale.unsqueeze(-1) * grad_C if ctx.needs_input_grad[0] else None
            grad_scale = (grad_C * U).sum(-1) if ctx.needs_input_grad[1] else None
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            # G = Y^T C^T dM C Y on the kept rows (and, by symmetry, columns).
            rows_k = P.transpose(-1, -2) @ (C @ Y)  # (B, k, m)
            G = torch.zeros_like(Y).scatter_(-2, top.unsqueeze(-1).expand_as(rows_k), rows_k)
            G = torch.where(keep.unsqueeze(-2) & ~keep.unsqueeze(-1), G.transpose(-1, -2), G)
            if ctx.needs_input_grad[2]:
                diff = theta.unsqueeze(-1) - theta.unsqueeze(-2)
                size = theta.abs().amax(-1, keepdim=True).unsqueeze(-1).clamp_min(1.0)
                close = diff.abs() <= 1e3 * torch.finfo(theta.dtype).eps * size
                # Where eigenvalues (nearly) coincide the divided difference becomes the derivative.
                L = torch.where(close, 0.5 * (df.unsqueeze(-1) + df.unsqueeze(-2)),
                                (f.unsqueeze(-1) - f.unsqueeze(-2)) / torch.where(close, torch.ones_like(diff), diff))
                grad_H = Y @ (L * G) @ Y.transpose(-1, -2)
            if ctx.needs_input_grad[3]:
                grad_t = (G.diagonal(dim1=-2, dim2=-1) * dft).sum().reshape(t.shape)
        return grad_U, grad_scale, grad_H, grad_t, None, None, None


def _unrecorded(recorded: bool) -> contextlib.AbstractContextManager:
    """``torch.inference_mode()`` around work no gradient will ever reach (``recorded`` False), else
    nothing. Inference mode skips autograd's per-op bookkeeping (version counters, view tracking):
    the float64 Krylov run on the README's graph makes ~600 small torch calls, and it measured
    about 1.7 ms less there (21.1 against 22.8 ms). What comes out is an inference tensor, so
    only results computed from it outside the block may reach the caller (they are normal
    tensors); nothing that a backward saves may come from it (hence ``recorded`` when ``t``
    takes a gradient)."""
    return contextlib.nullcontext() if recorded else torch.inference_mode()


def _check_time(t: Tensor | float) -> None:
    value = torch.as_tensor(t)
    if value.numel() != 1 or not torch.isfinite(value).all() or not bool(value > 0):
        raise ValueError(f"t must be a positive finite scalar, got {t}")


def _pairwise_from_gram(M: Tensor) -> Tensor:
    """``D_ij = M_ii + M_jj - 2 M_ij`` clamped at 0 (rounding can make it slightly negative), made
    exactly symmetric (a ``M`` from a GEMM need not be so to the bit); its diagonal is exactly 0."""
    diag = M.diagonal(dim1=-2, dim2=-1)
    D = (diag.unsqueeze(-1) + diag.unsqueeze(-2) - 2 * M).clamp_min(0)
    return 0.5 * (D + D.transpose(-1, -2))


def default_power(t: Tensor | float) -> int:
    """Multiplications per QR step used when none is given: ``round(2t)`` (paper §4.2), at least 1."""
    return max(1, int(round(2 * float(torch.as_tensor(t).detach()))))


class DiffusionResult(NamedTuple):
    """Output of :func:`diffusion`.

    Attributes:
        distance: ``(B, N, N)`` diffusion distance (Eq. 3), differentiable; ``None`` when
            :func:`diffusion` was asked for the eigenpairs alone (``distance=False``).
        eigenvalues: ``(B, Ne)`` eigenvalues of ``P`` (decreasing), no gradient
            (``Ne = N`` for the exact path).
        eigenvectors: ``(B, N, Ne)`` right eigenvectors ``psi_m`` of ``P`` scaled so
            that ``D_t(i, j) = sum_m lambda_m^(2t) (psi_m(i) - psi_m(j))^2``; no gradient.
    """

    distance: Tensor | None
    eigenvalues: Tensor
    eigenvectors: Tensor


SOLVERS = ("auto", "krylov", "subspace", "eigh")


def diffusion(
    W: Tensor | BandedAffinity,
    t: Tensor | float,
    n_eigs: int | None = None,
    n_iter: int = 2,
    *,
    n_power: int | None = None,
    solver: str = "auto",
    spectral_dtype: torch.dtype | None = torch.float64,
    block_size: int | None = None,
    n_blocks: int | None = None,
    U0: Tensor | None = None,
    distance: bool = True,
    times: tuple[float, float] | None = None,
) -> DiffusionResult:
    """Diffusion distance of paper Eq. (3) and the eigenpairs behind it.

    ``D`` is assembled as ``D_ij = M_ii + M_jj - 2 M_ij`` with
    ``M = C f(H) C^T``: ``C = sqrt(vol) D^-1/2 U`` and ``H = U^T S U`` for a subspace
    basis ``U`` (``U = I`` for the exact path), ``f(x) = (x^2)^t`` on the ``Ne`` eigenvalues
    of ``H`` of largest modulus.

    Solvers (with ``n_eigs``; ``"auto"`` picks ``"subspace"`` when ``n_power`` is given, the
    paper's procedure with its knobs, else ``"krylov"``):

    * ``"krylov"``: block Lanczos (:func:`block_krylov`, ``n_blocks`` products on
      ``block_size`` columns, default :func:`krylov_size`: 12 columns for ``Ne = 50``, 15 to
      33 products on the shipped model's graphs, against 2 x 20 x 50 for the paper's
      settings) from smooth start columns and one-hot columns at the most isolated nodes,
      then Rayleigh-Ritz keeping the ``Ne`` Ritz pairs of largest modulus; as accurate or
      more (see the README). Each Ritz pair's residual is known at no cost from the last
      Krylov block; while the residuals weighted by the slope of ``f`` exceed
      :data:`KRYLOV_TOLERANCE` the space is made deeper, going on from the last one (10, 15,
      22, 33, ... blocks for ``Ne = 50``; not when ``n_blocks`` is given). On a large graph, where the deeper
      space would hold more than :data:`KRYLOV_MAX_BASIS` entries, and when no gradient is
      taken, the space is restarted instead from its ``Ne + 2 b`` best Ritz vectors plus
      :data:`KRYLOV_RESTART_BLOCKS` new blocks (:func:`_thick_restart`), so memory stays
      bounded. ``n_iter`` and ``n_power`` are not used. If the top of the spectrum is a
      cluster the block may not hold (``b`` Ritz values at 1: disconnected parts of the graph,
      or nearly disconnected regions in float32, :func:`_degenerate_top`), the space is built
      again with a block twice as wide (:func:`_widened`; 16, 32, 64 ... columns). On a graph
      too small for the space (``2 m > N`` at 16 blocks), or where the space would have to
      grow past half the graph, or a wider block would not fit, the exact spectrum is used,
      truncated to ``Ne`` (up to :data:`EXACT_MAX_NODES` nodes; above, with a warning, the
      last Krylov result).
    * ``"subspace"``: the paper's accelerated simultaneous iteration, ``n_iter`` QR steps
      ``T`` each after ``n_power`` (default ``round(2t)``) products by ``S`` on ``Ne``
      columns, then Rayleigh-Ritz.
    * ``"eigh"``: the exact spectrum truncated to ``Ne``, a reference (its gradient goes
      through ``eigh``'s eigenvectors).

    A dense ``W`` whose non-zeros are at most :data:`SPARSE_DENSITY` of its entries (a
    banded or sparse affinity given densely) is multiplied through its non-zeros; its
    gradient is still the full dense one. A torch sparse ``W`` (COO or CSR, ``(N, N)``: a
    k-nearest-neighbour graph, say) is used as it is, with no pass over ``N x N`` entries to
    find its non-zeros; its gradient reaches the stored entries. Either whose non-zeros all
    lie in the square windows of a row-major ``h x w`` grid (a local affinity of an image,
    given densely or sparse; found from a few rows, then checked on every entry) is solved
    as that :class:`BandedAffinity`, cosine start included: the same result as given banded
    (a dense ``W`` only when it needs no gradient, which must reach its zeros too).

    Precision: everything after the affinity (degrees, ``S``, the products, QR,
    Rayleigh-Ritz, ``f(H)`` and ``D``) runs in ``spectral_dtype``; the outputs come back in
    ``W``'s dtype and gradients reach ``W``'s values and ``t`` in their own dtypes. Why
    float64 by default: with nearly disconnected regions (near piecewise-constant features,
    where training leads) the top eigenvalues cluster at 1 within float32 rounding and
    ``M_ii + M_jj - 2 M_ij`` cancels, so float32 loses most of the gradient (see the module
    docstring); the float64 spectral part costs little next to the network.

    Args:
        W: symmetric non-negative affinity, dense ``(N, N)`` / ``(B, N, N)``, torch sparse
            ``(N, N)`` (COO or CSR), or a :class:`BandedAffinity` (neither is densified by the
            iterative solvers).
        t: diffusion time, a positive real (tensor for a learnable ``t``).
        n_eigs: ``None`` for the exact distance (full spectrum by ``eigh`` of the
            symmetric conjugate); ``Ne`` to keep the top ``Ne`` eigenpairs.
        n_iter: QR steps ``T`` of the ``"subspace"`` solver.
        n_power: multiplications by ``S`` per QR step of the ``"subspace"`` solver;
            default ``round(2t)``. Giving it selects that solver under ``"auto"``.
        solver: ``"auto"`` (default), ``"krylov"``, ``"subspace"`` or ``"eigh"``.
        spectral_dtype: ``torch.float64`` (default), ``torch.float32``, or ``None``
            for ``W``'s own dtype (no cast).
        block_size, n_blocks: the ``"krylov"`` space (default :func:`krylov_size`).
        U0: start block, ``(N, b)`` for ``"krylov"`` (default: cosines on the grid of a banded
            ``W`` or of one recognised as banded, else seeded Gaussian columns, :func:`krylov_start`,
            and ``b // 4`` one-hot columns at the most isolated nodes) or ``(N, Ne)`` for
            ``"subspace"`` (default :func:`initial_subspace`). The Krylov error bound was set
            with the default start; measured on the shipped model's graphs (docs/eigensolver.md,
            "Warm starts"): the leading eigenvectors of another image gain nothing, and those of
            the same image's affinity under a slightly changed model, alone, halve the blocks
            but let the bound pass errors of D up to 6.5e-3; half of them with half of the
            default start kept every error under 3e-4 with a third fewer blocks.
        distance: ``False``: the eigenpairs alone, no gradient, ``distance`` ``None``; with
            ``n_eigs`` nothing of size ``N x N`` is formed (a large sparse graph fits).
        times: ``(t_min, t_max)``: make the ``"krylov"`` space deep enough for ``D_t`` at every
            ``t`` in that range, not only at ``t`` (the error bound takes the largest slope of
            ``f`` over the range). For eigenpairs meant for several diffusion times
            (:func:`diffusion_embedding`): at small ``t`` the lower pairs weigh more.

    Returns:
        :class:`DiffusionResult` in ``W``'s dtype; tensors keep ``W``'s batching (no
        batch dimension for an unbatched dense ``W``).
    """
    _check_time(t)
    if times is not None:
        if len(times) != 2 or not all(math.isfinite(x) and x > 0 for x in times) or times[0] > times[1]:
            raise ValueError(f"times must be (t_min, t_max) with 0 < t_min <= t_max, finite, got {times}")
        times = (float(times[0]), float(times[1]))
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if solver == "auto":
        solver = "subspace" if n_power is not None else "krylov"
    _check_spectral_dtype(spectral_dtype)
    num_nodes = W.num_nodes if isinstance(W, BandedAffinity) else W.shape[-1]
    if n_eigs is not None and not 0 < n_eigs <= num_nodes:
        raise ValueError(f"n_eigs must be in [1, N={num_nodes}], got {n_eigs}")
    size = None
    if n_eigs is not None and solver == "krylov":
        size = krylov_size(n_eigs, num_nodes)
        if U0 is not None and block_size is None:
            block_size = U0.shape[-1]
        if block_size is not None or n_blocks is not None:
            default = _krylov_default(n_eigs)
            size = (block_size or default[0], n_blocks or default[1])
            if size[0] < 1 or size[1] < 1 or not n_eigs <= size[0] * size[1] <= num_nodes:
                raise ValueError(f"need 1 <= n_eigs <= block_size * n_blocks <= N={num_nodes}, "
                                 f"got {size[0]} x {size[1]}")
    iterative = n_eigs is not None and (solver == "subspace" or size is not None)
    op, S, d, grid, out_dtype, batched = _prepare(W, num_nodes, iterative, spectral_dtype)
    batch, n = d.shape
    scale = (d.sum(-1, keepdim=True) / d).sqrt()  # sqrt(vol) D^-1/2 as a (B, N) vector
    t = torch.as_tensor(t, dtype=d.dtype, device=d.device)

    if iterative or (n_eigs is not None and solver == "krylov"):  # Rayleigh-Ritz on a space U
        eig = None
        if not iterative:  # a graph too small for the Krylov space: the exact spectrum, truncated to Ne
            U, H, eig = _exact_space(S.to_dense() if isinstance(S, BandedAffinity) else S)
            _warn_if_ones_are_split(eig[0], n_eigs)
        elif solver == "krylov":
            # The space depends on W (and U0) only: with no gradient to them, build it without
            # autograd, so its blocks go into one buffer (no concatenation per step).
            track = torch.is_grad_enabled() and (d.requires_grad or (U0 is not None and U0.requires_grad))
            if block_size is None and not track and _will_restart(n, size):
                size = (_restarted_block(size[0]), size[1])
            start = _default_start(op, size[0], grid, d.dtype) if U0 is None else U0.to(d)
            with _unrecorded(track or (torch.is_grad_enabled() and t.requires_grad)):
                U, H, eig = _krylov_space(op, start.expand(batch, n, start.shape[-1]), size[1], n_eigs, t, times,
                                          deepen=n_blocks is None, track=track)
        if solver == "subspace":
            start = initial_subspace(n, n_eigs, grid, d.dtype, d.device) if U0 is None else U0.to(d)
            power = default_power(t) if n_power is None else n_power
            U, H = subspace_iteration(op, n_eigs, n_iter=n_iter, n_power=power, U0=start)
            eig = _ritz_eigh(H.detach())
            _warn_if_unconverged(op, U, eig, t, times)
        if distance:
            D, lam, psi = _RitzDistance.apply(U, scale, H, t, n_eigs, out_dtype, eig)
        else:  # the Ritz pairs alone: what _RitzDistance keeps, without assembling D
            with torch.no_grad():
                _, lam, psi = _kept_ritz_pairs(U, scale, _ritz_eigh(H) if eig is None else eig, n_eigs)
            D = None
    else:
        dense = S.to_dense() if isinstance(S, BandedAffinity) else S
        if n_eigs is None:
            fS, lam, V = _spectral_power_eig(dense, t)
            M = scale.unsqueeze(-1) * fS * scale.unsqueeze(-2)
        else:
            # Reference only: its gradient goes through eigh's eigenvectors.
            lam, V = torch.linalg.eigh(dense)
            top = lam.abs().topk(n_eigs, dim=-1).indices
            lam = lam.gather(-1, top)
            V = V.gather(-1, top.unsqueeze(-2).expand(*V.shape[:-1], n_eigs))
            weight = torch.exp(t * torch.log(lam.square().clamp_min(torch.finfo(lam.dtype).tiny)))
            C = scale.unsqueeze(-1) * V
            M = (C * weight.unsqueeze(-2)) @ C.transpose(-1, -2)
        D = _pairwise_from_gram(M)
        psi = scale.unsqueeze(-1) * V.detach()
    with torch.no_grad():
        order = lam.argsort(-1, descending=True)
        # usually in order already (the top Ne by modulus are positive): no gather of the N x Ne psi (0.6 ms)
        if not torch.equal(order, torch.arange(order.shape[-1], device=order.device).expand_as(order)):
            lam = lam.gather(-1, order)
            psi = psi.gather(-1, order.unsqueeze(-2).expand_as(psi))
        lam = lam.detach()
    lam, psi = lam.to(out_dtype), psi.to(out_dtype)
    D = D.to(out_dtype) if distance else None
    if not batched:
        return DiffusionResult(None if D is None else D.squeeze(0), lam.squeeze(0), psi.squeeze(0))
    return DiffusionResult(D, lam, psi)


def diffusion_distance(
    W: Tensor | BandedAffinity,
    t: Tensor | float,
    n_eigs: int | None = None,
    n_iter: int = 2,
    *,
    n_power: int | None = None,
    solver: str = "auto",
    spectral_dtype: torch.dtype | None = torch.float64,
    block_size: int | None = None,
    n_blocks: int | None = None,
    U0: Tensor | None = None,
) -> Tensor:
    """Diffusion distance of paper Eq. (3) between all pairs of nodes.

    See :func:`diffusion` for the arguments (``solver``: block Krylov by default, the
    paper's subspace iteration when ``n_power`` is given or ``solver="subspace"``;
    ``spectral_dtype``: the precision of everything after the affinity, float64 by
    default; the result has ``W``'s dtype).

    Returns:
        ``(N, N)`` or ``(B, N, N)`` distances (``W``'s batching and dtype), ``>= 0``,
        zero diagonal.
    """
    return diffusion(W, t, n_eigs, n_iter, n_power=n_power, solver=solver, spectral_dtype=spectral_dtype,
                     block_size=block_size, n_blocks=n_blocks, U0=U0).distance


def diffusion_embedding(
    W: Tensor | BandedAffinity,
    n_eigs: int | None = None,
    n_iter: int = 2,
    *,
    n_power: int | None = None,
    solver: str = "auto",
    spectral_dtype: torch.dtype | None = torch.float64,
    times: tuple[float, float] = (1.0, 100.0),
) -> tuple[Tensor, Tensor]:
    """Eigenpairs ``(lambda_m, psi_m)`` of ``P`` normalised for Eq. (4).

    ``D_t(i, j) = sum_m lambda_m^(2t) (psi_m(i) - psi_m(j))^2`` for every ``t``.
    With ``n_eigs`` the pairs are Ritz pairs of :func:`diffusion`'s solver (block Krylov by
    default; with ``n_power`` the subspace iteration, ``n_power`` multiplications per QR
    step), accurate enough for ``D_t`` at every ``t`` in ``times`` (the Krylov space is made
    deeper until its error bound holds over the whole range; pass a smaller ``t_min`` for
    smaller times, where the lower pairs weigh more). Not differentiable: train through
    :func:`diffusion_distance`, whose gradient stays finite for clustered eigenvalues.
    ``spectral_dtype`` as in :func:`diffusion` (computed in float64 by default, returned in
    ``W``'s dtype). With ``n_eigs`` no ``N x N`` array is formed, so with a banded or torch
    sparse ``W`` (a k-nearest-neighbour graph of many points, say) memory grows with ``N``,
    not ``N^2``.

    Example:
        >>> import torch
        >>> from ndd import spectral
        >>> features = torch.rand(1, 3, 24, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> W = spectral.local_affinity(features, 1.0, window=5)
        >>> lam, psi = spectral.diffusion_embedding(W, n_eigs=12)
        >>> D = spectral.distance_from_embedding(lam, psi, t=1.0)  # (1, 720, 720)
        >>> exact = spectral.diffusion_distance(W, 1.0, n_eigs=12, solver="eigh")
        >>> bool((D - exact).norm() < 1e-3 * exact.norm())
        True

    Returns:
        eigenvalues ``(B, Ne)`` in decreasing order and eigenvectors ``(B, N, Ne)``
        (unbatched input gives unbatched output).
    """
    t = (20 if n_power is None else n_power) / 2  # only sets the subspace solver's default power
    with torch.no_grad():
        result = diffusion(W, t, n_eigs, n_iter, n_power=n_power, solver=solver, spectral_dtype=spectral_dtype,
                           distance=False, times=times)
    return result.eigenvalues, result.eigenvectors


def distance_from_embedding(eigenvalues: Tensor, eigenvectors: Tensor, t: float) -> Tensor:
    """Eq. (4) from the pairs of :func:`diffusion_embedding` (or :func:`diffusion`):
    ``D_t(i, j) = sum_m lambda_m^(2t) (psi_m(i) - psi_m(j))^2``, for any ``t`` without solving again.

    Args:
        eigenvalues: ``(B, Ne)`` or ``(Ne,)``.
        eigenvectors: ``(B, N, Ne)`` or ``(N, Ne)``.
        t: diffusion time, positive.

    Returns:
        ``D`` ``(B, N, N)`` (``(N, N)`` for unbatched pairs) in the eigenvectors' dtype, no gradient
        (train through :func:`diffusion_distance`).

    Example:
        >>> lam, psi = torch.tensor([1.0, 0.5]), torch.tensor([[1.0, 1.0], [1.0, -1.0]])
        >>> distance_from_embedding(lam, psi, 1.0)  # (0.5^2)^1 * (1 - (-1))^2 = 1
        tensor([[0., 1.],
                [1., 0.]])
    """
    _check_time(t)
    batched = eigenvectors.dim() == 3
    lam = eigenvalues if batched else eigenvalues.unsqueeze(0)
    psi = eigenvectors if batched else eigenvectors.unsqueeze(0)
    if psi.dim() != 3 or lam.shape != (psi.shape[0], psi.shape[2]):
        raise ValueError(f"eigenvalues (B, Ne) and eigenvectors (B, N, Ne) do not fit: "
                         f"{tuple(eigenvalues.shape)} and {tuple(eigenvectors.shape)}")
    with torch.no_grad():
        weight = torch.exp(t * torch.log(lam.square().clamp_min(torch.finfo(lam.dtype).tiny)))
        D = _assemble_distance(psi * weight.sqrt().unsqueeze(-2), psi.dtype)
    return D if batched else D.squeeze(0)


def diffusion_similarity(D: Tensor, tau: Tensor | float) -> Tensor:
    """Neural diffusion similarity ``K_D = exp(-tau D)`` (paper §5), same shape as ``D``."""
    tau = torch.as_tensor(tau, dtype=D.dtype, device=D.device)
    if tau.numel() != 1 or not bool(tau > 0):
        raise ValueError(f"tau must be a positive scalar, got {tau}")
    return torch.exp(-tau * D)
