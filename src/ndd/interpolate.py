"""Feature-attentional interpolation (FAI), paper §4.3, Eq. (6).

A map living on a coarse grid is carried to a finer grid by letting every fine
pixel ``i`` take a softmax-weighted average of the coarse values ``y_j`` in a
window ``S_at(i)`` of ``S x S`` coarse cells around it::

    y_i = sum_j softmax_j(-gamma * d(f_i, f_j)) * y_j,   j in S_at(i),

where ``f_i`` is the fine-level feature at ``i`` and ``f_j`` the fine-level
feature bilinearly sampled at the coarse point ``j`` (in fine coordinates).
Applied level after level (coarse to fine) it up-samples diffusion-similarity
rows or segmentation maps while snapping them to the edges of the features.

Conventions (the same in every function of this module)
--------------------------------------------------------
* **Distance**: ``d(f_i, f_j) = mean_c (f_i[c] - f_j[c])**2``, the *mean* over
  channels (as in the authors' code), so that ``gamma`` does not have to scale
  with the number of channels. The authors' gammas ``[8, 4, 1]`` (coarse to
  fine) are meant for this distance.
* **Geometry**, chosen by ``geometry`` (where coarse index ``j`` sits in the
  fine grid's coordinates, per axis; ``H`` fine and ``h`` coarse positions):

  - ``"stride"`` (default): both grids are anchored at pixel 0 with their own
    strides, so coarse index ``j`` sits at fine coordinate ``j * r`` with the
    stride ratio ``r = s_coarse / s_fine``, *whatever the sizes*. This is the
    exact geometry of this project's backbones: an ``H x W`` image gives
    ``ceil(H / s)`` feature rows at stride ``s`` and feature ``j`` is centred
    on image pixel ``s * j`` (for ``H = 480``: 240, 120, 60 rows; point ``j``
    of the stride-8 grid is at ``4 j`` on the stride-2 grid). Fine positions
    beyond the last coarse point (``H > r (h - 1) + 1``) are handled like any
    border: their window centre is clamped to the last coarse cell and the
    neighbours outside the coarse grid are masked. ``r`` is given by
    ``ratio`` or, by default, **inferred from the sizes**: the integers ``r``
    with ``ceil(H / r) = h`` on every axis with ``h >= 2`` are the candidates
    (an axis with ``h = 1`` has a single coarse point, at 0, whatever ``r``);
    the smallest power of two among them is taken, else the smallest one.
    This is exact for every size when the strides are powers of two (as all
    of this project's are: image 1, levels 2, 4, 8, any pair of them), since
    then no other power of two is a candidate. If there is no candidate (the
    sizes are not a stride pair, e.g. values resized to a fixed 41x41 grid by
    corner-aligned bilinear interpolation, or a "fine" grid coarser than the
    values), that step falls back to ``"corners"``.
  - ``"corners"`` (``align_corners=True``): corner-aligned grids, coarse index
    ``j`` at fine coordinate ``j * (H - 1) / (h - 1)``. It coincides with
    ``"stride"`` exactly when ``H - 1 = r (h - 1)``, e.g. for ``ceil`` sizes of
    an image with ``H = 1 (mod 8)`` (BSDS's 321x481: 161, 81, 41); otherwise
    the coarse points drift (``4.05 j`` instead of ``4 j`` for ``H = 480``).
  - ``"centres"`` (``align_corners=False``): pixel-centre geometry, coarse
    index ``j`` at fine coordinate ``(j + 0.5) * H / h - 0.5`` (pooling-style
    backbones that give ``H / s`` rows).

  ``align_corners=True/False`` is still accepted for ``"corners"`` /
  ``"centres"`` (as in :func:`torch.nn.functional.interpolate`); giving both
  ``geometry`` and a contradicting ``align_corners`` is an error. The
  coarse-point features ``f_j`` are sampled with the same convention: bilinear
  at ``j * r`` for ``"stride"`` (at integer ratios a plain strided pick,
  positions past the last fine pixel clamped to it), ``F.interpolate(...,
  mode="bilinear", align_corners=...)`` for the other two. So is the optional
  final resize of :func:`fai_upsample`: for ``"stride"`` output pixel ``y`` is
  read at ``y / r`` on the finest level (``r`` inferred from the sizes as
  above, 2 from a stride-2 level to the image), bilinearly, clamped at the
  far border.
* **Window**: fine pixel ``i`` at coarse coordinate ``u_i`` is centred on the
  nearest coarse cell ``round(u_i)`` (ties go up; clamped into the grid) and
  takes the offsets ``-r..r`` (``r = (S - 1) // 2``) along each axis.
  Neighbours outside the coarse grid are *masked out* (weight zero), so border
  values are not counted twice. ``geometry="authors"`` reproduces the authors' code
  instead: base cell ``floor(i * (h - 1) / (H - 1))`` with offsets ``-r..r``
  around it (corner-aligned) and out-of-grid indices *clamped* to the border, so
  border cells count several times. (Their CPU variant's ``r / r_c`` spacing
  is not reproduced.)

Computation and memory
----------------------
Nothing of size (fine grid) x (coarse grid) is built. The fine grid is cut
into small tiles (about half a window of coarse cells per axis); the windows
of a tile's pixels all lie in a *band* of about ``1.5 S x 1.5 S`` coarse
cells. Per tile, the feature dot products are one small matrix product
``(tile, C) @ (C, band)`` from which the ``S*S`` window entries are gathered,
and the weighted sum is ``(tile, band) @ (band, M)`` with the weights
scattered into the band. Peak memory is ``O(B * H * W * (k * S*S + M + C))``
with ``k`` about 2-3 (band over window); every operation is differentiable
w.r.t. values, features and gamma. The squared distance is computed as
``|f_i|^2 + |f_j|^2 - 2 f_i.f_j`` on features centred per channel (distances
are unchanged, cancellation is kept small), clamped at 0. The tiling of a
given pair of grid sizes is cached (a few, 8 at most).

Module dependencies: only :mod:`torch` (no other part of :mod:`ndd`).
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "fai_neighbours",
    "fai_weights",
    "feature_attentional_upsample",
    "fai_upsample",
    "infer_stride_ratio",
    "FeatureAttentionalInterpolation",
]

GammaLike = float | Tensor
Geometry = Literal["stride", "corners", "centres", "authors"]
RatioLike = int | float | Fraction | Sequence[int | float | Fraction]

# A tile of fine pixels spans this many windows' worth of coarse cells per
# axis. Its band is then (1 + _TILE_SPAN) windows wide: larger tiles waste
# more band entries per pixel, smaller ones copy overlapping bands more often.
_TILE_SPAN = 0.5

# Explicit ratios are turned into fractions with at most this denominator
# (so 1 / 3 given as a float is exactly 1/3, and index arithmetic stays small).
_MAX_DENOMINATOR = 10**6


# ----------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------


def _check_neighbourhood(neighbourhood: int) -> int:
    if isinstance(neighbourhood, bool) or not isinstance(neighbourhood, int):
        raise ValueError(f"neighbourhood must be an int, got {type(neighbourhood).__name__}")
    if neighbourhood <= 0 or neighbourhood % 2 == 0:
        raise ValueError(f"neighbourhood must be a positive odd integer, got {neighbourhood}")
    return neighbourhood


def _check_4d(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D (B, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if 0 in x.shape:
        raise ValueError(f"{name} has an empty dimension: {tuple(x.shape)}")


def _check_finite(name: str, x: Tensor) -> None:
    # A sum is one cheap pass and is NaN/inf whenever an entry is; only then
    # is the exact (slower) element-wise test run, to rule out overflow.
    x = x.detach()
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def _check_size(name: str, size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or any(isinstance(s, bool) or int(s) != s or s <= 0 for s in size):
        raise ValueError(f"{name} must be two positive ints, got {tuple(size)}")
    return int(size[0]), int(size[1])


def _as_gamma(gamma: GammaLike, like: Tensor) -> Tensor:
    """Returns gamma as a 0-dim tensor of ``like``'s dtype/device (autograd kept)."""
    if isinstance(gamma, Tensor):
        if gamma.numel() != 1:
            raise ValueError(f"gamma must be a scalar, got shape {tuple(gamma.shape)}")
        g = gamma.reshape(()).to(dtype=like.dtype, device=like.device)
        value = float(g.detach())
    else:
        value = float(gamma)
        g = torch.tensor(value, dtype=like.dtype, device=like.device)
    if not math.isfinite(value):
        raise ValueError(f"gamma must be finite, got {value}")
    if value < 0:
        raise ValueError(f"gamma must be non-negative, got {value}")
    return g


def _check_pair(values: Tensor, fine_features: Tensor, name: str = "fine_features") -> None:
    _check_4d("values", values)
    _check_4d(name, fine_features)
    if values.shape[0] != fine_features.shape[0]:
        raise ValueError(
            f"batch sizes differ: values has {values.shape[0]}, {name} has {fine_features.shape[0]}"
        )
    if values.dtype != fine_features.dtype:
        raise ValueError(f"dtypes differ: values {values.dtype}, {name} {fine_features.dtype}")


# ----------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------

_GEOMETRIES = ("stride", "corners", "centres")


def _resolve_geometry(geometry: str | None, align_corners: bool | None) -> str:
    """``"stride"``, ``"corners"``, ``"centres"`` or ``"authors"`` from the public arguments."""
    if align_corners is not None:
        align_corners = bool(align_corners)
    if geometry == "authors":  # corner-aligned, borders clamped
        if align_corners is False:
            raise ValueError("geometry='authors' is corner-aligned; it contradicts align_corners=False")
        return "authors"
    if geometry is None:
        kind = "stride" if align_corners is None else ("corners" if align_corners else "centres")
    else:
        kind = "centres" if geometry == "centers" else geometry
        if kind not in _GEOMETRIES:
            raise ValueError(f"geometry must be one of {_GEOMETRIES + ('authors',)}, got {geometry!r}")
        if align_corners is not None and kind != ("corners" if align_corners else "centres"):
            raise ValueError(f"geometry={geometry!r} contradicts align_corners={align_corners}")
    return kind


def _as_ratio(ratio: RatioLike) -> tuple[Fraction, Fraction]:
    """An explicit stride ratio (one number or ``(rows, cols)``) as two positive fractions."""
    items = list(ratio) if isinstance(ratio, Sequence) else [ratio, ratio]
    if len(items) != 2:
        raise ValueError(f"ratio must be a number or a pair (rows, cols), got {ratio!r}")
    out = []
    for r in items:
        if isinstance(r, bool) or not isinstance(r, numbers.Real) or not (math.isfinite(r) and r > 0):
            raise ValueError(f"ratio must hold positive finite numbers, got {ratio!r}")
        f = r if isinstance(r, Fraction) else Fraction(int(r)) if isinstance(r, numbers.Integral) else Fraction(float(r))
        out.append(f.limit_denominator(_MAX_DENOMINATOR))
    return out[0], out[1]


def infer_stride_ratio(fine_size: Sequence[int], coarse_size: Sequence[int]) -> int | None:
    """The stride ratio ``s_coarse / s_fine`` that the ``"stride"`` geometry infers from two sizes.

    The candidates are the integers ``r >= 1`` with ``ceil(H / r) = h`` on every
    axis with ``h >= 2`` (``H`` fine, ``h`` coarse; an axis with one coarse
    point does not constrain ``r``, and if no axis does, 1 is returned). The
    smallest power of two among them is returned, else the smallest one, or
    ``None`` if there is none (the sizes are not a stride pair). For grids of
    ``ceil(N / s)`` points at power-of-two strides this is always the true
    ratio: ``(240, 320), (60, 80) -> 4``, ``(161, 241), (81, 121) -> 2``,
    ``(480, 640), (240, 320) -> 2``.
    """
    fine = _check_size("fine_size", fine_size)
    coarse = _check_size("coarse_size", coarse_size)
    lo, hi = 1, None
    for nf, nc in zip(fine, coarse):
        if nc < 2:
            continue
        # ceil(nf / r) = nc  <=>  nf / nc <= r < nf / (nc - 1)
        lo = max(lo, -(-nf // nc))
        top = (nf - 1) // (nc - 1)
        hi = top if hi is None else min(hi, top)
    if hi is None:
        return 1
    if lo > hi:
        return None
    power = 1 << (lo - 1).bit_length()  # smallest power of two >= lo
    return power if power <= hi else lo


@dataclass(frozen=True)
class _Geom:
    """The resolved geometry of one step (hashable: part of the plan cache key).

    ``kind`` is ``"stride"``, ``"corners"``, ``"centres"`` or ``"authors"``;
    ``ratio`` (stride only) is ``(rows, cols)``: coarse index ``j`` sits at
    fine coordinate ``j * ratio``.
    """

    kind: str
    ratio: tuple[Fraction, Fraction] | None = None


def _step_geometry(
    kind: str, fine_size: tuple[int, int], coarse_size: tuple[int, int], ratio: RatioLike | None
) -> _Geom:
    if kind != "stride":
        if ratio is not None:
            raise ValueError("ratio is only used by geometry='stride'")
        return _Geom(kind)
    if ratio is not None:
        return _Geom("stride", _as_ratio(ratio))
    r = infer_stride_ratio(fine_size, coarse_size)
    if r is None:
        return _Geom("corners")  # not a stride pair: see the module docstring
    return _Geom("stride", (Fraction(r), Fraction(r)))


def _centres(n_fine: int, n_coarse: int, kind: str, ratio: Fraction | None, device) -> Tensor:
    """``(n_fine,)`` long: the coarse cell each fine position's window is centred on."""
    i = torch.arange(n_fine, device=device)
    # Integer arithmetic, so exact ties (e.g. stride 2) round the same way on
    # every device and dtype.
    if kind == "authors":
        return (i * (n_coarse - 1)) // max(n_fine - 1, 1)
    if kind == "corners":
        if n_fine == 1 or n_coarse == 1:
            return torch.zeros_like(i)
        # round(i (h-1) / (H-1)) = floor((2 i (h-1) + (H-1)) / (2 (H-1)))
        return (2 * i * (n_coarse - 1) + (n_fine - 1)) // (2 * (n_fine - 1))
    if kind == "centres":
        # round((i + 0.5) h / H - 0.5) = floor((2 i + 1) h / (2 H)), always in [0, h-1]
        return ((2 * i + 1) * n_coarse) // (2 * n_fine)
    # stride, r = p / q: round(i / r) = floor((2 i q + p) / (2 p)), clamped into the grid
    p, q = ratio.numerator, ratio.denominator
    return ((2 * q * i + p) // (2 * p)).clamp_(max=n_coarse - 1)


def _sample_axis(x: Tensor, dim: int, n_out: int, step: Fraction) -> Tensor:
    """``x`` linearly sampled along ``dim`` at ``k * step``, ``k < n_out``.

    Positions past the last entry are clamped to it. Integer positions are an
    exact pick (``index_select``), others a linear blend of the two
    neighbours; differentiable w.r.t. ``x``.
    """
    n_in = x.shape[dim]
    p, q = step.numerator, step.denominator
    k = torch.arange(n_out) * p  # exact integer arithmetic, on the CPU
    index, rem = k // q, k % q
    beyond = index >= n_in - 1
    index = index.clamp(max=n_in - 1)
    rem = rem.masked_fill(beyond, 0)
    if n_out == n_in and not bool(rem.any()) and bool((index == torch.arange(n_in)).all()):
        return x
    lo = x.index_select(dim, index.to(x.device))
    if not bool(rem.any()):
        return lo
    hi = x.index_select(dim, (index + 1).clamp(max=n_in - 1).to(x.device))
    shape = [1] * x.dim()
    shape[dim] = n_out
    t = (rem.double() / q).to(dtype=x.dtype, device=x.device).view(shape)
    return lo * (1 - t) + hi * t


def _coarse_features(f: Tensor, coarse_size: tuple[int, int], geom: _Geom) -> Tensor:
    """``f_j``: the fine features ``f`` bilinearly sampled at the coarse points."""
    if geom.kind == "stride":
        g = _sample_axis(f, 2, coarse_size[0], geom.ratio[0])
        return _sample_axis(g, 3, coarse_size[1], geom.ratio[1])
    if tuple(coarse_size) == tuple(f.shape[-2:]):
        return f
    return F.interpolate(f, size=coarse_size, mode="bilinear", align_corners=geom.kind != "centres")


def _resize(y: Tensor, size: tuple[int, int], kind: str) -> Tensor:
    """The final bilinear resize of :func:`fai_upsample` in geometry ``kind``."""
    if kind == "stride":
        r = infer_stride_ratio(size, y.shape[-2:])
        if r is not None:
            return _resize_stride(y, size, r)
        kind = "corners"
    return F.interpolate(y, size=size, mode="bilinear", align_corners=kind != "centres")


def _resize_stride(y: Tensor, size: tuple[int, int], r: int) -> Tensor:
    """Output pixel ``k`` read at ``k / r`` on ``y``'s grid (bilinear, clamped at the far border).

    A corner-aligned resize to ``r (n - 1) + 1`` points puts point ``k`` at
    exactly ``k / r``; the input first gets replicated border rows/columns so
    that this covers the output (clamping), and the at most ``r - 1`` extra
    rows/columns are cropped. So the result costs one ``F.interpolate`` of
    about the output size, plus a contiguous copy of the output when cropping
    (``H_out != 1 (mod r)``).
    """
    n_h, n_w = y.shape[-2:]
    out_h, out_w = size
    # input points needed so that r (n - 1) + 1 >= out: n >= ceil((out - 1) / r) + 1
    need_h, need_w = -(-(out_h - 1) // r) + 1, -(-(out_w - 1) // r) + 1
    pad_h, pad_w = max(0, need_h - n_h), max(0, need_w - n_w)
    if pad_h or pad_w:
        y = F.pad(y, (0, pad_w, 0, pad_h), mode="replicate")
        n_h, n_w = n_h + pad_h, n_w + pad_w
    full = (r * (n_h - 1) + 1, r * (n_w - 1) + 1)
    if full != (n_h, n_w):
        y = F.interpolate(y, size=full, mode="bilinear", align_corners=True)
    if full == (out_h, out_w):
        return y
    return y[..., :out_h, :out_w].contiguous()


@dataclass(frozen=True)
class _AxisPlan:
    """How one axis is cut into tiles.

    ``block`` fine positions form a tile; their windows lie in ``band``
    consecutive coarse cells starting at ``band_index[p * band]``.
    """

    n_fine: int
    block: int
    n_blocks: int
    band: int
    band_index: Tensor  # (n_blocks * band,) coarse index of each band cell, clamped into the grid
    pos: Tensor  # (n_blocks * block,) band position of window offset 0 (i.e. -r)
    valid: Tensor  # (n_blocks * block, S) window offset inside the coarse grid (all True: "authors")


def _axis_plan(n_fine: int, n_coarse: int, s: int, kind: str, ratio: Fraction | None, device) -> _AxisPlan:
    r = (s - 1) // 2
    centre = _centres(n_fine, n_coarse, kind, ratio, device)
    # fine positions per coarse cell (a stride ratio smaller than the size
    # ratio packs the coarse cells more densely)
    spacing = n_fine / n_coarse if ratio is None else min(float(ratio), n_fine / n_coarse)
    block = min(n_fine, max(1, math.ceil(_TILE_SPAN * s * spacing)))
    n_blocks = -(-n_fine // block)
    pad = n_blocks * block - n_fine
    # Padding positions repeat the last centre: they stay in the last band
    # and are cropped away at the end.
    centre = torch.cat([centre, centre[-1:].expand(pad)]).view(n_blocks, block)
    first = centre[:, :1]
    band = int((centre[:, -1:] - first).max()) + s
    start = first - r
    band_index = (start + torch.arange(band, device=device)).clamp(0, n_coarse - 1)
    offsets = torch.arange(-r, r + 1, device=device)
    index = centre.reshape(-1, 1) + offsets
    valid = (index >= 0) & (index < n_coarse)
    if kind == "authors":
        valid = torch.ones_like(valid)  # clamped: the band holds the border cell there
    return _AxisPlan(
        n_fine=n_fine,
        block=block,
        n_blocks=n_blocks,
        band=band,
        band_index=band_index.reshape(-1),
        pos=(centre - first).reshape(-1),
        valid=valid,
    )


@dataclass(frozen=True)
class _Plan:
    rows: _AxisPlan
    cols: _AxisPlan
    s: int
    index: Tensor  # (T, K, S*S) flat band position of each window entry
    valid: Tensor  # (T, K, S*S) bool


@functools.lru_cache(maxsize=8)
def _plan(
    fine_size: tuple[int, int],
    coarse_size: tuple[int, int],
    s: int,
    geom: _Geom,
    device: torch.device,
) -> _Plan:
    """Tiling and window indices of one step; cached, since training and
    inference repeat the same few grid sizes (a 321x481 plan is ~36 MB)."""
    # Cached tensors must be ordinary tensors (an inference-mode tensor could
    # not be saved for backward by a later training step).
    with torch.inference_mode(False):
        return _build_plan(fine_size, coarse_size, s, geom, device)


def _build_plan(
    fine_size: tuple[int, int],
    coarse_size: tuple[int, int],
    s: int,
    geom: _Geom,
    device: torch.device,
) -> _Plan:
    rr, rc = geom.ratio if geom.ratio is not None else (None, None)
    pr = _axis_plan(fine_size[0], coarse_size[0], s, geom.kind, rr, device)
    pc = _axis_plan(fine_size[1], coarse_size[1], s, geom.kind, rc, device)
    off = torch.arange(s, device=device)
    # dims: (row block, col block, row in block, col in block, row offset, col offset)
    rpos = pr.pos.view(pr.n_blocks, 1, pr.block, 1, 1, 1) + off.view(1, 1, 1, 1, s, 1)
    cpos = pc.pos.view(1, pc.n_blocks, 1, pc.block, 1, 1) + off.view(1, 1, 1, 1, 1, s)
    index = rpos * pc.band + cpos
    rval = pr.valid.view(pr.n_blocks, 1, pr.block, 1, s, 1)
    cval = pc.valid.view(1, pc.n_blocks, 1, pc.block, 1, s)
    shape = (pr.n_blocks * pc.n_blocks, pr.block * pc.block, s * s)
    return _Plan(pr, pc, s, index.reshape(shape), (rval & cval).reshape(shape))


def _to_tiles(x: Tensor, p: _Plan) -> Tensor:
    """``(B, C, H, W)`` fine grid -> ``(B, T, K, C)`` tiles (zero padded)."""
    b, c, h, w = x.shape
    pr, pc = p.rows, p.cols
    x = F.pad(x, (0, pc.n_blocks * pc.block - w, 0, pr.n_blocks * pr.block - h))
    x = x.reshape(b, c, pr.n_blocks, pr.block, pc.n_blocks, pc.block)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, pr.n_blocks * pc.n_blocks, pr.block * pc.block, c)


def _from_tiles(y: Tensor, p: _Plan) -> Tensor:
    """``(B, T, K, M)`` tiles -> ``(B, M, H, W)`` fine grid (padding cropped)."""
    b, m = y.shape[0], y.shape[-1]
    pr, pc = p.rows, p.cols
    y = y.reshape(b, pr.n_blocks, pc.n_blocks, pr.block, pc.block, m).permute(0, 5, 1, 3, 2, 4)
    y = y.reshape(b, m, pr.n_blocks * pr.block, pc.n_blocks * pc.block)
    return y[:, :, : pr.n_fine, : pc.n_fine]


def _to_bands(x: Tensor, p: _Plan) -> Tensor:
    """``(B, C, h, w)`` coarse grid -> ``(B, T, C, band_rows * band_cols)``."""
    b, c = x.shape[:2]
    pr, pc = p.rows, p.cols
    x = x.index_select(2, pr.band_index).index_select(3, pc.band_index)
    x = x.reshape(b, c, pr.n_blocks, pr.band, pc.n_blocks, pc.band).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, pr.n_blocks * pc.n_blocks, c, pr.band * pc.band)


def fai_neighbours(
    fine_size: Sequence[int],
    coarse_size: Sequence[int],
    neighbourhood: int = 5,
    *,
    geometry: Geometry | None = None,
    align_corners: bool | None = None,
    ratio: RatioLike | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """The window ``S_at(i)`` of every fine pixel, as flat coarse indices.

    Args:
        fine_size: ``(H, W)`` of the fine grid.
        coarse_size: ``(h, w)`` of the coarse grid.
        neighbourhood: odd window side ``S`` in coarse cells.
        geometry, align_corners, ratio: geometry, see
            :func:`feature_attentional_upsample` and the module docstring.
        device: where to build the indices (default CPU).

    Returns:
        index: ``(S*S, H, W)`` long, ``row * w + col`` of the coarse neighbour
            at offset ``k = a * S + b`` (row offset ``a - r``, column offset
            ``b - r``), clamped into the grid.
        valid: ``(S*S, H, W)`` bool, whether that neighbour is inside the
            coarse grid (masked-out neighbours get weight 0 in
            :func:`fai_weights`; always True for ``"authors"``).
    """
    s = _check_neighbourhood(neighbourhood)
    fh, fw = _check_size("fine_size", fine_size)
    ch, cw = _check_size("coarse_size", coarse_size)
    geom = _step_geometry(_resolve_geometry(geometry, align_corners), (fh, fw), (ch, cw), ratio)
    rr, rc = geom.ratio if geom.ratio is not None else (None, None)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    r = (s - 1) // 2
    off = torch.arange(-r, r + 1, device=dev)
    rows = _centres(fh, ch, geom.kind, rr, dev)[None, :] + off[:, None]  # (S, H)
    cols = _centres(fw, cw, geom.kind, rc, dev)[None, :] + off[:, None]  # (S, W)
    rv, cv = (rows >= 0) & (rows < ch), (cols >= 0) & (cols < cw)
    index = rows.clamp(0, ch - 1)[:, None, :, None] * cw + cols.clamp(0, cw - 1)[None, :, None, :]
    valid = rv[:, None, :, None] & cv[None, :, None, :]
    if geom.kind == "authors":
        valid = torch.ones_like(valid)
    return index.reshape(s * s, fh, fw), valid.reshape(s * s, fh, fw)


# ----------------------------------------------------------------------------
# one FAI step
# ----------------------------------------------------------------------------


def _tile_weights(
    fine_features: Tensor,
    coarse_size: tuple[int, int],
    gamma: Tensor,
    s: int,
    geom: _Geom,
) -> tuple[Tensor, _Plan]:
    """Unchecked core of :func:`fai_weights`: ``(B, T, K, S*S)`` weights in tile layout."""
    b, c, fh, fw = fine_features.shape
    p = _plan((fh, fw), tuple(coarse_size), s, geom, fine_features.device)

    # Centring per channel leaves every distance unchanged but keeps |f|^2
    # small, which keeps the dot-product form below accurate in float32.
    f = fine_features - fine_features.mean(dim=(2, 3), keepdim=True)
    g = _coarse_features(f, coarse_size, geom)  # f_j: f sampled at the coarse points

    ft = _to_tiles(f, p)  # (B, T, K, C)
    index = p.index.expand(b, -1, -1, -1)  # (B, T, K, S*S)
    cross = torch.matmul(ft, _to_bands(g, p)).gather(3, index)
    f_sq = ft.square().sum(-1, keepdim=True)  # (B, T, K, 1)
    g_sq = _to_bands(g.square().sum(1, keepdim=True), p)  # (B, T, 1, band)
    g_sq = g_sq.expand(-1, -1, index.shape[2], -1).gather(3, index)
    dist = (f_sq + g_sq - 2.0 * cross).clamp_min(0.0) / c  # mean over channels

    logits = dist * (-gamma)
    if geom.kind != "authors":
        logits = logits.masked_fill(~p.valid, float("-inf"))
    # The window centre is always valid, so no row is all -inf; softmax
    # subtracts the row maximum, so a large gamma cannot give 0/0.
    return torch.softmax(logits, dim=-1), p


def fai_weights(
    fine_features: Tensor,
    coarse_size: Sequence[int],
    gamma: GammaLike,
    neighbourhood: int = 5,
    *,
    geometry: Geometry | None = None,
    align_corners: bool | None = None,
    ratio: RatioLike | None = None,
) -> Tensor:
    """Attention weights of one FAI step (the normalised exponentials of Eq. 6).

    Args:
        fine_features: ``(B, C, H, W)`` features of the finer level.
        coarse_size: ``(h, w)`` of the grid the values live on.
        gamma: non-negative scalar (float or 0-dim tensor, may require grad).
        neighbourhood: odd window side ``S`` in coarse cells.
        geometry, align_corners, ratio: geometry, see
            :func:`feature_attentional_upsample` and the module docstring.

    Returns:
        ``(B, S*S, H, W)`` weights; entry ``k = a * S + b`` belongs to the
        coarse neighbour given by :func:`fai_neighbours`. For every fine pixel
        they are non-negative and sum to one; out-of-grid neighbours get 0
        (clamped and counted instead for ``"authors"``).
    """
    _check_4d("fine_features", fine_features)
    _check_finite("fine_features", fine_features)
    s = _check_neighbourhood(neighbourhood)
    size = _check_size("coarse_size", coarse_size)
    kind = _resolve_geometry(geometry, align_corners)
    geom = _step_geometry(kind, tuple(fine_features.shape[-2:]), size, ratio)
    g = _as_gamma(gamma, fine_features)
    w, p = _tile_weights(fine_features, size, g, s, geom)
    return _from_tiles(w, p)


def _step(values: Tensor, fine_features: Tensor, gamma: Tensor, s: int, geom: _Geom) -> Tensor:
    """Unchecked core of :func:`feature_attentional_upsample`."""
    coarse_size = (values.shape[-2], values.shape[-1])
    w, p = _tile_weights(fine_features, coarse_size, gamma, s, geom)
    b, t, k, _ = w.shape
    # Scatter the S*S weights into the tile's band so that the weighted sum
    # is one small matrix product per tile instead of S*S gathers of values.
    dense = w.new_zeros(b, t, k, p.rows.band * p.cols.band).scatter(3, p.index.expand(b, -1, -1, -1), w)
    vb = _to_bands(values, p)  # (B, T, M, band)
    return _from_tiles(torch.matmul(dense, vb.transpose(-1, -2)), p)


def feature_attentional_upsample(
    values: Tensor,
    fine_features: Tensor,
    gamma: GammaLike,
    neighbourhood: int = 5,
    *,
    geometry: Geometry | None = None,
    align_corners: bool | None = None,
    ratio: RatioLike | None = None,
) -> Tensor:
    """One FAI step (Eq. 6): coarse maps -> the grid of ``fine_features``.

    Args:
        values: ``(B, M, h, w)`` maps on the coarse grid.
        fine_features: ``(B, C, H, W)`` features of the finer level (normally
            ``H >= h`` and ``W >= w``).
        gamma: non-negative scalar attention sharpness (float or 0-dim
            tensor; gradients flow to it). ``gamma = 0`` is a plain box
            average over the window.
        neighbourhood: odd window side ``S_at`` in coarse cells (paper and
            authors: 5).
        geometry: ``"stride"`` (default), ``"corners"``, ``"centres"``
            (``"centers"`` also accepted) or ``"authors"`` (their clamped-border,
            corner-aligned window), see the module docstring.
        align_corners: the older way to choose ``"corners"`` (True) or
            ``"centres"`` (False); ``None`` (default) leaves it to
            ``geometry``. Contradicting ``geometry`` is an error.
        ratio: ``"stride"`` only: the stride ratio ``s_coarse / s_fine``
            (coarse index ``j`` at fine coordinate ``j * ratio``), one
            positive number or ``(rows, cols)``; default: inferred from the
            sizes (see :func:`infer_stride_ratio`; if that finds none, this
            step is corner-aligned).

    Returns:
        ``(B, M, H, W)`` up-sampled maps, differentiable w.r.t. ``values``,
        ``fine_features`` and ``gamma``.

    Raises:
        ValueError: non-4-D or non-float inputs, different batch sizes or
            dtypes, NaN/inf inputs, even or non-positive ``neighbourhood``,
            negative or non-finite ``gamma``, an unknown or contradictory
            geometry, a bad ``ratio`` or one given outside ``"stride"``.
    """
    _check_pair(values, fine_features)
    _check_finite("values", values)
    _check_finite("fine_features", fine_features)
    s = _check_neighbourhood(neighbourhood)
    kind = _resolve_geometry(geometry, align_corners)
    geom = _step_geometry(kind, tuple(fine_features.shape[-2:]), tuple(values.shape[-2:]), ratio)
    g = _as_gamma(gamma, fine_features)
    return _step(values, fine_features, g, s, geom)


# ----------------------------------------------------------------------------
# coarse-to-fine over several levels
# ----------------------------------------------------------------------------


def _gamma_list(gammas: Sequence[GammaLike] | Tensor, n: int) -> list[GammaLike]:
    if isinstance(gammas, Tensor):
        if gammas.dim() != 1:
            raise ValueError(f"gammas must be 1-D, got shape {tuple(gammas.shape)}")
        items: list[GammaLike] = list(gammas.unbind(0))
    else:
        items = list(gammas)
    if len(items) != n:
        raise ValueError(f"need one gamma per feature level ({n}), got {len(items)}")
    return items


def fai_upsample(
    values: Tensor,
    features: Sequence[Tensor],
    gammas: Sequence[GammaLike] | Tensor,
    output_size: Sequence[int] | None = None,
    neighbourhood: int = 5,
    *,
    geometry: Geometry | None = None,
    align_corners: bool | None = None,
) -> Tensor:
    """Coarse-to-fine FAI over several feature levels (paper §4.3).

    Starting from the grid the values live on, one FAI step is made onto every
    feature level finer than the current grid, from the coarsest to the
    finest. A level of exactly the current size (or coarser) is skipped and
    its gamma unused; so if the values already live on the coarsest feature
    grid the first step goes to the next level, and if they live on another
    grid (e.g. the authors' fixed 41x41) the first step lands on the coarsest
    level. Finally, if ``output_size`` is given and differs from the finest
    level, a plain bilinear resize (same geometry) brings the maps there.

    With the default ``"stride"`` geometry each step's stride ratio is
    inferred from the two sizes (:func:`infer_stride_ratio`; 2 between the
    backbones' consecutive levels and from the stride-2 level to the image,
    for every image size), and so is the final resize's: output pixel ``y``
    is read at ``y / 2`` on a stride-2 finest level (at ``y / s`` on a
    stride-``s`` one). A step whose sizes are not a stride pair (e.g. from
    the authors' fixed 41x41 grid) is corner-aligned.

    Sharp edges at full resolution: the backbones' finest level is stride 2,
    so with backbone features only the last factor 2 is bilinear (as in the
    authors' code) and edges are as sharp as at half resolution. Pass the
    image itself (e.g. RGB or Lab scaled to about unit range) as an extra,
    finest level with its own gamma: the last step is then an FAI step too
    and edges follow the image (see the tests and the benchmark).

    Args:
        values: ``(B, M, h, w)`` maps on the coarse grid.
        features: levels ordered **fine to coarse**, each ``(B, C_l, H_l, W_l)``
            with non-increasing sizes.
        gammas: one non-negative gamma per level, same (fine to coarse) order:
            ``gammas[l]`` weighs the step *onto* ``features[l]``. The authors'
            ``[8, 4, 1]`` (coarse to fine) is ``(1, 4, 8)`` here.
        output_size: optional final ``(H_out, W_out)``.
        neighbourhood, geometry, align_corners: as in
            :func:`feature_attentional_upsample`.

    Returns:
        ``(B, M, H_0, W_0)``, or ``(B, M, *output_size)``.
    """
    if isinstance(features, Tensor) or len(features) == 0:
        raise ValueError("features must be a non-empty sequence of 4-D tensors")
    _check_4d("values", values)
    _check_finite("values", values)
    s = _check_neighbourhood(neighbourhood)
    kind = _resolve_geometry(geometry, align_corners)
    gamma_items = _gamma_list(gammas, len(features))
    for l, f in enumerate(features):
        _check_pair(values, f, f"features[{l}]")
        prev = features[l - 1].shape[-2:] if l else None
        if prev is not None and (f.shape[-2] > prev[0] or f.shape[-1] > prev[1]):
            raise ValueError(
                f"features must be ordered fine to coarse, but level {l} {tuple(f.shape[-2:])} "
                f"is larger than level {l - 1} {tuple(prev)}"
            )
    out_size = None if output_size is None else _check_size("output_size", output_size)

    y = values
    for l in range(len(features) - 1, -1, -1):
        f = features[l]
        cur, nxt = y.shape[-2:], f.shape[-2:]
        if nxt[0] <= cur[0] and nxt[1] <= cur[1]:
            continue  # same size or coarser: nothing to refine
        if nxt[0] < cur[0] or nxt[1] < cur[1]:
            raise ValueError(
                f"features[{l}] {tuple(nxt)} is finer than the current grid {tuple(cur)} "
                "along one axis and coarser along the other"
            )
        _check_finite(f"features[{l}]", f)
        geom = _step_geometry(kind, tuple(nxt), tuple(cur), None)
        y = _step(y, f, _as_gamma(gamma_items[l], f), s, geom)
    if out_size is not None and tuple(y.shape[-2:]) != out_size:
        y = _resize(y, out_size, "corners" if kind == "authors" else kind)
    return y


class FeatureAttentionalInterpolation(nn.Module):
    """Learnable multi-level FAI: holds one gamma per feature level.

    Gammas are stored as ``log_gamma`` (so they stay positive under gradient
    descent) and ordered **fine to coarse**, like the ``features`` argument.

    Args:
        gamma_init: initial gammas, fine to coarse; positive. The default
            ``(1, 4, 8)`` is the authors' ``[8, 4, 1]`` (coarse to fine) for
            conv1 / layer1 / layer4 features with mean-over-channel distances.
            To add the image as an extra finest level, prepend its gamma.
        neighbourhood: odd window side ``S_at`` in coarse cells.
        freeze_gamma: keep the gammas fixed (``requires_grad=False``), which
            is what the authors' code effectively does.
        geometry: ``"stride"`` (default: exact for the backbones' levels of
            any image size), ``"corners"``, ``"centres"`` or ``"authors"``; see
            the module docstring.
        align_corners: see :func:`feature_attentional_upsample`.

    Shape:
        ``forward(values (B, M, h, w), features [(B, C_l, H_l, W_l)] fine to
        coarse, output_size=None) -> (B, M, H_0, W_0)`` or
        ``(B, M, *output_size)``.
    """

    def __init__(
        self,
        gamma_init: Sequence[float] = (1.0, 4.0, 8.0),
        neighbourhood: int = 5,
        *,
        freeze_gamma: bool = False,
        geometry: Geometry | None = None,
        align_corners: bool | None = None,
    ) -> None:
        super().__init__()
        init = [float(g) for g in gamma_init]
        if not init:
            raise ValueError("gamma_init must hold at least one gamma")
        if any(not (0.0 < g < math.inf) for g in init):
            raise ValueError(f"gamma_init must be positive and finite, got {init}")
        self.neighbourhood = _check_neighbourhood(neighbourhood)
        #: ``"stride"``, ``"corners"``, ``"centres"`` or ``"authors"``.
        self.geometry = _resolve_geometry(geometry, align_corners)
        self.log_gamma = nn.Parameter(
            torch.tensor(init, dtype=torch.get_default_dtype()).log(),
            requires_grad=not freeze_gamma,
        )

    @property
    def align_corners(self) -> bool | None:
        """True for ``"corners"`` and ``"authors"``, False for ``"centres"``, None for ``"stride"``."""
        return {"corners": True, "authors": True, "centres": False}.get(self.geometry)

    @property
    def gamma(self) -> Tensor:
        """``(L,)`` current gammas, fine to coarse."""
        return self.log_gamma.exp()

    @property
    def num_levels(self) -> int:
        return self.log_gamma.numel()

    def forward(
        self,
        values: Tensor,
        features: Sequence[Tensor],
        output_size: Sequence[int] | None = None,
    ) -> Tensor:
        if isinstance(features, Tensor) or len(features) != self.num_levels:
            n = "a tensor" if isinstance(features, Tensor) else f"{len(features)} levels"
            raise ValueError(f"this module has {self.num_levels} gammas but features is {n}")
        return fai_upsample(
            values,
            features,
            self.gamma,
            output_size=output_size,
            neighbourhood=self.neighbourhood,
            geometry=self.geometry,
        )

    def extra_repr(self) -> str:
        g = ", ".join(f"{v:.3g}" for v in self.gamma.detach().tolist())
        return (
            f"gamma=[{g}], neighbourhood={self.neighbourhood}, "
            f"geometry={self.geometry!r}, "
            f"trainable={self.log_gamma.requires_grad}"
        )
