"""Tests of ``ndd.spectral.affinity``."""

import pytest
import numpy as np
import torch

from ndd import spectral

from spectral_helpers import grid_features, rel

pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_intervening_contour_is_the_max_edge_on_each_segment() -> None:
    torch.manual_seed(0)
    edges = torch.rand(2, 1, 35, 43)
    grid, window = (5, 6), 5  # node (y, x) on pixel (8y, 8x)
    got = spectral.intervening_contour(edges, grid, window, stride=8, pool=1)
    offsets = spectral.window_offsets(window)
    h, w = grid
    E = edges.numpy()
    for b in range(2):
        for i in range(h * w):
            y, x = divmod(i, w)
            for o, (dy, dx) in enumerate(offsets):
                if not (0 <= y + dy < h and 0 <= x + dx < w) or (dy, dx) == (0, 0):
                    expected = 0.0
                else:
                    # the segment is symmetric: sampled from the upper end of the pair
                    (y0, x0), (sy, sx) = ((y, x), (dy, dx)) if o >= len(offsets) // 2 else ((y + dy, x + dx), (-dy, -dx))
                    s = np.linspace(0.0, 1.0, (window // 2) * 8 + 1)
                    py = np.round(8 * y0 + s * 8 * sy).astype(int)
                    px = np.round(8 * x0 + s * 8 * sx).astype(int)
                    expected = E[b, 0, py, px].max()
                assert got[b, i, o].item() == pytest.approx(expected, abs=0), (b, i, o)
    # pooling keeps thin contours: a one-pixel line between two nodes is never stepped over
    line = torch.zeros(1, 1, 33, 33)
    line[..., 13, :] = 1.0  # between node rows 1 (pixel 8) and 2 (pixel 16)
    crossing = spectral.intervening_contour(line, (5, 5), 3, stride=8, pool=2)
    up_down = spectral.window_offsets(3).index((1, 0))
    assert crossing[0, 1 * 5 + 2, up_down] == 1.0 and crossing[0, 2 * 5 + 2, up_down] == 0.0


def test_contour_affinity_is_symmetric_with_unit_diagonal_and_gradients() -> None:
    torch.manual_seed(1)
    edges = torch.rand(1, 1, 41, 49, dtype=torch.float64)
    alpha = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    W = spectral.contour_affinity(edges, (6, 7), alpha, window=5)
    dense = W.to_dense()[0]
    torch.testing.assert_close(dense, dense.T)
    assert torch.all(dense.diagonal() == 1.0)
    dense.sum().backward()
    assert alpha.grad is not None and alpha.grad < 0
    with pytest.raises(ValueError, match="does not fit"):
        spectral.intervening_contour(edges, (7, 7), 5)
    with pytest.raises(ValueError, match="NaN"):
        spectral.contour_affinity(torch.full((1, 1, 41, 49), float("nan")), (6, 7), 3.0, window=5)


def test_feature_kernel_is_the_unmasked_gaussian_of_the_features() -> None:
    torch.manual_seed(0)
    features = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    K = spectral.feature_kernel(features, 0.7)
    f = features.flatten(2).transpose(1, 2)
    ref = torch.exp(-0.7 * ((f[:, :, None] - f[:, None, :]) ** 2).sum(-1))
    torch.testing.assert_close(K, ref)
    # inside the window it is the banded local affinity
    W = spectral.local_affinity(features, 0.7, window=3).to_dense()
    torch.testing.assert_close(K * (W > 0), W)


def test_symmetric_normalize_in_a_wider_dtype_equals_normalising_the_cast_affinity():
    """``symmetric_normalize(W, dtype)`` (no cast copy; in place without a gradient) equals the
    definition on ``W`` cast first, for a band and a dense ``W``, with and without autograd, and
    the gradient reaches the float32 weights as through the cast."""
    band32 = spectral.local_affinity(grid_features(7, 9, seed=5, dtype=torch.float32), 0.5, window=5)
    dense = band32.to_dense()
    exact = spectral.BandedAffinity(band32.weights.double(), band32.grid_shape, band32.window)
    d = exact.weights.sum(-1)
    index, valid = spectral.affinity._neighbour_index(7, 9, 5, torch.device("cpu"))
    definition = exact.weights * d.rsqrt().unsqueeze(-1) * d.rsqrt()[:, index] * valid
    with torch.no_grad():
        S = spectral.symmetric_normalize(band32, torch.float64)
    assert S.weights.dtype == torch.float64 and band32.weights.dtype == torch.float32
    torch.testing.assert_close(S.weights, definition, rtol=1e-14, atol=0)
    S_dense = spectral.symmetric_normalize(dense, torch.float64)
    torch.testing.assert_close(S_dense, S.to_dense(), rtol=1e-14, atol=0)
    assert torch.equal(S_dense, S_dense.transpose(-1, -2))  # d_j^-1/2 d_i^-1/2 W_ij: symmetric to the bit
    weights = band32.weights.clone().requires_grad_(True)
    probe = torch.randn(definition.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = spectral.symmetric_normalize(spectral.BandedAffinity(weights, (7, 9), 5), torch.float64)
    torch.testing.assert_close(ours.weights, definition, rtol=1e-14, atol=0)
    (grad,) = torch.autograd.grad((ours.weights * probe).sum(), weights)
    cast = weights.detach().double().requires_grad_(True)
    (reference,) = torch.autograd.grad((spectral.symmetric_normalize(spectral.BandedAffinity(cast, (7, 9), 5)).weights
                                        * probe).sum(), cast)
    assert grad.dtype == torch.float32
    torch.testing.assert_close(grad, reference.float(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_symmetry_comparison_by_bits_then_by_tolerance(dtype):
    """``_close`` (the symmetry checks' comparison) first compares bits (NumPy's integer loop), then
    falls back to the tolerance test: ``-0.0`` against ``0.0`` and rounding-size differences
    pass, a real difference does not."""
    from ndd.spectral.affinity import _close, _same_bits

    a = torch.rand(1000, generator=torch.Generator().manual_seed(0)).to(dtype)
    assert _same_bits(a, a.clone()) and _close(a, a.clone())
    b = a.clone()
    b[0], a[0] = -0.0, 0.0
    assert not _same_bits(a, b) and _close(a, b)
    b[1] = a[1] * (1 + 2e-5)
    assert _close(a.float(), b.float())  # within 1e-4 relative
    b[2] = a[2] + 0.5
    assert not _close(a, b) and not _same_bits(a, b)
