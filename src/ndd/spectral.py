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
    "spectral_power",
    "DiffusionResult",
    "diffusion",
    "diffusion_distance",
    "diffusion_embedding",
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


def _validate_affinity(W: Tensor | BandedAffinity) -> tuple[Tensor | BandedAffinity, bool]:
    """Check an affinity and add a batch dimension; returns ``(W, was_batched)``."""
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
    if not torch.isfinite(values).all():
        raise ValueError("the affinity contains NaN or Inf")
    if bool((values < 0).any()):
        raise ValueError("the affinity has negative weights; it must be non-negative")
    if isinstance(W, Tensor):
        scale = values.detach().abs().amax().clamp_min(torch.finfo(values.dtype).tiny)
        if not torch.allclose(values, values.transpose(-1, -2), atol=1e-5 * float(scale), rtol=1e-4):
            raise ValueError("W must be symmetric")
    if bool((degree(W) <= 0).any()):
        raise ValueError("every node needs a positive degree (an isolated node has no random walk)")
    return W, batched


def degree(W: Tensor | BandedAffinity) -> Tensor:
    """Degrees ``d = W 1``: ``(B, N)`` (or ``(N,)`` for an unbatched dense ``W``)."""
    if isinstance(W, BandedAffinity):
        return W.weights.sum(-1)
    return W.sum(-1)


def symmetric_normalize(W: Tensor | BandedAffinity) -> Tensor | BandedAffinity:
    """The symmetric conjugate ``S = D^-1/2 W D^-1/2`` in the same storage as ``W``."""
    d_isqrt = degree(W).rsqrt()
    if isinstance(W, BandedAffinity):
        index, _ = _neighbour_index(*W.grid_shape, W.window, W.weights.device)
        neighbour = d_isqrt[:, index]  # (B, N, K)
        return BandedAffinity(W.weights * d_isqrt.unsqueeze(-1) * neighbour, W.grid_shape, W.window)
    return W * d_isqrt.unsqueeze(-1) * d_isqrt.unsqueeze(-2)


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


class _Operator:
    """``X -> A X`` for a dense ``(B, N, N)`` or banded operator (CSR values gathered once)."""

    def __init__(self, A: Tensor | BandedAffinity):
        if isinstance(A, BandedAffinity):
            self.batch, self.n = A.weights.shape[:2]
            self.banded = A
            _, _, take, transpose = _csr_pattern(*A.grid_shape, A.window, self.batch, A.weights.device)
            flat = A.weights.reshape(-1)
            self.values = flat[take]
            self.values_t = flat.detach()[transpose]
        else:
            self.batch, self.n = A.shape[0], A.shape[1]
            self.banded = None
            self.dense = A

    def __call__(self, X: Tensor) -> Tensor:
        if self.banded is None:
            return self.dense @ X
        A = self.banded
        X = X.expand(self.batch, self.n, X.shape[-1]).contiguous()
        return _BandedMatmul.apply(self.values, self.values_t, X, A.grid_shape, A.window)


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
        S: symmetric operator, dense ``(B, N, N)`` or banded.
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
    op = _Operator(S)
    ref = S.weights if isinstance(S, BandedAffinity) else S
    if not 0 < n_eigs <= op.n:
        raise ValueError(f"n_eigs must be in [1, N={op.n}], got {n_eigs}")
    if U0 is None:
        grid = S.grid_shape if isinstance(S, BandedAffinity) else None
        U0 = initial_subspace(op.n, n_eigs, grid, ref.dtype, ref.device)
    U = U0.to(ref.dtype).expand(op.batch, op.n, n_eigs)
    for _ in range(n_iter):
        Z = U
        for k in range(1, n_power + 1):
            Z = op(Z)
            if k % orth_every == 0 and k < n_power:
                Z, _ = torch.linalg.qr(Z)
        U, _ = torch.linalg.qr(Z)
    H = U.transpose(-1, -2) @ op(U)
    return U, 0.5 * (H + H.transpose(-1, -2))


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


def _pairwise_from_factors(A: Tensor, C: Tensor) -> Tensor:
    """:func:`_pairwise_from_gram` of ``M = A C^T`` (``A, C``: ``(B, N, Ne)``) without forming ``M``
    first: the ``-2 A C^T`` product is accumulated straight into the ``diag_i + diag_j`` buffer."""
    diag = (A * C).sum(-1)
    return torch.baddbmm(diag.unsqueeze(-1) + diag.unsqueeze(-2), A, C.transpose(-1, -2), alpha=-2).clamp_min(0)


def default_power(t: Tensor | float) -> int:
    """Multiplications per QR step used when none is given: ``round(2t)`` (paper §4.2), at least 1."""
    return max(1, int(round(2 * float(torch.as_tensor(t).detach()))))


class DiffusionResult(NamedTuple):
    """Output of :func:`diffusion`.

    Attributes:
        distance: ``(B, N, N)`` diffusion distance (Eq. 3), differentiable.
        eigenvalues: ``(B, Ne)`` eigenvalues of ``P`` (decreasing), no gradient
            (``Ne = N`` for the exact path).
        eigenvectors: ``(B, N, Ne)`` right eigenvectors ``psi_m`` of ``P`` scaled so
            that ``D_t(i, j) = sum_m lambda_m^(2t) (psi_m(i) - psi_m(j))^2``; no gradient.
    """

    distance: Tensor
    eigenvalues: Tensor
    eigenvectors: Tensor


def diffusion(
    W: Tensor | BandedAffinity,
    t: Tensor | float,
    n_eigs: int | None = None,
    n_iter: int = 2,
    *,
    n_power: int | None = None,
    solver: str = "subspace",
    spectral_dtype: torch.dtype | None = torch.float64,
) -> DiffusionResult:
    """Diffusion distance of paper Eq. (3) and the eigenpairs behind it.

    ``D`` is assembled as ``D_ij = M_ii + M_jj - 2 M_ij`` with
    ``M = C f(H) C^T``: ``C = sqrt(vol) D^-1/2 U`` and ``H = U^T S U`` for a subspace
    basis ``U`` (``U = I`` for the exact path), ``f(x) = (x^2)^t``.

    Precision: everything after the affinity (degrees, ``S``, the banded products,
    QR, Rayleigh-Ritz, ``f(H)`` and ``D``) runs in ``spectral_dtype``; the outputs
    come back in ``W``'s dtype and gradients reach ``W``'s values and ``t`` in their
    own dtypes. Why float64 by default: with nearly disconnected regions (near
    piecewise-constant features, where training leads) the top eigenvalues cluster
    at 1 within float32 rounding and ``M_ii + M_jj - 2 M_ij`` cancels, so float32
    loses most of the gradient (see the module docstring); the float64 spectral part
    costs little next to the network.

    Args:
        W: symmetric non-negative affinity, dense ``(N, N)`` / ``(B, N, N)``, or a
            :class:`BandedAffinity` (never densified by the subspace solver).
        t: diffusion time, a positive real (tensor for a learnable ``t``).
        n_eigs: ``None`` for the exact distance (full spectrum by ``eigh`` of the
            symmetric conjugate); ``Ne`` to keep the top ``Ne`` eigenpairs.
        n_iter: QR steps ``T`` of the accelerated simultaneous iteration.
        n_power: multiplications by ``S`` per QR step; default ``round(2t)``.
        solver: with ``n_eigs``: ``"subspace"`` (accelerated simultaneous iteration
            + Rayleigh-Ritz, differentiable, O(T n_power N K Ne)) or ``"eigh"``
            (exact spectrum truncated to the ``Ne`` of largest modulus, a reference).
        spectral_dtype: ``torch.float64`` (default), ``torch.float32``, or ``None``
            for ``W``'s own dtype (no cast).

    Returns:
        :class:`DiffusionResult` in ``W``'s dtype; tensors keep ``W``'s batching (no
        batch dimension for an unbatched dense ``W``).
    """
    _check_time(t)
    if solver not in ("subspace", "eigh"):
        raise ValueError(f"solver must be 'subspace' or 'eigh', got {solver!r}")
    _check_spectral_dtype(spectral_dtype)
    W, batched = _validate_affinity(W)
    out_dtype = _affinity_values(W).dtype
    W = _cast_affinity(W, spectral_dtype)
    d = degree(W)
    n = d.shape[-1]
    if n_eigs is not None and not 0 < n_eigs <= n:
        raise ValueError(f"n_eigs must be in [1, N={n}], got {n_eigs}")
    scale = (d.sum(-1, keepdim=True) / d).sqrt()  # sqrt(vol) D^-1/2 as a (B, N) vector
    S = symmetric_normalize(W)
    t = torch.as_tensor(t, dtype=d.dtype, device=d.device)

    if n_eigs is not None and solver == "subspace":
        U, H = subspace_iteration(S, n_eigs, n_iter=n_iter, n_power=default_power(t) if n_power is None else n_power)
        C = scale.unsqueeze(-1) * U
        fH, lam, Y = _spectral_power_eig(H, t)
        D = _pairwise_from_factors(C @ fH, C)
        psi = C.detach() @ Y
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
    D, lam, psi = D.to(out_dtype), lam.to(out_dtype), psi.to(out_dtype)
    if not batched:
        return DiffusionResult(D.squeeze(0), lam.squeeze(0), psi.squeeze(0))
    return DiffusionResult(D, lam, psi)


def diffusion_distance(
    W: Tensor | BandedAffinity,
    t: Tensor | float,
    n_eigs: int | None = None,
    n_iter: int = 2,
    *,
    n_power: int | None = None,
    solver: str = "subspace",
    spectral_dtype: torch.dtype | None = torch.float64,
) -> Tensor:
    """Diffusion distance of paper Eq. (3) between all pairs of nodes.

    See :func:`diffusion` for the arguments (``spectral_dtype``: the precision of
    everything after the affinity, float64 by default; the result has ``W``'s dtype).

    Returns:
        ``(N, N)`` or ``(B, N, N)`` distances (``W``'s batching and dtype), ``>= 0``,
        zero diagonal.
    """
    return diffusion(W, t, n_eigs, n_iter, n_power=n_power, solver=solver, spectral_dtype=spectral_dtype).distance


def diffusion_embedding(
    W: Tensor | BandedAffinity,
    n_eigs: int | None = None,
    n_iter: int = 2,
    *,
    n_power: int = 20,
    spectral_dtype: torch.dtype | None = torch.float64,
) -> tuple[Tensor, Tensor]:
    """Eigenpairs ``(lambda_m, psi_m)`` of ``P`` normalised for Eq. (4).

    ``D_t(i, j) = sum_m lambda_m^(2t) (psi_m(i) - psi_m(j))^2`` for every ``t``.
    With ``n_eigs`` the pairs come from the subspace iteration (``n_power``
    multiplications per QR step) + Rayleigh-Ritz. Not differentiable: train
    through :func:`diffusion_distance`, whose gradient stays finite for clustered
    eigenvalues. ``spectral_dtype`` as in :func:`diffusion` (computed in float64 by
    default, returned in ``W``'s dtype).

    Returns:
        eigenvalues ``(B, Ne)`` in decreasing order and eigenvectors ``(B, N, Ne)``
        (unbatched input gives unbatched output).
    """
    result = diffusion(W, n_power / 2, n_eigs, n_iter, n_power=n_power, spectral_dtype=spectral_dtype)
    return result.eigenvalues, result.eigenvectors


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
