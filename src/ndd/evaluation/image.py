"""The benchmark of one image: its result against its human annotations.

Loads the result and the ground truth when given as paths, checks that their
shapes agree, picks the scales (:mod:`ndd.evaluation.scales`) and returns the
per-threshold counts of the region benchmark (:mod:`ndd.evaluation.region`)
and of the boundary benchmark (:mod:`ndd.evaluation.boundary`), the
official per-image temporaries that :mod:`ndd.evaluation.aggregate` pools.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from ndd.evaluation.boundary import (
    BoundaryCounts,
    boundary_counts,
    segs_boundary_maps,
    soft_boundary_maps,
    ucm2_boundary_maps,
)
from ndd.evaluation.inputs import Annotation, EvaluationError, MachineResult, ResultKind, load_groundtruth, load_result
from ndd.evaluation.matching import Tiebreak
from ndd.evaluation.nms import nms_edge_map
from ndd.evaluation.region import RegionCounts, region_counts, segs_hierarchy, ucm2_hierarchy
from ndd.evaluation.scales import level_scales, thresholds_linspace

__all__ = ["ImageEvaluation", "evaluate_image"]


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
        thresholds = level_scales(len(res.data))
    else:
        if res.data.shape != (h, w):
            raise EvaluationError(f"{res.path}: boundary map has shape {res.data.shape}, ground truth {(h, w)}")
        if region:
            raise EvaluationError(
                f"{res.path}: a soft boundary map supports the boundary benchmark only "
                "(ndd evaluate --no-region; region=False)"
            )
        thresholds = thresholds_linspace(nthresh)

    reg = None
    if region:
        stack = ucm2_hierarchy(res.data, thresholds) if res.kind == "ucm2" else segs_hierarchy(res.data)
        reg = region_counts(stack, [a.segmentation for a in gts])
    bdry = None
    if boundary:
        if res.kind == "ucm2":
            maps = ucm2_boundary_maps(res.data, thresholds)
        elif res.kind == "segs":
            maps = segs_boundary_maps(res.data)
        else:
            maps = soft_boundary_maps(nms_edge_map(res.data, r=nms_radius) if nms else res.data, thresholds)
        bdry = boundary_counts(maps, [a.boundaries for a in gts], thresholds, max_dist=max_dist, tiebreak=tiebreak)
    return ImageEvaluation(iid, res.kind, len(gts), reg, bdry)
