"""Tests of ``ndd.spectral.subspace``."""

import warnings

import pytest
import torch

from ndd import spectral

from spectral_helpers import grid_features, random_graph, rel

# Many tests run the paper's subspace iteration short of convergence on purpose; the warning
# that says so has its own test (test_spectral_subspace.py::test_unconverged_subspace_iteration_warns).
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:diffusion. the subspace iteration")]


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
    ours = spectral.diffusion_distance(W, 3.0, n_eigs=12, n_iter=2, solver="subspace")
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
    literal = spectral.distance._pairwise_from_gram(M)
    assert rel(ours, reference) < 0.3 * rel(literal, reference)


def test_initial_subspace_spreads_one_hot_columns():
    U0 = spectral.initial_subspace(41 * 61, 50, (41, 61))
    assert U0.shape == (2501, 50)
    assert torch.equal(U0.sum(0), torch.ones(50))
    rows = U0.argmax(0)
    assert rows.unique().numel() == 50
    ys, xs = rows // 61, rows % 61
    assert ys.min() < 8 and ys.max() > 32 and xs.min() < 8 and xs.max() > 52


@pytest.mark.parametrize("orth_every, ok", [(4, True), (1000, False)])
def test_float32_gradient_of_accelerated_iteration_is_accurate(orth_every, ok, monkeypatch):
    """On a well-connected graph S^20 U has nearly dependent columns: back-propagating
    through one QR of it ruins float32 gradients; re-orthonormalising every 4 products does not."""
    g = torch.Generator().manual_seed(0)
    f = torch.nn.functional.normalize(torch.randn(1, 16, 21, 21, generator=g, dtype=torch.float64), dim=1)

    original = spectral.subspace_iteration

    def grad_of(feats, orth):
        monkeypatch.setattr(spectral.distance, "subspace_iteration",
                            lambda *a, **k: original(*a, **{**k, "orth_every": orth}))
        feats = feats.clone().requires_grad_()
        # spectral_dtype=None: the iteration in the features' dtype (float32 here), as this test is about.
        D = spectral.diffusion_distance(spectral.local_affinity(feats, 0.5, 9), 10.0, n_eigs=50, n_iter=2,
                                       solver="subspace", spectral_dtype=None)
        loss = (spectral.diffusion_similarity(D, 1.0) - 0.5).square().mean()
        return torch.autograd.grad(loss, feats)[0].double()

    reference = grad_of(f, 4)  # the same computation in float64
    error = rel(grad_of(f.float(), orth_every), reference)
    assert (error < 1e-2) == ok, error


def test_unconverged_subspace_iteration_warns(monkeypatch):
    """The paper's iteration runs a fixed number of products; where its Ritz residuals bound the
    error of D above 10 x KRYLOV_TOLERANCE it says so (a 20x24 grid of random features, Ne 12,
    t 4: D off by 0.97, bound 5.4e-2), and it stays quiet where it has converged, or where the
    tolerance set on ``ndd.spectral.krylov`` allows the bound."""
    g = torch.Generator().manual_seed(0)
    W = spectral.local_affinity(torch.randn(1, 3, 20, 24, generator=g, dtype=torch.float64), 0.5, window=5)
    reference = spectral.diffusion_distance(W, 4.0, 12, solver="eigh")
    with pytest.warns(UserWarning, match="subspace iteration .* has not converged"):
        D = spectral.diffusion_distance(W, 4.0, 12, solver="subspace")
    assert rel(D, reference) > 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        D = spectral.diffusion_distance(W, 4.0, 12, n_iter=200, solver="subspace")
    assert rel(D, reference) < 1e-3
    monkeypatch.setattr(spectral.krylov, "KRYLOV_TOLERANCE", 1.0)  # a bound of 5.4e-2 is then fine
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spectral.diffusion_distance(W, 4.0, 12, solver="subspace")
