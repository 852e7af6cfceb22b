"""BSDS500 files, per-image evaluation and the parallel driver over a data set.

Inputs, one per image id:

* ``<id>.mat`` with ``ucm2`` (doubleSize ultrametric contour map, 99 scales
  by default) or ``segs`` (a cell of label maps; scales 1..S);
* ``<id>.npz`` with ``ucm2`` ((2h+1, 2w+1)) or ``segs`` ((S, h, w));
* ``<id>/`` a folder of PNG label maps, one per scale, in name order;
* ``<id>.png`` a soft boundary map (8-bit /255 or 16-bit /65535), boundary
  benchmark only;
* ``<id>.npy`` a soft boundary map ((h, w) float in [0, 1], or uint8/uint16),
  or a ``.mat``/``.npz`` whose soft map is stored as ``pb``, ``edges`` or ``E``.

Soft boundary maps can be thinned first by the edge papers' non-maximum
suppression (``nms=True``, :mod:`ndd.evaluation.nms`).

PNG files and folders count only when named after a ground-truth image that
has no ``.mat``/``.npz``/``.npy`` result (other PNGs, such as the overlays ``ndd
segment`` writes beside its ``<id>.mat``, are listed as ignored).

Ground truth: ``<id>.mat`` with the BSDS ``groundTruth`` cell.  Every problem
(missing or unreadable file, missing ground truth, shape mismatch, NaN) raises
:class:`EvaluationError` naming the file; no image is ever dropped silently.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.io

from ndd.evaluation.aggregate import (
    BoundarySummary,
    PaperCovering,
    RegionSummary,
    collect_eval_bdry,
    collect_eval_reg,
    paper_covering,
)
from ndd.evaluation.boundary import (
    BoundaryCounts,
    boundary_counts,
    seg2bdry,
    segs_boundary_maps,
    thin_boundary,
    ucm2_boundary_maps,
)
from ndd.evaluation.matching import Tiebreak
from ndd.evaluation.nms import nms_edge_map
from ndd.evaluation.region import RegionCounts, region_counts, segs_hierarchy, thresholds_linspace, ucm2_hierarchy

__all__ = [
    "Annotation",
    "DatasetEvaluation",
    "EvaluationError",
    "ImageEvaluation",
    "MachineResult",
    "evaluate_dataset",
    "evaluate_image",
    "SOFT_MAP_KEYS",
    "check_pairing",
    "find_results",
    "load_groundtruth",
    "load_result",
]

ResultKind = Literal["ucm2", "segs", "pb"]

#: variable names of a soft boundary map inside a ``.mat`` / ``.npz`` result
SOFT_MAP_KEYS = ("pb", "edges", "E")


class EvaluationError(ValueError):
    """A problem with an input file, the message names the file."""


@dataclass(frozen=True)
class Annotation:
    """One human annotation: (h, w) ``segmentation`` (labels >= 1) and ``boundaries`` (bool)."""

    segmentation: np.ndarray
    boundaries: np.ndarray


@dataclass(frozen=True)
class MachineResult:
    """One machine result: ``kind`` "ucm2" ((2h+1, 2w+1) float), "segs" (list of
    (h, w) label maps) or "pb" ((h, w) soft boundary map in [0, 1])."""

    kind: ResultKind
    data: Any
    path: Path


# ----------------------------------------------------------------------------- loading


def _loadmat(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise EvaluationError(f"{path}: file not found")
    try:
        return scipy.io.loadmat(str(path), simplify_cells=True)
    except NotImplementedError as exc:  # MATLAB v7.3 (HDF5) files
        raise EvaluationError(f"{path}: MATLAB v7.3 files are not supported, save with -v7 ({exc})") from exc
    except Exception as exc:  # corrupt or not a .mat file
        raise EvaluationError(f"{path}: cannot read .mat file ({type(exc).__name__}: {exc})") from exc


def _as_list(cell: Any) -> list[Any]:
    """A MATLAB cell read with ``simplify_cells`` as a list (1x1 cells come back bare)."""
    if isinstance(cell, (list, tuple)):
        return list(cell)
    if isinstance(cell, np.ndarray) and cell.dtype == object:
        return list(cell.ravel())
    return [cell]


def load_groundtruth(path: str | os.PathLike[str]) -> list[Annotation]:
    """Read a BSDS ``groundTruth`` .mat: a list of K :class:`Annotation`.

    ``Boundaries`` is used as stored (as the official code does); when absent
    it is derived as ``thin(seg2bdry(Segmentation))``, which equals the stored
    maps of BSDS500.
    """
    path = Path(path)
    mat = _loadmat(path)
    if "groundTruth" not in mat:
        raise EvaluationError(
            f"{path}: no 'groundTruth' variable (found {sorted(k for k in mat if not k.startswith('__'))})"
        )
    annotations = []
    shape = None
    for k, entry in enumerate(_as_list(mat["groundTruth"])):
        if not isinstance(entry, dict) or "Segmentation" not in entry:
            raise EvaluationError(f"{path}: groundTruth{{{k + 1}}} has no 'Segmentation' field")
        seg = np.asarray(entry["Segmentation"])
        if seg.ndim != 2 or not np.issubdtype(seg.dtype, np.number):
            raise EvaluationError(f"{path}: groundTruth{{{k + 1}}}.Segmentation is not a 2-D label map ({seg.shape})")
        if shape is None:
            shape = seg.shape
        elif seg.shape != shape:
            raise EvaluationError(f"{path}: annotations of different shapes {shape} and {seg.shape}")
        if np.issubdtype(seg.dtype, np.floating) and not np.all(np.isfinite(seg)):
            raise EvaluationError(f"{path}: groundTruth{{{k + 1}}}.Segmentation contains NaN/Inf")
        seg = seg.astype(np.int64)
        if seg.min() < 1:
            raise EvaluationError(f"{path}: groundTruth{{{k + 1}}}.Segmentation has labels < 1")
        if "Boundaries" in entry and entry["Boundaries"] is not None and np.size(entry["Boundaries"]):
            bdry = np.asarray(entry["Boundaries"]).astype(bool)
            if bdry.shape != shape:
                raise EvaluationError(f"{path}: groundTruth{{{k + 1}}}.Boundaries has shape {bdry.shape}, not {shape}")
        else:
            bdry = thin_boundary(seg2bdry(seg))
        annotations.append(Annotation(seg, bdry))
    if not annotations:
        raise EvaluationError(f"{path}: empty groundTruth cell")
    return annotations


def _natural_key(name: str) -> list[Any]:
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name)]


def _label_image(arr: np.ndarray, where: str) -> np.ndarray:
    """A label map from a stored array: 2-D numbers, or colours (h, w, c) → one code per colour."""
    arr = np.asarray(arr)
    if arr.ndim == 3:
        _, inv = np.unique(arr.reshape(-1, arr.shape[2]), axis=0, return_inverse=True)
        arr = inv.reshape(arr.shape[:2])
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise EvaluationError(f"{where}: not a 2-D label map (shape {arr.shape}, dtype {arr.dtype})")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise EvaluationError(f"{where}: label map contains NaN/Inf")
    return arr


def _check_ucm2(ucm2: Any, path: Path) -> np.ndarray:
    ucm2 = np.asarray(ucm2)
    if ucm2.ndim != 2 or not np.issubdtype(ucm2.dtype, np.number):
        raise EvaluationError(f"{path}: 'ucm2' must be a 2-D numeric array, got shape {ucm2.shape} dtype {ucm2.dtype}")
    ucm2 = ucm2.astype(np.float64)
    if not np.all(np.isfinite(ucm2)):
        raise EvaluationError(f"{path}: 'ucm2' contains NaN/Inf")
    return ucm2


def _soft_map(arr: Any, where: str) -> np.ndarray:
    """A soft boundary map in [0, 1] from a stored (h, w) array.

    uint8 is scaled by 1/255 and uint16 by 1/65535 (PNG conventions), bool to
    0/1; floats must be finite and within [0, 1] (a map outside it would be
    thresholded wrongly by the 1/(n+1) .. n/(n+1) scales, so it is an error).
    """
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):  # an RGB(A) save of a grey map
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise EvaluationError(f"{where}: soft boundary map must be 2-D, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float64) / 65535.0
    if arr.dtype == bool:
        return arr.astype(np.float64)
    if not np.issubdtype(arr.dtype, np.floating):
        raise EvaluationError(f"{where}: soft boundary map must be float in [0, 1], uint8 or uint16, got {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise EvaluationError(f"{where}: soft boundary map contains NaN/Inf")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise EvaluationError(f"{where}: soft boundary map values must lie in [0, 1], got [{lo:g}, {hi:g}]")
    return np.clip(arr, 0.0, 1.0)


def load_result(path: str | os.PathLike[str]) -> MachineResult:
    """Read one machine result (.mat / .npz with ``ucm2``, ``segs`` or a soft
    map ``pb``/``edges``/``E``, a PNG label-map folder, or a soft boundary map
    as 8/16-bit PNG or ``.npy``)."""
    path = Path(path)
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix.lower() == ".png"), key=lambda p: _natural_key(p.name))
        if not files:
            raise EvaluationError(f"{path}: folder holds no PNG label map")
        return MachineResult("segs", [_label_image(_imread(p), str(p)) for p in files], path)
    suffix = path.suffix.lower()
    if suffix == ".png":
        img = np.asarray(_imread(path))
        if img.ndim == 3:
            img = img[..., 0]
        if img.dtype not in (np.uint8, np.uint16):
            raise EvaluationError(f"{path}: soft boundary PNG must be 8- or 16-bit grey, got {img.dtype}")
        return MachineResult("pb", _soft_map(img, str(path)), path)
    if suffix == ".npy":
        if not path.is_file():
            raise EvaluationError(f"{path}: file not found")
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise EvaluationError(f"{path}: cannot read .npy file ({type(exc).__name__}: {exc})") from exc
        return MachineResult("pb", _soft_map(arr, str(path)), path)
    if suffix == ".npz":
        if not path.is_file():
            raise EvaluationError(f"{path}: file not found")
        try:
            with np.load(path, allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
        except Exception as exc:
            raise EvaluationError(f"{path}: cannot read .npz file ({type(exc).__name__}: {exc})") from exc
    elif suffix == ".mat":
        data = _loadmat(path)
    else:
        raise EvaluationError(f"{path}: unsupported result format (expected .mat, .npz, .npy, .png or a folder)")
    if "ucm2" in data:
        return MachineResult("ucm2", _check_ucm2(data["ucm2"], path), path)
    if "segs" in data:
        segs = data["segs"]
        if isinstance(segs, np.ndarray) and segs.dtype != object and segs.ndim == 3:
            items = list(segs)  # (S, h, w)
        elif isinstance(segs, np.ndarray) and segs.dtype != object and segs.ndim == 2:
            items = [segs]  # a 1x1 cell comes back as the bare map
        else:
            items = _as_list(segs)
        if not items:
            raise EvaluationError(f"{path}: 'segs' is empty")
        return MachineResult("segs", [_label_image(s, f"{path}: segs{{{k + 1}}}") for k, s in enumerate(items)], path)
    for key in SOFT_MAP_KEYS:
        if key in data:
            return MachineResult("pb", _soft_map(data[key], f"{path}: '{key}'"), path)
    keys = sorted(k for k in data if not k.startswith("__"))
    raise EvaluationError(
        f"{path}: no 'ucm2' or 'segs' variable, nor a soft map {', '.join(map(repr, SOFT_MAP_KEYS))} (found {keys})"
    )


def _imread(path: Path) -> np.ndarray:
    from skimage.io import imread  # deferred: imageio is slow to import

    try:
        return np.asarray(imread(str(path)))
    except Exception as exc:
        raise EvaluationError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc


def find_results(
    results_dir: str | os.PathLike[str], image_ids: set[str] | None = None
) -> tuple[dict[str, Path], list[str]]:
    """Map image id → result path for the results in a folder (see module doc).

    ``.mat``/``.npz``/``.npy`` files are always results.  PNG files and PNG
    folders are results only when named after an image of ``image_ids`` (when
    given) that has no ``.mat``/``.npz``/``.npy``: other PNGs (``ndd segment`` writes overlays and
    label maps beside its ``<id>.mat``) are returned as ignored names.
    Returns ``(results, ignored)``.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise EvaluationError(f"{results_dir}: results folder not found")
    found: dict[str, Path] = {}
    pngs: dict[str, Path] = {}
    for p in sorted(results_dir.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            if any(q.suffix.lower() == ".png" for q in p.iterdir()):
                pngs[p.name] = p
        elif p.suffix.lower() == ".png":
            pngs[p.stem] = p
        elif p.suffix.lower() in (".mat", ".npz", ".npy"):
            if p.stem in found:
                raise EvaluationError(
                    f"{results_dir}: two results for image {p.stem}: {found[p.stem].name} and {p.name}"
                )
            found[p.stem] = p
    ignored = []
    for iid, p in pngs.items():
        if iid in found or (image_ids is not None and iid not in image_ids):
            ignored.append(p.name)
        else:
            found[iid] = p
    return found, ignored


# ----------------------------------------------------------------------------- one image


@dataclass(frozen=True)
class ImageEvaluation:
    """Counts of one image; ``region``/``boundary`` are None when not computed."""

    image_id: str
    kind: ResultKind
    n_annotations: int
    region: RegionCounts | None
    boundary: BoundaryCounts | None


def evaluate_image(
    result: str | os.PathLike[str] | MachineResult,
    groundtruth: str | os.PathLike[str] | Sequence[Annotation],
    nthresh: int = 99,
    region: bool = True,
    boundary: bool = True,
    max_dist: float = 0.0075,
    tiebreak: Tiebreak = "greedy",
    image_id: str | None = None,
    nms: bool = False,
    nms_radius: int = 1,
) -> ImageEvaluation:
    """Region and boundary counts of one image.

    ``result``: a path or a loaded :class:`MachineResult`; ``groundtruth``: a
    path or loaded annotations.  A ucm2 or soft boundary map is evaluated at
    ``nthresh`` thresholds ``linspace(1/(n+1), 1-1/(n+1), n)``; a stack of S
    segmentations at its S levels (``nthresh`` is then ignored, as officially).
    ``nms``: thin a soft boundary map first with the edge papers' non-maximum
    suppression (:func:`~ndd.evaluation.nms.nms_edge_map`); ucm2 and label
    maps are unaffected (their boundaries are already one pixel wide).
    ``nms_radius``: its suppression radius ``r`` (1 as ``edgesNms``/HED; the
    RCF and PiDiNet scripts use 2 on BSDS500).
    """
    res = result if isinstance(result, MachineResult) else load_result(result)
    gt_where = str(groundtruth) if isinstance(groundtruth, (str, os.PathLike)) else "ground truth"
    gts = load_groundtruth(groundtruth) if isinstance(groundtruth, (str, os.PathLike)) else list(groundtruth)
    h, w = gts[0].segmentation.shape
    iid = image_id if image_id is not None else res.path.stem
    if res.kind == "ucm2":
        if res.data.shape != (2 * h + 1, 2 * w + 1):
            raise EvaluationError(
                f"{res.path}: ucm2 has shape {res.data.shape}, expected {(2 * h + 1, 2 * w + 1)} "
                f"(doubleSize of the {h}x{w} ground truth {gt_where})"
            )
        thresholds = thresholds_linspace(nthresh)
    elif res.kind == "segs":
        for k, s in enumerate(res.data):
            if s.shape != (h, w):
                raise EvaluationError(f"{res.path}: segmentation {k + 1} has shape {s.shape}, ground truth {(h, w)}")
        thresholds = np.arange(1, len(res.data) + 1, dtype=np.float64)
    else:
        if res.data.shape != (h, w):
            raise EvaluationError(f"{res.path}: boundary map has shape {res.data.shape}, ground truth {(h, w)}")
        if region:
            raise EvaluationError(
                f"{res.path}: a soft boundary map supports the boundary benchmark only (region=False)"
            )
        thresholds = thresholds_linspace(nthresh)

    reg = None
    if region:
        hier = ucm2_hierarchy(res.data, thresholds) if res.kind == "ucm2" else segs_hierarchy(res.data)
        reg = region_counts(hier, [a.segmentation for a in gts])
    bdry = None
    if boundary:
        if res.kind == "ucm2":
            maps = ucm2_boundary_maps(res.data, thresholds)
        elif res.kind == "segs":
            maps = segs_boundary_maps(res.data)
        else:
            pb = nms_edge_map(res.data, r=nms_radius) if nms else res.data
            maps = (pb >= t for t in thresholds)
        bdry = boundary_counts(maps, [a.boundaries for a in gts], thresholds, max_dist=max_dist, tiebreak=tiebreak)
    return ImageEvaluation(iid, res.kind, len(gts), reg, bdry)


def _evaluate_pair(
    iid: str,
    result_path: Path,
    gt_path: Path,
    nthresh: int,
    region: bool,
    boundary: bool,
    max_dist: float,
    tiebreak: Tiebreak,
    nms: bool = False,
    nms_radius: int = 1,
) -> ImageEvaluation:
    return evaluate_image(
        result_path, gt_path, nthresh, region, boundary, max_dist, tiebreak, iid, nms=nms, nms_radius=nms_radius
    )


# ----------------------------------------------------------------------------- data set


@dataclass(frozen=True)
class DatasetEvaluation:
    """All per-image counts and the aggregated figures of a data set.

    ``missing_results``: ground-truth ids without a result (``allow_missing``);
    ``ignored_files``: PNGs of the results folder not named after an image;
    ``nms``: soft boundary maps were thinned by non-maximum suppression;
    ``official_rounding``: per-image region values were rounded to ``%10g``
    before aggregating (see :func:`~ndd.evaluation.aggregate.round_g10`).
    """

    images: list[ImageEvaluation]
    region: RegionSummary | None
    boundary: BoundarySummary | None
    paper: PaperCovering | None
    missing_results: list[str] = field(default_factory=list)
    ignored_files: list[str] = field(default_factory=list)
    nms: bool = False
    official_rounding: bool = True

    @property
    def image_ids(self) -> list[str]:
        return [im.image_id for im in self.images]

    def to_json_dict(self) -> dict[str, Any]:
        """``{"summary": {...}, "images": {id: {...}}}`` (see ``ndd evaluate --json``)."""
        reg, bd, pap = self.region, self.boundary, self.paper
        none3 = {"ods": None, "ois": None}
        summary: dict[str, Any] = {
            "covering": (
                {
                    "ods": reg.covering_ods,
                    "ois": reg.covering_ois,
                    "best": reg.covering_best,
                    "ods_threshold": reg.covering_ods_threshold,
                }
                if reg is not None
                else {**none3, "best": None}
            ),
            "pri": {"ods": reg.pri_ods, "ois": reg.pri_ois, "ods_threshold": reg.pri_ods_threshold}
            if reg is not None
            else dict(none3),
            "vi": {"ods": reg.voi_ods, "ois": reg.voi_ois, "ods_threshold": reg.voi_ods_threshold}
            if reg is not None
            else dict(none3),
            "boundary": (
                {
                    "ods": bd.ods_f,
                    "ois": bd.ois_f,
                    "ap": bd.ap,
                    "ods_threshold": bd.ods_threshold,
                    "ods_recall": bd.ods_recall,
                    "ods_precision": bd.ods_precision,
                    "ois_recall": bd.ois_recall,
                    "ois_precision": bd.ois_precision,
                }
                if bd is not None
                else {**none3, "ap": None}
            ),
            "paper_covering": (
                {"avg": pap.avg, "max": pap.max, "max_any_scale": pap.max_any_scale}
                if pap is not None
                else {"avg": None, "max": None, "max_any_scale": None}
            ),
        }
        images: dict[str, Any] = {}
        for i, im in enumerate(self.images):
            row: dict[str, Any] = {"kind": im.kind, "n_annotations": im.n_annotations}
            if reg is not None and pap is not None:
                row.update(
                    covering_ois=float(reg.img_best_r[i]),
                    covering_ois_threshold=float(reg.img_best_t[i]),
                    covering_ois_precision=float(reg.img_best_p[i]),
                    covering_best=float(reg.img_best_cover[i]),
                    pri_ois=float(reg.img_pri_ois[i]),
                    vi_ois=float(reg.img_voi_ois[i]),
                    paper_avg=float(pap.img_avg[i]),
                    paper_max=float(pap.img_max[i]),
                    paper_max_any_scale=float(pap.img_max_any_scale[i]),
                )
            else:
                row.update(covering_ois=None, covering_ois_threshold=None, covering_best=None)
            if bd is not None:
                row.update(
                    boundary_ois_f=float(bd.img_best_f[i]),
                    boundary_ois_threshold=float(bd.img_best_t[i]),
                    boundary_ois_recall=float(bd.img_best_r[i]),
                    boundary_ois_precision=float(bd.img_best_p[i]),
                )
            else:
                row.update(boundary_ois_f=None, boundary_ois_threshold=None)
            images[im.image_id] = row
        return {"summary": summary, "images": images}


def evaluate_dataset(
    results_dir: str | os.PathLike[str],
    groundtruth_dir: str | os.PathLike[str],
    nthresh: int = 99,
    workers: int = 1,
    region: bool = True,
    boundary: bool = True,
    max_dist: float = 0.0075,
    tiebreak: Tiebreak = "greedy",
    allow_missing: bool = False,
    official_rounding: bool = True,
    progress: Callable[[int, int, str], None] | None = None,
    nms: bool = False,
    nms_radius: int = 1,
) -> DatasetEvaluation:
    """Evaluate every result of ``results_dir`` against ``groundtruth_dir``.

    Images are evaluated in parallel over ``workers`` processes (1: in this
    process) and aggregated in sorted id order (MATLAB's order for BSDS ids).
    A result without ground truth is an error; a ground-truth image without a
    result is an error unless ``allow_missing`` (then it is listed in
    ``missing_results`` and the figures cover the results only).
    ``progress(done, total, image_id)`` is called after each image.  ``nms``
    thins soft boundary maps first, with suppression radius ``nms_radius``
    (see :func:`evaluate_image`).
    """
    if not region and not boundary:
        raise ValueError("nothing to evaluate: region and boundary both off")
    if nms_radius < 1:
        raise ValueError(f"nms_radius must be >= 1, got {nms_radius}")
    gt_dir = Path(groundtruth_dir)
    if not gt_dir.is_dir():
        raise EvaluationError(f"{gt_dir}: ground-truth folder not found")
    gts = {p.stem: p for p in gt_dir.glob("*.mat")}
    if not gts:
        raise EvaluationError(f"{gt_dir}: no ground truth (<id>.mat) found")
    results, ignored = find_results(results_dir, set(gts))
    if not results:
        hint = ""
        if ignored:
            hint = (
                f"; {len(ignored)} PNG file(s)/folder(s) are not named after a ground-truth image "
                f"(e.g. {ignored[0]}, while the ground truth has e.g. {min(gts)}.mat)"
            )
        raise EvaluationError(f"{results_dir}: no result (.mat, .npz, .npy, .png or PNG folder) found{hint}")
    check_pairing(results, gts, results_dir, gt_dir, allow_missing)
    missing = sorted(set(gts) - set(results))
    ids = sorted(results)
    args = [(i, results[i], gts[i], nthresh, region, boundary, max_dist, tiebreak, nms, nms_radius) for i in ids]
    done: dict[str, ImageEvaluation] = {}
    if workers <= 1:
        for k, a in enumerate(args):
            done[a[0]] = _evaluate_pair(*a)
            if progress:
                progress(k + 1, len(args), a[0])
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_evaluate_pair, *a): a for a in args}
            for fut in as_completed(futures):
                a = futures[fut]
                try:
                    done[a[0]] = fut.result()
                except EvaluationError:
                    for f in futures:
                        f.cancel()
                    raise
                except Exception as exc:
                    for f in futures:
                        f.cancel()
                    raise EvaluationError(f"{a[1]}: evaluation failed ({type(exc).__name__}: {exc})") from exc
                if progress:
                    progress(len(done), len(args), a[0])
    images = [done[i] for i in ids]
    _check_same_scales(images, results)
    reg_counts = [im.region for im in images if im.region is not None]
    bdry_counts = [im.boundary for im in images if im.boundary is not None]
    reg = collect_eval_reg(reg_counts, official_rounding) if region else None
    pap = paper_covering(reg_counts) if region else None
    bd = collect_eval_bdry(bdry_counts) if boundary else None
    return DatasetEvaluation(images, reg, bd, pap, missing, ignored, nms, official_rounding)


def _name_list(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" ... ({len(names) - limit} more)" if len(names) > limit else "")


def check_pairing(
    results: dict[str, Path],
    groundtruth: dict[str, Path],
    results_dir: str | os.PathLike[str],
    groundtruth_dir: str | os.PathLike[str],
    allow_missing: bool = False,
) -> None:
    """Raise one :class:`EvaluationError` listing every id that does not pair up.

    ``results`` / ``groundtruth``: image id → file.  A result without ground
    truth is always an error; a ground-truth image without result is one
    unless ``allow_missing``.  Both lists go in the same message, so a wrong
    folder (e.g. val results against test ground truth) shows at once.
    """
    no_gt = sorted(set(results) - set(groundtruth))
    missing = [] if allow_missing else sorted(set(groundtruth) - set(results))
    if not no_gt and not missing:
        return
    parts = []
    if no_gt:
        parts.append(
            f"{len(no_gt)} result(s) in {results_dir} have no ground truth in {groundtruth_dir}: "
            + _name_list([results[i].name for i in no_gt])
        )
    if missing:
        parts.append(
            f"{len(missing)} ground-truth image(s) of {groundtruth_dir} have no result in {results_dir}: "
            + _name_list(missing)
            + " (pass allow_missing / --allow-missing to evaluate the subset)"
        )
    common = len(set(results) & set(groundtruth))
    raise EvaluationError(
        f"results and ground truth do not pair up ({common} image(s) in common): " + "; ".join(parts)
    )


def _check_same_scales(images: Sequence[ImageEvaluation], results: dict[str, Path]) -> None:
    """The official aggregation needs the same scales for every image."""
    ref = None
    for im in images:
        counts = im.region if im.region is not None else im.boundary
        assert counts is not None
        if ref is None:
            ref = (im, counts.thresholds)
        elif counts.thresholds.shape != ref[1].shape or not np.allclose(counts.thresholds, ref[1]):
            raise EvaluationError(
                f"{results[im.image_id]}: evaluated at {counts.thresholds.size} scales ({im.kind}), but "
                f"{results[ref[0].image_id]} at {ref[1].size} ({ref[0].kind}); all results must have the same scales"
            )


def print_progress(done: int, total: int, image_id: str) -> None:
    """A one-line progress display on stderr (for the CLI)."""
    end = "\n" if done == total else ""
    print(f"\r[{done}/{total}] {image_id}   ", end=end, file=sys.stderr, flush=True)
