import shutil

import pytest
import torch

from ndd import spectral
from ndd.spectral import kernels
from ndd.spectral.kernels import csr_mm

from spectral_helpers import grid_features

pytestmark = [pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta"),
              pytest.mark.filterwarnings("ignore:Sparse invariant checks are implicitly disabled")]
needs_kernel = pytest.mark.skipif(not kernels.COMPILED, reason="ndd.spectral._kernels was not built (no C compiler)")


def test_the_kernel_is_built_where_a_c_compiler_is():
    # pip builds it optionally (setup.py): a failed build would only have printed a warning
    if shutil.which("cc") or shutil.which("gcc"):
        assert kernels.COMPILED


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the compiled kernel's calls (the products it took over from torch.mm)."""
    calls = []
    kernel = kernels._kernels

    class Spy:
        @staticmethod
        def csrmm(*args):
            calls.append(args[:2])
            return kernel.csrmm(*args)

    monkeypatch.setattr(kernels, "_kernels", Spy)
    return calls


def random_csr(n: int, k: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """A sparse CSR matrix with int32 indices (as ndd builds them), rows of every length: empty,
    one entry, odd and even counts, and a full one."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(n, k, generator=g, dtype=dtype) * (torch.rand(n, k, generator=g) < 0.4)
    dense[0] = 0
    dense[1] = 0
    dense[1, k // 2] = 1.5
    dense[2] = torch.randn(k, generator=g, dtype=dtype)
    A = dense.to_sparse_csr()
    return torch.sparse_csr_tensor(A.crow_indices().int(), A.col_indices().int(), A.values(), A.shape)


@needs_kernel
@pytest.mark.parametrize("vector", [True, False], ids=["avx2-loops", "portable-loop"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_equals_the_dense_product_for_every_column_count(one_thread, kernel_calls, monkeypatch, dtype, vector):
    # widths 1..40 reach every split of the columns (16, 12, 8, 4, 2, 1 at a time), in the AVX2
    # loops (where the CPU has them) and in the portable one
    monkeypatch.setattr(kernels, "_VECTOR_LOOPS", vector)
    A = random_csr(37, 29, dtype)
    dense = A.to_dense().double()
    for m in range(1, 41):
        X = torch.randn(29, m, dtype=dtype, generator=torch.Generator().manual_seed(m))
        Y = csr_mm(A, X)
        assert Y.dtype == dtype and Y.shape == (37, m)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(Y.double(), dense @ X.double(), rtol=tol, atol=tol)
    assert [c[1] for c in kernel_calls] == list(range(1, 41))  # every product ran in the kernel


@needs_kernel
def test_kernel_takes_a_non_contiguous_x_and_agrees_with_torch_mm(one_thread, kernel_calls):
    A = random_csr(50, 50, torch.float64, seed=3)
    X = torch.randn(12, 50, dtype=torch.float64).T  # a transposed view
    torch.testing.assert_close(csr_mm(A, X), torch.mm(A, X.contiguous()), rtol=1e-13, atol=1e-13)
    assert len(kernel_calls) == 1


@needs_kernel
def test_torch_mm_runs_with_more_threads_another_index_type_or_a_gradient(kernel_calls):
    A = random_csr(20, 20, torch.float64)
    X = torch.randn(20, 4, dtype=torch.float64)
    expected = A.to_dense() @ X
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # MKL's product is threaded, the kernel is not
        torch.testing.assert_close(csr_mm(A, X), expected)
        torch.set_num_threads(1)
        int64 = torch.sparse_csr_tensor(A.crow_indices().long(), A.col_indices().long(), A.values(), A.shape)
        torch.testing.assert_close(csr_mm(int64, X), expected)
        with pytest.raises(RuntimeError):  # mixed dtypes: torch.mm's error, no kernel reading the wrong width
            csr_mm(A, X.float())
        Xg = X.clone().requires_grad_()
        csr_mm(A, Xg).sum().backward()  # autograd through torch.mm
        torch.testing.assert_close(Xg.grad, A.to_dense().sum(0).unsqueeze(-1).expand(20, 4))
    finally:
        torch.set_num_threads(threads)
    assert kernel_calls == []


def test_csr_mm_rejects_a_dense_a_or_mismatched_shapes():
    with pytest.raises(ValueError, match="sparse CSR"):
        csr_mm(torch.eye(3), torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"\(4, 2\)"):
        csr_mm(torch.eye(3).to_sparse_csr(), torch.ones(4, 2))


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_diffusion_distance_is_the_same_through_the_kernel(one_thread, kernel_calls, monkeypatch, dtype):
    # banded and dense W (the band recognised, and a dense W that is not banded), batched
    f = torch.cat([grid_features(16, 20, seed=s) for s in range(2)])  # 320 nodes: a Krylov space, not eigh
    W = spectral.local_affinity(f, 0.5, window=5)
    dense = W.to_dense()
    scattered = dense.clone()
    scattered[:, 0, -1] = scattered[:, -1, 0] = 0.3  # off the band: multiplied through its non-zeros
    results = {}
    for compiled in (True, False):
        monkeypatch.setattr(kernels, "COMPILED", compiled)
        results[compiled] = [spectral.diffusion_distance(w, 3.0, 8, spectral_dtype=dtype) for w in (W, dense, scattered)]
    assert len(kernel_calls) > 0
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    for with_kernel, with_mm in zip(results[True], results[False]):
        torch.testing.assert_close(with_kernel, with_mm, rtol=tol, atol=tol * float(with_mm.abs().max()))


@needs_kernel
def test_gradients_through_the_kernel(one_thread, kernel_calls):
    # the banded product's forward and hand-written backward (dX = A^T dY) both run in the kernel
    f = grid_features(4, 5, seed=1).double()
    W = spectral.local_affinity(f, 0.5, window=3)
    weights = W.weights.detach().requires_grad_()
    X = torch.randn(1, 20, 3, dtype=torch.float64, requires_grad=True)

    def product(w, x):
        return spectral.apply_operator(spectral.BandedAffinity(w, W.grid_shape, W.window), x)

    assert torch.autograd.gradcheck(product, (weights, X))
    assert len(kernel_calls) > 0
