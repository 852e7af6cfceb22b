"""Non-maximum suppression of soft edge maps (``ndd evaluate --nms``) and soft-map files.

All inputs are small synthetic maps; no BSDS data needed.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
from scipy.special import erf

from ndd.evaluation import (
    EvaluationError,
    conv_tri,
    edge_orientation,
    edges_nms,
    evaluate_dataset,
    load_result,
    nms_edge_map,
    seg2bdry,
    thin_boundary,
)


def _ridge(shape: tuple[int, int], angle_deg: float, sigma: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """A straight soft edge through the centre: (h, w) Gaussian profile of the
    signed distance to the line whose normal is at ``angle_deg``; and that distance."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    t = np.deg2rad(angle_deg)
    dist = (xx - w // 2) * np.cos(t) + (yy - h // 2) * np.sin(t)
    return np.exp(-(dist**2) / (2 * sigma**2)), dist


def _interior(shape: tuple[int, int], margin: int = 8) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[margin:-margin, margin:-margin] = True
    return m


def test_conv_tri_is_the_normalised_triangle():
    img = np.zeros((21, 21))
    img[10, 10] = 1.0
    out = conv_tri(img, 4)
    f = np.array([1, 2, 3, 4, 5, 4, 3, 2, 1]) / 25.0
    assert out.sum() == pytest.approx(1.0)
    assert np.allclose(out[6:15, 6:15], np.outer(f, f))
    assert np.count_nonzero(out) == 81
    const = np.full((7, 9), 0.3)
    assert np.allclose(conv_tri(const, 4), 0.3)  # symmetric padding keeps constants
    assert np.array_equal(conv_tri(img, 0), img)


def test_blurred_step_edge_thins_to_one_pixel_at_the_step():
    """The gradient magnitude of a blurred vertical step keeps only the step column."""
    h, w, col = 40, 50, 20
    x = np.broadcast_to(np.arange(w, dtype=np.float64), (h, w))
    step = erf((x - col) / 3.0)
    mag = np.hypot(*np.gradient(step))
    mag /= mag.max()
    assert np.count_nonzero(mag[20] > 0.5) >= 5  # thick before
    assert np.allclose(edge_orientation(mag)[5:-5, 10:30], 0.0)  # normal along x
    out = nms_edge_map(mag)
    rows = slice(5, h - 5)  # outside the damped border
    kept = np.nonzero(out[rows])
    assert np.all(kept[1] == col)
    assert np.array_equal(np.unique(kept[0]), np.arange(h - 10))  # one pixel on every row
    assert np.allclose(out[rows, col], mag[rows, col])  # the maximum keeps its value


@pytest.mark.parametrize("angle", [10, 30, 45, 60, 80, 100, 135, 170])
def test_oblique_soft_edges_thin_to_the_line(angle):
    """Survivors lie within 0.6 px of the true line; after the benchmark's
    thresholding and thinning every row (or column) crosses it in one pixel."""
    edges, dist = _ridge((60, 70), angle)
    t = np.deg2rad(angle)
    inner = _interior(edges.shape)
    near = inner & (np.abs(dist) < 1)
    o = edge_orientation(edges)
    err = np.angle(np.exp(2j * (o[near] - t))) / 2  # angle difference modulo pi
    assert np.abs(err).max() < np.deg2rad(12)
    out = nms_edge_map(edges)
    kept = (out > 0) & inner
    assert kept.sum() > 30
    assert np.abs(dist[kept]).max() < 0.6
    thin = thin_boundary(out > 0.5) & inner
    axis = 1 if abs(np.cos(t)) < 0.7 else 0  # steep lines: count per column
    idx = np.nonzero(thin)[axis]
    assert np.all(np.bincount(idx)[np.unique(idx)] == 1)


def test_suppression_rule_multiplier_and_radius():
    """m * e < interpolated neighbour suppresses; m = 1.01 keeps near-ties; r widens the test."""
    row = np.array([0.0, 0.2, 0.5, 1.0, 0.995, 0.5, 0.2, 0.98, 1.0, 0.6, 0.0, 0.0])
    e = np.tile(row, (3, 1))
    o = np.zeros_like(e)  # normal along x
    out = edges_nms(e, o, r=1, s=0, m=1.01)
    assert np.array_equal(np.nonzero(out[1])[0], [3, 4, 8])  # 0.995 * 1.01 >= 1, 0.98 * 1.01 < 1
    out = edges_nms(e, o, r=1, s=0, m=1.0)
    assert np.array_equal(np.nonzero(out[1])[0], [3, 8])
    out = edges_nms(e, o, r=2, s=0, m=1.01)
    assert np.array_equal(np.nonzero(out[1])[0], [3, 4, 8])
    # half-pixel steps: the neighbour is interpolated bilinearly
    e2 = np.tile(np.array([0.0, 0.0, 1.0, 0.9, 0.0, 0.0]), (4, 1))
    diag = np.full_like(e2, np.pi / 3)  # cos = 0.5: neighbour at x +- 0.5, y +- 0.87
    out2 = edges_nms(e2, diag, r=1, s=0)
    assert out2[1, 2] == 1.0 and out2[1, 3] == 0.0  # 0.9 * 1.01 < (1 + 0.9) / 2 at x = 2.5


def test_border_damping():
    e = np.full((20, 30), 0.5)
    out = edges_nms(e, np.zeros_like(e), r=1, s=5)
    assert np.all(out[0] == 0) and np.all(out[:, -1] == 0)
    assert out[2, 15] == pytest.approx(0.5 * 2 / 5)
    assert out[10, 27] == pytest.approx(0.5 * 2 / 5)  # 2 from the right border
    assert out[15, 27] == pytest.approx(0.5 * 2 / 5 * 4 / 5)  # and 4 from the bottom
    assert out[3, 1] == pytest.approx(0.5 * 3 / 5 * 1 / 5)
    assert np.all(out[5:15, 5:25] == 0.5)
    small = edges_nms(np.full((6, 40), 0.5), np.zeros((6, 40)), s=5)  # s capped at h // 2 = 3
    assert small[1, 20] == pytest.approx(0.5 / 3)


def _write_gt(path, segs):
    cell = np.empty((1, len(segs)), dtype=object)
    for k, seg in enumerate(segs):
        cell[0, k] = {"Segmentation": seg.astype(np.uint16), "Boundaries": seg2bdry(seg).astype(np.uint8)}
    scipy.io.savemat(path, {"groundTruth": cell})


def test_nms_in_the_benchmark(tmp_path):
    """An asymmetric soft edge peaked on the ground-truth boundary (as CNN maps
    often are): thresholding + thinning alone puts the line at the middle of
    the band, off the boundary at low thresholds; NMS keeps the peak, so the
    precision is ~1 at every threshold.  Also reads .npy and 16-bit PNG maps."""
    h, w = 48, 64
    seg = np.ones((h, w), dtype=np.int64)
    seg[:, 32:] = 2  # GT boundary pixels: column 31 (seg2bdry's lower-right convention)
    gt, res = tmp_path / "gt", tmp_path / "res"
    gt.mkdir()
    res.mkdir()
    x = np.broadcast_to(np.arange(w, dtype=np.float64), (h, w)) - 31
    soft = np.where(x < 0, np.exp(-(x**2) / 2), np.exp(-(x**2) / (2 * 5.0**2)))  # sigma 1 left, 5 right
    for iid in ("1", "2"):
        _write_gt(gt / f"{iid}.mat", [seg, seg])
        np.save(res / f"{iid}.npy", soft.astype(np.float32))
    plain = evaluate_dataset(res, gt, nthresh=19, region=False)
    nms = evaluate_dataset(res, gt, nthresh=19, region=False, nms=True)
    assert nms.nms and not plain.nms and nms.images[0].kind == "pb"
    low = nms.boundary.thresholds <= 0.5
    assert np.all(nms.boundary.precision > 0.97)
    # recall falls only by the damped border rows (5 at each end) at high thresholds
    assert nms.boundary.recall[0] > 0.95 and np.all(nms.boundary.recall > 0.75)
    assert np.all(plain.boundary.precision[low] < 0.5)
    assert nms.boundary.ods_f > 0.95 and nms.boundary.ois_f > 0.95
    # the same maps as 16-bit PNGs score the same (quantisation 1/65535)
    from skimage.io import imsave

    res16 = tmp_path / "res16"
    res16.mkdir()
    for iid in ("1", "2"):
        imsave(res16 / f"{iid}.png", np.round(soft * 65535).astype(np.uint16), check_contrast=False)
    png = evaluate_dataset(res16, gt, nthresh=19, region=False, nms=True)
    assert np.allclose(png.boundary.precision, nms.boundary.precision)
    assert png.boundary.ods_f == pytest.approx(nms.boundary.ods_f, abs=1e-6)


def test_soft_map_formats(tmp_path):
    from skimage.io import imsave

    soft = np.linspace(0, 1, 30 * 20).reshape(30, 20)
    np.save(tmp_path / "a.npy", soft)
    imsave(tmp_path / "b.png", np.round(soft * 65535).astype(np.uint16), check_contrast=False)
    imsave(tmp_path / "c.png", np.round(soft * 255).astype(np.uint8), check_contrast=False)
    np.savez(tmp_path / "d.npz", edges=soft.astype(np.float16))
    scipy.io.savemat(tmp_path / "e.mat", {"pb": soft})
    for name, tol in [("a.npy", 0), ("b.png", 1e-5), ("c.png", 2.1e-3), ("d.npz", 1e-3), ("e.mat", 0)]:
        r = load_result(tmp_path / name)
        assert r.kind == "pb" and r.data.shape == (30, 20), name
        assert np.abs(r.data - soft).max() <= tol, name
    np.save(tmp_path / "bad.npy", soft * 2)
    with pytest.raises(EvaluationError, match=r"bad.npy: soft boundary map values must lie in \[0, 1\]"):
        load_result(tmp_path / "bad.npy")
    np.save(tmp_path / "nan.npy", np.full((4, 4), np.nan))
    with pytest.raises(EvaluationError, match="nan.npy: soft boundary map contains NaN"):
        load_result(tmp_path / "nan.npy")
    np.save(tmp_path / "int.npy", np.ones((4, 4), dtype=np.int64))
    with pytest.raises(EvaluationError, match="int.npy: soft boundary map must be float"):
        load_result(tmp_path / "int.npy")


def test_nms_radius_reaches_the_benchmark(tmp_path):
    """``nms_radius`` is the suppression radius of the maps that are matched."""
    from ndd.evaluation import boundary_counts, evaluate_image, load_groundtruth, thresholds_linspace

    h, w = 40, 50
    seg = np.ones((h, w), dtype=np.int64)
    seg[:, 25:] = 2
    _write_gt(tmp_path / "1.mat", [seg])
    rng = np.random.default_rng(0)
    soft = np.clip(_ridge((h, w), 20)[0] * 0.8 + rng.uniform(0, 0.2, (h, w)), 0, 1)  # a noisy edge
    np.save(tmp_path / "r.npy", soft)
    gts = [a.boundaries for a in load_groundtruth(tmp_path / "1.mat")]
    t = thresholds_linspace(5)
    for r in (1, 2):
        ev = evaluate_image(tmp_path / "r.npy", tmp_path / "1.mat", nthresh=5, region=False, nms=True, nms_radius=r)
        thin = nms_edge_map(soft, r=r)
        ref = boundary_counts((thin >= x for x in t), gts, t)
        assert np.array_equal(ev.boundary.sum_p, ref.sum_p) and np.array_equal(ev.boundary.cnt_r, ref.cnt_r)
    assert np.count_nonzero(nms_edge_map(soft, r=2)) < np.count_nonzero(nms_edge_map(soft, r=1))
    with pytest.raises(EvaluationError, match="r.npy: a soft boundary map supports the boundary benchmark only "
                                              r"\(ndd evaluate --no-region; region=False\)"):
        evaluate_image(tmp_path / "r.npy", tmp_path / "1.mat", nthresh=5)  # the region benchmark needs a hierarchy
    with pytest.raises(ValueError, match="nms_radius"):
        evaluate_dataset(tmp_path, tmp_path, nms=True, nms_radius=0)
