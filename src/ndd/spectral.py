"""Diffusion distance on graphs and image grids (paper §3, §4.1, §4.2).

Pure, batched, differentiable tensor functions (CPU and CUDA, float32 and float64).

Notation (paper Eqs. 1-4): ``W`` is a symmetric non-negative affinity with
positive degrees ``d = W 1``; ``P = D^-1 W`` the transition matrix;
``pi = d / sum(d)`` its stationary distribution; the diffusion distance is

    D_t(i, j) = sum_k ((P^t)_ik - (P^t)_jk)^2 / pi_k .                    (Eq. 3)

Everything here works on the symmetric conjugate ``S = D^-1/2 W D^-1/2``
(same spectrum as ``P``, orthonormal eigenvectors ``v_m``). With
``psi_m = sqrt(vol) D^-1/2 v_m`` (right eigenvectors of ``P``, ``vol = sum(d)``),
Eq. 3 becomes Eq. 4:

    D_t(i, j) = sum_m lambda_m^(2t) (psi_m(i) - psi_m(j))^2 .

For non-integer ``t`` (``t`` is learnable) ``lambda^(2t)`` means ``(lambda^2)^t``,
which equals Eq. 3 for every integer ``t``.

The distance is assembled from the matrix function ``f(S) = (S^2)^t`` restricted
to a subspace, ``M = vol D^-1/2 U f(U^T S U) U^T D^-1/2`` and
``D_ij = M_ii + M_jj - 2 M_ij``. Differentiating ``f`` with the Daleckii-Krein
divided differences (instead of through individual eigenvectors) keeps gradients
finite when eigenvalues cluster, which is the normal case near ``lambda = 1`` for
images with several nearly disconnected regions.

Solvers. The subspace ``U`` comes by default from block Lanczos (:func:`block_krylov`:
for ``Ne = 50``, 16 start columns, 12 smooth and 4 one-hot at the most isolated nodes; 8
products by ``S`` first, more while the Ritz pairs are not accurate enough; Rayleigh-Ritz
on the Krylov space, the ``Ne`` Ritz pairs of largest modulus kept); the paper's
accelerated simultaneous iteration (``T`` QR steps after ``round(2t)`` products each, on
``Ne`` columns, :func:`subspace_iteration`) stays available (``solver="subspace"``, or
``n_power`` given). A Krylov space of degree ``q`` contains every polynomial filter of
that degree applied to its start, ``S^(q-1) U0`` and the Chebyshev filters included, so
per product it converges much faster: on the benchmark graph and on the shipped model's
affinities it is as accurate or more at a tenth of the column products. The residuals of
its Ritz pairs come free from the last block; while they are large the space is made
deeper, going on from the last one (on a large graph without gradients: restarted from its
best Ritz vectors, so memory stays bounded). A dense or torch sparse ``W`` whose non-zeros lie
in the windows of an image grid is recognised as that band (checked on every entry); another
dense ``W`` that is mostly zeros is multiplied through its non-zeros (CSR), with the full
dense gradient; a torch sparse ``W`` is used as it is.

Precision. :func:`diffusion` (and :func:`diffusion_distance`,
:func:`diffusion_embedding`, :func:`legacy_diffusion_distance`) take a
``spectral_dtype``: the affinity values stay in the caller's dtype (float32 for a
network), while the degrees, the normalisation, the banded operator products, the
subspace iteration and its QRs, Rayleigh-Ritz, ``f(H)`` and the assembly of ``D``
run in ``spectral_dtype``; the results are cast back to the affinity's dtype and
gradients flow back to the affinity values and ``t``. The default for the distance
is float64 because float32 is not enough on near-piecewise-constant features (what
training drives the embedding towards): on nearly disconnected regions the top
eigenvalues cluster at 1 within float32 rounding and ``D_ij = M_ii + M_jj - 2 M_ij``
cancels heavily. On a 41x41 grid of 20 constant regions (64-d unit features, 17x17
window, ``mu = 10``, ``t = 10``, ``Ne = 50``) a float32 spectral part still gives
``D`` to ~5e-6 but its gradient is wrong (relative error 1.3-2, cosine 0.45-0.6),
while the float32 affinity with a float64 spectral part gives 1e-7 and 2e-5 against
an all-float64 pipeline. The float64 part costs ~1.8x the float32 one on a CPU
(still small next to the backbone). ``spectral_dtype=None`` computes in the
affinity's own dtype.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "BandedAffinity",
    "local_affinity",
    "degree",
    "symmetric_normalize",
    "apply_operator",
    "band_inner",
    "feature_kernel",
    "intervening_contour",
    "contour_affinity",
    "window_offsets",
    "initial_subspace",
    "subspace_iteration",
    "krylov_start",
    "krylov_size",
    "block_krylov",
    "spectral_power",
    "DiffusionResult",
    "diffusion",
    "diffusion_distance",
    "diffusion_embedding",
    "distance_from_embedding",
    "diffusion_similarity",
    "legacy_diffusion_distance",
]


# --------------------------------------------------------------------------- #
# Banded (local-window) affinity of a feature grid                             #
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class BandedAffinity:
    """A local affinity on an ``h x w`` grid, stored as its band.

    ``weights[b, i, o] = w(i, i + offset_o)`` for the ``K = window**2`` offsets of
    :func:`window_offsets` (row-major, ``o = K // 2`` is the node itself), and 0
    where ``i + offset_o`` falls outside the grid. Memory is ``B x N x K`` rather
    than ``B x N x N``.

    Attributes:
        weights: ``(B, N, K)`` with ``N = h * w``.
        grid_shape: ``(h, w)``.
        window: odd window width.
    """

    weights: Tensor
    grid_shape: tuple[int, int]
    window: int

    @property
    def num_nodes(self) -> int:
        return self.grid_shape[0] * self.grid_shape[1]

    def to_dense(self) -> Tensor:
        """The dense affinity ``(B, N, N)`` (for small grids and tests)."""
        batch, n, k = self.weights.shape
        index, valid = _neighbour_index(*self.grid_shape, self.window, self.weights.device)
        dense = self.weights.new_zeros(batch, n, n)
        values = self.weights * valid
        # Out-of-grid entries carry weight 0 and a clamped index, so adding them is harmless.
        return dense.scatter_add(2, index.expand(batch, n, k), values)


def window_offsets(window: int) -> list[tuple[int, int]]:
    """Row-major ``(dy, dx)`` offsets of a ``window x window`` neighbourhood."""
    _check_window(window)
    r = window // 2
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]


@functools.lru_cache(maxsize=32)
def _neighbour_index(h: int, w: int, window: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(N, K)`` flat neighbour indices (clamped to the grid) and a validity mask."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    offsets = torch.tensor(window_offsets(window), device=device)
    ny = ys.reshape(-1, 1) + offsets[:, 0]
    nx = xs.reshape(-1, 1) + offsets[:, 1]
    valid = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
    index = (ny.clamp(0, h - 1) * w + nx.clamp(0, w - 1)).long()
    return index, valid


def _check_window(window: int) -> None:
    if not isinstance(window, int) or window <= 0 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd integer, got {window!r}")


@functools.lru_cache(maxsize=32)
def _chunk_gather_index(rows: int, w: int, window: int, device: torch.device) -> Tensor:
    """``(rows * w, K)`` positions of each node's window inside its padded row block.

    The block holds ``rows + window - 1`` padded grid rows of ``w + window - 1``
    columns; node ``(y, x)`` of the chunk sees offset ``(dy, dx)`` at padded
    ``(y + r + dy, x + r + dx)``.
    """
    r = window // 2
    ys, xs = torch.meshgrid(torch.arange(rows, device=device), torch.arange(w, device=device), indexing="ij")
    offsets = torch.tensor(window_offsets(window), device=device)
    py = ys.reshape(-1, 1) + r + offsets[:, 0]
    px = xs.reshape(-1, 1) + r + offsets[:, 1]
    return py * (w + 2 * r) + px


def band_inner(a: Tensor, b: Tensor, window: int, rows_per_chunk: int = 8) -> Tensor:
    """Inner products of each node with its window: ``out[:, i, o] = <a_i, b_(i + offset_o)>``.

    Zero where the neighbour falls outside the grid. The products of a block of grid
    rows with every node of its padded neighbourhood rows are one matrix product
    (fast BLAS instead of ``window**2`` small ops); only the window entries are kept,
    so memory stays ``O(B N K)``.

    Args:
        a, b: ``(B, C, h, w)``.

    Returns:
        ``(B, h*w, window**2)``.
    """
    batch, channels, h, w = a.shape
    r = window // 2
    bpad = F.pad(b, (r, r, r, r))
    blocks = []
    for y0 in range(0, h, rows_per_chunk):
        rows = min(rows_per_chunk, h - y0)
        index = _chunk_gather_index(rows, w, window, a.device).expand(batch, -1, -1)
        centre = a[:, :, y0 : y0 + rows].reshape(batch, channels, rows * w)
        neighbours = bpad[:, :, y0 : y0 + rows + 2 * r].reshape(batch, channels, -1)
        blocks.append(torch.bmm(centre.transpose(1, 2), neighbours).gather(2, index))
    return torch.cat(blocks, 1)


def local_affinity(features: Tensor, mu: Tensor | float, window: int = 17, rows_per_chunk: int = 8) -> BandedAffinity:
    """Local Gaussian affinity of a feature grid (paper Eq. 1).

    ``w_ij = exp(-mu * ||f_i - f_j||^2)`` for ``j`` in the ``window x window``
    square around ``i`` (the node itself included, ``w_ii = 1``), 0 elsewhere.

    Args:
        features: ``(B, C, h, w)`` feature map.
        mu: positive scalar (tensor or float), differentiable.
        window: odd window width on the grid (paper: 17).
        rows_per_chunk: grid rows processed per block (memory/speed trade-off only).

    Returns:
        :class:`BandedAffinity` with ``weights`` of shape ``(B, h*w, window**2)``.
    """
    _check_window(window)
    if features.dim() != 4:
        raise ValueError(f"features must be (B, C, h, w), got shape {tuple(features.shape)}")
    if not torch.isfinite(features).all():
        raise ValueError("features contain NaN or Inf")
    mu = torch.as_tensor(mu, dtype=features.dtype, device=features.device)
    if mu.numel() != 1 or not bool(mu > 0):
        raise ValueError(f"mu must be a positive scalar, got {mu}")
    batch, _, h, w = features.shape
    # ||f_i - f_j||^2 = |f_i|^2 + |f_j|^2 - 2 f_i.f_j with the products from band_inner;
    # centring removes the common offset first (less cancellation).
    features = features - features.mean((2, 3), keepdim=True)
    sq = features.pow(2).sum(1, keepdim=True)  # (B, 1, h, w)
    index, valid = _neighbour_index(h, w, window, features.device)
    sq_nbr = sq.reshape(batch, -1)[:, index]  # (B, N, K) |f_j|^2 (clamped index; masked below)
    dist = sq.reshape(batch, -1, 1) + sq_nbr - 2 * band_inner(features, features, window, rows_per_chunk)
    dist = dist.clamp_min(0)
    weights = torch.exp(-mu * dist) * valid
    return BandedAffinity(weights, (h, w), window)


def feature_kernel(features: Tensor, mu: Tensor | float) -> Tensor:
    """Unmasked feature kernel ``exp(-mu ||f_i - f_j||^2)`` between all grid nodes.

    The dense counterpart of :func:`local_affinity` (no window): the "average feature
    similarity" that paper §6 merges segments by, as in the authors' code.

    Args:
        features: ``(B, C, h, w)`` feature map.
        mu: positive scalar (tensor or float).

    Returns:
        ``(B, h*w, h*w)``.
    """
    if features.dim() != 4:
        raise ValueError(f"features must be (B, C, h, w), got shape {tuple(features.shape)}")
    f = features.flatten(2).transpose(1, 2)  # (B, N, C)
    mu = torch.as_tensor(mu, dtype=f.dtype, device=f.device)
    return torch.exp(-mu * torch.cdist(f, f).square())


@functools.lru_cache(maxsize=4)  # ~50 MB per 321x481 image size
def _contour_index(size: tuple[int, int], grid_shape: tuple[int, int], window: int, stride: int,
                   device: torch.device) -> tuple[Tensor, Tensor]:
    """Sample positions of the segments from each node to the upper half of its window.

    Returns ``(index, half)``: ``(N, K2, L)`` flat pixel indices into a ``size`` map of
    ``L = (window // 2) * stride + 1`` points evenly spaced (rounded to pixels) on the segment
    from node ``i`` (pixel ``stride * (y, x)``) to node ``i + offset_o`` for the ``K2`` offsets
    ``o >= K // 2`` (the other half are the same segments seen from the other end), and those
    offsets' indices ``half`` (K2,).
    """
    H, W = size
    h, w = grid_shape
    offsets = window_offsets(window)
    K = len(offsets)
    half = list(range(K // 2, K))
    L = (window // 2) * stride + 1
    s = torch.linspace(0.0, 1.0, L, dtype=torch.float64)
    d = torch.tensor([offsets[o] for o in half], dtype=torch.float64) * stride  # (K2, 2)
    rel = s[None, :, None] * d[:, None, :]  # (K2, L, 2)
    by, bx = torch.meshgrid(torch.arange(h, dtype=torch.float64) * stride,
                            torch.arange(w, dtype=torch.float64) * stride, indexing="ij")
    py = (by.reshape(-1, 1, 1) + rel[None, :, :, 0]).round().clamp(0, H - 1).long()
    px = (bx.reshape(-1, 1, 1) + rel[None, :, :, 1]).round().clamp(0, W - 1).long()
    return (py * W + px).to(device=device, dtype=torch.int32), torch.tensor(half, device=device)


def intervening_contour(edges: Tensor, grid_shape: tuple[int, int], window: int = 17, stride: int = 8,
                        pool: int = 2) -> Tensor:
    """Strongest edge crossed by the straight segment between each node and its window.

    The intervening-contour cue of Leung & Malik (used by gPb's spectral step): two grid nodes
    are unlikely to belong together when a strong contour lies between them. Node ``(y, x)``
    sits on pixel ``stride * (y, x)``. The map is first max-pooled by ``pool`` (a thin contour
    survives pooling, and the index table shrinks ``pool``-fold), then each segment is sampled
    at one point per pooled pixel of its longer axis, so no contour is stepped over.

    Args:
        edges: ``(B, 1, H, W)`` edge strength (e.g. the HED map of ``vgg16_hed``), with
            ``stride * (h - 1) < H`` and likewise for ``W``.
        grid_shape: ``(h, w)``.
        window: odd window width on the grid.
        stride: pixels between grid nodes (a multiple of ``pool``).
        pool: max-pooling factor applied to ``edges`` first (1: none).

    Returns:
        ``(B, h*w, window**2)`` maximum of ``edges`` along each segment (0 for the node itself
        and for neighbours outside the grid), in the offset order of :func:`window_offsets`.
        Differentiable w.r.t. ``edges`` (through the max).
    """
    _check_window(window)
    if edges.dim() != 4 or edges.shape[1] != 1:
        raise ValueError(f"edges must be (B, 1, H, W), got shape {tuple(edges.shape)}")
    batch, _, H, W = edges.shape
    h, w = int(grid_shape[0]), int(grid_shape[1])
    if stride * (h - 1) >= H or stride * (w - 1) >= W:
        raise ValueError(f"a {h}x{w} grid at stride {stride} does not fit a {H}x{W} edge map")
    if pool < 1 or stride % pool:
        raise ValueError(f"stride {stride} must be a multiple of pool {pool}")
    if pool > 1:
        edges = F.max_pool2d(edges, pool, pool, ceil_mode=True)
    Hp, Wp = edges.shape[-2:]
    index, half = _contour_index((Hp, Wp), (h, w), window, stride // pool, edges.device)
    n, k2, L = index.shape
    upper = edges.reshape(batch, Hp * Wp)[:, index.reshape(-1).long()].reshape(batch, n, k2, L).amax(-1)
    K = window * window
    nbr, valid = _neighbour_index(h, w, window, edges.device)
    # the node itself: no contour between a node and itself (w_ii = 1 as in Eq. 1)
    upper = upper * valid[:, half] * (half != K // 2)
    # offset K-1-o of node i + offset_o is the same segment as offset o of node i
    lower_index = (nbr[:, half] * K + (K - 1 - half)[None, :])[valid[:, half]]
    out = edges.new_zeros(batch, n * K)
    flat_upper = (torch.arange(n, device=edges.device)[:, None] * K + half[None, :]).reshape(-1)
    out = out.index_copy(1, flat_upper, upper.reshape(batch, -1))
    out = out.index_copy(1, lower_index, upper[:, valid[:, half]])
    return out.reshape(batch, n, K)


def contour_affinity(edges: Tensor, grid_shape: tuple[int, int], alpha: Tensor | float, window: int = 17,
                     stride: int = 8, pool: int = 2) -> BandedAffinity:
    """Intervening-contour affinity ``w_ij = exp(-alpha * max edge between i and j)``.

    Args:
        edges: ``(B, 1, H, W)`` edge strength in [0, 1].
        grid_shape: ``(h, w)`` of the grid whose node ``(y, x)`` is pixel ``stride * (y, x)``.
        alpha: positive scalar (tensor or float), differentiable.
        window, stride, pool: see :func:`intervening_contour`.

    Returns:
        :class:`BandedAffinity` ``(B, h*w, window**2)`` (``w_ii = 1``, 0 outside the grid).
    """
    alpha = torch.as_tensor(alpha, dtype=edges.dtype, device=edges.device)
    if alpha.numel() != 1 or not bool(alpha > 0):
        raise ValueError(f"alpha must be a positive scalar, got {alpha}")
    if not torch.isfinite(edges).all():
        raise ValueError("edges contain NaN or Inf")
    crossing = intervening_contour(edges, grid_shape, window, stride, pool)
    _, valid = _neighbour_index(int(grid_shape[0]), int(grid_shape[1]), window, edges.device)
    return BandedAffinity(torch.exp(-alpha * crossing) * valid, (int(grid_shape[0]), int(grid_shape[1])), window)


# --------------------------------------------------------------------------- #
# Operators                                                                    #
# --------------------------------------------------------------------------- #
def _affinity_values(W: Tensor | BandedAffinity) -> Tensor:
    return W.weights if isinstance(W, BandedAffinity) else W


def _check_spectral_dtype(dtype: torch.dtype | None) -> None:
    if dtype is not None and dtype not in (torch.float32, torch.float64):
        raise ValueError(f"spectral_dtype must be torch.float32, torch.float64 or None, got {dtype!r}")


def _cast_affinity(W: Tensor | BandedAffinity, dtype: torch.dtype | None) -> Tensor | BandedAffinity:
    """``W`` with its values in ``dtype`` (``None``: unchanged); a differentiable cast."""
    if dtype is None or _affinity_values(W).dtype == dtype:
        return W
    if isinstance(W, BandedAffinity):
        return BandedAffinity(W.weights.to(dtype), W.grid_shape, W.window)
    return W.to(dtype)


def _check_entries(values: Tensor) -> Tensor:
    """One pass for NaN/Inf and the sign of an affinity's entries (aminmax propagates NaN);
    returns the largest entry."""
    if values.numel() == 0:
        return values.new_zeros(())
    low, high = torch.aminmax(values.detach())
    if not bool(torch.isfinite(low) & torch.isfinite(high)):
        raise ValueError("the affinity contains NaN or Inf")
    if bool(low < 0):
        raise ValueError("the affinity has negative weights; it must be non-negative")
    return high


def _close(a: Tensor, b: Tensor) -> bool:
    """Whether the entries ``a`` and their mirrors ``b`` agree, as the symmetry checks require."""
    if torch.equal(a, b):  # the common case, 3x faster than the tolerance test (which allocates)
        return True
    scale = float(a.abs().max().clamp_min(torch.finfo(a.dtype).tiny)) if a.numel() else 1.0
    return bool(((a - b).abs() <= 1e-5 * scale + 1e-4 * b.abs()).all())


def _validate_affinity(
    W: Tensor | BandedAffinity, pattern: _DensePattern | None = None
) -> tuple[Tensor | BandedAffinity, bool]:
    """Check an affinity and add a batch dimension; returns ``(W, was_batched)``.

    ``pattern``: the non-zeros of a dense ``W`` (:func:`_dense_pattern`); symmetry is then
    checked on them only, which is the same test (a pair with both entries zero is
    symmetric) without reading ``W`` transposed, the slow part for a large ``W``.
    """
    if isinstance(W, BandedAffinity):
        values = W.weights
        if values.dim() != 3 or values.shape[1] != W.num_nodes or values.shape[2] != W.window**2:
            raise ValueError(f"banded weights must be (B, {W.num_nodes}, {W.window ** 2}), got {tuple(values.shape)}")
        batched = True
    else:
        if W.dim() not in (2, 3) or W.shape[-1] != W.shape[-2]:
            raise ValueError(f"W must be square (N, N) or (B, N, N), got shape {tuple(W.shape)}")
        batched = W.dim() == 3
        values = W if batched else W.unsqueeze(0)
        W = values
    high = _check_entries(values)
    if isinstance(W, Tensor):
        scale = high.clamp_min(torch.finfo(values.dtype).tiny)
        if pattern is None:
            symmetric = torch.allclose(values, values.transpose(-1, -2), atol=1e-5 * float(scale), rtol=1e-4)
        else:
            flat = values.detach().reshape(-1)
            symmetric = _close(flat.index_select(0, pattern.index), flat.index_select(0, pattern.transpose))
        if not symmetric:
            raise ValueError("W must be symmetric")
    if bool((degree(W) <= 0).any()):
        raise ValueError("every node needs a positive degree (an isolated node has no random walk)")
    return W, batched


def degree(W: Tensor | BandedAffinity, dtype: torch.dtype | None = None) -> Tensor:
    """Degrees ``d = W 1``, summed in ``dtype`` (default ``W``'s): ``(B, N)`` (or ``(N,)`` for an
    unbatched dense ``W``)."""
    return _affinity_values(W).sum(-1, dtype=dtype)


def symmetric_normalize(W: Tensor | BandedAffinity, dtype: torch.dtype | None = None) -> Tensor | BandedAffinity:
    """The symmetric conjugate ``S = D^-1/2 W D^-1/2`` in the same storage as ``W``, computed and
    returned in ``dtype`` (default ``W``'s; the values are cast as they are multiplied).

    Entry ``(i, j)`` is ``(d_j^-1/2 d_i^-1/2) W_ij``, so a symmetric ``W`` gives an ``S``
    symmetric to the last bit. Without a gradient to ``W`` a band is built in one new
    ``(B, N, K)`` tensor, not three: on this project's CPU VM a fresh tensor of that size can
    cost more in page faults than its arithmetic (N = 2501, K = 289, float64: one product into
    a new 5.8 MB tensor took 2.4 ms inside the solver's run, 0.3 ms in a loop that reuses memory).
    """
    d_isqrt = degree(W, dtype).rsqrt()
    if isinstance(W, BandedAffinity):
        index, _ = _neighbour_index(*W.grid_shape, W.window, W.weights.device)
        # gather, not index_select along dim 1: 5x faster on the CPU here (0.5 vs 2.5 ms, N = 2501, K = 289)
        flat = index.reshape(1, -1).expand(d_isqrt.shape[0], -1)
        factor = torch.gather(d_isqrt, 1, flat).view(d_isqrt.shape[0], *index.shape)  # (B, N, K): d_j^-1/2
        if torch.is_grad_enabled() and (W.weights.requires_grad or d_isqrt.requires_grad):
            values = factor * d_isqrt.unsqueeze(-1) * W.weights
        else:
            values = factor.mul_(d_isqrt.unsqueeze(-1)).mul_(W.weights)
        return BandedAffinity(values, W.grid_shape, W.window)
    return d_isqrt.unsqueeze(-2) * d_isqrt.unsqueeze(-1) * W


@functools.lru_cache(maxsize=32)
def _csr_pattern(h: int, w: int, window: int, batch: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """CSR structure of the block-diagonal ``(B N, B N)`` banded matrix.

    Returns ``crow``, ``col`` (int32: the CPU sparse kernels convert int64 indices on
    every call), the flat band positions ``take`` of the stored entries (values are
    ``weights.reshape(-1)[take]``) and ``transpose``, the band positions whose values,
    in CSR order, form the transposed matrix.
    """
    n, k = h * w, window * window
    index, valid = _neighbour_index(h, w, window, device)
    crow = torch.zeros(batch * n + 1, dtype=torch.int32, device=device)
    crow[1:] = valid.sum(1).repeat(batch).cumsum(0)
    shift = n * torch.arange(batch, device=device).view(batch, 1, 1)
    col = (index + shift).expand(batch, n, k)[valid.expand(batch, n, k)].int()
    take = torch.arange(batch * n * k, device=device).view(batch, n, k)[valid.expand(batch, n, k)]
    # Entry (i, o) of the transpose is entry (i + offset_o, opposite of o) of the matrix.
    flat = (torch.arange(batch, device=device).view(batch, 1, 1) * n + index) * k + (k - 1 - torch.arange(k, device=device))
    transpose = flat.expand(batch, n, k)[valid.expand(batch, n, k)]
    return crow, col, take, transpose


def _csr(values: Tensor, crow: Tensor, col: Tensor, size: int) -> Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        # torch 2.11 (seen on CUDA) warns that the invariant checks are off: they are off on
        # purpose (the indices are built above and valid), and the warning reached users as
        # an "ndd segment: warning" line
        warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
        return torch.sparse_csr_tensor(crow, col, values, (size, size), check_invariants=False)


class _BandedMatmul(torch.autograd.Function):
    """``Y = A X`` for a banded ``A`` ``(B, N, K)`` held as CSR values; ``X`` is ``(B, N, m)``.

    A hand-written backward because autograd through ``torch.sparse`` rebuilds and
    sorts a sparse gradient on every product (seconds per training step here):
    ``dX = A^T dY`` is another CSR product (``values_t``: the transpose's values,
    a constant helper) and ``dA`` is a band of inner products.
    """

    @staticmethod
    def forward(ctx, values: Tensor, values_t: Tensor, X: Tensor, grid: tuple[int, int], window: int) -> Tensor:
        batch, n, m = X.shape
        crow, col, _, _ = _csr_pattern(*grid, window, batch, X.device)
        Y = torch.mm(_csr(values, crow, col, batch * n), X.reshape(batch * n, m))
        ctx.save_for_backward(values_t, X)
        ctx.grid, ctx.window = grid, window
        return Y.reshape(batch, n, m)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, Tensor | None, None, None]:
        values_t, X = ctx.saved_tensors
        batch, n, m = X.shape
        h, w = ctx.grid
        crow, col, take, _ = _csr_pattern(h, w, ctx.window, batch, X.device)
        grad_values = grad_X = None
        if ctx.needs_input_grad[0]:
            g = grad.transpose(1, 2).reshape(batch, m, h, w)
            x = X.transpose(1, 2).reshape(batch, m, h, w)
            grad_values = band_inner(g, x, ctx.window).reshape(-1)[take]
        if ctx.needs_input_grad[2]:
            At = _csr(values_t, crow, col, batch * n)
            grad_X = torch.mm(At, grad.reshape(batch * n, m).contiguous()).reshape(batch, n, m)
        return grad_values, None, grad_X, None, None


class _DensePattern(NamedTuple):
    """Non-zeros of a dense ``(B, N, N)`` affinity, as a block-diagonal ``(B N, B N)`` CSR matrix.

    Attributes:
        index: ``(nnz,)`` positions in ``W.reshape(-1)``, row-major (CSR order).
        transpose: ``(nnz,)`` positions of the mirrored entries ``W[b, j, i]``.
        rows, cols: ``(nnz,)`` int64 row and column in the block-diagonal matrix.
        offsets: ``(B N + 1,)`` int64 row starts; ``crow``, ``col``: the int32 CSR structure.
    """

    index: Tensor
    transpose: Tensor
    rows: Tensor
    cols: Tensor
    offsets: Tensor
    crow: Tensor
    col: Tensor


#: Densest dense ``W`` still multiplied as a sparse matrix: above it a dense product
#: (a BLAS GEMM) is about as fast as a CSR one and the index arrays get large.
SPARSE_DENSITY = 0.25


def _dense_pattern(W: Tensor, max_density: float | None = None) -> _DensePattern | None:
    """The CSR structure of a dense ``W`` ``(B, N, N)``, or ``None`` if more than
    ``max_density`` (default :data:`SPARSE_DENSITY`) of its entries are non-zero (then it
    is multiplied densely)."""
    max_density = SPARSE_DENSITY if max_density is None else max_density
    batch, n, _ = W.shape
    values = W.detach()
    if values.device.type == "cpu":  # NumPy: its nonzero is ~3x faster than torch's here
        mask = values.contiguous().numpy().reshape(batch * n, n) != 0
        counts = np.count_nonzero(mask, axis=1)
        if counts.sum() > max_density * mask.size:
            return None
        index = torch.from_numpy(np.flatnonzero(mask))
        counts = torch.from_numpy(counts.astype(np.int64))
    else:
        if int(torch.count_nonzero(values)) > max_density * values.numel():
            return None
        index = torch.nonzero(values.reshape(-1)).squeeze(1)
        counts = torch.bincount(index // n, minlength=batch * n)
    # rows from the counts (no integer division of every index): row r = b N + i
    rows = torch.repeat_interleave(torch.arange(batch * n, device=index.device), counts)
    j = index - rows * n
    first = rows - rows % n if batch > 1 else torch.zeros_like(rows)  # b N
    cols = first + j
    transpose = (first + j) * n + rows - first
    offsets = torch.zeros(batch * n + 1, dtype=torch.int64, device=index.device)
    offsets[1:] = counts.cumsum(0)
    return _DensePattern(index, transpose, rows, cols, offsets, offsets.int(), cols.int())


_SAME_WIDTH_INT = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
                   torch.bfloat16: torch.int16}


def _count_set(values: Tensor) -> int:
    """Entries of ``values`` whose bits are not all zero: the non-zeros, with ``-0.0`` counted too.

    On the CPU the floats are counted as same-width integers: NumPy's integer count is 3x its
    float count (N = 2501 float32: 1.0 against 3.2 ms; torch's 3.1). Only ``-0.0`` differs
    from a count of values ``!= 0``; :func:`_as_banded` counts the band the same way, so a
    ``-0.0`` inside the windows is counted on both sides and one outside them only makes it
    fall back to the general path.
    """
    values = values.detach()
    if values.device.type == "cpu" and values.dtype in _SAME_WIDTH_INT:
        return int(np.count_nonzero(values.contiguous().view(_SAME_WIDTH_INT[values.dtype]).numpy()))
    return int(torch.count_nonzero(values))


def _grid_from_offsets(offsets: list[int], n: int) -> tuple[int, int, int] | None:
    """``(h, w, window)`` of a row-major ``h x w`` grid (``h w = n``) whose square windows hold
    the column offsets ``|j - i|`` seen (sorted, distinct), or ``None`` if they show no grid.

    On a grid of width ``w`` a node's window has the offsets ``dy w + dx``: a run ``0, 1, ...,
    r`` next to the node, then runs centred on ``w, 2 w, ...``.
    """
    positive = offsets[1:] if offsets and offsets[0] == 0 else offsets
    r = 0
    while r < len(positive) and positive[r] == r + 1:  # the run 1..r next to the node
        r += 1
    if r == len(positive):
        return None  # a band with no second run: no grid to read
    w = positive[r] + r  # the next run is w - r .. w + r
    if w <= 2 * r + 1 or n % w or n // w < 2:
        return None
    dy = [(o + w // 2) // w for o in positive]
    radius = max(max(dy), max(abs(o - k * w) for o, k in zip(positive, dy)))
    return n // w, w, 2 * radius + 1


def _sample_rows(n: int, samples: int = 9) -> list[int]:
    """Rows read to guess a grid: spread evenly, away from the corners (whose windows are cut)."""
    return torch.linspace(0, n - 1, samples + 2)[1:-1].round().long().tolist()


#: Most band slots (``N window^2``) per non-zero for which an affinity given densely or as a
#: torch sparse tensor is recast as a :class:`BandedAffinity`; a sparser pattern in a wide
#: window stays a CSR matrix.
BAND_SLOTS_PER_ENTRY = 3.0


def _as_banded(W: Tensor) -> BandedAffinity | None:
    """A dense ``W`` ``(B, N, N)`` as the :class:`BandedAffinity` it is, or ``None``.

    When every non-zero of ``W`` lies in the square window of a row-major ``h x w`` grid (a
    guess from a few rows, :func:`_grid_from_offsets`, then checked exactly: the window entries
    gathered hold as many non-zeros as ``W``), ``W`` is that banded affinity: the same operator,
    multiplied through its band, and the grid gives the Krylov start its smooth cosines (8
    blocks instead of 12 from Gaussian columns on the README's graph). Raises, as for any
    dense ``W``, if it is not symmetric. The band takes no gradient to ``W``'s zeros: callers
    use it only when ``W`` needs none.
    """
    batch, n, _ = W.shape
    picked = _sample_rows(n)
    sample = W.detach()[:, picked]  # (B, samples, N)
    which, cols = torch.nonzero(sample.reshape(-1, n), as_tuple=True)
    rows = torch.tensor(picked, device=W.device).repeat(batch)[which]
    guess = _grid_from_offsets(torch.unique((cols - rows).abs()).tolist(), n)
    if guess is None:
        return None
    h, w, window = guess
    k = window * window
    total = _count_set(W)
    if batch * n * k > BAND_SLOTS_PER_ENTRY * total:
        return None
    index, valid = _neighbour_index(h, w, window, W.device)
    band = W.detach().gather(2, index.expand(batch, n, k)).masked_fill_(~valid, 0)
    if _count_set(band) != total:
        return None  # some non-zero lies outside the windows
    _check_band_symmetric(band, (h, w), window, "W must be symmetric")
    return BandedAffinity(band, (h, w), window)


@functools.lru_cache(maxsize=32)
def _band_mirror(h: int, w: int, window: int, batch: int, device: torch.device) -> Tensor:
    """For every slot of a ``(B, N, K)`` band, the flat position of its mirror entry
    ``[b, i + offset_o, K - 1 - o]``; a slot outside the grid (weight 0) maps to itself."""
    n, k = h * w, window * window
    index, valid = _neighbour_index(h, w, window, device)
    first = torch.arange(batch, device=device).view(batch, 1, 1) * n
    mirror = (first + index) * k + (k - 1 - torch.arange(k, device=device))
    own = torch.arange(batch * n * k, device=device).view(batch, n, k)
    return torch.where(valid, mirror, own).reshape(-1)


def _check_band_symmetric(band: Tensor, grid: tuple[int, int], window: int, message: str) -> None:
    """Raises ``ValueError(message)`` unless every ``band[b, i, o]`` equals its mirror
    ``band[b, i + offset_o, K - 1 - o]`` (the slots outside the grid must hold 0)."""
    flat = band.detach().reshape(-1)
    _check_entries(flat)  # NaN would pass the comparison below unseen
    # the whole band against its mirror image: one gathered copy (the slots outside the grid
    # compare with themselves)
    if not _close(flat, flat.index_select(0, _band_mirror(*grid, window, band.shape[0], band.device))):
        raise ValueError(message)


def _sparse_as_banded(pattern: _DensePattern, values: Tensor, n: int) -> BandedAffinity | None:
    """A torch sparse ``W`` ``(N, N)`` (its checked non-zeros, :func:`_sparse_input`) as the
    :class:`BandedAffinity` it is, or ``None``; as :func:`_as_banded`. The band is built from
    ``values`` differentiably: the gradient reaches the stored entries, as on the CSR path."""
    offsets = pattern.offsets.tolist()
    seen = torch.cat([pattern.cols[offsets[i]:offsets[i + 1]] - i for i in _sample_rows(n)])
    guess = _grid_from_offsets(torch.unique(seen.abs()).tolist(), n)
    if guess is None:
        return None
    h, w, window = guess
    r, k = window // 2, window * window
    if n * k > BAND_SLOTS_PER_ENTRY * values.numel():
        return None
    rows, cols = pattern.rows, pattern.cols
    node = torch.arange(n, device=cols.device)
    y, x = node // w, node % w  # looked up per entry: ~3x faster than dividing every entry
    dy = y.index_select(0, cols) - y.index_select(0, rows)
    dx = x.index_select(0, cols) - x.index_select(0, rows)
    if not bool(((dy.abs() <= r) & (dx.abs() <= r)).all()):
        return None  # some non-zero lies outside the windows
    slot = rows * k + (dy + r) * window + (dx + r)
    # scatter: 6x faster than index_put here (0.5 vs 3.1 ms, 603k entries); the slots are distinct
    band = values.new_zeros(n * k).scatter(0, slot, values).view(1, n, k)
    _check_band_symmetric(band, (h, w), window,
                          "W must be symmetric (every stored entry (i, j) needs an equal entry (j, i))")
    return BandedAffinity(band, (h, w), window)


class _CSRMatmul(torch.autograd.Function):
    """``Y = A X`` for ``A`` given by its non-zeros (a dense ``W`` detected as sparse).

    ``values`` ``(nnz,)`` are the entries in CSR order. If ``dense`` (the same matrix as a
    ``(B, N, N)`` tensor) is given, the gradient goes to it in full, ``dA = dY X^T``, zeros
    included: ``W`` was given dense, so its gradient is dense; otherwise (``values``
    differentiable) only the stored entries get one.
    """

    @staticmethod
    def forward(ctx, values: Tensor, dense: Tensor | None, X: Tensor, op: _SparseOperator) -> Tensor:
        batch, n, m = X.shape
        p = op.pattern
        Y = torch.mm(_csr(values.detach(), p.crow, p.col, batch * n), X.reshape(batch * n, m))
        ctx.save_for_backward(X)
        ctx.op = op
        return Y.reshape(batch, n, m)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        (X,) = ctx.saved_tensors
        op = ctx.op
        batch, n, m = X.shape
        grad_values = grad_dense = grad_X = None
        if ctx.needs_input_grad[0]:  # sampled product: <dY_i, X_j> for each stored (i, j)
            g, x = grad.reshape(batch * n, m), X.reshape(batch * n, m)
            grad_values = (g.index_select(0, op.pattern.rows) * x.index_select(0, op.pattern.cols)).sum(-1)
        if ctx.needs_input_grad[1]:
            grad_dense = grad @ X.transpose(-1, -2)
        if ctx.needs_input_grad[2]:
            crow_t, col_t, values_t = op.transposed()
            grad_X = torch.mm(_csr(values_t, crow_t, col_t, batch * n), grad.reshape(batch * n, m).contiguous())
            grad_X = grad_X.reshape(batch, n, m)
        return grad_values, grad_dense, grad_X, None


class _SparseOperator:
    """``X -> A X`` for a dense ``A`` ``(B, N, N)`` multiplied through its non-zeros.

    Args:
        values: ``(nnz,)`` entries of ``A`` in the order of ``pattern``.
        pattern: from :func:`_dense_pattern`.
        batch, n: ``B`` and ``N``.
        dense: ``A`` itself when it needs a full (dense) gradient, else ``None``.
    """

    def __init__(self, values: Tensor, pattern: _DensePattern, batch: int, n: int, dense: Tensor | None = None):
        self.values, self.pattern, self.batch, self.n, self.dense = values, pattern, batch, n, dense
        self._transposed: tuple[Tensor, Tensor, Tensor] | None = None

    def transposed(self) -> tuple[Tensor, Tensor, Tensor]:
        """CSR ``crow, col, values`` of ``A^T`` (for ``dX = A^T dY``), built on first use."""
        if self._transposed is None:
            p, size = self.pattern, self.batch * self.n
            order = torch.argsort(p.cols * size + p.rows)
            crow = torch.zeros(size + 1, dtype=torch.int64, device=p.rows.device)
            crow[1:] = torch.bincount(p.cols, minlength=size).cumsum(0)
            self._transposed = (crow.int(), p.rows[order].int(), self.values.detach()[order])
        return self._transposed

    def to_dense(self) -> Tensor:
        """``A`` as a dense ``(B, N, N)`` tensor (the gradient reaches what ``A`` came from)."""
        if self.dense is not None:
            return self.dense
        size = self.batch * self.n * self.n
        return self.values.new_zeros(size).scatter(0, self.pattern.index, self.values).view(self.batch, self.n, self.n)

    def squared_row_norms(self) -> Tensor:
        """``(A^2)_ii = sum_j A_ij^2`` ``(B, N)``, see :func:`_spike_columns`."""
        sums = torch.segment_reduce(self.values.detach().square(), "sum", offsets=self.pattern.offsets)
        return sums.view(self.batch, self.n)

    def __call__(self, X: Tensor) -> Tensor:
        X = X.expand(self.batch, self.n, X.shape[-1]).contiguous()
        return _CSRMatmul.apply(self.values, self.dense, X, self)


class _Operator:
    """``X -> A X`` for a dense ``(B, N, N)`` or banded operator (CSR values gathered once)."""

    def __init__(self, A: Tensor | BandedAffinity):
        if isinstance(A, BandedAffinity):
            self.batch, self.n = A.weights.shape[:2]
            self.banded = A
            _, _, take, self._transpose_take = _csr_pattern(*A.grid_shape, A.window, self.batch, A.weights.device)
            self.values = A.weights.reshape(-1).index_select(0, take)  # ~2x faster than [take]
            self._values_t: Tensor | None = None
        else:
            self.batch, self.n = A.shape[0], A.shape[1]
            self.banded = None
            self.dense = A

    def to_dense(self) -> Tensor:
        """``A`` as a dense ``(B, N, N)`` tensor (differentiable)."""
        return self.dense if self.banded is None else self.banded.to_dense()

    def squared_row_norms(self) -> Tensor:
        """``(A^2)_ii = sum_j A_ij^2`` ``(B, N)`` of a symmetric ``A``, see :func:`_spike_columns`."""
        entries = self.dense if self.banded is None else self.banded.weights
        # no squared copy of the entries (a fresh N x K or N x N tensor: page faults)
        return torch.linalg.vector_norm(entries.detach(), dim=-1).square()

    def __call__(self, X: Tensor) -> Tensor:
        if self.banded is None:
            return self.dense @ X
        A = self.banded
        X = X.expand(self.batch, self.n, X.shape[-1]).contiguous()
        if torch.is_grad_enabled() and (X.requires_grad or self.values.requires_grad):
            if self._values_t is None:  # the transpose's values: only a backward needs them
                self._values_t = A.weights.detach().reshape(-1).index_select(0, self._transpose_take)
            values_t = self._values_t
        else:
            values_t = self.values.new_empty(0)
        return _BandedMatmul.apply(self.values, values_t, X, A.grid_shape, A.window)


def apply_operator(A: Tensor | BandedAffinity, X: Tensor) -> Tensor:
    """``A X`` for ``A`` dense ``(B, N, N)`` or banded, ``X`` of shape ``(B, N, m)``."""
    return _Operator(A)(X)


# --------------------------------------------------------------------------- #
# Accelerated simultaneous iteration (§4.2) + Rayleigh-Ritz                     #
# --------------------------------------------------------------------------- #
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
    this measure (README, "Speed and accuracy of the eigen-solver").
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


#: Krylov blocks of the first space; a deeper one is built (going on from it) while the
#: error bound of the Ritz pairs exceeds :data:`KRYLOV_TOLERANCE`, see :func:`_next_depth`.
KRYLOV_FIRST_DEPTH = 8


def _next_depth(blocks: int) -> int:
    """Depth of the next space: half as deep again, at least 4 blocks more (8, 12, 18, 27, ...)."""
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
    :func:`_widened` is needed. Image-sized graphs (N = 2501) never restart and keep 16.
    """
    return max(8, (3 * block_size) // 4)


def krylov_size(n_eigs: int, num_nodes: int) -> tuple[int, int] | None:
    """Default ``(block_size, n_blocks)`` of the first block Krylov space for ``Ne`` eigenpairs.

    Blocks of ``b = ceil(0.32 Ne)`` columns (16 for ``Ne = 50``), first :data:`KRYLOV_FIRST_DEPTH`
    (8) products by ``S``; :func:`diffusion` then makes the space deeper (8, 12, 18, 27, ...
    blocks, each going on from the last) while the first-order error bound of its Ritz pairs
    exceeds :data:`KRYLOV_TOLERANCE`. Depth matters most: the leading eigenvalues of a learned
    affinity cluster near 1 (0.998, 0.989, 0.977, ...) and each product widens the polynomial
    degree; a product on 16 columns costs little more than on 10 (the CSR matrix is streamed
    once per product). Measured (``Ne = 50``, 41x61 grids, ``BSDS500_HED_V2`` and
    ``BSDS500_HED_V6`` on ``examples/coffee.jpg`` and the 28 BSDS mini images, float64 and
    float32): relative error of ``D`` against the exact truncated spectrum at most 1.3e-4, the
    spaces 8 (3 of 58 graphs), 12 (25), 18 (26) or 27 (4) blocks deep; the earlier fixed 16
    blocks from cosines alone left 2.3e-3 (a missed localised eigenvector, see
    :func:`_spike_columns`). At least 8 columns (at most ``Ne``): a block narrower than a
    cluster of leading eigenvalues converges slowly (measured on 6-community graphs,
    ``Ne = 6``: 2e-1 with 2 columns, 2e-5 with 6). ``None`` when 16 blocks would exceed half
    the graph: solve exactly instead (cheap there).
    """
    block, blocks = _krylov_default(n_eigs)
    return None if 2 * block * 16 > num_nodes else (block, blocks)


def _krylov_default(n_eigs: int) -> tuple[int, int]:
    return min(n_eigs, max(8, math.ceil(0.32 * n_eigs))), KRYLOV_FIRST_DEPTH


class _KrylovState(NamedTuple):
    """Where a block Lanczos run stopped, so that it can go on (:func:`_block_krylov`)."""

    rows: list[Tensor]  # the orthonormal blocks Q_j as rows, (B, b_j, N) each (b_0 may differ: kept Ritz vectors)
    pieces: list[Tensor]  # column j of H down to its last non-zero block, (B, rows so far, b_j)
    residual: Tensor  # (S Q_q)^T after the last projections, (B, b, N)
    coupling: Tensor | None = None  # (B, b, b_q): the next block's row of H is R @ coupling (None: R)
    buffer: Tensor | None = None  # the last run's block buffer, reused by a restart of the same size


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
    """Block Lanczos with full reorthogonalisation; see :func:`block_krylov`.

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
    """
    if state is None:
        Q, _ = torch.linalg.qr(U0)
        rows, pieces, first = [Q.transpose(-1, -2)], [], 0
    else:  # the residual block left last time becomes the next block
        rows, pieces = list(state.rows), list(state.pieces)
        Q, R = torch.linalg.qr(state.residual.transpose(-1, -2))
        rows.append(Q.transpose(-1, -2))
        pieces[-1] = torch.cat([pieces[-1], R if state.coupling is None else R @ state.coupling], -2)
        first = len(pieces)
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
        # removes the rounding the first pass left in all directions (when it is above
        # eps^0.8, see _needs_second_pass): the blocks stay orthogonal to working precision,
        # so H is Q^T S Q (checked by a test).
        lo = starts[-2] if j else 0
        near = basis[:, lo:]
        c_near = Zt @ near.transpose(-1, -2)
        Zt = torch.baddbmm(Zt, c_near, near, alpha=-1)
        column = Zt @ basis.transpose(-1, -2)
        if _needs_second_pass(column, Zt):
            Zt = torch.baddbmm(Zt, column, basis, alpha=-1)
        column = torch.cat([column[..., :lo], column[..., lo:] + c_near], -1).transpose(-1, -2)
        if j < n_blocks - 1:
            Q, R = torch.linalg.qr(Zt.transpose(-1, -2))
            Qt = Q.transpose(-1, -2)
            rows.append(Qt)
            starts.append(top)
            column = torch.cat([column, R], -2)
        pieces.append(column)
    H = torch.cat([torch.cat([c, c.new_zeros(batch, m - c.shape[-2], c.shape[-1])], -2) for c in pieces], -1)
    Q = buffer if buffer is not None else torch.cat(rows, -2)
    residual = Zt.detach()
    return (Q.transpose(-1, -2), 0.5 * (H + H.transpose(-1, -2)), residual @ residual.transpose(-1, -2),
            _KrylovState(rows, pieces, Zt, buffer=buffer))


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
    return _KrylovState([rows], [Y_k.transpose(-1, -2) @ H @ Y_k], state.residual, Y_k[..., -b:, :], state.buffer)


def block_krylov(
    S: Tensor | BandedAffinity,
    block_size: int,
    n_blocks: int,
    U0: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Orthonormal basis of a block Krylov space of a symmetric ``S`` and ``H = Q^T S Q``.

    ``span[U0, S U0, ..., S^(q-1) U0]`` with ``q = n_blocks``, built by block Lanczos with
    full reorthogonalisation (``q`` products by ``S`` on ``b = block_size`` columns). The
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


# --------------------------------------------------------------------------- #
# The matrix function (S^2)^t with stable gradients                             #
# --------------------------------------------------------------------------- #
def _power_and_derivatives(theta: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``f = (theta^2)^t``, ``df/dtheta`` and ``df/dt``, safe at ``theta = 0``."""
    tiny = torch.finfo(theta.dtype).tiny
    log_sq = torch.log(theta.square().clamp_min(tiny))
    f = torch.exp(t * log_sq)
    df_dtheta = 2 * t * theta * torch.exp((t - 1) * log_sq)
    return f, df_dtheta, f * log_sq


class _SpectralPower(torch.autograd.Function):
    """``f(A) = (A^2)^t`` for batched symmetric ``A``; backward by divided differences.

    Also returns the eigendecomposition ``(theta, Y)`` of ``A`` (not differentiable)
    so callers need not diagonalise twice.
    """

    @staticmethod
    def forward(ctx, A: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        theta, Y = torch.linalg.eigh(A)
        ctx.t_shape = t.shape
        f, df, dft = _power_and_derivatives(theta, t)
        ctx.save_for_backward(theta, Y, f, df, dft)
        ctx.mark_non_differentiable(theta, Y)
        return (Y * f.unsqueeze(-2)) @ Y.transpose(-1, -2), theta, Y

    @staticmethod
    def backward(ctx, grad: Tensor, _grad_theta: Tensor, _grad_Y: Tensor) -> tuple[Tensor | None, Tensor | None]:
        theta, Y, f, df, dft = ctx.saved_tensors
        G = Y.transpose(-1, -2) @ (0.5 * (grad + grad.transpose(-1, -2))) @ Y
        grad_A = grad_t = None
        if ctx.needs_input_grad[0]:
            diff = theta.unsqueeze(-1) - theta.unsqueeze(-2)
            fdiff = f.unsqueeze(-1) - f.unsqueeze(-2)
            mean_slope = 0.5 * (df.unsqueeze(-1) + df.unsqueeze(-2))
            # Where eigenvalues (nearly) coincide the divided difference becomes the derivative.
            scale = theta.abs().amax(-1, keepdim=True).unsqueeze(-1).clamp_min(1.0)
            close = diff.abs() <= 1e3 * torch.finfo(theta.dtype).eps * scale
            L = torch.where(close, mean_slope, fdiff / torch.where(close, torch.ones_like(diff), diff))
            grad_A = Y @ (L * G) @ Y.transpose(-1, -2)
        if ctx.needs_input_grad[1]:
            grad_t = (G.diagonal(dim1=-2, dim2=-1) * dft).sum().reshape(ctx.t_shape)
        return grad_A, grad_t


def _spectral_power_eig(A: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
    t = torch.as_tensor(t, dtype=A.dtype, device=A.device)
    return _SpectralPower.apply(A, t)


def spectral_power(A: Tensor, t: Tensor | float) -> Tensor:
    """``(A^2)^t`` of symmetric ``A`` ``(..., n, n)``, i.e. ``Y diag(|theta|^(2t)) Y^T``.

    Differentiable w.r.t. ``A`` and ``t``; the gradient uses divided differences
    of ``f(x) = (x^2)^t`` (Daleckii-Krein), so it stays finite for repeated
    eigenvalues, unlike back-propagating through ``eigh``'s eigenvectors.
    """
    return _spectral_power_eig(A, t)[0]


def _assemble_distance(G: Tensor, out_dtype: torch.dtype, rows: int = 256) -> Tensor:
    """``D_ij = |g_i|^2 + |g_j|^2 - 2 g_i.g_j`` clamped at 0, from ``G`` ``(B, N, r)``; ``(B, N, N)``.

    On the CPU, in strips of ``rows`` rows, each finished (``+ |g_i|^2``, clamp) while in
    cache and written straight in ``out_dtype``: no ``N x N`` temporaries, and none in the
    wider compute dtype. Only the upper triangle is computed (each strip from its diagonal
    block on) and the lower one is copied from it, transposed: half the products, which is
    what the time is in. Measured on N = 2501, r = 50, one thread: float64 computed, float32
    out, 15.6 ms against 21.0 ms for whole strips (which were 5.5x faster than ``baddbmm`` +
    ``clamp`` + cast); float32 9.3 against 10.8 ms (there the transposed copy eats most of the gain).
    """
    sq = G.square().sum(-1)
    if G.device.type != "cpu":  # large GPU kernels beat a Python loop of small ones
        D = torch.baddbmm(sq.unsqueeze(-1) + sq.unsqueeze(-2), G, G.transpose(-1, -2), alpha=-2)
        return D.clamp_min_(0).to(out_dtype)
    batch, n, _ = G.shape
    D = torch.empty(batch, n, n, dtype=out_dtype)
    for b in range(batch):
        g, s = G[b], sq[b]
        for start in range(0, n, rows):
            end = min(n, start + rows)
            out = D[b, start:end, start:] if out_dtype == G.dtype else None  # written in place (0.9 ms less)
            strip = torch.addmm(s[start:].unsqueeze(0).expand(end - start, n - start), g[start:end], g[start:].T,
                                alpha=-2, out=out)
            strip.add_(s[start:end, None]).clamp_min_(0)
            if out is None:
                D[b, start:end, start:] = strip
            D[b, end:, start:end] = D[b, start:end, end:].transpose(0, 1)
    return D


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


class _RitzDistance(torch.autograd.Function):
    """Eq. 4 from a Rayleigh-Ritz step, keeping the ``k`` Ritz pairs of largest ``|theta|``.

    With ``C = sqrt(vol) D^-1/2 Q`` ``(B, N, m)`` and ``H = Q^T S Q`` ``(B, m, m)``:
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
    def forward(ctx, C: Tensor, H: Tensor, t: Tensor, k: int, out_dtype: torch.dtype,
                eig: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        theta, Y = _ritz_eigh(H) if eig is None else eig
        top = theta.abs().topk(k, dim=-1).indices
        theta_k = theta.gather(-1, top)
        X = C @ Y.gather(-1, top.unsqueeze(-2).expand(*Y.shape[:-1], k))
        log_sq = torch.log(theta_k.square().clamp_min(torch.finfo(theta.dtype).tiny))
        D = _assemble_distance(X * torch.exp(0.5 * t * log_sq).unsqueeze(-2), out_dtype)
        ctx.save_for_backward(C, theta, Y, top, t, X)
        ctx.mark_non_differentiable(theta_k, X)
        return D, theta_k, X

    @staticmethod
    def backward(ctx, grad: Tensor, _grad_theta: Tensor, _grad_X: Tensor) -> tuple[Tensor | None, ...]:
        C, theta, Y, top, t, X = ctx.saved_tensors
        grad = grad.to(C.dtype)
        keep = torch.zeros_like(theta, dtype=torch.bool).scatter_(-1, top, True)
        f, df, dft = _power_and_derivatives(theta, t)
        f, df, dft = f * keep, df * keep, dft * keep
        # P = dL/dM @ X without forming dD + dD^T (a transposed N x N read is slow).
        r = (grad.sum(-1) + grad.sum(-2)).unsqueeze(-1)
        P = r * X - grad @ X - grad.transpose(-1, -2) @ X
        Y_k = Y.gather(-1, top.unsqueeze(-2).expand(*Y.shape[:-1], top.shape[-1]))
        grad_C = grad_H = grad_t = None
        if ctx.needs_input_grad[0]:
            grad_C = 2 * (P * f.gather(-1, top).unsqueeze(-2)) @ Y_k.transpose(-1, -2)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            # G = Y^T C^T dM C Y on the kept rows (and, by symmetry, columns).
            rows_k = P.transpose(-1, -2) @ (C @ Y)  # (B, k, m)
            G = torch.zeros_like(Y).scatter_(-2, top.unsqueeze(-1).expand_as(rows_k), rows_k)
            G = torch.where(keep.unsqueeze(-2) & ~keep.unsqueeze(-1), G.transpose(-1, -2), G)
            if ctx.needs_input_grad[1]:
                diff = theta.unsqueeze(-1) - theta.unsqueeze(-2)
                scale = theta.abs().amax(-1, keepdim=True).unsqueeze(-1).clamp_min(1.0)
                close = diff.abs() <= 1e3 * torch.finfo(theta.dtype).eps * scale
                # Where eigenvalues (nearly) coincide the divided difference becomes the derivative.
                L = torch.where(close, 0.5 * (df.unsqueeze(-1) + df.unsqueeze(-2)),
                                (f.unsqueeze(-1) - f.unsqueeze(-2)) / torch.where(close, torch.ones_like(diff), diff))
                grad_H = Y @ (L * G) @ Y.transpose(-1, -2)
            if ctx.needs_input_grad[2]:
                grad_t = (G.diagonal(dim1=-2, dim2=-1) * dft).sum().reshape(t.shape)
        return grad_C, grad_H, grad_t, None, None, None


# --------------------------------------------------------------------------- #
# Diffusion distance                                                           #
# --------------------------------------------------------------------------- #
def _check_time(t: Tensor | float) -> None:
    value = torch.as_tensor(t)
    if value.numel() != 1 or not torch.isfinite(value).all() or not bool(value > 0):
        raise ValueError(f"t must be a positive finite scalar, got {t}")


def _pairwise_from_gram(M: Tensor) -> Tensor:
    """``D_ij = M_ii + M_jj - 2 M_ij`` clamped at 0 (rounding can make it slightly negative)."""
    diag = M.diagonal(dim1=-2, dim2=-1)
    return (diag.unsqueeze(-1) + diag.unsqueeze(-2) - 2 * M).clamp_min(0)


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


def _sparse_operator(W: Tensor, pattern: _DensePattern, dtype: torch.dtype) -> tuple[_SparseOperator, Tensor]:
    """``S = D^-1/2 W D^-1/2`` of a dense ``W`` ``(B, N, N)`` as a sparse operator, and ``d`` ``(B, N)``.

    Without a gradient to ``W`` only the non-zeros are read, normalised and cast (no
    ``N x N`` temporaries). When ``W`` needs a gradient, ``S`` is also formed densely so that
    the gradient reaches every entry, zeros included (the products stay sparse).
    """
    batch, n, _ = W.shape
    if torch.is_grad_enabled() and W.requires_grad:
        W = W.to(dtype)
        S = symmetric_normalize(W)
        values = S.detach().reshape(-1).index_select(0, pattern.index)
        return _SparseOperator(values, pattern, batch, n, dense=S), degree(W)
    values, d = _normalized_values(W.detach().reshape(-1).index_select(0, pattern.index).to(dtype), pattern)
    return _SparseOperator(values, pattern, batch, n), d.view(batch, n)


#: Largest first-order error bound ``|f'(theta)| |S v - theta v|`` (``f(x) = (x^2)^t``) over the
#: kept Ritz pairs that the default Krylov space may leave; above it the space is made deeper
#: (:func:`_next_depth`), up to ``N`` dimensions. It bounds the relative error of ``D`` from
#: above in practice: over 115 spaces of 8-27 blocks on 59 graphs (README) the error was at
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


def _normalized_values(w: Tensor, pattern: _DensePattern) -> tuple[Tensor, Tensor]:
    """Entries of ``S = D^-1/2 W D^-1/2`` from those of ``W`` in CSR order, and ``d`` ``(B N,)``."""
    d = torch.segment_reduce(w, "sum", offsets=pattern.offsets)  # rows are contiguous in CSR order
    d_isqrt = d.rsqrt()
    return w * d_isqrt.index_select(0, pattern.rows) * d_isqrt.index_select(0, pattern.cols), d


def _is_sparse(W: object) -> bool:
    return isinstance(W, Tensor) and W.layout in (torch.sparse_coo, torch.sparse_csr)


def _sparse_input(W: Tensor) -> tuple[_DensePattern, Tensor]:
    """The CSR structure and the stored values (CSR order, differentiable, repeated entries added
    up) of a torch sparse ``(N, N)`` affinity, after the checks :func:`_validate_affinity` makes
    for a dense one except symmetry: :func:`_sparse_as_banded` checks it on the band of a grid
    affinity, :func:`_check_sparse_symmetric` on any other."""
    if W.dim() != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"a sparse W must be square (N, N) (batches: one call each), got shape {tuple(W.shape)}")
    n = W.shape[0]
    if W.layout == torch.sparse_csr:
        crow, cols, values = W.crow_indices().long(), W.col_indices().long(), W.values()
        counts = crow.diff()
        rows = torch.repeat_interleave(torch.arange(n, device=cols.device), counts)
    else:
        W = W.coalesce()  # row-major order, repeated entries summed
        (rows, cols), values = W.indices(), W.values()
        counts = torch.bincount(rows, minlength=n)
    if values.dim() != 1:
        raise ValueError("a sparse W must have scalar entries (no dense dimensions)")
    _check_entries(values)
    index = rows * n + cols
    if index.numel() > 1 and not bool((index[1:] > index[:-1]).all()):  # CSR with unsorted or repeated columns
        order = torch.argsort(index)
        index, rows, cols, values = index[order], rows[order], cols[order], values.index_select(0, order)
        if bool((index[1:] == index[:-1]).any()):  # repeated entries add up, as coalesce() makes them for COO
            index, inverse = torch.unique_consecutive(index, return_inverse=True)
            values = values.new_zeros(index.numel()).index_add(0, inverse, values)
            rows, cols = index // n, index % n
            counts = torch.bincount(rows, minlength=n)
    transpose = cols * n + rows
    offsets = torch.zeros(n + 1, dtype=torch.int64, device=cols.device)
    offsets[1:] = counts.cumsum(0)
    pattern = _DensePattern(index, transpose, rows, cols, offsets, offsets.int(), cols.int())
    if bool((torch.segment_reduce(values.detach(), "sum", offsets=offsets) <= 0).any()):
        raise ValueError("every node needs a positive degree (an isolated node has no random walk)")
    return pattern, values


def _check_sparse_symmetric(pattern: _DensePattern, values: Tensor) -> None:
    """Every stored ``(i, j)`` of a sparse ``W`` (:func:`_sparse_input`) needs an equal stored ``(j, i)``."""
    # The entries in column-major order are a stable sort by column of the row-major ones (one
    # sort of small integers, the fastest of the ways tried): the pattern is symmetric iff that
    # order lists the same (row, col) keys.
    rows, cols = pattern.rows, pattern.cols
    by_column = torch.sort(cols, stable=True).indices
    a, b = values.detach(), values.detach().index_select(0, by_column)
    mirrored = cols.index_select(0, by_column) * (pattern.offsets.numel() - 1) + rows.index_select(0, by_column)
    if not (torch.equal(pattern.index, mirrored) and _close(a, b)):
        raise ValueError("W must be symmetric (every stored entry (i, j) needs an equal entry (j, i))")


class _KrylovRun(NamedTuple):
    """What :func:`_krylov_ritz` leaves: the space ``U`` ``(B, N, m)``, ``H`` ``(B, m, m)``,
    ``eigh(H)`` and the depth in blocks, with how it ended (``status``): ``"done"`` (the error
    bound holds, or the depth was given), ``"degenerate"`` (:func:`_degenerate_top`: a wider
    block is needed) or ``"full"`` (the next space would hold more than half the graph: the
    exact spectrum is cheaper there, and a space that close to ``N`` loses orthogonality)."""

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
        if _degenerate_top(eig[0], b, n_eigs):
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
        elif 2 * more * b > n:
            return _KrylovRun(U, H, eig, blocks, "full")
        else:
            blocks = more  # not accurate enough yet: a deeper space


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
    if _ritz_error(eig[0], residual, t, times) > 10 * KRYLOV_TOLERANCE:
        warnings.warn("diffusion: the subspace iteration (solver='subspace') has not converged: its error "
                      f"bound is above {10 * KRYLOV_TOLERANCE:g}, so D may be inaccurate; raise n_iter or "
                      "n_power, or use solver='krylov'")


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
        if run.status != "degenerate" or 4 * start.shape[-1] * blocks > n:
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
      ``block_size`` columns, default :func:`krylov_size`: 16 columns for ``Ne = 50``, 8 to
      27 products on the shipped models' graphs, against 2 x 20 x 50 for the paper's
      settings) from smooth start columns and one-hot columns at the most isolated nodes,
      then Rayleigh-Ritz keeping the ``Ne`` Ritz pairs of largest modulus; as accurate or
      more (see the README). Each Ritz pair's residual is known at no cost from the last
      Krylov block; while the residuals weighted by the slope of ``f`` exceed
      :data:`KRYLOV_TOLERANCE` the space is made deeper, going on from the last one (8, 12,
      18, 27, ... blocks; not when ``n_blocks`` is given). On a large graph, where the deeper
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
        U0: start block, ``(N, b)`` for ``"krylov"`` (default :func:`krylov_start`: cosines
            on the grid of a banded ``W`` or of one recognised as banded, else seeded Gaussian columns) or
            ``(N, Ne)`` for ``"subspace"`` (default :func:`initial_subspace`); e.g. the
            previous training step's eigenvectors.
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
    unbatched = False
    if _is_sparse(W):  # its non-zeros are given: no N x N pass to find them
        pattern, stored = _sparse_input(W)
        banded = _sparse_as_banded(pattern, stored, num_nodes) if iterative else None
        if banded is not None:  # on a grid: the banded path below (symmetry checked on the band)
            W, unbatched = banded, True
        else:
            _check_sparse_symmetric(pattern, stored)
    if _is_sparse(W):
        batched, out_dtype, grid = False, stored.dtype, None
        values, d = _normalized_values(stored.to(spectral_dtype or out_dtype), pattern)
        op, d = _SparseOperator(values, pattern, 1, num_nodes), d.view(1, num_nodes)
        if not iterative:  # the exact spectrum needs S densely
            S = torch.sparse_coo_tensor(torch.stack([pattern.rows, pattern.cols]), values, (num_nodes, num_nodes),
                                        check_invariants=False).to_dense().unsqueeze(0)
    else:
        pattern = None
        if iterative and isinstance(W, Tensor) and W.dim() in (2, 3) and W.shape[-1] == W.shape[-2]:
            unbatched, W3 = W.dim() == 2, W if W.dim() == 3 else W.unsqueeze(0)
            banded = None if torch.is_grad_enabled() and W.requires_grad else _as_banded(W3)
            if banded is not None:
                W = banded
            else:
                pattern = _dense_pattern(W3)
        W, batched = _validate_affinity(W, pattern)
        batched = batched and not unbatched  # a dense (N, N) W recast as a band comes back unbatched
        out_dtype = _affinity_values(W).dtype
        if pattern is not None:
            op, d = _sparse_operator(W, pattern, spectral_dtype or out_dtype)
            grid = None
        else:
            d = degree(W, spectral_dtype)
            S = symmetric_normalize(W, spectral_dtype)
            op = _Operator(S) if iterative else None
            grid = W.grid_shape if isinstance(W, BandedAffinity) else None
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
            U, H, eig = _krylov_space(op, start.expand(batch, n, start.shape[-1]), size[1], n_eigs, t, times,
                                      deepen=n_blocks is None, track=track)
        if solver == "subspace":
            start = initial_subspace(n, n_eigs, grid, d.dtype, d.device) if U0 is None else U0.to(d)
            power = default_power(t) if n_power is None else n_power
            U, H = subspace_iteration(op, n_eigs, n_iter=n_iter, n_power=power, U0=start)
            eig = _ritz_eigh(H.detach())
            _warn_if_unconverged(op, U, eig, t, times)
        if distance:
            D, lam, psi = _RitzDistance.apply(scale.unsqueeze(-1) * U, H, t, n_eigs, out_dtype, eig)
        else:  # the Ritz pairs alone: what _RitzDistance keeps, without assembling D
            with torch.no_grad():
                theta, Y = _ritz_eigh(H) if eig is None else eig
                top = theta.abs().topk(n_eigs, dim=-1).indices
                lam = theta.gather(-1, top)
                psi = (scale.unsqueeze(-1) * U) @ Y.gather(-1, top.unsqueeze(-2).expand(*Y.shape[:-1], n_eigs))
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
        lam = lam.gather(-1, order).detach()
        psi = psi.gather(-1, order.unsqueeze(-2).expand_as(psi))
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


# --------------------------------------------------------------------------- #
# The authors' released procedure, for comparison (official-code notes §3-4)    #
# --------------------------------------------------------------------------- #
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
