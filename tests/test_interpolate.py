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
    infer_stride_ratio,
)

# ----------------------------------------------------------------------------
# An independent, loop-based reading of Eq. (6) and of the documented
# geometry (exact rational arithmetic), for tiny grids only.
# ----------------------------------------------------------------------------


def _brute_ratio(fine, coarse):
    """The stride ratio the "stride" geometry should infer, by brute force (None: fall back to corners)."""
    axes = [(nf, nc) for nf, nc in zip(fine, coarse) if nc >= 2]
    if not axes:
        return 1
    cands = [r for r in range(1, max(nf for nf, _ in axes) + 1) if all(-(-nf // r) == nc for nf, nc in axes)]
    if not cands:
        return None
    powers = [r for r in cands if r & (r - 1) == 0]
    return min(powers) if powers else min(cands)


def _resolve(geometry, legacy, fine, coarse, ratio=None):
    """-> (geometry, (ratio_rows, ratio_cols) or None) of one step, per the module docstring."""
    if legacy:
        return "corners", None
    if geometry != "stride":
        return geometry, None
    if ratio is None:
        r = _brute_ratio(fine, coarse)
        return ("corners", None) if r is None else ("stride", (Fraction(r), Fraction(r)))
    rr, rc = ratio if isinstance(ratio, tuple) else (ratio, ratio)
    return "stride", (Fraction(rr), Fraction(rc))


def _coarse_pos(j: int, n_coarse: int, n_fine: int, geometry: str, ratio=None) -> float:
    """Fine coordinate of coarse index j."""
    if geometry == "stride":
        return float(j * ratio)
    if geometry == "corners":
        return 0.0 if n_coarse == 1 else j * (n_fine - 1) / (n_coarse - 1)
    return (j + 0.5) * n_fine / n_coarse - 0.5


def _window(i, n_fine, n_coarse, s, geometry, legacy, ratio=None) -> list:
    """Coarse indices of fine position i's window along one axis (None = outside)."""
    r = (s - 1) // 2
    if legacy:
        base = math.floor(Fraction(i * (n_coarse - 1), max(n_fine - 1, 1)))
        return [min(max(base + o, 0), n_coarse - 1) for o in range(-r, r + 1)]
    if geometry == "stride":
        u = Fraction(i) / ratio
    elif geometry == "corners":
        u = Fraction(0) if n_fine == 1 or n_coarse == 1 else Fraction(i * (n_coarse - 1), n_fine - 1)
    else:
        u = Fraction(2 * i + 1, 2) * Fraction(n_coarse, n_fine) - Fraction(1, 2)
    c = min(math.floor(u + Fraction(1, 2)), n_coarse - 1)
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


def reference_fai(values, feats, gamma, s, geometry="stride", legacy=False, ratio=None):
    b, m, h, w = values.shape
    _, c, hf, wf = feats.shape
    geometry, rat = _resolve(geometry, legacy, (hf, wf), (h, w), ratio)
    rr, rc = rat if rat is not None else (None, None)
    out = torch.zeros(b, m, hf, wf, dtype=values.dtype)
    for n in range(b):
        # f_j: the fine features bilinearly sampled at every coarse point
        fj = {
            (rj, cj): _bilinear(feats[n], _coarse_pos(rj, h, hf, geometry, rr), _coarse_pos(cj, w, wf, geometry, rc))
            for rj in range(h)
            for cj in range(w)
        }
        for i in range(hf):
            rows = _window(i, hf, h, s, geometry, legacy, rr)
            for k in range(wf):
                cols = _window(k, wf, w, s, geometry, legacy, rc)
                window = [(rj, cj) for rj in rows for cj in cols if rj is not None and cj is not None]
                f_j = torch.stack([fj[j] for j in window])  # (n_j, C)
                logits = -gamma * ((feats[n, :, i, k] - f_j) ** 2).mean(1)
                vals = torch.stack([values[n, :, rj, cj] for rj, cj in window])  # (n_j, M)
                out[n, :, i, k] = (torch.softmax(logits, 0)[:, None] * vals).sum(0)
    return out


def reference_resize(y, size, geometry="stride"):
    """The final resize of fai_upsample: output pixel k read at k / r (stride) or per corners/centres."""
    _, _, h, w = y.shape
    geometry, rat = _resolve(geometry, False, size, (h, w))
    out = torch.empty(y.shape[0], y.shape[1], *size, dtype=y.dtype)

    def pos(k, n_out, n_in, r):
        if geometry == "stride":
            return k / float(r)
        if geometry == "corners":
            return 0.0 if n_out == 1 else k * (n_in - 1) / (n_out - 1)
        return (k + 0.5) * n_in / n_out - 0.5

    for n in range(y.shape[0]):
        for i in range(size[0]):
            for k in range(size[1]):
                out[n, :, i, k] = _bilinear(y[n], pos(i, size[0], h, rat and rat[0]), pos(k, size[1], w, rat and rat[1]))
    return out


def level_sizes(h, w, strides=(2, 4, 8)):
    """The backbones' level sizes ceil(H / s) x ceil(W / s)."""
    return [(-(-h // s), -(-w // s)) for s in strides]


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


GEOMETRIES = [("stride", False), ("corners", False), ("centres", False), ("corners", True)]  # (geometry, authors' window)


def _lib(geometry, legacy):
    """The library's geometry argument for a reference (geometry, authors' window) pair."""
    return "authors" if legacy else geometry
SIZES = [
    ((4, 5), (7, 9)),
    ((3, 3), (3, 5)),  # window wider than the coarse grid
    ((4, 4), (8, 8)),
    ((3, 4), (10, 7)),  # non-integer ratios
    ((5, 6), (5, 6)),  # same size
    ((4, 1), (9, 1)),  # a single column
    ((6, 7), (3, 4)),  # "fine" grid coarser than the values (down-sampling)
    ((3, 4), (6, 8)),  # stride 2, even sizes: fine pixels past the last coarse point
    ((2, 3), (8, 12)),  # stride 4
]


# ----------------------------------------------------------------------------
# correctness
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("geometry,legacy", GEOMETRIES)
@pytest.mark.parametrize(
    "coarse,fine,s", [(c, f, 5) for c, f in SIZES] + [(SIZES[0][0], SIZES[0][1], 1), (SIZES[3][0], SIZES[3][1], 3)]
)
def test_matches_reference(geometry, legacy, coarse, fine, s):
    values = _rand(1, 3, *coarse, seed=1)
    feats = _rand(1, 4, *fine, seed=2)
    got = feature_attentional_upsample(values, feats, 1.7, s, geometry=_lib(geometry, legacy))
    want = reference_fai(values, feats, 1.7, s, geometry, legacy)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "coarse,fine,ratio",
    [
        ((4, 5), (6, 8), 1.5),  # fractional positions: f_j bilinear between two fine pixels
        ((3, 4), (9, 8), (3, 2)),  # a ratio the sizes do not pin down, one per axis
        ((3, 3), (5, 5), 2.5),  # the last coarse point lies past the fine grid (clamped)
        ((4, 4), (9, 9), Fraction(8, 3)),
        ((5, 6), (7, 9), 1 / 3),  # "fine" denser than the ratio: most pixels beyond the coarse grid
    ],
)
def test_matches_reference_explicit_ratio(coarse, fine, ratio):
    values = _rand(1, 2, *coarse, seed=30)
    feats = _rand(1, 3, *fine, seed=31)
    got = feature_attentional_upsample(values, feats, 2.3, 5, ratio=ratio)
    want = reference_fai(values, feats, 2.3, 5, "stride", ratio=Fraction(1, 3) if ratio == 1 / 3 else ratio)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("geometry,legacy", GEOMETRIES)
@pytest.mark.parametrize("fine", [(13, 17), (10, 14)])
def test_weights_sum_to_one_and_mask(geometry, legacy, fine):
    feats = _rand(2, 5, *fine, seed=3)
    w = fai_weights(feats, (5, 7), 3.0, 5, geometry=_lib(geometry, legacy))
    assert w.shape == (2, 25, *fine)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(2, *fine, dtype=w.dtype))
    index, valid = fai_neighbours(fine, (5, 7), 5, geometry=_lib(geometry, legacy))
    assert index.shape == valid.shape == (25, *fine)
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


@pytest.mark.parametrize("geometry,legacy", GEOMETRIES)
@pytest.mark.parametrize("gamma", [0.0, 1.0, 50.0, 1e6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fine", [(19, 23), (28, 36)])  # corner-compatible and stride-4 even sizes
def test_constant_map_stays_constant(geometry, legacy, gamma, dtype, fine):
    feats = 10 * _rand(2, 6, *fine, dtype=dtype, seed=6)
    values = torch.full((2, 3, 7, 9), 0.37, dtype=dtype)
    out = feature_attentional_upsample(values, feats, gamma, 5, geometry=_lib(geometry, legacy))
    assert out.dtype == dtype and out.shape == (2, 3, *fine)
    torch.testing.assert_close(out, torch.full_like(out, 0.37))


@pytest.mark.parametrize("geometry", ["stride", "corners", "centres"])
@pytest.mark.parametrize("gamma", [0.0, 2.0, 1e4])
def test_identical_features_give_local_average(geometry, gamma):
    values = _rand(1, 2, 5, 6, seed=7)
    feats = torch.ones(1, 3, 10, 12, dtype=torch.float64) * 0.5  # stride 2, even sizes
    out = feature_attentional_upsample(values, feats, gamma, 3, geometry=geometry)
    want = torch.empty_like(out)
    two = Fraction(2)
    for i in range(10):
        rows = [r for r in _window(i, 10, 5, 3, geometry, False, two) if r is not None]
        for k in range(12):
            cols = [c for c in _window(k, 12, 6, 3, geometry, False, two) if c is not None]
            want[0, :, i, k] = values[0][:, rows][:, :, cols].mean((1, 2))
    torch.testing.assert_close(out, want)


@pytest.mark.parametrize("geometry", ["stride", "corners", "centres"])
def test_step_edge_stays_sharp(geometry):
    # stride: 16 fine <-> 8 coarse, coarse j at fine 2j, edge between fine 6|7 (coarse 3|4);
    # corner-aligned: 15 fine <-> 8 coarse, coarse j at fine 2j, edge between fine 6|7;
    # pixel centres: 16 fine <-> 8 coarse, coarse j at fine 2j+0.5, edge between fine 7|8.
    n = 15 if geometry == "corners" else 16
    edge = 8 if geometry == "centres" else 7
    feats = torch.zeros(1, 3, n, n, dtype=torch.float64)
    feats[..., edge:] = 1.0
    values = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    values[..., 4:] = 1.0
    want = feats[:, :1]
    out = feature_attentional_upsample(values, feats, 1e3, 5, geometry=geometry)
    torch.testing.assert_close(out, want, atol=1e-12, rtol=0)
    bilinear = F.interpolate(values, size=(n, n), mode="bilinear", align_corners=geometry != "centres")
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


@pytest.mark.parametrize("geometry,legacy", GEOMETRIES)
def test_gradcheck_single_step(geometry, legacy):
    values = _rand(2, 2, 3, 4, seed=14).requires_grad_()
    feats = _rand(2, 3, 6, 7, seed=15).requires_grad_()
    gamma = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)

    def fn(v, f, g):
        return feature_attentional_upsample(v, f, g, 3, geometry=_lib(geometry, legacy))

    # the full Jacobian for the default geometry (stride 2, even sizes), random projections for the others
    fast = (geometry, legacy) != ("stride", False)
    assert torch.autograd.gradcheck(fn, (values, feats, gamma), fast_mode=fast)


def test_gradcheck_explicit_ratio_and_stride_resize():
    """Fractional f_j positions and the stride resize (replicated border, crop) are differentiable."""
    values = _rand(1, 2, 3, 4, seed=32).requires_grad_()
    feats = _rand(1, 2, 5, 6, seed=33).requires_grad_()
    gamma = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)

    def step(v, f, g):
        return feature_attentional_upsample(v, f, g, 3, ratio=1.5)

    assert torch.autograd.gradcheck(step, (values, feats, gamma), fast_mode=True)

    f0 = _rand(1, 2, 6, 8, seed=34).requires_grad_()  # stride 2 of a 12x15 image

    def multi(v, f, g):
        return fai_upsample(v, [f], g.reshape(1), output_size=(12, 15), neighbourhood=3)

    assert torch.autograd.gradcheck(multi, (values, f0, gamma), fast_mode=True)


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
# the stride geometry (the backbones' ceil(H / s) levels, feature j on pixel s j)
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("s_fine,s_coarse", [(1, 2), (2, 4), (4, 8), (2, 8), (1, 8), (1, 4)])
def test_infer_stride_ratio_is_exact_for_ceil_levels(s_fine, s_coarse):
    for n in range(1, 200):
        fine, coarse = -(-n // s_fine), -(-n // s_coarse)
        for other in (1, n, 37):  # the second axis: degenerate, the same, or another size
            sizes = ((fine, -(-other // s_fine)), (coarse, -(-other // s_coarse)))
            got = infer_stride_ratio(*sizes)
            assert got == _brute_ratio(*sizes)
            if coarse >= 2 or -(-other // s_coarse) >= 2:
                assert got == s_coarse // s_fine, (n, other, sizes)
    assert infer_stride_ratio((41, 61), (41, 41)) is None  # the authors' fixed grid: corners
    assert infer_stride_ratio((3, 5), (6, 7)) is None  # down-sampling
    assert infer_stride_ratio((9, 9), (3, 3)) == 4  # 3 also fits; powers of two win
    assert infer_stride_ratio((7, 5), (1, 1)) == 1


def test_stride_480_delta_box_average_lands_on_4j():
    """gamma = 0, one x4 step 60x80 -> 240x320: a coarse delta at j becomes the box of fine
    pixels whose window holds j, i.e. [4j - 10, 4j + 9] (centre 4j - 1/2; the half pixel is the
    window rule's round-half-up at the x4 ties, the same in every geometry)."""
    j = (50, 70)
    values = torch.zeros(1, 1, 60, 80, dtype=torch.float64)
    values[0, 0, j[0], j[1]] = 1.0
    feats = torch.zeros(1, 1, 240, 320, dtype=torch.float64)
    out = feature_attentional_upsample(values, feats, 0.0)
    want = torch.zeros_like(out)
    want[0, 0, 4 * j[0] - 10 : 4 * j[0] + 10, 4 * j[1] - 10 : 4 * j[1] + 10] = 1 / 25
    torch.testing.assert_close(out, want, rtol=0, atol=1e-15)
    # the corner-aligned geometry puts coarse j at 4.05 j: its box is shifted by ~2.5 pixels
    corners = feature_attentional_upsample(values, feats, 0.0, align_corners=True)
    rows = corners[0, 0].sum(1).nonzero().squeeze(1)
    assert int(rows[0]) > 4 * j[0] - 10 + 1


@pytest.mark.parametrize("j", [(57, 77), (59, 79), (3, 5)])
def test_stride_480x640_pipeline_puts_coarse_j_on_pixel_8j(j):
    """H, W = 480, 640 (levels 240x320, 120x160, 60x80). Features that single out the pixels
    s*j of coarse point j carry a stride-8 delta at j onto 4j on the stride-2 grid and 8j on
    the image - exactly, also at the far border, where the corner-aligned grids are 6 px off."""
    (h2, w2), (h4, w4), (h8, w8) = level_sizes(480, 640)
    assert ((h2, w2), (h4, w4), (h8, w8)) == ((240, 320), (120, 160), (60, 80))
    values = torch.zeros(1, 1, h8, w8, dtype=torch.float64)
    values[0, 0, j[0], j[1]] = 1.0
    f2 = torch.zeros(1, 1, h2, w2, dtype=torch.float64)
    f2[0, 0, 4 * j[0], 4 * j[1]] = 1.0
    f4 = torch.zeros(1, 1, h4, w4, dtype=torch.float64)
    f4[0, 0, 2 * j[0], 2 * j[1]] = 1.0
    f8 = torch.zeros(1, 1, h8, w8, dtype=torch.float64)
    gammas = (1e4, 1e4, 1e4)
    on_f2 = fai_upsample(values, [f2, f4, f8], gammas)
    torch.testing.assert_close(on_f2, f2, rtol=0, atol=1e-12)
    out = FeatureAttentionalInterpolation(gammas).double()(values, [f2, f4, f8], output_size=(480, 640))
    # image pixel y is read at y / 2 on the stride-2 grid: a tent of half-width 2 around 8j
    tent_r = (1 - (torch.arange(480, dtype=torch.float64) / 2 - 4 * j[0]).abs()).clamp_min(0)
    tent_c = (1 - (torch.arange(640, dtype=torch.float64) / 2 - 4 * j[1]).abs()).clamp_min(0)
    torch.testing.assert_close(out[0, 0], tent_r[:, None] * tent_c[None, :], rtol=0, atol=1e-12)
    assert out[0, 0, 8 * j[0], 8 * j[1]] > 1 - 1e-12
    if j[0] > 10:  # the old corner-aligned default loses the delta near the far border
        corners = fai_upsample(values, [f2, f4, f8], gammas, output_size=(480, 640), align_corners=True)
        assert (corners - out).abs().max() > 0.5


def test_stride_step_sampled_features_are_a_strided_pick():
    """At integer ratios f_j is exactly the fine feature at pixel r j (no blending)."""
    feats = _rand(1, 3, 24, 32, seed=40)
    values = _rand(1, 2, 6, 8, seed=41)
    # with a huge gamma, a fine pixel whose feature equals f_j takes exactly y_j
    out = feature_attentional_upsample(values, feats, 1e8)
    torch.testing.assert_close(out[:, :, ::4, ::4], values, rtol=0, atol=1e-12)


def _odd_even_case(H, W, seed, image_level=False):
    sizes = level_sizes(H, W)
    feats = [_rand(1, c, *hw, seed=seed + k) for k, (c, hw) in enumerate(zip((3, 4, 5), sizes))]
    gammas = [1.0, 4.0, 8.0]
    if image_level:
        feats.insert(0, _rand(1, 3, H, W, seed=seed + 9))
        gammas.insert(0, 10.0)
    values = _rand(1, 2, *sizes[-1], seed=seed + 7)
    return values, feats, gammas


def test_stride_equals_corners_when_h_is_1_mod_8():
    """49x57 (like 321x481: 8k + 1 on both sides; levels 25x29, 13x15, 7x8): the exact stride
    geometry is the corner-aligned one, so the new default gives the old default's results."""
    assert level_sizes(49, 57) == [(25, 29), (13, 15), (7, 8)]
    for image_level in (False, True):
        values, feats, gammas = _odd_even_case(49, 57, seed=50, image_level=image_level)
        out = FeatureAttentionalInterpolation(gammas).double()(values, feats, output_size=(49, 57))
        old = FeatureAttentionalInterpolation(gammas, align_corners=True).double()(values, feats, output_size=(49, 57))
        torch.testing.assert_close(out, old, rtol=1e-13, atol=1e-13)
    for fine, coarse in [((25, 29), (13, 15)), ((13, 15), (7, 8)), ((25, 29), (7, 8)), ((49, 57), (25, 29))]:
        for a, b in zip(fai_neighbours(fine, coarse), fai_neighbours(fine, coarse, geometry="corners")):
            assert torch.equal(a, b)
    # ... and not otherwise: 48x56 (levels 24x28, 12x14, 6x7)
    values, feats, gammas = _odd_even_case(48, 56, seed=50)
    out = fai_upsample(values, feats, gammas, (48, 56))
    assert (out - fai_upsample(values, feats, gammas, (48, 56), align_corners=True)).abs().max() > 1e-3


def test_stride_multi_level_matches_reference_steps():
    """Even sizes (a 20x26 image): every step and the final resize follow the reference."""
    values, feats, gammas = _odd_even_case(20, 26, seed=60)
    out = fai_upsample(values, feats, gammas, output_size=(20, 26), neighbourhood=3)
    y = values
    for f, g in zip(reversed(feats[:2]), reversed(gammas[:2])):
        y = reference_fai(y, f, g, 3, "stride")
    torch.testing.assert_close(out, reference_resize(y, (20, 26)), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "coarse,size",
    [((6, 7), (12, 14)), ((6, 7), (11, 13)), ((6, 7), (12, 13)), ((6, 7), (13, 15)), ((1, 7), (2, 14)), ((3, 2), (12, 8))],
)
def test_final_resize_reads_pixel_y_at_y_over_r(coarse, size):
    """The final resize: pixel y at y / r (r inferred; clamped past the last point), or
    corner-aligned when the sizes are no stride pair (13 from 6)."""
    y = _rand(1, 2, *coarse, seed=70)
    out = fai_upsample(y, [_rand(1, 1, *coarse, seed=71)], [1.0], output_size=size)
    torch.testing.assert_close(out, reference_resize(y, size), rtol=1e-12, atol=1e-12)
    if size == (12, 14):
        torch.testing.assert_close(out[:, :, ::2, ::2], y, rtol=0, atol=0)


@pytest.mark.parametrize("H,W", [(30, 45), (31, 44), (9, 10), (17, 2), (1, 7), (64, 33), (480 // 8, 642 // 8)])
@pytest.mark.parametrize("image_level", [False, True])
def test_odd_even_image_sizes(H, W, image_level):
    values, feats, gammas = _odd_even_case(H, W, seed=80, image_level=image_level)
    out = fai_upsample(values, feats, gammas, output_size=(H, W))
    assert out.shape == (1, 2, H, W)
    assert torch.isfinite(out).all()
    assert out.min() >= values.min() - 1e-12 and out.max() <= values.max() + 1e-12  # convex
    # a constant map stays constant through every step and the resize
    const = fai_upsample(torch.full_like(values, -0.25), feats, gammas, output_size=(H, W))
    torch.testing.assert_close(const, torch.full_like(const, -0.25))


# ----------------------------------------------------------------------------
# geometry arguments
# ----------------------------------------------------------------------------


def test_geometry_arguments_and_backward_compatibility():
    values = _rand(1, 2, 4, 5, seed=90)
    feats = _rand(1, 3, 8, 10, seed=91)  # stride 2: "stride" and "corners" differ here
    run = lambda **kw: feature_attentional_upsample(values, feats, 1.5, **kw)  # noqa: E731
    default = run()
    assert torch.equal(default, run(geometry="stride"))
    assert torch.equal(default, run(ratio=2))
    assert torch.equal(run(align_corners=True), run(geometry="corners"))
    assert torch.equal(run(align_corners=False), run(geometry="centres"))
    assert torch.equal(run(align_corners=False), run(geometry="centers"))
    assert torch.equal(run(geometry="corners", align_corners=True), run(geometry="corners"))
    assert not torch.allclose(default, run(geometry="corners"))
    # the authors' window is corner-aligned
    assert torch.equal(run(geometry="authors"), run(geometry="authors", align_corners=True))
    assert not torch.allclose(run(geometry="authors"), run(geometry="corners"))  # borders clamped, not masked
    for bad in [dict(geometry="stride", align_corners=True), dict(geometry="corners", align_corners=False),
                dict(geometry="pixels"), dict(geometry="corners", ratio=2), dict(geometry="authors", ratio=2),
                dict(geometry="authors", align_corners=False)]:
        with pytest.raises(ValueError, match="geometry|ratio"):
            run(**bad)
    for bad in (0, -1.0, float("nan"), float("inf"), (1, 2, 3), True, "2", (2, None)):
        with pytest.raises(ValueError, match="ratio"):
            run(ratio=bad)
    w = fai_weights(feats, (4, 5), 1.5, ratio=(2, 2))
    assert torch.equal(w, fai_weights(feats, (4, 5), 1.5))
    index, valid = fai_neighbours((8, 10), (4, 5), 5)
    assert valid[:, -1, -1].sum() == 9  # fine 7 and 9 lie past the last coarse point (6, 8)
    assert int(index[12, -1, -1]) == 4 * 5 - 1  # window centre clamped to the last coarse cell


def test_module_geometry():
    fai = FeatureAttentionalInterpolation()
    assert fai.geometry == "stride" and fai.align_corners is None
    assert "geometry='stride'" in repr(fai)
    assert FeatureAttentionalInterpolation(align_corners=True).geometry == "corners"
    assert FeatureAttentionalInterpolation(align_corners=False).align_corners is False
    assert FeatureAttentionalInterpolation(geometry="corners").align_corners is True
    with pytest.raises(ValueError, match="contradicts"):
        FeatureAttentionalInterpolation(geometry="stride", align_corners=True)
    values, feats, gammas = _odd_even_case(20, 26, seed=95)
    for kw in (dict(), dict(geometry="corners"), dict(geometry="centres"), dict(geometry="authors")):
        fai = FeatureAttentionalInterpolation(gammas, **kw).double()
        got = fai(values, feats, (20, 26))
        want = fai_upsample(values, feats, fai.gamma, (20, 26), **kw)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


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
