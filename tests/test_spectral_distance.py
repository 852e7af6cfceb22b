"""Tests of ``ndd.spectral.distance``."""

import pytest
import torch

from ndd import spectral

from spectral_helpers import grid_features, piecewise_constant_features, random_graph, rel

# Many tests run the paper's subspace iteration short of convergence on purpose; the warning
# that says so has its own test (test_spectral_subspace.py::test_unconverged_subspace_iteration_warns).
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:diffusion. the subspace iteration")]


def eq3_by_matrix_powers(W: torch.Tensor, t: int) -> torch.Tensor:
    """Paper Eq. (3) straight from the definition, for one graph."""
    d = W.sum(-1)
    P = W / d[:, None]
    Pt = torch.linalg.matrix_power(P, t)
    pi = d / d.sum()
    diff = Pt[:, None, :] - Pt[None, :, :]
    return (diff.square() / pi).sum(-1)


def paper_sized_graph(device: str | torch.device = "cpu") -> spectral.BandedAffinity:
    """The paper's graph size (41x61 grid, 17x17 window): 12 discs of constant colour plus noise."""
    g = torch.Generator().manual_seed(3)
    f = 0.3 * torch.randn(1, 3, 41, 61, generator=g, dtype=torch.float64)
    yy, xx = torch.meshgrid(torch.arange(41.0), torch.arange(61.0), indexing="ij")
    for _ in range(12):
        y, x, r = torch.rand(3, generator=g, dtype=torch.float64) * torch.tensor([41.0, 61.0, 15.0]) + torch.tensor([0, 0, 4.0])
        f[0, :, (yy - y) ** 2 + (xx - x) ** 2 < r * r] += 3 * torch.randn(3, 1, generator=g, dtype=torch.float64)
    return spectral.local_affinity(f.float().to(device), 1.0, window=17)


@pytest.mark.parametrize("t", [1, 2, 5, 8])
def test_exact_distance_equals_eq3(t):
    for seed in range(3):
        W = random_graph(25, seed)
        assert rel(spectral.diffusion_distance(W, t), eq3_by_matrix_powers(W, t)) < 1e-8


def test_exact_distance_batched_equals_per_graph():
    W = random_graph(12, 1, batch=3)
    D = spectral.diffusion_distance(W, 3)
    assert D.shape == (3, 12, 12)
    for b in range(3):
        assert rel(D[b], eq3_by_matrix_powers(W[b], 3)) < 1e-8


def test_distance_properties():
    W = random_graph(20, 4)
    D = spectral.diffusion_distance(W, 2.5)
    assert torch.allclose(D, D.T)
    assert (D >= 0).all()
    assert D.diagonal().abs().max() < 1e-10
    # Diffusion distances shrink as t grows (the walk forgets its start).
    assert spectral.diffusion_distance(W, 5.0).sum() < D.sum()


def test_non_integer_t_interpolates_eigen_form():
    W = random_graph(15, 2)
    lam, psi = spectral.diffusion_embedding(W)
    t = 2.7
    D_eig = ((lam.square() ** t) * (psi[:, None, :] - psi[None, :, :]).square()).sum(-1)
    assert rel(spectral.diffusion_distance(W, t), D_eig) < 1e-10
    # the same from the pairs, for any t, batched or not
    for t in (0.5, 2.7, 9.0):
        assert rel(spectral.distance_from_embedding(lam, psi, t), spectral.diffusion_distance(W, t)) < 1e-10
    batched = spectral.distance_from_embedding(lam[None], psi[None], t)
    assert batched.shape == (1, 15, 15) and torch.equal(batched[0], spectral.distance_from_embedding(lam, psi, t))
    with pytest.raises(ValueError, match="do not fit"):
        spectral.distance_from_embedding(lam[:3], psi, t)
    with pytest.raises(ValueError, match="t must be"):
        spectral.distance_from_embedding(lam, psi, 0.0)


def test_embedding_reproduces_distance():
    f = grid_features(6, 6, seed=2)
    W = spectral.local_affinity(f, 0.4, window=3)
    lam, psi = spectral.diffusion_embedding(W, n_eigs=36, n_iter=3, n_power=4)
    assert torch.all(lam[:, :-1] >= lam[:, 1:])
    assert torch.allclose(lam[:, 0], torch.ones(1, dtype=lam.dtype), atol=1e-8)
    # The top right eigenvector of P is constant.
    assert (psi[0, :, 0] - psi[0, 0, 0]).abs().max() < 1e-6
    D_eig = ((lam[0].square() ** 2) * (psi[0][:, None] - psi[0][None]).square()).sum(-1)
    assert rel(D_eig, spectral.diffusion_distance(W, 2.0)[0]) < 1e-8


def test_gradcheck_affinity_iteration_distance_similarity():
    f = grid_features(4, 5, c=2, seed=1).requires_grad_()
    mu = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(2.3, dtype=torch.float64, requires_grad=True)
    tau = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)

    probe = torch.randn(20, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def fn(f, mu, t, tau):
        W = spectral.local_affinity(f, mu, window=3)
        D = spectral.diffusion_distance(W, t, n_eigs=6, n_iter=2, n_power=3)
        # A random projection of K_D keeps gradcheck's Jacobian small (4 x 20 outputs).
        return spectral.diffusion_similarity(D, tau)[0] @ probe

    assert torch.autograd.gradcheck(fn, (f, mu, t, tau))


def test_gradcheck_exact_path():
    f = grid_features(3, 4, c=2, seed=4).requires_grad_()
    t = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, t: spectral.diffusion_distance(spectral.local_affinity(f, 1.0, 3).to_dense(), t), (f, t))


def test_float32_close_to_float64_and_dtype_kept():
    f = grid_features(8, 8, seed=5)
    W64 = spectral.local_affinity(f, 0.5, window=5)
    W32 = spectral.local_affinity(f.float(), 0.5, window=5)
    D64 = spectral.diffusion_distance(W64, 5.0, n_eigs=16)
    for spectral_dtype in (torch.float64, torch.float32, None):
        D32 = spectral.diffusion_distance(W32, 5.0, n_eigs=16, spectral_dtype=spectral_dtype)
        assert D32.dtype == torch.float32 and D64.dtype == torch.float64
        assert rel(D32.double(), D64) < 1e-4


def test_float32_krylov_space_with_a_ritz_value_past_one_is_not_used():
    # One thread runs the products in ndd's compiled kernel (where built), whose sums come in
    # another order than MKL's: there this graph's float32 space gave a Ritz value of 1.0017 and
    # D off by 3.3e-3 with no residual showing it (with MKL's order, values up to 17 and 73 blocks)
    W = paper_sized_graph()
    reference = spectral.diffusion_distance(spectral.BandedAffinity(W.weights.double(), W.grid_shape, W.window),
                                            10.0, 50, spectral_dtype=torch.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        D = spectral.diffusion_distance(W, 10.0, 50, spectral_dtype=torch.float32)
    finally:
        torch.set_num_threads(threads)
    assert rel(D.double(), reference) < 1e-4


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_float32_spectral_part_is_accurate_at_the_paper_size_on_every_device(device):
    # cuSOLVER's float32 eigh of the Rayleigh-Ritz matrix once left D 1.7e-3 off on a GPU
    W = paper_sized_graph(device)
    # float64 throughout (2e-8 from the exact truncated spectrum here, benchmarks/bench_spectral.py;
    # the dense eigh reference would take seconds on the CPU)
    reference = spectral.diffusion_distance(spectral.BandedAffinity(W.weights.double(), W.grid_shape, W.window),
                                            10.0, 50, spectral_dtype=torch.float64)
    for solver in ("krylov", "subspace"):
        D = spectral.diffusion_distance(W, 10.0, 50, solver=solver, spectral_dtype=torch.float32)
        assert D.dtype == torch.float32 and rel(D.double(), reference) < 1e-4, solver


def test_batched_banded():
    f = torch.cat([grid_features(5, 5, seed=s) for s in range(3)])
    W = spectral.local_affinity(f, 0.5, window=3)
    D = spectral.diffusion_distance(W, 2.0, n_eigs=8)
    assert D.shape == (3, 25, 25)
    for b in range(3):
        single = spectral.local_affinity(f[b : b + 1], 0.5, window=3)
        assert torch.allclose(D[b], spectral.diffusion_distance(single, 2.0, n_eigs=8)[0], atol=1e-10)


def test_similarity_range():
    W = random_graph(10, 3)
    K = spectral.diffusion_similarity(spectral.diffusion_distance(W, 2.0), 0.5)
    assert torch.allclose(K.diagonal(), torch.ones(10, dtype=K.dtype))
    assert ((K > 0) & (K <= 1)).all()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: spectral.diffusion_distance(torch.ones(3, 4), 1.0), "square"),
        (lambda: spectral.diffusion_distance(torch.tensor([[1.0, -0.1], [-0.1, 1.0]]), 1.0), "negative"),
        (lambda: spectral.diffusion_distance(torch.tensor([[1.0, 0.5], [0.1, 1.0]]), 1.0), "symmetric"),
        (lambda: spectral.diffusion_distance(torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]), 1.0), "NaN"),
        (lambda: spectral.diffusion_distance(torch.eye(4), 0.0), "t must be"),
        (lambda: spectral.diffusion_distance(torch.eye(4), 1.0, n_eigs=5), "n_eigs"),
        (lambda: spectral.local_affinity(torch.full((1, 2, 3, 3), float("nan")), 1.0, 3), "NaN"),
        (lambda: spectral.local_affinity(torch.ones(1, 2, 3, 3), 1.0, 4), "odd"),
        (lambda: spectral.local_affinity(torch.ones(1, 2, 3, 3), 1.0, 0), "odd"),
        (lambda: spectral.local_affinity(torch.ones(1, 2, 3, 3), -1.0, 3), "mu"),
        (lambda: spectral.local_affinity(torch.ones(2, 3, 3), 1.0, 3), "features"),
        (lambda: spectral.diffusion_similarity(torch.zeros(2, 2), -1.0), "tau"),
    ],
)
def test_bad_input_raises_clear_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_float64_spectral_part_keeps_gradient_on_nearly_disconnected_regions(solver_calls):
    """Float32 affinity + float64 spectral part (the default) matches an all-float64 pipeline;
    the spectral part in float32 loses the gradient on nearly disconnected regions.

    Measured (31x31 grid, 20 regions, window 17, mu 10, t 10, Ne 50; seeds 0-5), default solver
    (block Krylov in float64; in float32 the 20 eigenvalues at 1 are one multiple eigenvalue, so
    it goes again with a block twice as wide; an earlier version fell back to the subspace iteration,
    figures in brackets): spectral_dtype=float64: D 1e-7 - 3.4e-7, gradient
    1.8e-5 - 2e-4 relative error (the subspace iteration: 8e-6 - 1.7e-5);
    spectral_dtype=float32: D 3e-6 - 1e-5, gradient 1.4 - 19 (cosine 0.05 - 0.6).
    """
    f64 = piecewise_constant_features(31, 31)
    probe = torch.randn(1, 961, 961, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def distance_and_gradient(features, spectral_dtype):
        features = features.clone().requires_grad_()
        W = spectral.local_affinity(features, 10.0, window=17)
        D = spectral.diffusion_distance(W, 10.0, n_eigs=50, n_iter=2, spectral_dtype=spectral_dtype)
        assert D.dtype == features.dtype
        (grad,) = torch.autograd.grad((D * probe.to(D.dtype)).sum(), features)
        assert grad.dtype == features.dtype
        return D.detach().double(), grad.double()

    D_ref, g_ref = distance_and_gradient(f64, None)  # everything in float64
    D, g = distance_and_gradient(f64.float(), torch.float64)
    assert solver_calls == {"krylov": 2, "subspace": 0}  # float64 tells the 20 regions apart
    D32, g32 = distance_and_gradient(f64.float(), torch.float32)
    # float32 cannot: 12 Ritz values at 1, so again with a block of 24, which holds all 20
    assert solver_calls == {"krylov": 4, "subspace": 0}
    # measured 9.3e-5 with one thread (with the earlier 16-column default, widened to 32: 2.1e-4;
    # the subspace iteration an earlier version fell back to: 6.6e-6, but with no error bound)
    assert rel(D32, D_ref) < spectral.KRYLOV_TOLERANCE
    assert rel(D, D_ref) < 1e-5
    assert rel(g, g_ref) < 1e-4
    # Float32 is off by O(1) here on every seed tried (the float64 one by ~1e-5).
    assert rel(g32, g_ref) > 1e-2 and rel(g32, g_ref) > 100 * rel(g, g_ref)


def test_default_returns_affinity_dtype_and_gradients_reach_float32_parameters():
    f = grid_features(6, 7, seed=2, dtype=torch.float32).requires_grad_()
    mu = torch.tensor(0.5, requires_grad=True)
    t = torch.tensor(3.0, requires_grad=True)
    W = spectral.local_affinity(f, mu, window=3)
    result = spectral.diffusion(W, t, n_eigs=8)
    assert all(x.dtype == torch.float32 for x in result)
    exact = spectral.diffusion(W, t)
    assert all(x.dtype == torch.float32 for x in exact)
    # The exact path stays exact (in float64, then rounded to float32).
    W64 = spectral.local_affinity(f.detach().double(), 0.5, window=3)
    assert rel(exact.distance.detach().double(), spectral.diffusion_distance(W64, 3.0)) < 1e-6
    lam, psi = spectral.diffusion_embedding(W, n_eigs=8)
    assert lam.dtype == psi.dtype == torch.float32
    assert spectral.legacy_diffusion_distance(W, n_power=4).dtype == torch.float32
    (result.distance.sum() + exact.distance.sum()).backward()
    for x in (f, mu, t):
        assert x.grad is not None and x.grad.dtype == torch.float32 and bool(x.grad.abs().sum() > 0)
    with pytest.raises(ValueError, match="spectral_dtype"):
        spectral.diffusion(W, 3.0, n_eigs=8, spectral_dtype=torch.float16)


def test_spec_diff_net_spectral_dtype_option():
    from ndd.models import SpecDiffNet, SpecDiffNetConfig

    base = dict(backbone="small_cnn", window=5, n_eigs=8, n_power=4)
    old = {k: v for k, v in SpecDiffNetConfig(**base).to_dict().items() if k != "spectral_dtype"}
    assert SpecDiffNetConfig.from_dict(old).spectral_dtype == "float64"  # configs saved before the option
    with pytest.raises(ValueError, match="spectral_dtype"):
        SpecDiffNetConfig(**base, spectral_dtype="float16")
    torch.manual_seed(0)
    net = SpecDiffNet(SpecDiffNetConfig(**base)).eval()
    image = torch.rand(1, 3, 40, 48, generator=torch.Generator().manual_seed(0))
    outputs = {}
    for name in ("float64", "float32"):
        net.config.spectral_dtype = name
        with torch.no_grad():
            outputs[name] = net(image)
    K64, K32 = outputs["float64"].similarity, outputs["float32"].similarity
    assert K64.dtype == K32.dtype == torch.float32 and K64.shape == (1, 30, 30)
    assert (K64 - K32).abs().max() < 1e-4
    assert rel(outputs["float32"].distance, outputs["float64"].distance) < 3e-3  # K ~ 1 here: compare D too (measured 3e-4)


@pytest.mark.parametrize("n, rows", [(300, 64), (37, 128), (256, 64)])
def test_distance_assembly_equals_its_definition(n, rows):
    """``_assemble_distance`` (upper triangle by strips, the lower one copied) equals
    ``|g_i|^2 + |g_j|^2 - 2 g_i.g_j`` clamped at 0, for every dtype pair, a batch, and N not a
    multiple of the strip (or below it)."""
    G = torch.randn(2, n, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    G[:, : n // 3] = G[:1, :1]  # a group of equal rows: D = 0 there, which rounding must not turn negative
    sq = G.square().sum(-1)
    definition = (sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2 * G @ G.transpose(-1, -2)).clamp_min(0)
    pairs = ((torch.float64, torch.float32), (torch.float32, torch.float32), (torch.float64, torch.float64))
    for compute, out in pairs:
        D = spectral.distance._assemble_distance(G.to(compute), out, rows=rows)
        assert D.dtype == out and D.shape == (2, n, n) and bool((D >= 0).all())
        tol = 1e-12 if compute == torch.float64 else 1e-5
        atol = tol * float(definition.max())
        torch.testing.assert_close(D.double(), definition, rtol=torch.finfo(out).eps, atol=atol)
        # a distance matrix: exactly symmetric (the diagonal blocks too), exactly zero on the diagonal
        assert torch.equal(D, D.transpose(-1, -2)) and not D.diagonal(dim1=-2, dim2=-1).any()


def test_distance_is_exactly_symmetric_with_a_zero_diagonal_on_every_path():
    """SciPy's ``squareform`` (the way to ``linkage``) accepts D as it comes: the default solver on a
    banded and a dense ``W`` in both spectral dtypes, the paper's solver and the exact path. Before,
    rounding left ``D_ij != D_ji`` inside the diagonal blocks and ``D_ii`` ~ 1e-13, and it refused it."""
    from scipy.spatial.distance import squareform

    W = spectral.local_affinity(grid_features(14, 18, seed=3), 1.0, window=5)
    for given in (W, W.to_dense()):
        for kwargs in ({"n_eigs": 12}, {"n_eigs": 12, "spectral_dtype": torch.float32},
                       {"n_eigs": 12, "solver": "subspace"}, {}):
            D = spectral.diffusion_distance(given, 3.0, **kwargs)[0]
            assert torch.equal(D, D.T) and not D.diagonal().any(), kwargs
            squareform(D.numpy())  # raises on an asymmetric matrix or a non-zero diagonal


def test_ritz_distance_truncation_gradcheck():
    """The truncated matrix function of the Rayleigh-Ritz step, with a repeated kept eigenvalue."""
    g = torch.Generator().manual_seed(9)
    Q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=g))
    H0 = (Q * torch.tensor([0.9, 0.9, -0.7, 0.5, 0.2, 0.1], dtype=torch.float64)) @ Q.T
    U = torch.randn(1, 10, 6, dtype=torch.float64, generator=g, requires_grad=True)
    scale = torch.rand(1, 10, dtype=torch.float64, generator=g).add(0.5).requires_grad_()
    B = torch.zeros(1, 6, 6, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)

    def fn(U, scale, B, t):
        H = H0 + 0.5 * (B + B.transpose(-1, -2))
        return spectral.distance._RitzDistance.apply(U, scale, H, t, 4, torch.float64)[0]

    assert torch.autograd.gradcheck(fn, (U, scale, B, t))
    # k = 4 keeps 0.9, 0.9, -0.7, 0.5: D is the Eq. 4 sum over exactly those, with C = scale U
    D, theta, X = spectral.distance._RitzDistance.apply(U, scale, H0[None], t, 4, torch.float64)
    _, Y = torch.linalg.eigh(H0)  # eigenvalues -0.7, 0.1, 0.2, 0.5, 0.9, 0.9: columns 0, 3, 4, 5 kept
    CY = (scale.unsqueeze(-1) * U) @ Y[:, [0, 3, 4, 5]]
    assert torch.allclose(X @ X.mT, CY @ CY.mT, atol=1e-12)
    assert torch.allclose(theta.abs().sort().values, torch.tensor([[0.5, 0.7, 0.9, 0.9]], dtype=torch.float64))
    weights = theta.square() ** t
    assert torch.allclose(D[0], ((X[0, :, None] - X[0, None]).square() * weights[0]).sum(-1), atol=1e-12)


def test_embedding_pairs_serve_every_diffusion_time_in_their_range():
    """diffusion_embedding's pairs give D_t for t from 1 to 100 (its default range) to the solver's
    accuracy. Made deep enough for t = 10 alone (what it did before), the lower pairs were left
    unconverged, which D_t shows at small t."""
    W = spectral.local_affinity(grid_features(24, 30, c=3, seed=1), 0.3, window=9)

    def error(lam, psi, t):
        return rel(spectral.distance_from_embedding(lam, psi, t), spectral.diffusion_distance(W, t, 12, solver="eigh"))

    lam, psi = spectral.diffusion_embedding(W, n_eigs=12)
    for t in (1.0, 2.0, 10.0, 100.0):
        assert error(lam, psi, t) < 1e-3, t  # measured 1.4e-4, 9.8e-5, 1.2e-6, 5.2e-8
    assert error(*spectral.diffusion_embedding(W, n_eigs=12, times=(10.0, 10.0)), 1.0) > 1e-2  # measured 2.6e-2
    # the bound's slope is the largest of 2 t |theta|^(2t - 1) over the range
    theta = torch.linspace(-1, 1, 201, dtype=torch.float64)
    ts = torch.linspace(1, 100, 20001, dtype=torch.float64)[:, None]
    brute = (2 * ts * theta.abs().clamp_min(1e-300) ** (2 * ts - 1)).amax(0)
    largest = spectral.krylov._largest_slope(theta, 1.0, 100.0)
    assert torch.allclose(largest, brute, rtol=1e-5) and bool((largest >= brute * (1 - 1e-12)).all())
    for bad in ((2.0, 1.0), (0.0, 1.0), (1.0,), (1.0, float("inf"))):
        with pytest.raises(ValueError, match="times must be"):
            spectral.diffusion(W, 1.0, 12, times=bad)


def test_embedding_of_a_sparse_graph_forms_nothing_n_by_n(monkeypatch):
    """diffusion_embedding returns diffusion's Ritz pairs without assembling D."""
    g = torch.Generator().manual_seed(4)
    points = torch.randn(400, 3, generator=g, dtype=torch.float64)
    dist = torch.cdist(points, points)
    knn = dist <= dist.topk(8, largest=False).values[:, -1:]  # each point and its 7 nearest
    W = torch.where(knn | knn.T, torch.exp(-dist.square()), torch.zeros((), dtype=torch.float64))
    want = spectral.diffusion(W, 10.0, n_eigs=12)
    monkeypatch.setattr(spectral.distance, "_assemble_distance", lambda *a, **k: pytest.fail("D was assembled"))
    lam, psi = spectral.diffusion_embedding(W.to_sparse(), n_eigs=12)
    assert torch.allclose(lam, want.eigenvalues, atol=1e-12)
    # Eq. 4 from the returned pairs is the distance diffusion() assembled
    weighted = psi * lam.square().pow(5.0)  # lambda^(2t) with t = 10, split over both factors
    D = (weighted.square().sum(-1)[:, None] + weighted.square().sum(-1)[None] - 2 * weighted @ weighted.T).clamp_min(0)
    assert rel(D, want.distance) < 1e-10
    assert spectral.diffusion(W, 10.0, n_eigs=12, distance=False).distance is None


def test_pairs_come_sorted_with_their_eigenvectors_when_negative_ones_are_kept():
    """``diffusion`` returns the kept pairs by decreasing eigenvalue, each ``psi`` column with its
    own ``lam`` (``P psi = lam psi``, ``P = D^-1 W``), also when the top ``Ne`` by modulus hold
    negative eigenvalues (a bipartite graph: ``-lam`` is one for every ``lam``), where the
    solver's modulus order is not the returned one."""
    n = 40
    weights = torch.rand(n - 1, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) + 0.5
    W = torch.diag(weights, 1) + torch.diag(weights, -1)  # a weighted path: bipartite
    P = W / W.sum(-1, keepdim=True)
    for kwargs in ({}, {"solver": "eigh"}):
        result = spectral.diffusion(W, 2.0, 6, distance=False, **kwargs)
        lam, psi = result.eigenvalues, result.eigenvectors
        assert bool((lam[:-1] >= lam[1:]).all()) and bool((lam < 0).any()), lam
        torch.testing.assert_close(P @ psi, psi * lam, atol=1e-9, rtol=0)


def test_krylov_results_without_a_gradient_are_ordinary_tensors_and_t_alone_takes_one():
    """The Krylov space is built in inference mode where no gradient can reach it: what
    ``diffusion`` returns must still be ordinary tensors (a user may modify them in place or use
    them in a graph), and a ``t`` that takes a gradient while ``W`` does not must get it (its
    backward saves the space, which inference tensors cannot be)."""
    W = spectral.local_affinity(grid_features(20, 24, seed=4), 1.0, window=5)  # N = 480: the Krylov path
    with torch.no_grad():
        result = spectral.diffusion(W, 2.0, 8)
    for tensor in result:
        assert not tensor.is_inference()
    result.distance.add_(1.0)  # in place, outside inference mode: refused for an inference tensor
    probe = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    (result.eigenvectors * probe).sum().backward()  # saved for backward: refused for an inference tensor
    t = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(480, 480, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.autograd.gradcheck(lambda t: (spectral.diffusion_distance(W, t, 8) * weight).sum(), (t,))
    # and a gradient to W after a call without one on the same grid (cached CSR structure)
    weights = W.weights.clone().requires_grad_(True)
    spectral.diffusion_distance(spectral.BandedAffinity(weights, W.grid_shape, W.window), 2.0, 8).sum().backward()
    assert weights.grad is not None and bool(torch.isfinite(weights.grad).all())
