"""Tests of ``ndd.spectral.krylov``."""

import math
import warnings

import pytest
import torch

from ndd import spectral

from mini_data import MINI, needs_mini
from spectral_helpers import grid_features, piecewise_constant_features, random_graph, rel

# Many tests run the paper's subspace iteration short of convergence on purpose; the warning
# that says so has its own test (test_spectral_subspace.py::test_unconverged_subspace_iteration_warns).
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:diffusion. the subspace iteration")]


def community_graph(n: int, communities: int, p_in: float, p_out: float, seed: int = 0) -> torch.Tensor:
    """A random graph with communities (dense for large p): ``(n, n)`` float64, self-loops."""
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, communities, (n,), generator=g)
    p = torch.where(label[:, None] == label[None, :], p_in, p_out).double()
    A = torch.rand(n, n, generator=g, dtype=torch.float64) * (torch.rand(n, n, generator=g, dtype=torch.float64) < p)
    return 0.5 * (A + A.T) + torch.eye(n, dtype=torch.float64)


def isolated_node_graph(nodes: tuple[int, ...], eps: float = 6e-4) -> torch.Tensor:
    """A 30x40 grid affinity (window 9) whose ``nodes`` keep their self-weight but only ``eps``
    of their links: each carries an eigenvector of its own among the leading ones; dense."""
    W = spectral.local_affinity(grid_features(30, 40, c=3, seed=0), 0.1, window=9).to_dense()[0]
    for i in nodes:
        keep = W[i, i].clone()
        W[i, :] *= eps
        W[:, i] *= eps
        W[i, i] = keep
    return W


def region_graph(window: int) -> spectral.BandedAffinity:
    """A 40x40 grid cut into 20 regions of 10x8 cells with no link between them (weights that
    underflow to 0): eigenvalue 1 twenty times."""
    ry, rx = torch.meshgrid(torch.arange(40) // 10, torch.arange(40) // 8, indexing="ij")
    noise = torch.randn(40, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    features = torch.stack([(ry * 5 + rx).double() * 100.0, 0.3 * noise])[None]
    return spectral.local_affinity(features, 1.0, window=window)


def test_krylov_is_the_default_and_paper_solver_stays_available(solver_calls):
    W = spectral.local_affinity(grid_features(16, 18, seed=2), 0.5, window=5)
    assert spectral.krylov_size(8, 288) == (8, spectral.KRYLOV_FIRST_DEPTH)
    spectral.diffusion(W, 4.0, n_eigs=8)
    krylov = solver_calls["krylov"]
    assert krylov >= 1 and solver_calls["subspace"] == 0
    spectral.diffusion(W, 4.0, n_eigs=8, n_iter=3, n_power=5)  # the paper's knobs select its procedure
    spectral.diffusion(W, 4.0, n_eigs=8, solver="subspace")
    assert solver_calls == {"krylov": krylov, "subspace": 2}
    with pytest.raises(ValueError, match="solver"):
        spectral.diffusion(W, 4.0, n_eigs=8, solver="lanczos")
    with pytest.raises(ValueError, match="block_size"):
        spectral.diffusion(W, 4.0, n_eigs=8, block_size=2, n_blocks=3)  # a 6-dimensional space for 8 pairs


def test_second_gram_schmidt_pass_subtracts_only_what_is_above_rounding(monkeypatch):
    """Where the loss of orthogonality is measured (float32, restarted runs; here float64 with the
    estimate of the next test turned off), the pass after each Lanczos step skips subtracting
    coefficients below eps^0.8 |z| without a gradient: the basis stays orthonormal and H = Q^T S Q
    to 1e-12, and the Ritz values and D are those of the always-subtracting run; with a gradient
    it always subtracts."""
    monkeypatch.setattr(spectral.krylov._OrthogonalityEstimate, "resolves", staticmethod(lambda n, dtype: False))
    W = spectral.local_affinity(piecewise_constant_features(16, 18, regions=6, channels=3, seed=2), 1.0, window=3)
    S = spectral.symmetric_normalize(W)
    op = spectral.operators._Operator(S)
    start = spectral.krylov_start(288, 8, (16, 18), torch.float64)[None]
    decide = spectral.krylov._needs_second_pass
    calls = []
    monkeypatch.setattr(spectral.krylov, "_needs_second_pass", lambda c, z: calls.append(decide(c, z)) or calls[-1])
    with torch.no_grad():
        Q, H, _, _ = spectral.krylov._block_krylov(op, start, 12)
        D = spectral.diffusion_distance(W, 5.0, n_eigs=12)
    assert calls.count(False) >= 10  # measured: all but the first step of each space skip
    assert torch.allclose(Q.mT @ Q, torch.eye(96, dtype=Q.dtype), atol=1e-12)
    assert torch.allclose(H, Q.mT @ spectral.apply_operator(S, Q), atol=1e-12)
    monkeypatch.setattr(spectral.krylov, "_needs_second_pass", lambda c, z: True)
    with torch.no_grad():
        _, H_always, _, _ = spectral.krylov._block_krylov(op, start, 12)
        D_always = spectral.diffusion_distance(W, 5.0, n_eigs=12)
    assert torch.allclose(torch.linalg.eigvalsh(H), torch.linalg.eigvalsh(H_always), atol=1e-12)  # 6e-15
    assert rel(D, D_always) < 1e-10
    # with a gradient, every step subtracts (the skip would change the gradient)
    calls.clear()
    monkeypatch.setattr(spectral.krylov, "_needs_second_pass", lambda c, z: calls.append(decide(c, z)) or calls[-1])
    weights = W.weights.clone().requires_grad_(True)
    banded = spectral.BandedAffinity(weights, W.grid_shape, W.window)
    spectral.diffusion_distance(banded, 5.0, n_eigs=12).sum().backward()
    assert calls and all(calls)
    coefficients = torch.full((1, 2, 5), 1e-14, dtype=torch.float64)
    block = torch.ones(1, 2, 7, dtype=torch.float64)
    assert not decide(coefficients, block) and decide(coefficients * 1e3, block)
    assert decide(coefficients.float() * 1e9, block.float()) and not decide(coefficients.float() * 1e7, block.float())


def _block_krylov_with_estimates(op, start, blocks, monkeypatch):
    """``_block_krylov`` without a gradient, and the largest estimated ``|Q_k^T Q_(j+1)|`` of each step."""
    estimates = []
    step = spectral.krylov._OrthogonalityEstimate.step

    def record(self, j, c_near, R, loss=0.0):
        omega = step(self, j, c_near, R, loss)
        estimates.append(float(omega.abs().max()) if omega.numel() else 0.0)
        return omega

    monkeypatch.setattr(spectral.krylov._OrthogonalityEstimate, "step", record)
    with torch.no_grad():
        Q, H, tail, _ = spectral.krylov._block_krylov(op, start, blocks)
    monkeypatch.undo()
    return Q, H, estimates


def _measured_loss(Q: torch.Tensor, b: int) -> list[float]:
    """``max |Q_k^T Q_(j+1)|`` over ``k <= j - 2`` for each step ``j`` of a Krylov basis of ``b``-column blocks."""
    gram = (Q.mT @ Q)[0]
    return [float(gram[(j + 1) * b:(j + 2) * b, : (j - 1) * b].abs().max()) if j >= 2 else 0.0
            for j in range(Q.shape[-1] // b - 1)]


def test_float64_runs_estimate_their_loss_of_orthogonality(monkeypatch):
    """Without a gradient a float64 run estimates ``Q_k^T Q_j`` from H alone (Simon's omega
    recurrence) and reorthogonalises a block against all earlier ones only where the estimate
    passes KRYLOV_ORTHOGONALITY. Left alone, the loss grows about 4x per block on this graph and
    the estimate stays above it (measured: 10-40x above); with the threshold the basis stays
    orthogonal to that level, H = Q^T S Q to it, and D is the always-reorthogonalising run's."""
    W = spectral.local_affinity(piecewise_constant_features(24, 30, regions=6, channels=3, seed=2), 1.0, window=5)
    S = spectral.symmetric_normalize(W)
    op = spectral.operators._Operator(S)
    start = spectral.krylov_start(720, 8, (24, 30), torch.float64)[None]
    assert spectral.krylov._OrthogonalityEstimate.resolves(720, torch.float64)
    assert not spectral.krylov._OrthogonalityEstimate.resolves(720, torch.float32)
    monkeypatch.setattr(spectral.krylov, "KRYLOV_ORTHOGONALITY", math.inf)  # never reorthogonalise
    Q, _, estimates = _block_krylov_with_estimates(op, start, 20, monkeypatch)
    measured = _measured_loss(Q, 8)
    assert max(measured) > 1e-6  # measured 1.0e-5: the loss does grow
    assert all(e >= m for e, m in zip(estimates, measured) if m > 1e-12), list(zip(estimates, measured))
    # with the threshold: reorthogonalised where needed only
    passes = []
    full_pass = spectral.krylov._OrthogonalityEstimate.exceeds
    monkeypatch.setattr(spectral.krylov._OrthogonalityEstimate, "exceeds",
                        lambda self, omega: passes.append(full_pass(self, omega)) or passes[-1])
    with torch.no_grad():
        Q, H, tail, _ = spectral.krylov._block_krylov(op, start, 20)
    level = spectral.krylov.KRYLOV_ORTHOGONALITY
    assert 0 < sum(passes) < len(passes) / 2  # measured 3 of 19
    # measured 3.4e-10 for both
    assert torch.allclose(Q.mT @ Q, torch.eye(160, dtype=Q.dtype), atol=level)
    assert torch.allclose(H, Q.mT @ spectral.apply_operator(S, Q), atol=level)
    monkeypatch.setattr(spectral.krylov, "KRYLOV_ORTHOGONALITY", 0.0)  # every block against all earlier ones
    with torch.no_grad():
        _, H_always, tail_always, _ = spectral.krylov._block_krylov(op, start, 20)
    assert torch.allclose(torch.linalg.eigvalsh(H), torch.linalg.eigvalsh(H_always), atol=1e-12)  # 6e-15
    monkeypatch.undo()
    D = spectral.diffusion_distance(W, 5.0, n_eigs=24)
    monkeypatch.setattr(spectral.krylov, "KRYLOV_ORTHOGONALITY", 0.0)
    assert rel(D, spectral.diffusion_distance(W, 5.0, n_eigs=24)) < 1e-9  # measured 8e-11


def test_cholesky_qr_factors_or_declines():
    """Cholesky QR gives an orthonormal Q and upper triangular R with Q R = Z, reports a loss of
    orthogonality above the measured one, and declines a block it cannot factor well."""
    g = torch.Generator().manual_seed(0)
    Zt = torch.randn(2, 6, 500, dtype=torch.float64, generator=g)
    Qt, R, loss = spectral.krylov._cholesky_qr(Zt, 1e-8)
    assert torch.allclose(R, R.triu()) and torch.allclose(R.mT @ Qt, Zt, atol=1e-12)
    measured = float((Qt @ Qt.mT - torch.eye(6, dtype=Zt.dtype)).abs().max())
    assert measured <= loss < 1e-13
    # columns 1e-5 apart in direction: cond(R) ~ 1e5, so eps cond^2 ~ 1e-6 is declined
    near = Zt.clone()
    near[:, 1] = Zt[:, 0] + 1e-5 * Zt[:, 1]
    assert spectral.krylov._cholesky_qr(near, 1e-8) is None
    assert spectral.krylov._cholesky_qr(near, 1.0) is not None
    assert spectral.krylov._cholesky_qr(torch.zeros(1, 3, 10, dtype=torch.float64), 1.0) is None  # not definite


def test_krylov_deepens_its_space_until_the_ritz_residuals_are_small(solver_calls, monkeypatch):
    """The residual of every Ritz pair comes free from the last Krylov block; while the residuals
    weighted by the slope of f are above the tolerance the space is made deeper, unless n_blocks
    is given; the error of D is then below the tolerance."""
    monkeypatch.setattr(spectral.krylov, "_krylov_default", lambda n_eigs: (8, 12))  # start shallow
    W = spectral.local_affinity(piecewise_constant_features(16, 18, regions=6, channels=3, seed=2), 1.0, window=3)
    reference = spectral.diffusion_distance(W, 5.0, n_eigs=12, solver="eigh")
    fixed = spectral.diffusion_distance(W, 5.0, n_eigs=12, n_blocks=12)
    assert solver_calls["krylov"] == 1 and rel(fixed, reference) > 1e-3  # measured 7.8e-3
    adaptive = spectral.diffusion_distance(W, 5.0, n_eigs=12)
    assert solver_calls["krylov"] == 3  # 12, 18, 27 blocks
    assert rel(adaptive, reference) < 0.1 * spectral.KRYLOV_TOLERANCE  # measured 1.2e-5
    # the free residuals are the explicit ones
    S = spectral.symmetric_normalize(W)
    start = spectral.krylov_start(288, 8, (16, 18), torch.float64)[None]
    Q, H, tail, _ = spectral.krylov._block_krylov(spectral.operators._Operator(S), start, 12)
    theta, Y = torch.linalg.eigh(H)
    explicit = (spectral.apply_operator(S, Q @ Y) - (Q @ Y) * theta.unsqueeze(-2)).norm(dim=-2)
    free = torch.einsum("bik,bij,bjk->bk", Y[:, -8:], tail, Y[:, -8:]).sqrt()
    assert torch.allclose(free, explicit, rtol=1e-6, atol=1e-12)
    # a deeper space goes on from the last one: H = Q^T S Q, orthonormal Q, the Ritz values
    # and residuals of the space built at that depth at once (with and without autograd)
    op = spectral.operators._Operator(S)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            state = spectral.krylov._block_krylov(op, start, 6)[3]
            Q, H, tail, _ = spectral.krylov._block_krylov(op, start, 12, state)
        once = spectral.krylov._block_krylov(op, start, 12)
        # without a gradient the float64 blocks are kept orthogonal to KRYLOV_ORTHOGONALITY (the
        # estimate of the next test), with one to rounding
        level = 1e-12 if grad else 10 * spectral.krylov.KRYLOV_ORTHOGONALITY
        assert Q.shape == (1, 288, 96) and torch.allclose(Q.mT @ Q, torch.eye(96, dtype=Q.dtype), atol=level)
        assert torch.allclose(H, Q.mT @ spectral.apply_operator(S, Q), atol=level)
        assert torch.allclose(torch.linalg.eigvalsh(H), torch.linalg.eigvalsh(once[1]), atol=1e-10)
        # the same up to the signs of the last block's columns (Householder's QR and Cholesky's
        # choose them differently: D tail D, D = diag(+-1))
        assert torch.allclose(tail.abs(), once[2].abs(), atol=1e-10)


def test_spike_columns_sit_at_the_most_isolated_nodes():
    """(S^2)_ii from each operator equals the definition, and the one-hot start columns go to the
    nodes that carry localised leading eigenvectors."""
    nodes = (207, 710)
    W = isolated_node_graph(nodes)
    S = spectral.symmetric_normalize(W[None])
    definition = (S @ S).diagonal(dim1=-2, dim2=-1)
    band = spectral.local_affinity(grid_features(6, 7, seed=3), 0.5, window=3)
    S_band = spectral.symmetric_normalize(band)
    pattern = spectral.sparsity._dense_pattern(W[None])
    sparse_op, _ = spectral.sparsity._sparse_operator(W[None], pattern, torch.float64)
    assert torch.allclose(spectral.operators._Operator(S).squared_row_norms(), definition, atol=1e-12)
    assert torch.allclose(sparse_op.squared_row_norms(), definition, atol=1e-12)
    dense_band = S_band.to_dense()
    assert torch.allclose(spectral.operators._Operator(S_band).squared_row_norms(),
                          (dense_band @ dense_band).diagonal(dim1=-2, dim2=-1), atol=1e-12)
    spikes = spectral.krylov._spike_columns(definition, 2)
    assert spikes.shape == (1, 1200, 2) and torch.equal(spikes.sum(1), torch.ones(1, 2, dtype=spikes.dtype))
    assert set(spikes[0].argmax(0).tolist()) == set(nodes)
    # each of those nodes carries one of the five leading eigenvectors (0.980 and 0.974 among
    # 1, 0.978, 0.970), almost all of it at the node (measured 0.999 and 0.998)
    lam, V = torch.linalg.eigh(S[0])
    leading = V[:, lam.argsort(descending=True)[:5]].abs()
    localised = {int(leading[:, k].argmax()) for k in range(5) if float(leading[:, k].max()) > 0.99}
    assert localised == set(nodes)
    # and the default start holds 12 cosines and 4 of these columns for Ne = 50
    start = spectral.krylov._default_start(spectral.operators._Operator(S), 16, None, torch.float64)
    assert start.shape == (1, 1200, 16) and torch.equal(start[..., 12:].sum(1), torch.ones(1, 4, dtype=start.dtype))
    assert set(nodes) <= set(start[0, :, 12:].argmax(0).tolist())


@needs_mini
def test_default_krylov_finds_the_localised_eigenvectors_of_a_shipped_model():
    """BSDS 51084 under BSDS500_HED_V6 (t = 65): single nodes at the border and in the picture are
    almost cut off, each with an eigenvector of its own at 0.957, 0.951, 0.932 ... among the leading
    ones. From smooth columns alone a 16-block space (the earlier default) misses them while every
    pair it found has converged, so no residual shows it; the one-hot start columns put them in
    the space from the first product."""
    import torch.nn.functional as F
    from ndd import io
    from ndd.inference import working_size
    from ndd.models import spec_diff_net

    model = spec_diff_net("BSDS500_HED_V6").eval()
    image = io.read_image(MINI / "BSDS500" / "data" / "images" / "test" / "51084.jpg")
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=working_size(image.shape[:2], 481), mode="bilinear", antialias=True).clamp(0, 1)
    with torch.no_grad():
        W = model(x, diffusion=False, edges=False).affinity  # the affinity reads no edges
    t = float(model.t.detach())
    reference = spectral.diffusion_distance(W, t, 50, solver="eigh")
    smooth = spectral.krylov_start(W.num_nodes, 16, W.grid_shape, torch.float64)
    earlier = spectral.diffusion_distance(W, t, 50, U0=smooth, n_blocks=16)
    assert rel(earlier, reference) > 1e-3  # measured 2.3e-3
    # measured 9.9e-6 and 2.5e-5 (7.9e-9 and 1.3e-5 with the earlier default, 16 x 8 blocks first,
    # which went on to 27 blocks here)
    assert rel(spectral.diffusion_distance(W, t, 50), reference) < 1e-4
    assert rel(spectral.diffusion_distance(W, t, 50, spectral_dtype=torch.float32), reference) < 1e-4


def test_krylov_matches_truncated_spectrum_on_a_grid_graph(solver_calls):
    W = spectral.local_affinity(grid_features(24, 30, c=3, seed=1), 0.3, window=9)
    reference = spectral.diffusion(W, 5.0, n_eigs=12, solver="eigh")
    result = spectral.diffusion(W, 5.0, n_eigs=12)
    assert solver_calls["krylov"] >= 1 and solver_calls["subspace"] == 0
    error = rel(result.distance, reference.distance)
    assert error < 1e-4, error  # measured 1e-5
    # more accurate than the paper's procedure (T = 2, S^10 on Ne columns; measured 1.4e-2)
    assert error < 0.1 * rel(spectral.diffusion_distance(W, 5.0, n_eigs=12, solver="subspace"), reference.distance)
    assert torch.allclose(result.eigenvalues[0, :6], reference.eigenvalues[0, :6], atol=1e-8)
    # the eigenvectors reproduce D through Eq. 4
    lam, psi = result.eigenvalues[0], result.eigenvectors[0]
    D_eig = ((lam.square() ** 5.0) * (psi[:, None] - psi[None]).square()).sum(-1)
    assert rel(D_eig, result.distance[0]) < 1e-10


@pytest.mark.parametrize("p_in, p_out, n_eigs", [(0.6, 0.1, 10), (0.2, 0.01, 6)])  # dense products, then sparse
def test_krylov_matches_truncated_spectrum_on_a_random_graph(p_in, p_out, n_eigs, solver_calls):
    W = community_graph(300, 6, p_in, p_out)
    assert (spectral.sparsity._dense_pattern(W[None]) is not None) == (p_in < 0.5)
    reference = spectral.diffusion_distance(W, 5.0, n_eigs=n_eigs, solver="eigh")
    error = rel(spectral.diffusion_distance(W, 5.0, n_eigs=n_eigs), reference)
    assert solver_calls["krylov"] >= 1 and solver_calls["subspace"] == 0
    assert error < 2e-4, error  # measured 1e-5 and 2e-5 (the paper's procedure: 6e-5 and 2.4e-3)


def test_krylov_gradcheck():
    f = grid_features(8, 9, c=2, seed=1)
    directions = torch.randn(3, *f.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    z = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    mu = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(2.3, dtype=torch.float64, requires_grad=True)
    probes = torch.randn(3, 72, 72, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def fn(z, mu, t):
        W = spectral.local_affinity(f + 0.1 * torch.einsum("k,k...->...", z, directions), mu, window=3)
        D = spectral.diffusion_distance(W, t, n_eigs=6, block_size=3, n_blocks=6)  # 18 of 72 dimensions
        return (D * probes).sum((-1, -2))

    assert torch.autograd.gradcheck(fn, (z, mu, t))


def test_krylov_gradcheck_nearly_disconnected_regions(solver_calls):
    """Three regions joined by weights ~1e-9: a cluster of three eigenvalues at 1 within 1e-8,
    wider than the 2-column block; float64 resolves it, and the gradient is right."""
    base = piecewise_constant_features(8, 9, regions=3, channels=4, seed=2)
    directions = torch.randn(3, *base.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    z = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    probes = torch.randn(3, 72, 72, dtype=torch.float64, generator=torch.Generator().manual_seed(5))

    def fn(z, t):
        f = base + 1e-2 * torch.einsum("k,k...->...", z, directions)
        D = spectral.diffusion_distance(spectral.local_affinity(f, 10.0, window=5), t, n_eigs=6, block_size=2, n_blocks=9)
        return (D * probes).sum((-1, -2))

    assert torch.autograd.gradcheck(fn, (z, t))
    assert solver_calls["krylov"] > 0 and solver_calls["subspace"] == 0  # no fallback


def test_krylov_gradient_matches_exact_truncated_gradient(solver_calls):
    f = piecewise_constant_features(16, 18, regions=6, channels=3, seed=1).requires_grad_()
    probe = torch.randn(1, 288, 288, dtype=torch.float64, generator=torch.Generator().manual_seed(7))

    def grad(solver):
        D = spectral.diffusion_distance(spectral.local_affinity(f, 1.0, window=5), 5.0, n_eigs=12, solver=solver)
        return torch.autograd.grad((D * probe).sum(), f)[0]

    assert rel(grad("krylov"), grad("eigh")) < 1e-4  # measured 1.3e-6
    assert solver_calls["krylov"] >= 1 and solver_calls["subspace"] == 0


def test_krylov_restarts_a_large_space_from_its_best_ritz_vectors(monkeypatch):
    """Past KRYLOV_MAX_BASIS entries, without a gradient, the space is restarted from its Ne + 2b best
    Ritz vectors plus KRYLOV_RESTART_BLOCKS blocks instead of made deeper: it stays that size, and D
    and the eigenvalues are the exact truncated spectrum's to the solver's accuracy. With a gradient
    it grows as before (a restart's choice of vectors depends on W: held fixed, the gradient
    was off by 0.5 here)."""
    g = torch.Generator().manual_seed(4)
    centres = 4 * torch.randn(12, 3, generator=g, dtype=torch.float64)
    points = centres[torch.randint(0, 12, (800,), generator=g)] + torch.randn(800, 3, generator=g, dtype=torch.float64)
    dist = torch.cdist(points, points)
    knn = dist <= dist.topk(9, largest=False).values[:, -1:]
    mask = knn | knn.T  # a k-nearest-neighbour graph in 12 blobs: it needs a deep space (40 blocks)
    W = torch.where(mask, torch.exp(-dist.square()), torch.zeros((), dtype=torch.float64))
    reference = spectral.diffusion(W, 5.0, 20, solver="eigh")
    sizes = []
    build = spectral.krylov._block_krylov

    def spy(op, U0, n_blocks, state=None):
        out = build(op, U0, n_blocks, state)
        sizes.append(out[0].shape[-1])
        return out

    monkeypatch.setattr(spectral.krylov, "_block_krylov", spy)
    monkeypatch.setattr(spectral.krylov, "KRYLOV_MAX_BASIS", 800 * 8 * 12)  # restart past 12 blocks of 8
    result = spectral.diffusion(W, 5.0, 20)
    assert sizes[:2] == [64, 96] and len(sizes) > 3 and set(sizes[2:]) == {36 + 8 * 8}  # measured 4 restarts
    assert rel(result.distance, reference.distance) < 1e-4  # measured 2.9e-6 (unrestarted: 2.3e-6)
    assert torch.allclose(result.eigenvalues, reference.eigenvalues, atol=1e-7)  # measured 4.5e-9
    # it gives up after KRYLOV_MAX_RESTARTS cycles, saying so, with what it has
    monkeypatch.setattr(spectral.krylov, "KRYLOV_MAX_RESTARTS", 2)
    monkeypatch.setattr(spectral.krylov, "KRYLOV_TOLERANCE", 1e-30)
    with pytest.warns(UserWarning, match="after 2 restarts"):
        capped = spectral.diffusion(W, 5.0, 20)
    assert rel(capped.distance, reference.distance) < 1e-2  # measured 2.9e-3 after 2 cycles (4 to converge)
    monkeypatch.undo()
    monkeypatch.setattr(spectral.krylov, "_block_krylov", spy)
    sizes.clear()
    p = points.clone().requires_grad_()
    Wg = torch.where(mask, torch.exp(-(p[:, None] - p[None]).square().sum(-1)), torch.zeros((), dtype=torch.float64))
    spectral.diffusion_distance(Wg, 5.0, 20)
    assert sizes == [64, 96, 144, 216, 320]  # no restart under autograd


def test_krylov_falls_back_to_the_exact_spectrum_on_a_wide_degenerate_cluster(solver_calls):
    """Ten disconnected components: eigenvalue 1 ten times, more than a 4-column block can hold,
    and no block twice as wide fits the 120-node graph: the exact spectrum, truncated."""
    g = torch.Generator().manual_seed(10)
    blocks = [torch.rand(12, 12, generator=g, dtype=torch.float64) for _ in range(10)]
    W = torch.block_diag(*[0.5 * (b + b.T) for b in blocks])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ten parts, ten pairs: nothing to warn about
        result = spectral.diffusion(W, 2.0, n_eigs=10, block_size=4, n_blocks=12)
    assert solver_calls == {"krylov": 1, "subspace": 0}
    assert torch.allclose(result.eigenvalues, torch.ones(10, dtype=torch.float64), atol=1e-10)
    assert rel(result.distance, spectral.diffusion_distance(W, 2.0, n_eigs=10, solver="eigh")) < 1e-10
    # fewer pairs than parts: which copies of 1 are kept is a choice, and the user is told
    with pytest.warns(UserWarning, match="at least 10 eigenvalues have modulus 1.*n_eigs > 10"):
        spectral.diffusion(W, 2.0, n_eigs=6)


def test_a_graph_whose_space_will_restart_gets_a_narrower_block(monkeypatch):
    """Without a gradient, where the third space would pass KRYLOV_MAX_BASIS (so the space will be
    restarted), the default block is three quarters as wide (at least 8; faster there, README);
    with a gradient, or a block given, it stays. D is right either way."""
    assert spectral.krylov._restarted_block(16) == 12 and spectral.krylov._restarted_block(8) == 8
    widths = []
    krylov_ritz = spectral.krylov._krylov_ritz
    monkeypatch.setattr(spectral.krylov, "_krylov_ritz",
                        lambda *a, **k: widths.append(a[1].shape[-1]) or krylov_ritz(*a, **k))
    block, depth = spectral.krylov._krylov_default(50)  # 12 columns, 10 blocks first
    third = spectral.krylov._next_depth(spectral.krylov._next_depth(depth))
    monkeypatch.setattr(spectral.krylov, "KRYLOV_MAX_BASIS", 1200 * block * third - 1)  # just below the third space
    W = spectral.local_affinity(grid_features(30, 40, seed=4), 0.5, window=5)
    reference = spectral.diffusion_distance(W, 4.0, n_eigs=50, solver="eigh")
    with torch.no_grad():
        D = spectral.diffusion_distance(W, 4.0, n_eigs=50)
        spectral.diffusion_distance(W, 4.0, n_eigs=50, block_size=16)
    weights = W.weights.clone().requires_grad_(True)
    D_grad = spectral.diffusion_distance(spectral.BandedAffinity(weights, W.grid_shape, W.window), 4.0, n_eigs=50)
    assert widths == [spectral.krylov._restarted_block(block), 16, block] == [9, 16, 12]
    assert rel(D, reference) < spectral.KRYLOV_TOLERANCE and rel(D_grad.detach(), reference) < spectral.KRYLOV_TOLERANCE


def test_krylov_widens_its_block_when_the_graph_has_more_parts_than_it_holds(monkeypatch):
    """Twenty disconnected regions, Ne = 30, the default 8-column block: the space holds 8 copies of
    the eigenvalue 1 and would miss the rest unseen; the solver sees 8 Ritz values at 1 and goes
    again with 16 columns (16 copies: still fewer than Ne, so more may be missing), then 32, and
    gets the truncated spectrum to the solver's accuracy. The 8-column space's top 30 Ritz values
    were off by 0.25 (measured)."""
    runs = []
    krylov_ritz = spectral.krylov._krylov_ritz
    monkeypatch.setattr(spectral.krylov, "_krylov_ritz", lambda *a, **k: runs.append(krylov_ritz(*a, **k)) or runs[-1])
    W = region_graph(window=7)
    result = spectral.diffusion(W, 3.0, n_eigs=30)
    reference = spectral.diffusion(W, 3.0, n_eigs=30, solver="eigh")
    assert [(run.U.shape[-1] // run.blocks, run.status) for run in runs] == [
        (8, "degenerate"), (16, "degenerate"), (32, "done")]
    assert torch.allclose(result.eigenvalues[0, :20], torch.ones(20, dtype=torch.float64), atol=1e-12)
    assert (result.eigenvalues - reference.eigenvalues).abs().max() < 1e-5  # measured 3.5e-14
    assert rel(result.distance, reference.distance) < spectral.KRYLOV_TOLERANCE  # measured 6.3e-9
    missed = runs[0].eig[0].abs().topk(30).values.sort(descending=True).values
    assert (missed - reference.eigenvalues[0]).abs().max() > 1e-2


def test_krylov_space_at_half_the_graph_gives_way_to_the_exact_spectrum(solver_calls):
    """24 chains of 40 nodes: slow mixing, 24 copies of eigenvalue 1 and many just below. The
    8-column space would have to grow past half the 960 nodes (where a space close to N loses
    orthogonality: Ritz values of 1.1 were seen); the exact spectrum is used instead. The
    subspace iteration an earlier version fell back to was off by 0.97 in D here."""
    g = torch.Generator().manual_seed(0)
    chains = []
    for _ in range(24):
        links = torch.diag(0.5 + torch.rand(39, generator=g, dtype=torch.float64), 1)
        chains.append(links + links.T + 0.1 * torch.eye(40, dtype=torch.float64))
    W = torch.block_diag(*chains)
    result = spectral.diffusion(W, 2.0, n_eigs=30)
    reference = spectral.diffusion(W, 2.0, n_eigs=30, solver="eigh")
    assert solver_calls["subspace"] == 0
    assert (result.eigenvalues - reference.eigenvalues).abs().max() < 1e-12
    assert rel(result.distance, reference.distance) < 1e-10


def test_krylov_on_a_small_graph_is_the_exact_truncated_distance(solver_calls):
    W = random_graph(30, 2)
    assert spectral.krylov_size(10, 30) is None
    D = spectral.diffusion_distance(W, 2.5, n_eigs=10)
    assert solver_calls == {"krylov": 0, "subspace": 0}
    assert rel(D, spectral.diffusion_distance(W, 2.5, n_eigs=10, solver="eigh")) < 1e-10
    assert rel(spectral.diffusion_distance(W, 2.5, n_eigs=30), spectral.diffusion_distance(W, 2.5)) < 1e-10


def test_block_krylov_basis_and_start():
    W = spectral.local_affinity(grid_features(10, 12, seed=7), 0.5, window=5)
    S = spectral.symmetric_normalize(W)
    Q, H = spectral.block_krylov(S, 3, 8)
    assert Q.shape == (1, 120, 24) and H.shape == (1, 24, 24)
    assert torch.allclose(Q.transpose(-1, -2) @ Q, torch.eye(24, dtype=Q.dtype), atol=1e-12)
    assert torch.allclose(H, Q.transpose(-1, -2) @ S.to_dense() @ Q, atol=1e-12)
    # the space is span[U0, S U0, ..., S^7 U0]
    U0 = spectral.krylov_start(120, 3, (10, 12), torch.float64)
    K = torch.cat([torch.linalg.matrix_power(S.to_dense()[0], k) @ U0 for k in range(8)], 1)
    K = K / K.norm(dim=0)
    assert (K - Q[0] @ (Q[0].T @ K)).norm() < 1e-8 * K.norm()
    # grid cosines: orthogonal columns, the first constant
    C = spectral.krylov_start(120, 6, (10, 12), torch.float64)
    gram = C.T @ C
    assert torch.allclose(gram, torch.diag(gram.diagonal()), atol=1e-12)
    assert torch.allclose(C[:, 0], torch.ones(120, dtype=torch.float64))
    assert torch.equal(spectral.krylov_start(50, 4), spectral.krylov_start(50, 4))  # seeded without a grid


def test_a_ritz_value_past_one_is_told_apart_from_rounding():
    # S's spectrum lies in [-1, 1]: a Ritz value past it by more than rounding means a broken basis
    krylov = spectral.krylov
    assert krylov._beyond_one(torch.tensor([[1.0017, 0.99, -0.5]]))
    assert krylov._beyond_one(torch.tensor([[0.5, -1.001]], dtype=torch.float64))
    assert not krylov._beyond_one(torch.tensor([[1 + 5e-7, 0.99]]))  # 4 float32 ulps, as on real graphs
    assert not krylov._beyond_one(torch.tensor([[1 + 1e-15, -1.0]], dtype=torch.float64))
