"""Tests of ``ndd.spectral.operators``."""

import pytest
import torch

from ndd import spectral

pytestmark = pytest.mark.usefixtures("one_thread")


def test_banded_operator_matches_dense_and_gradchecks():
    """The hand-written backward of the banded product, on a non-symmetric band."""
    g = torch.Generator().manual_seed(8)
    band = torch.rand(2, 4 * 5, 9, dtype=torch.float64, generator=g)
    _, valid = spectral.affinity._neighbour_index(4, 5, 3, torch.device("cpu"))
    band = (band * valid).requires_grad_()
    X = torch.randn(2, 20, 3, dtype=torch.float64, generator=g, requires_grad=True)
    A = spectral.BandedAffinity(band, (4, 5), 3)
    assert torch.allclose(spectral.apply_operator(A, X), A.to_dense() @ X, atol=1e-12)

    def fn(band, X):
        return spectral.apply_operator(spectral.BandedAffinity(band, (4, 5), 3), X)

    assert torch.autograd.gradcheck(fn, (band, X))


def test_scaled_operator_is_the_symmetric_conjugate():
    """``_Operator(W, d^-1/2)`` (float64 S from a float32 W, never formed) multiplies, densifies,
    gives ``(S^2)_ii`` and passes gradients to ``W`` and the scale as ``S = D^-1/2 W D^-1/2`` does."""
    f = torch.randn(2, 3, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    W = spectral.local_affinity(f.float(), 0.5, window=5)
    d = spectral.degree(W, torch.float64)
    S = spectral.symmetric_normalize(W, torch.float64)
    op = spectral.operators._Operator(W, d.rsqrt())
    X = torch.randn(2, 42, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    dense = S.to_dense()
    assert op.to_dense().dtype == torch.float64 and torch.allclose(op.to_dense(), dense, rtol=1e-14, atol=0)
    assert torch.allclose(op(X), dense @ X, rtol=1e-13, atol=1e-15)
    assert torch.allclose(op(X[:1].transpose(-1, -2).contiguous().transpose(-1, -2)), dense @ X[:1], atol=1e-15)
    # in W's dtype (float32): only their ranking is used
    norms = op.squared_row_norms()
    assert norms.dtype == torch.float32 and torch.allclose(norms.double(), dense.square().sum(-1), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="banded"):
        spectral.operators._Operator(dense, d.rsqrt())

    def scaled(weights, scale, X):
        return spectral.operators._Operator(spectral.BandedAffinity(weights, W.grid_shape, W.window), scale)(X)

    def formed(weights, scale, X):
        dense = spectral.BandedAffinity(weights, W.grid_shape, W.window).to_dense()
        return (scale.unsqueeze(-1) * dense * scale.unsqueeze(-2)) @ X

    inputs = (W.weights.double().requires_grad_(), d.rsqrt().requires_grad_(), X.requires_grad_())
    assert torch.autograd.gradcheck(scaled, inputs)
    for got, want in zip(torch.autograd.grad(scaled(*inputs).square().sum(), inputs),
                         torch.autograd.grad(formed(*inputs).square().sum(), inputs)):
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-14)
