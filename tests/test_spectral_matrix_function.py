"""Tests of ``ndd.spectral.matrix_function``."""

import pytest
import torch

from ndd import spectral

pytestmark = pytest.mark.usefixtures("one_thread")


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
