"""The benchmark of a data set: every image evaluated over a process pool, then pooled.

:func:`evaluate_dataset` pairs a results folder with a ground-truth folder
(:func:`~ndd.evaluation.inputs.pair_inputs`), evaluates the images in parallel
(:func:`~ndd.evaluation.image.evaluate_image`) and aggregates them in sorted
id order (:mod:`ndd.evaluation.aggregate`).  It prints nothing: a
``progress`` callback reports each finished image (``ndd evaluate`` draws its
progress line from it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ndd.evaluation.aggregate import (
    BoundarySummary,
    PaperCovering,
    RegionSummary,
    collect_eval_bdry,
    collect_eval_reg,
    paper_covering,
)
from ndd.evaluation.image import ImageEvaluation, evaluate_image
from ndd.evaluation.inputs import EvaluationError, pair_inputs
from ndd.evaluation.matching import Tiebreak
from ndd.evaluation.report import evaluation_json

__all__ = ["DatasetEvaluation", "evaluate_dataset"]


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
        """The evaluated image ids, in aggregation order."""
        return [im.image_id for im in self.images]

    def to_json_dict(self) -> dict[str, Any]:
        """``{"summary": {...}, "images": {id: {...}}}``, the schema of :func:`~ndd.evaluation.report.evaluation_json`."""
        return evaluation_json(self)


def _evaluate_pair(
    iid: str,
    result_path: Path,
    gt_path: Path,
    nthresh: int,
    region: bool,
    boundary: bool,
    max_dist: float,
    tiebreak: Tiebreak,
    nms: bool,
    nms_radius: int,
) -> ImageEvaluation:
    """One image, with positional arguments (the unit of work sent to a worker process)."""
    return evaluate_image(
        result_path, gt_path, nthresh, region, boundary, max_dist, tiebreak, iid, nms=nms, nms_radius=nms_radius
    )


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
    (see :func:`~ndd.evaluation.image.evaluate_image`).

    Example::

        ev = evaluate_dataset("ucm2/test", "groundTruth/test", workers=2)
        print(ev.region.covering_ods, ev.boundary.ods_f)
    """
    if not region and not boundary:
        raise ValueError("nothing to evaluate: region and boundary both off")
    if nms_radius < 1:
        raise ValueError(f"nms_radius must be >= 1, got {nms_radius}")
    pairs = pair_inputs(results_dir, groundtruth_dir, allow_missing)
    args = [
        (i, pairs.results[i], pairs.groundtruth[i], nthresh, region, boundary, max_dist, tiebreak, nms, nms_radius)
        for i in pairs.ids
    ]
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
    images = [done[i] for i in pairs.ids]
    _check_same_scales(images, pairs.results)
    reg_counts = [im.region for im in images if im.region is not None]
    bdry_counts = [im.boundary for im in images if im.boundary is not None]
    reg = collect_eval_reg(reg_counts, official_rounding) if region else None
    pap = paper_covering(reg_counts) if region else None
    bd = collect_eval_bdry(bdry_counts) if boundary else None
    return DatasetEvaluation(images, reg, bd, pap, pairs.missing, pairs.ignored, nms, official_rounding)


def _check_same_scales(images: Sequence[ImageEvaluation], results: dict[str, Path]) -> None:
    """The official aggregation needs the same scales for every image; the error names both files."""
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
