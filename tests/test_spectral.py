import pytest
import torch

from ndd import spectral

torch.set_default_dtype(torch.float32)


def random_graph(n: int, seed: int, batch: int | None = None, density: float = 0.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, n) if batch is None else (batch, n, n)
    A = torch.rand(shape, generator=g, dtype=torch.float64)
    A = A * (torch.rand(shape, generator=g, dtype=torch.float64) < density)
    W = 0.5 * (A + A.transpose(-1, -2))
    return W + torch.eye(n, dtype=torch.float64)  # self-loops: every degree > 0


def eq3_by_matrix_powers(W: torch.Tensor, t: int) -> torch.Tensor:
    """Paper Eq. (3) straight from the definition, for one graph."""
    d = W.sum(-1)
    P = W / d[:, None]
    Pt = torch.linalg.matrix_power(P, t)
    pi = d / d.sum()
    diff = Pt[:, None, :] - Pt[None, :, :]
    return (diff.square() / pi).sum(-1)


def grid_features(h=6, w=7, c=3, seed=0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(1, c, h, w, generator=g, dtype=dtype)
    f[..., : h // 2, :] += 2.0  # two regions, so the spectrum is not trivial
    return f


def rel(a, b):
    return float((a - b).norm() / b.norm())


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


def test_banded_affinity_matches_definition_and_dense():
    f = grid_features(5, 6)
    mu = 0.3
    band = spectral.local_affinity(f, mu, window=3)
    assert band.weights.shape == (1, 30, 9)
    dense = band.to_dense()[0]
    feats = f[0].reshape(3, -1).T
    ys, xs = torch.meshgrid(torch.arange(5), torch.arange(6), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    near = ((ys[:, None] - ys[None]).abs() <= 1) & ((xs[:, None] - xs[None]).abs() <= 1)
    expected = torch.exp(-mu * torch.cdist(feats, feats).square()) * near
    assert torch.allclose(dense, expected, atol=1e-12)
    assert torch.allclose(dense, dense.T)
    # The banded solver never densifies, yet agrees with the dense one.
    D_band = spectral.diffusion_distance(band, 3.0, n_eigs=30, n_iter=4, n_power=6)
    D_dense = spectral.diffusion_distance(band.to_dense(), 3.0)
    assert rel(D_band, D_dense) < 1e-8


def test_subspace_iteration_converges_to_truncated_spectrum():
    f = grid_features(8, 9, seed=3)
    W = spectral.local_affinity(f, 0.5, window=5)
    n_eigs, t = 10, 4.0
    reference = spectral.diffusion_distance(W, t, n_eigs=n_eigs, solver="eigh")
    errors = [rel(spectral.diffusion_distance(W, t, n_eigs=n_eigs, n_iter=k, n_power=2), reference) for k in (1, 3, 10, 40, 200)]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-8


def test_full_subspace_is_exact():
    W = random_graph(16, 5)
    D = spectral.diffusion_distance(W, 2.0, n_eigs=16, n_iter=1, n_power=1)
    assert rel(D, spectral.diffusion_distance(W, 2.0)) < 1e-9


def test_rayleigh_ritz_beats_literal_reading():
    """Reading eigenpairs straight off QR (literal Eq. 5) is much worse than Rayleigh-Ritz."""
    f = grid_features(10, 10, seed=7)
    W = spectral.local_affinity(f, 0.2, window=5)
    reference = spectral.diffusion_distance(W, 3.0, n_eigs=12, solver="eigh")
    ours = spectral.diffusion_distance(W, 3.0, n_eigs=12, n_iter=2)
    S = spectral.symmetric_normalize(W)
    U = spectral.initial_subspace(100, 12, (10, 10), torch.float64).expand(1, -1, -1)
    for _ in range(2):
        Z = U
        for _ in range(6):
            Z = spectral.apply_operator(S, Z)
        U, R = torch.linalg.qr(Z)
    d = spectral.degree(W)
    psi = (d.sum() / d).sqrt().unsqueeze(-1) * U
    M = (psi * R.diagonal(dim1=-2, dim2=-1).abs().unsqueeze(-2)) @ psi.transpose(-1, -2)
    literal = spectral._pairwise_from_gram(M)
    assert rel(ours, reference) < 0.3 * rel(literal, reference)


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


def test_initial_subspace_spreads_one_hot_columns():
    U0 = spectral.initial_subspace(41 * 61, 50, (41, 61))
    assert U0.shape == (2501, 50)
    assert torch.equal(U0.sum(0), torch.ones(50))
    rows = U0.argmax(0)
    assert rows.unique().numel() == 50
    ys, xs = rows // 61, rows % 61
    assert ys.min() < 8 and ys.max() > 32 and xs.min() < 8 and xs.max() > 52


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


def test_spectral_power_gradient_with_repeated_eigenvalues():
    """eigh's own backward divides by eigenvalue gaps; ours must stay finite and exact."""
    Q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    theta = torch.tensor([1.0, 1.0, 0.9, 0.5, -0.5], dtype=torch.float64)  # repeated and +- pairs
    A0 = (Q * theta) @ Q.T
    B = torch.zeros(5, 5, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)

    def fn(B, t):
        return spectral.spectral_power(A0 + 0.5 * (B + B.T), t)

    assert torch.autograd.gradcheck(fn, (B, t))
    out = spectral.spectral_power(A0, 3.0)
    assert torch.allclose(out, torch.linalg.matrix_power(A0, 6), atol=1e-12)


def test_float32_close_to_float64_and_dtype_kept():
    f = grid_features(8, 8, seed=5)
    W64 = spectral.local_affinity(f, 0.5, window=5)
    W32 = spectral.local_affinity(f.float(), 0.5, window=5)
    D64 = spectral.diffusion_distance(W64, 5.0, n_eigs=16)
    D32 = spectral.diffusion_distance(W32, 5.0, n_eigs=16)
    assert D32.dtype == torch.float32 and D64.dtype == torch.float64
    assert rel(D32.double(), D64) < 1e-4


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


def test_legacy_path_runs_and_is_a_distance():
    f = grid_features(9, 9, seed=6)
    W = spectral.local_affinity(f, 0.5, window=5)
    D = spectral.legacy_diffusion_distance(W, t=0.5, n_power=10)
    assert D.shape == (1, 81, 81)
    assert (D >= 0).all() and torch.allclose(D, D.transpose(-1, -2))


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


def test_banded_operator_matches_dense_and_gradchecks():
    """The hand-written backward of the banded product, on a non-symmetric band."""
    g = torch.Generator().manual_seed(8)
    band = torch.rand(2, 4 * 5, 9, dtype=torch.float64, generator=g)
    _, valid = spectral._neighbour_index(4, 5, 3, torch.device("cpu"))
    band = (band * valid).requires_grad_()
    X = torch.randn(2, 20, 3, dtype=torch.float64, generator=g, requires_grad=True)
    A = spectral.BandedAffinity(band, (4, 5), 3)
    assert torch.allclose(spectral.apply_operator(A, X), A.to_dense() @ X, atol=1e-12)

    def fn(band, X):
        return spectral.apply_operator(spectral.BandedAffinity(band, (4, 5), 3), X)

    assert torch.autograd.gradcheck(fn, (band, X))


@pytest.mark.parametrize("orth_every, ok", [(4, True), (1000, False)])
def test_float32_gradient_of_accelerated_iteration_is_accurate(orth_every, ok, monkeypatch):
    """On a well-connected graph S^20 U has nearly dependent columns: back-propagating
    through one QR of it ruins float32 gradients; re-orthonormalising every 4 products does not."""
    g = torch.Generator().manual_seed(0)
    f = torch.nn.functional.normalize(torch.randn(1, 16, 21, 21, generator=g, dtype=torch.float64), dim=1)

    original = spectral.subspace_iteration

    def grad_of(feats, orth):
        monkeypatch.setattr(spectral, "subspace_iteration", lambda *a, **k: original(*a, **{**k, "orth_every": orth}))
        feats = feats.clone().requires_grad_()
        D = spectral.diffusion_distance(spectral.local_affinity(feats, 0.5, 9), 10.0, n_eigs=50, n_iter=2)
        loss = (spectral.diffusion_similarity(D, 1.0) - 0.5).square().mean()
        return torch.autograd.grad(loss, feats)[0].double()

    reference = grad_of(f, 4)  # the same computation in float64
    error = rel(grad_of(f.float(), orth_every), reference)
    assert (error < 1e-2) == ok, error
