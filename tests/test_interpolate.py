"""Tests of ndd.interpolate (feature-attentional interpolation, paper Eq. 6)."""

from __future__ import annotations

import math
import resource
import sys
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from ndd.interpolate import (
    FeatureAttentionalInterpolation,
    fai_neighbours,
    fai_upsample,
    fai_weights,
    feature_attentional_upsample,
)

# ----------------------------------------------------------------------------
# An independent, loop-based reading of Eq. (6) and of the documented
# geometry (exact rational arithmetic), for tiny grids only.
# ----------------------------------------------------------------------------


def _coarse_pos(j: int, n_coarse: int, n_fine: int, corners: bool) -> float:
    """Fine coordinate of coarse index j."""
    if corners:
        return 0.0 if n_coarse == 1 else j * (n_fine - 1) / (n_coarse - 1)
    return (j + 0.5) * n_fine / n_coarse - 0.5


def _window(i: int, n_fine: int, n_coarse: int, s: int, corners: bool, legacy: bool) -> list[int]:
    """Coarse indices of fine position i's window along one axis (None = outside)."""
    r = (s - 1) // 2
    if legacy:
        base = math.floor(Fraction(i * (n_coarse - 1), max(n_fine - 1, 1)))
        return [min(max(base + o, 0), n_coarse - 1) for o in range(-r, r + 1)]
    if corners:
        u = Fraction(0) if n_fine == 1 or n_coarse == 1 else Fraction(i * (n_coarse - 1), n_fine - 1)
    else:
        u = Fraction(2 * i + 1, 2) * Fraction(n_coarse, n_fine) - Fraction(1, 2)
    c = math.floor(u + Fraction(1, 2))
    return [c + o if 0 <= c + o < n_coarse else None for o in range(-r, r + 1)]


def _bilinear(f: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """f (C, H, W) sampled at fine coordinate (y, x)."""
    _, h, w = f.shape
    y, x = min(max(y, 0.0), h - 1), min(max(x, 0.0), w - 1)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    dy, dx = y - y0, x - x0
    return (
        (1 - dy) * (1 - dx) * f[:, y0, x0]
        + (1 - dy) * dx * f[:, y0, x1]
        + dy * (1 - dx) * f[:, y1, x0]
        + dy * dx * f[:, y1, x1]
    )


def reference_fai(values, feats, gamma, s, corners=True, legacy=False):
    corners = corners or legacy
    b, m, h, w = values.shape
    _, c, hf, wf = feats.shape
    out = torch.zeros(b, m, hf, wf, dtype=values.dtype)
    for n in range(b):
        # f_j: the fine features bilinearly sampled at every coarse point
        fj = {
            (rj, cj): _bilinear(feats[n], _coarse_pos(rj, h, hf, corners), _coarse_pos(cj, w, wf, corners))
            for rj in range(h)
            for cj in range(w)
        }
        for i in range(hf):
            rows = _window(i, hf, h, s, corners, legacy)
            for k in range(wf):
                cols = _window(k, wf, w, s, corners, legacy)
                window = [(rj, cj) for rj in rows for cj in cols if rj is not None and cj is not None]
                f_j = torch.stack([fj[j] for j in window])  # (n_j, C)
                logits = -gamma * ((feats[n, :, i, k] - f_j) ** 2).mean(1)
                vals = torch.stack([values[n, :, rj, cj] for rj, cj in window])  # (n_j, M)
                out[n, :, i, k] = (torch.softmax(logits, 0)[:, None] * vals).sum(0)
    return out


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_inputs(request):
    """Tiny tensors run faster on one thread (no OpenMP hand-offs on a busy CPU)."""
    if "full_size" in request.node.name:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _rand(*shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


GEOMETRIES = [(True, False), (False, False), (True, True)]  # (align_corners, legacy)
SIZES = [
    ((4, 5), (7, 9)),
    ((3, 3), (3, 5)),  # window wider than the coarse grid
    ((4, 4), (8, 8)),
    ((3, 4), (10, 7)),  # non-integer ratios
    ((5, 6), (5, 6)),  # same size
    ((4, 1), (9, 1)),  # a single column
    ((6, 7), (3, 4)),  # "fine" grid coarser than the values (down-sampling)
]


# ----------------------------------------------------------------------------
# correctness
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("corners,legacy", GEOMETRIES)
@pytest.mark.parametrize(
    "coarse,fine,s", [(c, f, 5) for c, f in SIZES] + [(SIZES[0][0], SIZES[0][1], 1), (SIZES[3][0], SIZES[3][1], 3)]
)
def test_matches_reference(corners, legacy, coarse, fine, s):
    values = _rand(1, 3, *coarse, seed=1)
    feats = _rand(1, 4, *fine, seed=2)
    got = feature_attentional_upsample(values, feats, 1.7, s, align_corners=corners, legacy=legacy)
    want = reference_fai(values, feats, 1.7, s, corners, legacy)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("corners,legacy", GEOMETRIES)
def test_weights_sum_to_one_and_mask(corners, legacy):
    feats = _rand(2, 5, 13, 17, seed=3)
    w = fai_weights(feats, (5, 7), 3.0, 5, align_corners=corners, legacy=legacy)
    assert w.shape == (2, 25, 13, 17)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(2, 13, 17, dtype=w.dtype))
    index, valid = fai_neighbours((13, 17), (5, 7), 5, align_corners=corners, legacy=legacy)
    assert index.shape == valid.shape == (25, 13, 17)
    assert int(index.min()) >= 0 and int(index.max()) < 35
    assert (w[:, ~valid] == 0).all()
    if legacy:
        assert valid.all()
    else:
        assert not valid.all()  # borders are masked, not clamped


def test_weights_reproduce_upsample():
    """fai_weights + fai_neighbours give the same result as the fused step."""
    values = _rand(1, 2, 6, 5, seed=4)
    feats = _rand(1, 3, 11, 9, seed=5)
    w = fai_weights(feats, (6, 5), 0.8, 3)
    index, _ = fai_neighbours((11, 9), (6, 5), 3)
    gathered = values.flatten(2)[:, :, index]  # (B, M, S*S, H, W)
    torch.testing.assert_close((w[:, None] * gathered).sum(2), feature_attentional_upsample(values, feats, 0.8, 3))


@pytest.mark.parametrize("corners,legacy", GEOMETRIES)
@pytest.mark.parametrize("gamma", [0.0, 1.0, 50.0, 1e6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constant_map_stays_constant(corners, legacy, gamma, dtype):
    feats = 10 * _rand(2, 6, 19, 23, dtype=dtype, seed=6)
    values = torch.full((2, 3, 7, 9), 0.37, dtype=dtype)
    out = feature_attentional_upsample(values, feats, gamma, 5, align_corners=corners, legacy=legacy)
    assert out.dtype == dtype and out.shape == (2, 3, 19, 23)
    torch.testing.assert_close(out, torch.full_like(out, 0.37))


@pytest.mark.parametrize("corners", [True, False])
@pytest.mark.parametrize("gamma", [0.0, 2.0, 1e4])
def test_identical_features_give_local_average(corners, gamma):
    values = _rand(1, 2, 5, 6, seed=7)
    feats = torch.ones(1, 3, 13, 11, dtype=torch.float64) * 0.5
    out = feature_attentional_upsample(values, feats, gamma, 3, align_corners=corners)
    want = torch.empty_like(out)
    for i in range(13):
        rows = [r for r in _window(i, 13, 5, 3, corners, False) if r is not None]
        for k in range(11):
            cols = [c for c in _window(k, 11, 6, 3, corners, False) if c is not None]
            want[0, :, i, k] = values[0][:, rows][:, :, cols].mean((1, 2))
    torch.testing.assert_close(out, want)


@pytest.mark.parametrize("corners", [True, False])
def test_step_edge_stays_sharp(corners):
    # corner-aligned: 15 fine <-> 8 coarse, coarse j at fine 2j, edge between fine 6|7;
    # pixel centres: 16 fine <-> 8 coarse, coarse j at fine 2j+0.5, edge between fine 7|8.
    n = 15 if corners else 16
    edge = 7 if corners else 8
    feats = torch.zeros(1, 3, n, n, dtype=torch.float64)
    feats[..., edge:] = 1.0
    values = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    values[..., 4:] = 1.0
    want = feats[:, :1]
    out = feature_attentional_upsample(values, feats, 1e3, 5, align_corners=corners)
    torch.testing.assert_close(out, want, atol=1e-12, rtol=0)
    bilinear = F.interpolate(values, size=(n, n), mode="bilinear", align_corners=corners)
    assert (bilinear - want).abs().max() > 0.2  # bilinear blurs the edge


def test_image_level_sharpens_full_resolution():
    """With the image as finest level, the last (x2) step follows image edges."""
    h, w = 33, 41  # image; its stride-2 grid is 17x21 (corner-aligned: point j at pixel 2j)
    img = torch.zeros(1, 3, h, w, dtype=torch.float64)
    img[..., :, 19:] = 1.0  # edge between pixels 18 and 19, i.e. between two stride-2 points
    f2 = img[..., ::2, ::2]
    values = f2[:, :1].clone()  # a segment mask, exact at half resolution
    out_bilinear = fai_upsample(values, [f2], [4.0], output_size=(h, w))
    out_image = fai_upsample(values, [img, f2], [1e3, 4.0])
    target = img[:, :1]
    assert (out_image - target).abs().max() < 1e-12
    assert (out_bilinear - target).abs().max() >= 0.5  # pixel 19 is half-way


def test_batch_equals_single():
    values = _rand(3, 2, 6, 7, seed=8)
    feats = _rand(3, 4, 11, 13, seed=9)
    out = feature_attentional_upsample(values, feats, 2.0, 5)
    for n in range(3):
        torch.testing.assert_close(out[n : n + 1], feature_attentional_upsample(values[n : n + 1], feats[n : n + 1], 2.0, 5))


def test_memory_layouts_and_inference_mode():
    values = _rand(2, 3, 6, 7, seed=25)
    feats = _rand(2, 4, 11, 13, seed=26)
    want = feature_attentional_upsample(values, feats, 2.0)
    channels_last = feats.contiguous(memory_format=torch.channels_last)
    strided = _rand(2, 4, 22, 26, seed=27)[:, :, ::2, ::2].copy_(feats)
    for f in (channels_last, strided):
        torch.testing.assert_close(feature_attentional_upsample(values, f, 2.0), want)
    # a plan first built under inference mode must still serve autograd later
    with torch.inference_mode():
        feature_attentional_upsample(values[:, :, :5], feats[:, :, :9], 2.0)
    v = values[:, :, :5].clone().requires_grad_()
    feature_attentional_upsample(v, feats[:, :, :9], 2.0).sum().backward()
    assert v.grad is not None


def test_float32_matches_float64():
    values = _rand(1, 4, 9, 11, seed=10)
    feats = _rand(1, 16, 17, 21, seed=11) + 5.0  # an offset: the distance must not lose precision
    out64 = feature_attentional_upsample(values, feats, 4.0)
    out32 = feature_attentional_upsample(values.float(), feats.float(), 4.0)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out64, rtol=1e-4, atol=1e-5)


def test_large_gamma_is_stable():
    values = _rand(1, 2, 5, 5, seed=12)
    feats = _rand(1, 3, 9, 9, seed=13)
    for dtype in (torch.float32, torch.float64):
        out = feature_attentional_upsample(values.to(dtype), feats.to(dtype), 1e8)
        assert torch.isfinite(out).all()
        # a hard arg-min over the window: every output is one of the window's values
        assert out.min() >= values.min() - 1e-5 and out.max() <= values.max() + 1e-5


# ----------------------------------------------------------------------------
# gradients
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("corners,legacy", GEOMETRIES)
def test_gradcheck_single_step(corners, legacy):
    values = _rand(2, 2, 3, 4, seed=14).requires_grad_()
    feats = _rand(2, 3, 6, 7, seed=15).requires_grad_()
    gamma = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)

    def fn(v, f, g):
        return feature_attentional_upsample(v, f, g, 3, align_corners=corners, legacy=legacy)

    # the full Jacobian for the default geometry, random projections for the others
    fast = (corners, legacy) != (True, False)
    assert torch.autograd.gradcheck(fn, (values, feats, gamma), fast_mode=fast)


def test_gradcheck_weights():
    feats = _rand(1, 3, 5, 6, seed=16).requires_grad_()
    gamma = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, g: fai_weights(f, (3, 3), g, 3), (feats, gamma))


def test_gradcheck_multi_level_module():
    fai = FeatureAttentionalInterpolation(gamma_init=(0.5, 2.0), neighbourhood=3).double()
    values = _rand(1, 2, 3, 3, seed=17).requires_grad_()
    f0 = _rand(1, 2, 9, 9, seed=18).requires_grad_()
    f1 = _rand(1, 3, 5, 5, seed=19).requires_grad_()
    log_gamma = fai.log_gamma

    def fn(v, a, b, lg):
        return fai_upsample(v, [a, b], lg.exp(), output_size=(11, 10), neighbourhood=3)

    assert torch.autograd.gradcheck(fn, (values, f0, f1, log_gamma), fast_mode=True)
    out = fai(values, [f0, f1], output_size=(11, 10))
    out.square().sum().backward()
    assert fai.log_gamma.grad is not None and torch.isfinite(fai.log_gamma.grad).all()
    assert (fai.log_gamma.grad != 0).all()


# ----------------------------------------------------------------------------
# multi-level pipeline
# ----------------------------------------------------------------------------


def test_multi_level_matches_chained_steps():
    values = _rand(1, 3, 5, 5, seed=20)  # like the authors' fixed grid: not a feature level
    f0, f1, f2 = _rand(1, 2, 17, 25, seed=21), _rand(1, 3, 9, 13, seed=22), _rand(1, 4, 5, 7, seed=23)
    out = fai_upsample(values, [f0, f1, f2], [1.0, 4.0, 8.0], output_size=(33, 49))
    y = feature_attentional_upsample(values, f2, 8.0)
    y = feature_attentional_upsample(y, f1, 4.0)
    y = feature_attentional_upsample(y, f0, 1.0)
    y = F.interpolate(y, size=(33, 49), mode="bilinear", align_corners=True)
    torch.testing.assert_close(out, y)
    # values already on the coarsest level: that level is skipped
    v2 = _rand(1, 3, 5, 7, seed=24)
    torch.testing.assert_close(
        fai_upsample(v2, [f0, f1, f2], [1.0, 4.0, 8.0]),
        feature_attentional_upsample(feature_attentional_upsample(v2, f1, 4.0), f0, 1.0),
    )


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def test_full_size_shapes_and_memory():
    torch.manual_seed(0)
    feats = [torch.randn(1, 16, 161, 241), torch.randn(1, 32, 81, 121), torch.randn(1, 64, 41, 61)]
    values = torch.rand(1, 20, 41, 61)
    fai = FeatureAttentionalInterpolation()
    before = _peak_rss_mb()
    with torch.no_grad():
        out = fai(values, feats, output_size=(321, 481))
    grown = _peak_rss_mb() - before  # a lower bound of the peak; a dense matrix would need > 1 GB
    assert out.shape == (1, 20, 321, 481) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.min() >= values.min() - 1e-5 and out.max() <= values.max() + 1e-5  # convex weights
    assert grown < 400, f"peak memory grew by {grown:.0f} MB"
    # the image as a fourth, full-resolution level
    img = torch.rand(1, 3, 321, 481)
    fai4 = FeatureAttentionalInterpolation(gamma_init=(10.0, 1.0, 4.0, 8.0))
    with torch.no_grad():
        assert fai4(values[:, :2], [img] + feats).shape == (1, 2, 321, 481)


# ----------------------------------------------------------------------------
# module
# ----------------------------------------------------------------------------


def test_module_parameters():
    fai = FeatureAttentionalInterpolation()
    torch.testing.assert_close(fai.gamma, torch.tensor([1.0, 4.0, 8.0]))
    assert fai.num_levels == 3 and fai.log_gamma.requires_grad
    assert [n for n, _ in fai.named_parameters()] == ["log_gamma"]
    frozen = FeatureAttentionalInterpolation((2.0,), neighbourhood=3, freeze_gamma=True)
    assert not frozen.log_gamma.requires_grad and "log_gamma" in frozen.state_dict()
    assert "gamma=[2]" in repr(frozen)
    for bad in [(), (0.0, 1.0), (-1.0,), (math.inf,)]:
        with pytest.raises(ValueError):
            FeatureAttentionalInterpolation(bad)
    with pytest.raises(ValueError):
        FeatureAttentionalInterpolation(neighbourhood=4)
    with pytest.raises(ValueError, match="gammas"):
        fai(torch.rand(1, 1, 3, 3), [torch.rand(1, 2, 5, 5)])


# ----------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------


def test_errors():
    v, f = torch.rand(2, 3, 4, 4), torch.rand(2, 5, 7, 7)
    with pytest.raises(ValueError, match="batch"):
        feature_attentional_upsample(v, f[:1], 1.0)
    for s in (0, -3, 4, 2.0, True):
        with pytest.raises(ValueError, match="neighbourhood"):
            feature_attentional_upsample(v, f, 1.0, s)
    with pytest.raises(ValueError, match="4-D"):
        feature_attentional_upsample(v[0], f, 1.0)
    with pytest.raises(ValueError, match="4-D"):
        feature_attentional_upsample(v, f[None], 1.0)
    with pytest.raises(ValueError, match="NaN"):
        feature_attentional_upsample(v, f.masked_fill(f > 0.9, float("nan")), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        feature_attentional_upsample(v.masked_fill(v > 0.9, float("inf")), f, 1.0)
    for g in (-0.5, torch.tensor(-1.0), float("nan"), torch.ones(2)):
        with pytest.raises(ValueError, match="gamma"):
            feature_attentional_upsample(v, f, g)
    with pytest.raises(ValueError, match="dtype"):
        feature_attentional_upsample(v.double(), f, 1.0)
    with pytest.raises(ValueError, match="floating"):
        feature_attentional_upsample(v.long(), f, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        fai_weights(f.masked_fill(f > 0.9, float("nan")), (4, 4), 1.0)
    with pytest.raises(ValueError, match="coarse_size"):
        fai_weights(f, (0, 4), 1.0)
    # multi-level
    f1 = torch.rand(2, 4, 5, 5)
    with pytest.raises(ValueError, match="one gamma per"):
        fai_upsample(v, [f, f1], [1.0])
    with pytest.raises(ValueError, match="fine to coarse"):
        fai_upsample(v, [f1, f], [1.0, 1.0])
    with pytest.raises(ValueError, match="batch"):
        fai_upsample(v, [f[:1]], [1.0])
    with pytest.raises(ValueError, match="non-empty"):
        fai_upsample(v, [], [])
    with pytest.raises(ValueError, match="gamma"):
        fai_upsample(v, [f], [-1.0])
    with pytest.raises(ValueError, match="output_size"):
        fai_upsample(v, [f], [1.0], output_size=(7,))
    with pytest.raises(ValueError, match="coarser along"):
        fai_upsample(torch.rand(2, 3, 8, 3), [torch.rand(2, 5, 7, 7)], [1.0])
