"""ndd's compiled CPU kernel (``_kernels.c``) and where it runs: :func:`csr_mm`, every product by
``S`` in :mod:`ndd.spectral`.

``pip install`` builds ``ndd/spectral/_kernels.c`` where it finds a C compiler (``setup.py``;
without one the install still succeeds and ``torch.mm`` does every product, to rounding the
same). The kernel keeps a row's sums for up to 16 columns in vector registers (AVX2 + FMA where
the CPU has them, else a portable loop) and reads each stored entry once: on the README's
benchmark graph (N = 2501, 603,125 stored entries, an AVX-512 EPYC, one thread) 0.48 against
MKL's 1.05 ms for 12 float64 columns, 0.44 against 0.54 ms in float32 (docs/eigensolver.md, "A
compiled CSR product"). It is single-threaded, so it runs on the CPU when torch runs one thread
(``ndd segment --threads 1``, the benchmarks, each of several worker processes), with no gradient
to record; otherwise ``torch.mm`` (MKL's product is threaded).
"""

from __future__ import annotations

import torch
from torch import Tensor

try:  # absent where pip found no C compiler: torch.mm does every product then
    from . import _kernels
except ImportError:  # pragma: no cover - depends on the install
    _kernels = None

#: Whether the compiled kernel is installed.
COMPILED = _kernels is not None
#: Its AVX2 loops where the CPU has them (False: the portable loop everywhere; for tests).
_VECTOR_LOOPS = True


def _kernel_applies(A: Tensor, X: Tensor) -> bool:
    """Compiled, one torch thread, CPU tensors of one dtype (float32 or float64), int32 indices
    (what ndd builds), and nothing to record for autograd."""
    return (COMPILED and torch.get_num_threads() == 1 and A.device.type == "cpu" and X.device.type == "cpu"
            and X.dtype in (torch.float32, torch.float64) and A.dtype == X.dtype
            and A.crow_indices().dtype == torch.int32 and A.col_indices().dtype == torch.int32
            and not (torch.is_grad_enabled() and (A.requires_grad or X.requires_grad)))


def csr_mm(A: Tensor, X: Tensor) -> Tensor:
    """``A X`` for a sparse CSR ``A`` ``(n, k)`` and a dense ``X`` ``(k, m)``: ``(n, m)``.

    The same values as ``torch.mm(A, X)`` up to the order of the sums (the kernel adds a row's
    even and odd entries apart, then together), so to rounding.

    Example:
        >>> A = torch.tensor([[2.0, 0.0], [1.0, 3.0]]).to_sparse_csr()
        >>> csr_mm(A, torch.ones(2, 3)).tolist()
        [[2.0, 2.0, 2.0], [4.0, 4.0, 4.0]]
    """
    if A.layout != torch.sparse_csr or A.dim() != 2 or X.dim() != 2 or A.shape[1] != X.shape[0]:
        raise ValueError(f"csr_mm needs a sparse CSR (n, k) A and a dense (k, m) X, got {A.layout} "
                         f"{tuple(A.shape)} and {tuple(X.shape)}")
    X = X.contiguous()  # MKL's product and the kernel both read rows
    if not _kernel_applies(A, X):
        return torch.mm(A, X)
    # held in names while the kernel runs: a temporary's memory could be freed under it
    crow, col, values = A.crow_indices().contiguous(), A.col_indices().contiguous(), A.values().contiguous()
    Y = torch.empty(A.shape[0], X.shape[1], dtype=X.dtype)
    if Y.numel():
        _kernels.csrmm(A.shape[0], X.shape[1], crow.data_ptr(), col.data_ptr(), values.data_ptr(), X.data_ptr(),
                       Y.data_ptr(), X.dtype == torch.float64, _VECTOR_LOOPS)
    return Y
