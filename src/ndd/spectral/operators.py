"""Products by ``S``: a banded affinity as CSR values with a hand-written backward
(:class:`_BandedMatmul`), a dense ``W``'s non-zeros (:class:`_CSRMatmul`), and the operator objects
the solvers take (:class:`_Operator`, :class:`_SparseOperator`).
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import torch
from torch import Tensor

from .affinity import BandedAffinity, _neighbour_index, band_inner
from .kernels import csr_mm


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
    a constant helper) and ``dA`` is a band of inner products. ``matrix``: ``values`` as the
    CSR tensor (built once per operator, :meth:`_Operator.matrix`).
    """

    @staticmethod
    def forward(ctx, values: Tensor, values_t: Tensor, X: Tensor, grid: tuple[int, int], window: int,
                matrix: Tensor) -> Tensor:
        batch, n, m = X.shape
        Y = csr_mm(matrix, X.reshape(batch * n, m))
        ctx.save_for_backward(values_t, X)
        ctx.grid, ctx.window = grid, window
        return Y.reshape(batch, n, m)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, Tensor | None, None, None, None]:
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
            grad_X = csr_mm(At, grad.reshape(batch * n, m)).reshape(batch, n, m)
        return grad_values, None, grad_X, None, None, None


class _DensePattern(NamedTuple):
    """Non-zeros of a dense ``(B, N, N)`` affinity, as a block-diagonal ``(B N, B N)`` CSR matrix.

    Attributes:
        index: ``(nnz,)`` positions in ``W.reshape(-1)``, row-major (CSR order).
        transpose: ``(nnz,)`` positions of the mirrored entries ``W[b, j, i]`` (``None`` for a torch
            sparse ``W``, whose symmetry is checked without them).
        rows, cols: ``(nnz,)`` int64 row and column in the block-diagonal matrix.
        offsets: ``(B N + 1,)`` int64 row starts; ``crow``, ``col``: the int32 CSR structure.
    """

    index: Tensor
    transpose: Tensor | None
    rows: Tensor
    cols: Tensor
    offsets: Tensor
    crow: Tensor
    col: Tensor


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
        Y = csr_mm(op.matrix(), X.reshape(batch * n, m))
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
            grad_X = csr_mm(_csr(values_t, crow_t, col_t, batch * n), grad.reshape(batch * n, m))
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
        self._matrix: Tensor | None = None

    def matrix(self) -> Tensor:
        """``A`` as a torch CSR tensor of the (detached) values, built on first use: building it
        costs ~50 us (mostly the warning filter), once per operator instead of once per product."""
        if self._matrix is None:
            p = self.pattern
            self._matrix = _csr(self.values.detach(), p.crow, p.col, self.batch * self.n)
        return self._matrix

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
        batch, n, m = self.batch, self.n, X.shape[-1]
        X = X.expand(batch, n, m).contiguous()
        if torch.is_grad_enabled() and (X.requires_grad or self.values.requires_grad
                                        or (self.dense is not None and self.dense.requires_grad)):
            return _CSRMatmul.apply(self.values, self.dense, X, self)
        return csr_mm(self.matrix(), X.view(batch * n, m)).view(batch, n, m)  # no autograd node to build


class _Operator:
    """``X -> A X`` for a dense ``(B, N, N)`` or banded operator (CSR values gathered once).

    With ``scale`` ``(B, N)`` (banded ``A`` only) the operator is ``diag(scale) A diag(scale)``:
    ``S = D^-1/2 W D^-1/2`` from ``W``'s band and ``d^-1/2``, applied as two row scalings around
    the product by ``W`` and never formed, in ``scale``'s dtype. Measured (N = 2501, K = 289, one
    thread, float64 from a float32 ``W``): the product costs the same (1.72 against 1.74 ms) and
    preparing it 0.73 ms against 2.16 for building ``S``'s band, its CSR values and ``(S^2)_ii``.
    """

    def __init__(self, A: Tensor | BandedAffinity, scale: Tensor | None = None):
        self.scale = scale
        if isinstance(A, BandedAffinity):
            self.batch, self.n = A.weights.shape[:2]
            self.banded = A
            self.dtype = A.weights.dtype if scale is None else scale.dtype
            _, _, take, self._transpose_take = _csr_pattern(*A.grid_shape, A.window, self.batch, A.weights.device)
            given = A.weights.reshape(-1).index_select(0, take)  # ~2x faster than [take]
            self.values = given.to(self.dtype)
            self._given_values = given  # in W's dtype, for squared_row_norms
            self._values_t: Tensor | None = None
            self._matrix: Tensor | None = None
        else:
            if scale is not None:
                raise ValueError("a scaled operator needs a banded A")
            self.batch, self.n = A.shape[0], A.shape[1]
            self.banded = None
            self.dense = A

    def to_dense(self) -> Tensor:
        """``A`` as a dense ``(B, N, N)`` tensor (differentiable)."""
        if self.banded is None:
            return self.dense
        if self.scale is None:
            return self.banded.to_dense()
        s = self.scale
        return s.unsqueeze(-1) * self.banded.to_dense().to(self.dtype) * s.unsqueeze(-2)

    def squared_row_norms(self) -> Tensor:
        """``(A^2)_ii = sum_j A_ij^2`` ``(B, N)`` of a symmetric ``A``, see :func:`_spike_columns`.

        With a ``scale``, in ``W``'s dtype: only their ranking is used (0.42 against 0.58 ms for a
        float32 ``W`` and a float64 scale, N = 2501, K = 289; the same top nodes there)."""
        if self.scale is not None:  # s_i^2 sum_j W_ij^2 s_j^2: one CSR product by the squared entries
            values = self._given_values.detach()
            s2 = self.scale.detach().square().to(values.dtype)
            crow, col, _, _ = _csr_pattern(*self.banded.grid_shape, self.banded.window, self.batch, s2.device)
            sums = torch.mv(_csr(values.square(), crow, col, self.batch * self.n), s2.reshape(-1))
            return s2 * sums.view(self.batch, self.n)  # (mv: 0.27 ms, mm on one column 0.59)
        entries = self.dense if self.banded is None else self.banded.weights
        # no squared copy of the entries (a fresh N x K or N x N tensor: page faults)
        return torch.linalg.vector_norm(entries.detach(), dim=-1).square()

    def matrix(self) -> Tensor:
        """A banded ``A`` as a torch CSR tensor of the (detached) values, built on first use: ~50 us
        (mostly the warning filter) once per operator instead of once per product."""
        if self._matrix is None:
            crow, col, _, _ = _csr_pattern(*self.banded.grid_shape, self.banded.window, self.batch, self.values.device)
            self._matrix = _csr(self.values.detach(), crow, col, self.batch * self.n)
        return self._matrix

    def __call__(self, X: Tensor) -> Tensor:
        if self.banded is None:
            return self.dense @ X
        A = self.banded
        X = X.expand(self.batch, self.n, X.shape[-1])
        X = (X * self.scale.unsqueeze(-1) if self.scale is not None else X).contiguous()
        if torch.is_grad_enabled() and (X.requires_grad or self.values.requires_grad):
            if self._values_t is None:  # the transpose's values: only a backward needs them
                self._values_t = A.weights.detach().reshape(-1).index_select(0, self._transpose_take).to(self.dtype)
            Y = _BandedMatmul.apply(self.values, self._values_t, X, A.grid_shape, A.window, self.matrix())
        else:  # no autograd node to build (~40 us a product)
            batch, n, m = X.shape
            Y = csr_mm(self.matrix(), X.view(batch * n, m)).view(batch, n, m)
        return Y * self.scale.unsqueeze(-1) if self.scale is not None else Y


def apply_operator(A: Tensor | BandedAffinity, X: Tensor) -> Tensor:
    """``A X`` for ``A`` dense ``(B, N, N)`` or banded, ``X`` of shape ``(B, N, m)``."""
    return _Operator(A)(X)
