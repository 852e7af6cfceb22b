"""Affinities on an image grid and their checks: the banded storage (:class:`BandedAffinity`), the
local feature affinity of paper §4.1, intervening-contour affinities, degrees and the symmetric
conjugate ``S = D^-1/2 W D^-1/2``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:  # an annotation only: operators imports this module
    from .operators import _DensePattern


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


def _affinity_values(W: Tensor | BandedAffinity) -> Tensor:
    return W.weights if isinstance(W, BandedAffinity) else W


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


#: The integer type of each float type's width: floats compared or counted by their bits, as
#: NumPy's integer loops run several times faster than torch's float ones on the CPU.
_SAME_WIDTH_INT = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
                  torch.bfloat16: torch.int16}


def _bits(values: Tensor) -> np.ndarray | None:
    """A CPU float tensor's bits as a NumPy integer array of the same width (no copy when it is
    contiguous); ``None`` elsewhere (another device or dtype)."""
    if values.device.type != "cpu" or values.dtype not in _SAME_WIDTH_INT:
        return None
    return values.detach().contiguous().view(_SAME_WIDTH_INT[values.dtype]).numpy()


def _same_bits(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` (same shape) hold the same bits. On the CPU compared as integers
    by NumPy: 0.11 ms against ``torch.equal``'s 0.53 ms for the 723k entries of the README's
    band (float32, one thread). Equal bits are equal values but for NaN, which the callers have
    ruled out; ``-0.0`` against ``0.0`` differ in bits (the tolerance test then decides)."""
    a_bits, b_bits = (_bits(a), _bits(b)) if a.dtype == b.dtype else (None, None)
    if a_bits is None or b_bits is None:
        return torch.equal(a, b)
    return bool(np.array_equal(a_bits, b_bits))


def _close(a: Tensor, b: Tensor) -> bool:
    """Whether the entries ``a`` and their mirrors ``b`` (no NaN: checked before) agree, as the
    symmetry checks require."""
    if _same_bits(a, b):  # the common case, several times faster than the tolerance test (which allocates)
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
    return _normalized_by(W, degree(W, dtype))


def _normalized_by(W: Tensor | BandedAffinity, d: Tensor) -> Tensor | BandedAffinity:
    """:func:`symmetric_normalize` with the degrees ``d`` ``(B, N)`` (or ``(N,)``) already summed,
    in the dtype ``S`` is wanted in (:func:`diffusion` needs them too: summed once)."""
    d_isqrt = d.rsqrt()
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
