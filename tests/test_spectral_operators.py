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
