"""Tests of ``ndd.spectral.sparsity``."""

import pytest
import torch

from ndd import spectral

from spectral_helpers import grid_features, piecewise_constant_features, rel

# Many tests run the paper's subspace iteration short of convergence on purpose; the warning
# that says so has its own test (test_spectral_subspace.py::test_unconverged_subspace_iteration_warns).
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:diffusion. the subspace iteration")]


def test_dense_banded_W_gives_the_banded_result_without_dense_products(monkeypatch):
    band = spectral.local_affinity(piecewise_constant_features(16, 18, regions=6, channels=3, seed=1), 1.0, window=5)
    dense = band.to_dense()
    assert spectral.sparsity._dense_pattern(dense) is not None  # at most 25 of 288 entries per row
    product = spectral.operators._Operator.__call__

    def no_dense_products(self, X):
        assert self.banded is not None, "a dense N x N product was used"
        return product(self, X)

    monkeypatch.setattr(spectral.operators._Operator, "__call__", no_dense_products)
    # recognised as its band: the same result as given banded, default start included
    from_band = spectral.diffusion(band, 5.0, n_eigs=12)
    from_dense = spectral.diffusion(dense, 5.0, n_eigs=12)
    assert rel(from_dense.distance, from_band.distance) < 1e-12
    assert torch.allclose(from_dense.eigenvalues, from_band.eigenvalues, atol=1e-14)
    reference = spectral.diffusion_distance(dense, 5.0, n_eigs=12, solver="eigh")
    # through its non-zeros as a CSR matrix when no grid is read (here: recognition off): the
    # same operator, so with the same start the same result, and from its default start (no
    # grid: Gaussian columns) the same distance to the solver's accuracy
    monkeypatch.setattr(spectral.sparsity, "_as_banded", lambda W: None)
    start = spectral.krylov_start(288, 8, (16, 18), torch.float64)
    from_csr = spectral.diffusion(dense, 5.0, n_eigs=12, U0=start)
    # (to rounding: in float64 the band's S is applied as two scalings around W's product, the
    # CSR operator holds S's entries; measured 1.7e-12)
    assert rel(from_csr.distance, spectral.diffusion(band, 5.0, n_eigs=12, U0=start).distance) < 1e-10
    assert rel(spectral.diffusion_distance(dense, 5.0, n_eigs=12), reference) < 1e-5  # measured 1.9e-6
    # the subspace solver through the non-zeros too
    assert rel(spectral.diffusion_distance(dense, 5.0, n_eigs=12, solver="subspace", n_power=40), reference) < 1e-4
    monkeypatch.undo()
    # batched, with a different pattern per graph (window 5 and 3): one band of the wider window,
    # each graph to the solver's accuracy (the batch shares one Krylov depth)
    narrow = spectral.local_affinity(piecewise_constant_features(16, 18, regions=6, channels=3, seed=2), 1.0, 3).to_dense()
    assert spectral.sparsity._as_banded(torch.cat([dense, narrow])).window == 5
    both = spectral.diffusion_distance(torch.cat([dense, narrow]), 5.0, n_eigs=12)
    for b, W in enumerate((dense, narrow)):
        assert rel(both[b], spectral.diffusion_distance(W, 5.0, n_eigs=12, solver="eigh")[0]) < 1e-4  # 1.2e-5


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("h, w, window, batch", [(16, 18, 5, 1), (9, 7, 3, 2), (12, 10, 7, 1), (5, 40, 9, 1),
                                                  (3, 30, 7, 1)])
def test_grid_affinity_given_dense_or_sparse_is_recognised_as_its_band(h, w, window, batch):
    """A local affinity on an h x w grid given as a dense or torch sparse tensor is its band, found
    exactly (grid, window and every entry), and gives the banded result; a window wider than the
    grid's height, a batch and a grid read column-major (the transpose: a w x h grid) included."""
    f = piecewise_constant_features(h, w, regions=4, channels=3, seed=h + w)
    band = spectral.local_affinity(f, 1.0, window=window)
    band = spectral.BandedAffinity(band.weights.expand(batch, -1, -1), band.grid_shape, window)
    dense = band.to_dense()
    found = spectral.sparsity._as_banded(dense)
    assert found.grid_shape == (h, w) and found.window == window and torch.equal(found.weights, band.weights)
    # read as a strided view of W's storage where it can be (not (3, 30, 7): the window reaches past
    # the first row), gathered otherwise: a non-contiguous W (the same matrix, stored column-major)
    assert torch.equal(spectral.sparsity._as_banded(dense.mT.contiguous().mT).weights, band.weights)
    offset = torch.cat([2 * dense, dense])[batch:]  # a storage offset
    assert torch.equal(spectral.sparsity._as_banded(offset).weights, band.weights)
    want = spectral.diffusion(band, 5.0, n_eigs=12)
    for W in (dense, dense[0]) if batch == 1 else (dense,):
        got = spectral.diffusion(W, 5.0, n_eigs=12)
        assert got.distance.shape == W.shape and rel(got.distance, want.distance.view(W.shape)) < 1e-12
    if batch == 1:
        for sparse in (dense[0].to_sparse(), dense[0].to_sparse_csr()):
            pattern, stored = spectral.sparsity._sparse_input(sparse)
            assert torch.equal(spectral.sparsity._sparse_as_banded(pattern, stored, h * w).weights, band.weights)
            assert rel(spectral.diffusion_distance(sparse, 5.0, n_eigs=12), want.distance[0]) < 1e-12
        # a CSR W storing every entry twice, in random shares: repeated entries add up (as COO's
        # coalesce() makes them), on the band path and on the exact one of a small graph alike
        csr = dense[0].to_sparse_csr()
        share = torch.rand(csr.values().shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        parts = torch.stack([share, 1 - share], -1).mul(csr.values()[:, None]).reshape(-1)
        twice = torch.sparse_csr_tensor(2 * csr.crow_indices(), csr.col_indices().repeat_interleave(2), parts, csr.shape,
                                        check_invariants=False)  # repeated columns, on purpose
        # (to rounding: the halves' sums differ in the last bit; measured up to 1.9e-11)
        assert rel(spectral.diffusion_distance(twice, 5.0, n_eigs=12), want.distance[0]) < 1e-10
    if h > window:  # column-major node order: the same graph on the transposed (w x h) grid
        order = torch.arange(h * w).view(h, w).T.reshape(-1)
        transposed = spectral.sparsity._as_banded(dense[:, order][:, :, order])
        assert transposed.grid_shape == (w, h) and transposed.window == window


def test_negative_zeros_do_not_fool_the_band_recognition():
    """The non-zeros are counted by their bits (``_count_set``), so ``-0.0`` counts as set: inside
    the windows it is counted on both sides of the check (still the band, same result), outside
    them it sends W to the general path, which treats it as the zero it is (same result again)."""
    band = spectral.local_affinity(piecewise_constant_features(16, 18, regions=6, channels=3, seed=1), 1.0, window=5)
    dense = band.to_dense()
    x = torch.tensor([[0.0, -0.0, 1.5], [-0.0, 0.0, 0.0]])
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        assert spectral.sparsity._count_set(x.to(dtype)) == 3 and spectral.sparsity._count_set(x.to(dtype).T) == 3
    reference = spectral.diffusion(band, 5.0, n_eigs=12).distance
    inside, outside = dense.clone(), dense.clone()
    inside[0, 0, 0] = -0.0 * inside[0, 0, 0]  # a window slot of node 0 (itself), now -0.0
    outside[0, 0, 200] = outside[0, 200, 0] = -0.0
    assert torch.equal(spectral.sparsity._as_banded(inside).weights.abs(), band.weights.abs().index_put((
        torch.tensor([0]), torch.tensor([0]), torch.tensor([12])), torch.tensor(0.0, dtype=torch.float64)))
    assert spectral.sparsity._as_banded(outside) is None
    for W in (inside, outside):
        assert torch.isfinite(spectral.diffusion(W, 5.0, n_eigs=12).distance).all()
    assert rel(spectral.diffusion(outside, 5.0, n_eigs=12).distance, reference) < spectral.KRYLOV_TOLERANCE


def test_affinities_off_a_grid_stay_csr_matrices():
    """Recognition is checked on every entry: one non-zero outside the windows, a 1-D band, a
    k-nearest-neighbour graph or a wide window of few entries are multiplied as CSR matrices,
    with the right result; a dense grid W that is not symmetric gets the one-line error."""
    band = spectral.local_affinity(piecewise_constant_features(16, 18, regions=6, channels=3, seed=1), 1.0, window=5)
    dense = band.to_dense()
    far = dense.clone()
    far[0, 0, 200] = far[0, 200, 0] = 0.3  # a long-range link, in rows the guess does not read
    chain = torch.diag(torch.ones(287, dtype=torch.float64), 1) * 0.5
    chain = chain + chain.T + torch.eye(288, dtype=torch.float64)
    points = torch.randn(288, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    dist = torch.cdist(points, points)
    knn = dist <= dist.topk(6, largest=False).values[:, -1:]
    knn = torch.where(knn | knn.T, torch.exp(-dist.square()), torch.zeros((), dtype=torch.float64))
    cross = torch.zeros(288, 288, dtype=torch.float64)  # the 4 axes of a 9x9 window: 17 of 81 entries
    for node in range(288):
        y, x = divmod(node, 18)
        for d in range(-4, 5):
            if 0 <= y + d < 16:
                cross[node, (y + d) * 18 + x] = 1.0
            if 0 <= x + d < 18:
                cross[node, y * 18 + x + d] = 1.0
    for W in (far[0], chain, knn, cross):
        assert spectral.sparsity._as_banded(W[None]) is None
        pattern, stored = spectral.sparsity._sparse_input(W.to_sparse())
        assert spectral.sparsity._sparse_as_banded(pattern, stored, 288) is None
        reference = spectral.diffusion_distance(W, 5.0, n_eigs=12, solver="eigh")
        assert rel(spectral.diffusion_distance(W, 5.0, n_eigs=12), reference) < spectral.KRYLOV_TOLERANCE
    assert spectral.sparsity._grid_from_offsets([0, 1, 17, 18, 19], 288) == (16, 18, 3)  # dy w + dx, |dx|, |dy| <= 1
    assert spectral.sparsity._grid_from_offsets([1, 2, 16, 17, 18, 19, 20, 34, 35, 36, 37, 38], 288) == (16, 18, 5)
    # |dx| = 2 next to the node, 1 a row away
    assert spectral.sparsity._grid_from_offsets([1, 2, 17, 18, 19], 288) is None
    lopsided = dense.clone()
    lopsided[0, 130, 131] *= 2  # inside the band, in no sampled row's mirror
    with pytest.raises(ValueError, match="symmetric"):
        spectral.diffusion_distance(lopsided, 5.0, n_eigs=12)


def test_sparse_dense_W_gradient_is_the_dense_one(monkeypatch):
    """A dense W is differentiated in full, zeros included, though multiplied through its non-zeros."""
    W = spectral.local_affinity(grid_features(9, 10, seed=5), 0.5, window=3).to_dense()[0]
    probe = torch.randn(90, 90, dtype=torch.float64, generator=torch.Generator().manual_seed(8))

    def grad():
        Wg = W.clone().requires_grad_()
        D = spectral.diffusion_distance(Wg, 3.0, n_eigs=6)
        return torch.autograd.grad((D * probe).sum(), Wg)[0]

    sparse = grad()
    monkeypatch.setattr(spectral.sparsity, "SPARSE_DENSITY", -1.0)  # every W multiplied densely
    assert spectral.sparsity._dense_pattern(W[None]) is None
    dense = grad()
    assert (sparse[W == 0] != 0).any()  # the entries outside the pattern get their gradient
    assert rel(sparse, dense) < 1e-9


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_sparse_W_is_used_as_given_with_the_dense_result_and_gradient(monkeypatch):
    """A torch sparse W (COO or CSR) gives the dense W's D, exactly as through its detected
    non-zeros, without reading N x N entries; its gradient is the dense one on the stored entries."""
    dense = spectral.local_affinity(piecewise_constant_features(16, 18, regions=6, channels=3, seed=1), 1.0,
                                    window=5).to_dense()[0]
    monkeypatch.setattr(spectral.sparsity, "_dense_pattern", lambda *a, **k: pytest.fail("an N x N scan for non-zeros"))
    for sparse in (dense.to_sparse(), dense.to_sparse_csr()):
        for kw in ({"n_eigs": 12}, {"n_eigs": 12, "solver": "subspace", "n_power": 40}, {}):
            got = spectral.diffusion(sparse, 5.0, **kw)
            monkeypatch.undo()
            want = spectral.diffusion(dense, 5.0, **kw)
            monkeypatch.setattr(spectral.sparsity, "_dense_pattern", lambda *a, **k: pytest.fail("an N x N scan"))
            assert got.distance.shape == (288, 288) and got.distance.dtype == torch.float64
            assert rel(got.distance, want.distance) < 1e-12, (sparse.layout, kw)
    as_float32 = spectral.diffusion_distance(dense.float().to_sparse(), 5.0, n_eigs=12)
    assert as_float32.dtype == torch.float32  # the caller's dtype back, float64 inside
    monkeypatch.undo()
    probe = torch.randn(288, 288, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    Ws = dense.to_sparse().requires_grad_()  # a grid affinity: solved as its band, gradient included
    (spectral.diffusion_distance(Ws, 5.0, n_eigs=12) * probe).sum().backward()
    grad = Ws.grad.coalesce()
    rows, cols = grad.indices()
    weights = spectral.sparsity._as_banded(dense[None]).weights.clone().requires_grad_()
    (spectral.diffusion_distance(spectral.BandedAffinity(weights, (16, 18), 5), 5.0, n_eigs=12) * probe).sum().backward()
    slots = rows * 25 + (cols // 18 - rows // 18 + 2) * 5 + (cols % 18 - rows % 18 + 2)
    assert rel(grad.values(), weights.grad.reshape(-1)[slots]) < 1e-10
    # and the dense W's gradient (a dense W that needs one stays dense: its zeros get theirs), on
    # the stored entries: W is symmetric, so only W_ij + W_ji is defined (each method splits it
    # between the two its own way; measured 7e-5 apart for the sum, 0.16 for the parts)
    Wd = dense.clone().requires_grad_()
    (spectral.diffusion_distance(Wd, 5.0, n_eigs=12) * probe).sum().backward()
    as_dense = torch.zeros_like(dense).index_put_((rows, cols), grad.values())
    assert rel((as_dense + as_dense.T)[rows, cols], (Wd.grad + Wd.grad.T)[rows, cols]) < 1e-3


@pytest.mark.parametrize("make, message", [
    (lambda W: (W + torch.diag(torch.arange(1.0, 4.0)).roll(1, 0)).to_sparse(), "symmetric"),
    (lambda W: (-W).to_sparse(), "negative"),
    (lambda W: (W * torch.tensor(float("nan"))).to_sparse(), "NaN"),
    (lambda W: torch.zeros(3, 3).to_sparse(), "positive degree"),
    (lambda W: torch.stack([W, W]).to_sparse(), r"square \(N, N\)"),
])
def test_bad_sparse_W_gets_one_line(make, message):
    W = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 1.0]])
    with pytest.raises(ValueError, match=message):
        spectral.diffusion_distance(make(W), 2.0, n_eigs=2)
