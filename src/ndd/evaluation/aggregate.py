"""Aggregation over images, as ``collect_eval_reg.m`` and ``collect_eval_bdry.m``.

See ``shared/notes/bsds-benchmark.md`` sections A.5-A.6, B.5 and C.  Covering
is pooled over images (area-weighted), PRI and VOI are averaged; boundary
precision/recall are pooled counts, with an interpolated best F and the
official "Area_PR".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ndd.evaluation.boundary import BoundaryCounts
from ndd.evaluation.region import RegionCounts

__all__ = [
    "BoundarySummary",
    "PaperCovering",
    "RegionSummary",
    "area_pr",
    "collect_eval_bdry",
    "collect_eval_reg",
    "fmeasure",
    "max_f",
    "paper_covering",
    "round_g10",
]


def round_g10(x: np.ndarray | float) -> np.ndarray:
    """Round to 6 significant digits, as the official ``fprintf('%10g')`` temporaries.

    The official benchmark writes every per-image value with ``%10g`` and reads
    it back before aggregating; doing the same gives digit parity (it matters
    in the last printed digit for images with >= 7 annotations).
    """
    x = np.asarray(x, dtype=np.float64)
    return np.vectorize(lambda v: float(f"{v:g}"), otypes=[np.float64])(x) if x.size else x.copy()


def fmeasure(r: np.ndarray | float, p: np.ndarray | float) -> np.ndarray:
    """F = 2PR / (P + R), and 0 where P + R = 0 (the official ``fmeasure``)."""
    r = np.asarray(r, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    s = p + r
    return 2.0 * p * r / (s + (s == 0))


def _ratio(cnt: np.ndarray, tot: np.ndarray) -> np.ndarray:
    """cnt / tot with 0/0 = 0 (the official ``cnt ./ (sum + (sum==0))``)."""
    cnt = np.asarray(cnt, dtype=np.float64)
    tot = np.asarray(tot, dtype=np.float64)
    return cnt / (tot + (tot == 0))


def max_f(thresholds: np.ndarray, r: np.ndarray, p: np.ndarray) -> tuple[float, float, float, float]:
    """Interpolated best F of a P/R curve (the official ``maxF``).

    Starting from the first threshold, every consecutive pair of thresholds is
    walked at 100 points ``linspace(0, 1)`` (ends included), with t, R, P
    interpolated linearly; a point replaces the best only if its F is strictly
    greater.  Inputs (T,); returns (t, R, P, F) of the best point.
    """
    t = np.asarray(thresholds, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    best = (float(t[0]), float(r[0]), float(p[0]), float(fmeasure(r[0], p[0])))
    if t.size < 2:
        return best
    d = np.append(np.arange(99) * 1.0 / 99, 1.0)[None, :]  # MATLAB linspace(0, 1)
    # same operation order as the official loop, for bit parity
    ti = t[1:, None] * d + t[:-1, None] * (1 - d)
    ri = r[1:, None] * d + r[:-1, None] * (1 - d)
    pi = p[1:, None] * d + p[:-1, None] * (1 - d)
    fi = fmeasure(ri, pi).ravel()
    j = int(np.argmax(fi))  # first maximum = the sequential "strictly greater" rule
    if fi[j] > best[3]:
        return float(ti.ravel()[j]), float(ri.ravel()[j]), float(pi.ravel()[j]), float(fi[j])
    return best


def area_pr(r: np.ndarray, p: np.ndarray) -> float:
    """The official "Area_PR" (not VOC AP): mean of P interpolated at R = 0:0.01:1.

    P is interpolated linearly over the distinct recall values (for a repeated
    recall, the precision of its last occurrence is used, as MATLAB's
    ``unique`` did in the releases the official results were made with), and
    is 0 outside the recall range; 0 when fewer than two distinct recalls.
    """
    r = np.asarray(r, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    rev_u, rev_idx = np.unique(r[::-1], return_index=True)  # first in reverse = last occurrence
    if rev_u.size < 2:
        return 0.0
    pu = p[::-1][rev_idx]
    ri = np.arange(101) * 0.01
    pi = np.interp(ri, rev_u, pu, left=0.0, right=0.0)
    return float(pi.sum() * 0.01)


@dataclass(frozen=True)
class RegionSummary:
    """Data-set region figures (``eval_cover*.txt``, ``eval_RI_VOI*.txt``).

    Per-threshold curves (T,): ``covering_curve`` (pooled), ``pri_curve``,
    ``voi_curve`` (image means).  Per-image arrays (N,): ``img_best_t``,
    ``img_best_r``, ``img_best_p`` (first maximiser, ``eval_cover_img.txt``),
    ``img_best_cover`` (the image's own Best covering), ``img_pri_ois``,
    ``img_voi_ois``.
    """

    thresholds: np.ndarray
    covering_curve: np.ndarray
    covering_ods_threshold: float
    covering_ods: float
    covering_ois: float
    covering_best: float
    pri_curve: np.ndarray
    voi_curve: np.ndarray
    pri_ods_threshold: float
    pri_ods: float
    pri_ois: float
    voi_ods_threshold: float
    voi_ods: float
    voi_ois: float
    img_best_t: np.ndarray
    img_best_r: np.ndarray
    img_best_p: np.ndarray
    img_best_cover: np.ndarray
    img_pri_ois: np.ndarray
    img_voi_ois: np.ndarray


def _common_thresholds(items: Sequence[RegionCounts] | Sequence[BoundaryCounts]) -> np.ndarray:
    if len(items) == 0:
        raise ValueError("no image to aggregate")
    t = np.asarray(items[0].thresholds, dtype=np.float64)
    for k, it in enumerate(items):
        if it.thresholds.shape != t.shape or not np.allclose(it.thresholds, t):
            raise ValueError(f"image {k} was evaluated at different thresholds ({it.thresholds.size} vs {t.size})")
    return t


def collect_eval_reg(per_image: Sequence[RegionCounts], official_rounding: bool = True) -> RegionSummary:
    """Region summary over images, exactly as ``collect_eval_reg.m``.

    ``official_rounding`` rounds the per-image temporaries to ``%10g`` first
    (see :func:`round_g10`).
    """
    rnd = round_g10 if official_rounding else (lambda a: np.asarray(a, dtype=np.float64))
    thr = rnd(_common_thresholds(per_image))
    T, N = thr.size, len(per_image)
    cnt_r = np.stack([rnd(c.cnt_r) for c in per_image])  # (N, T)
    sum_r = np.stack([rnd(c.sum_r) for c in per_image])
    cnt_p = np.stack([rnd(c.cnt_p) for c in per_image])
    sum_p = np.stack([rnd(c.sum_p) for c in per_image])
    cnt_best = np.array([float(rnd(c.cnt_r_best)) for c in per_image])
    pri = np.stack([rnd(c.pri) for c in per_image])
    voi = np.stack([rnd(c.voi) for c in per_image])

    r = _ratio(cnt_r, sum_r)
    p = _ratio(cnt_p, sum_p)
    rows = np.arange(N)
    first = np.argmax(r, axis=1)  # the reported row uses the first maximiser...
    last = T - 1 - np.argmax(r[:, ::-1], axis=1)  # ...the OIS sums the last (ff(end))
    img_best_t, img_best_r, img_best_p = thr[first], r[rows, first], p[rows, first]

    curve = _ratio(cnt_r.sum(0), sum_r.sum(0))
    ods_i = int(np.argmax(curve))
    ois = float(cnt_r[rows, last].sum() / sum_r[rows, last].sum())
    best = float(cnt_best.sum() / sum_r[:, 0].sum())

    pri_curve, voi_curve = pri.mean(0), voi.mean(0)
    pri_last = T - 1 - np.argmax(pri[:, ::-1], axis=1)
    voi_last = T - 1 - np.argmin(voi[:, ::-1], axis=1)
    img_pri, img_voi = pri[rows, pri_last], voi[rows, voi_last]
    i_pri, i_voi = int(np.argmax(pri_curve)), int(np.argmin(voi_curve))
    return RegionSummary(
        thresholds=thr,
        covering_curve=curve,
        covering_ods_threshold=float(thr[ods_i]),
        covering_ods=float(curve[ods_i]),
        covering_ois=ois,
        covering_best=best,
        pri_curve=pri_curve,
        voi_curve=voi_curve,
        pri_ods_threshold=float(thr[i_pri]),
        pri_ods=float(pri_curve[i_pri]),
        pri_ois=float(img_pri.mean()),
        voi_ods_threshold=float(thr[i_voi]),
        voi_ods=float(voi_curve[i_voi]),
        voi_ois=float(img_voi.mean()),
        img_best_t=img_best_t,
        img_best_r=img_best_r,
        img_best_p=img_best_p,
        img_best_cover=cnt_best / sum_r[:, 0],
        img_pri_ois=img_pri,
        img_voi_ois=img_voi,
    )


@dataclass(frozen=True)
class BoundarySummary:
    """Data-set boundary figures (``eval_bdry*.txt``).

    Curves (T,): ``recall``, ``precision``, ``f`` from pooled counts.  ODS: the
    interpolated best point of that curve; OIS: pooled counts at each image's
    first discrete best-F threshold; ``ap``: the official Area_PR.  Per-image
    (N,): the interpolated best point of each image's curve.
    """

    thresholds: np.ndarray
    recall: np.ndarray
    precision: np.ndarray
    f: np.ndarray
    ods_threshold: float
    ods_recall: float
    ods_precision: float
    ods_f: float
    ois_recall: float
    ois_precision: float
    ois_f: float
    ap: float
    img_best_t: np.ndarray
    img_best_r: np.ndarray
    img_best_p: np.ndarray
    img_best_f: np.ndarray


def collect_eval_bdry(per_image: Sequence[BoundaryCounts]) -> BoundarySummary:
    """Boundary summary over images, exactly as ``collect_eval_bdry.m``."""
    thr = round_g10(_common_thresholds(per_image))
    cnt_r = np.stack([c.cnt_r for c in per_image]).astype(np.float64)  # (N, T); integers: %10g exact
    sum_r = np.stack([c.sum_r for c in per_image]).astype(np.float64)
    cnt_p = np.stack([c.cnt_p for c in per_image]).astype(np.float64)
    sum_p = np.stack([c.sum_p for c in per_image]).astype(np.float64)
    N = cnt_r.shape[0]
    rows = np.arange(N)
    r, p = _ratio(cnt_r, sum_r), _ratio(cnt_p, sum_p)
    f = fmeasure(r, p)
    per = np.array([max_f(thr, r[i], p[i]) for i in range(N)])  # (N, 4)
    first = np.argmax(f, axis=1)  # OIS: first discrete maximiser (ff(1))
    r_ois = _ratio(cnt_r[rows, first].sum(), sum_r[rows, first].sum())
    p_ois = _ratio(cnt_p[rows, first].sum(), sum_p[rows, first].sum())
    R, P = _ratio(cnt_r.sum(0), sum_r.sum(0)), _ratio(cnt_p.sum(0), sum_p.sum(0))
    ods = max_f(thr, R, P)
    return BoundarySummary(
        thresholds=thr,
        recall=R,
        precision=P,
        f=fmeasure(R, P),
        ods_threshold=ods[0],
        ods_recall=ods[1],
        ods_precision=ods[2],
        ods_f=ods[3],
        ois_recall=float(r_ois),
        ois_precision=float(p_ois),
        ois_f=float(fmeasure(r_ois, p_ois)),
        ap=area_pr(R, P),
        img_best_t=per[:, 0],
        img_best_r=per[:, 1],
        img_best_p=per[:, 2],
        img_best_f=per[:, 3],
    )


@dataclass(frozen=True)
class PaperCovering:
    """The paper's Table-2 protocol (note section C), plain means over images.

    At each image's optimal scale t* (its OIS threshold, first maximiser):
    ``avg`` = mean over images of the mean over annotations of Cover(S_t* → G_k)
    (the per-image OIS covering); ``max`` = mean over images of the max over
    annotations at t* (first reading); ``max_any_scale`` = mean over images of
    the max over annotations *and* scales (second reading, higher).
    Per-image (N,): ``img_avg``, ``img_max``, ``img_max_any_scale``.
    """

    avg: float
    max: float
    max_any_scale: float
    img_avg: np.ndarray
    img_max: np.ndarray
    img_max_any_scale: np.ndarray


def paper_covering(per_image: Sequence[RegionCounts]) -> PaperCovering:
    """AVG / MAX covering "under the optimal image scale" (paper, Table 2)."""
    if len(per_image) == 0:
        raise ValueError("no image to aggregate")
    img_avg, img_max, img_any = [], [], []
    for c in per_image:
        cover = np.asarray(c.cover_k)  # (T, K)
        t_star = int(np.argmax(cover.mean(axis=1)))
        img_avg.append(cover[t_star].mean())
        img_max.append(cover[t_star].max())
        img_any.append(cover.max())
    a, m, x = np.array(img_avg), np.array(img_max), np.array(img_any)
    return PaperCovering(float(a.mean()), float(m.mean()), float(x.mean()), a, m, x)
