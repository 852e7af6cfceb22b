"""Non-maximum suppression of soft edge maps, the protocol of edge-detection papers.

HED, RCF, PiDiNet and most CNN edge detectors report BSDS500 figures after
Piotr Dollar's ``edgesNms`` step of the Structured Edge toolbox, as their
evaluation scripts run it::

    [Ox, Oy] = gradient2(convTri(E, 4));
    [Oxx, ~] = gradient2(Ox);  [Oxy, Oyy] = gradient2(Oy);
    O = mod(atan(Oyy .* sign(-Oxy) ./ (Oxx + 1e-5)), pi);
    E = edgesNmsMex(E, O, 1, 5, 1.01, nThreads);

i.e. the orientation comes from second derivatives of the map smoothed by a
triangle filter of radius 4; a pixel is suppressed (set to 0) when its value
times ``m = 1.01`` is below the bilinearly interpolated value of the *original*
map at any of the ``r = 1`` steps on either side along the normal
``(cos O, sin O)`` (x: column, y: row); finally the values of the ``s = 5``
outermost rows and columns are damped linearly toward the border (the border
pixel becomes 0).  The benchmark then thresholds and thins the result as for
any soft boundary map.  Written here from that definition in NumPy/SciPy.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import correlate1d

__all__ = ["conv_tri", "edge_orientation", "edges_nms", "nms_edge_map"]


def conv_tri(img: np.ndarray, r: int) -> np.ndarray:
    """Separable triangle filter of integer radius ``r`` (Dollar's ``convTri``, r >= 1).

    The kernel is ``[1, 2, ..., r+1, ..., 2, 1] / (r+1)^2`` along each axis, with
    symmetric padding (MATLAB ``'symmetric'``, SciPy ``'reflect'``).
    (h, w) → (h, w) float64; ``r = 0`` returns a copy.
    """
    img = np.asarray(img, dtype=np.float64)
    if r < 0 or int(r) != r:
        raise ValueError(f"conv_tri radius must be a non-negative integer, got {r}")
    r = int(r)
    if r == 0:
        return img.copy()
    f = np.concatenate([np.arange(1, r + 2), np.arange(r, 0, -1)]).astype(np.float64) / (r + 1) ** 2
    out = correlate1d(img, f, axis=0, mode="reflect")
    return correlate1d(out, f, axis=1, mode="reflect")


def edge_orientation(edges: np.ndarray, r: int = 4) -> np.ndarray:
    """Normal orientation of a soft edge map, in [0, pi), as the papers' eval scripts.

    ``O = mod(atan(Oyy * sign(-Oxy) / (Oxx + 1e-5)), pi)`` from the second
    derivatives of ``conv_tri(edges, r)``; derivatives are MATLAB ``gradient``
    (central differences, one-sided at the border, = ``np.gradient``).  The
    normal is ``(cos O, sin O)`` in (column, row) coordinates: 0 for a
    vertical edge, pi/2 for a horizontal one.  (h, w) → (h, w) float64.
    """
    e = conv_tri(edges, r)
    oy, ox = np.gradient(e)  # np.gradient returns d/drow, d/dcol
    oxx = np.gradient(ox, axis=1)
    oxy, oyy = np.gradient(oy, axis=1), np.gradient(oy, axis=0)
    # np.sign(0) = 0 as MATLAB's sign, so flat regions get O = 0
    return np.mod(np.arctan(oyy * np.sign(-oxy) / (oxx + 1e-5)), np.pi)


def _interp(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of (h, w) ``img`` at (column x, row y), clamped inside.

    Coordinates are clamped to [0, w - 1.001] x [0, h - 1.001] as in
    ``edgesNmsMex`` so that the four neighbours always exist.
    """
    h, w = img.shape
    x = np.clip(x, 0.0, w - 1.001)
    y = np.clip(y, 0.0, h - 1.001)
    x0 = x.astype(np.int64)  # x >= 0, so truncation is floor
    y0 = y.astype(np.int64)
    dx, dy = x - x0, y - y0
    return (
        img[y0, x0] * (1 - dx) * (1 - dy)
        + img[y0, x0 + 1] * dx * (1 - dy)
        + img[y0 + 1, x0] * (1 - dx) * dy
        + img[y0 + 1, x0 + 1] * dx * dy
    )


def edges_nms(
    edges: np.ndarray, orientation: np.ndarray, r: int = 1, s: int = 5, m: float = 1.01
) -> np.ndarray:
    """Suppress non-maxima of an edge map along the normal (``edgesNmsMex(E, O, r, s, m)``).

    ``edges``: (h, w) soft map (>= 0); ``orientation``: (h, w) normal angle
    (see :func:`edge_orientation`).  A non-zero pixel ``e`` is set to 0 when
    ``m * e < E(x + d cos O, y + d sin O)`` for some ``d`` in ``-r..r``, ``d != 0``
    (bilinear, on the input map, so the order of visits does not matter);
    ``m > 1`` keeps plateaus of equal values, which the benchmark's thinning
    reduces later.  Then the ``s`` outer rows/columns are multiplied by
    ``k / s`` (k = distance to the border, 0..s-1); ``s`` is capped at half the
    size.  Returns a new (h, w) float64 map.
    """
    e0 = np.asarray(edges, dtype=np.float64)
    o = np.asarray(orientation, dtype=np.float64)
    if e0.ndim != 2 or o.shape != e0.shape:
        raise ValueError(f"edges and orientation must be 2-D of the same shape, got {e0.shape} and {o.shape}")
    if r < 1 or s < 0:
        raise ValueError(f"need r >= 1 and s >= 0, got r={r}, s={s}")
    h, w = e0.shape
    out = e0.copy()
    ys, xs = np.nonzero(e0)  # zero pixels stay zero (the reference skips them)
    val = e0[ys, xs] * m
    cos_o, sin_o = np.cos(o[ys, xs]), np.sin(o[ys, xs])
    suppressed = np.zeros(ys.size, dtype=bool)
    for d in range(-r, r + 1):
        if d == 0:
            continue
        suppressed |= val < _interp(e0, xs + d * cos_o, ys + d * sin_o)
    out[ys[suppressed], xs[suppressed]] = 0.0
    # damp the noisy estimates near the image border (integer halves, as in C)
    s = min(s, w // 2, h // 2)
    if s > 0:
        ramp = np.arange(s, dtype=np.float64) / s
        out[:, :s] *= ramp[None, :]
        out[:, w - s :] *= ramp[None, ::-1]
        out[:s, :] *= ramp[:, None]
        out[h - s :, :] *= ramp[::-1, None]
    return out


def nms_edge_map(edges: np.ndarray, r: int = 1, s: int = 5, m: float = 1.01, orient_r: int = 4) -> np.ndarray:
    """The edge papers' NMS of a soft edge map: orientation (``convTri`` radius
    ``orient_r``) then :func:`edges_nms` with radius ``r``, border ``s``,
    multiplier ``m``.  (h, w) in [0, 1] → (h, w) float64 in [0, 1]."""
    edges = np.asarray(edges, dtype=np.float64)
    return edges_nms(edges, edge_orientation(edges, orient_r), r=r, s=s, m=m)
