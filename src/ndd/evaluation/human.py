"""The human reference point of the boundary benchmark: annotators scored against each other.

Every annotation of an image with K >= 2 annotations is scored as a machine
boundary map against the K - 1 others (leave-one-out), with the benchmark's
matching, tolerance and counts; the pooled R/P/F is the "human" point of the
BSDS precision-recall plots.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ndd.evaluation.aggregate import _ratio, fmeasure
from ndd.evaluation.boundary import boundary_counts
from ndd.evaluation.inputs import EvaluationError, load_groundtruth
from ndd.evaluation.matching import Tiebreak

__all__ = ["HumanAgreement", "human_agreement"]


@dataclass(frozen=True)
class HumanAgreement:
    """Leave-one-out agreement of the annotators (the "human" point of the PR plot).

    Every annotation of an image with K >= 2 annotations is scored as a
    machine boundary map against the K - 1 others (same matching, tolerance
    and counts as the benchmark).  ``recall``/``precision``/``f``: from the
    counts pooled over all (image, annotator) pairs, as the ODS pools images;
    ``mean_f``: the mean over the pairs of their own F.  ``n_images``: images
    used (K >= 2); ``n_pairs``: (image, annotator) pairs.
    """

    recall: float
    precision: float
    f: float
    mean_f: float
    n_images: int
    n_pairs: int

    def summary_line(self) -> str:
        """One printable line with R, P, F and the mean per-annotator F."""
        return (
            f"Human agreement (each annotator vs the others, {self.n_pairs} pairs on {self.n_images} images): "
            f"R {self.recall:.4f}  P {self.precision:.4f}  F {self.f:.4f}  (mean per-annotator F {self.mean_f:.4f})"
        )

    def to_json_dict(self) -> dict[str, Any]:
        """``{"recall", "precision", "f", "mean_f", "n_images", "n_pairs"}`` (the ``"human"`` entry of ``--json``)."""
        return {
            "recall": self.recall,
            "precision": self.precision,
            "f": self.f,
            "mean_f": self.mean_f,
            "n_images": self.n_images,
            "n_pairs": self.n_pairs,
        }


def _human_image(gt_path: Path, max_dist: float, tiebreak: Tiebreak) -> np.ndarray:
    """(K, 4) counts (cnt_r, sum_r, cnt_p, sum_p) of each annotator against the others; (0, 4) if K < 2."""
    bdrys = [a.boundaries for a in load_groundtruth(gt_path)]
    out = np.zeros((0, 4), dtype=np.int64)
    if len(bdrys) < 2:
        return out
    rows = []
    for k, b in enumerate(bdrys):
        others = bdrys[:k] + bdrys[k + 1 :]
        # the stored human maps are already thin: no thinning, one "threshold"
        c = boundary_counts([b], others, np.array([1.0]), max_dist=max_dist, thin_maps=False, tiebreak=tiebreak)
        rows.append((c.cnt_r[0], c.sum_r[0], c.cnt_p[0], c.sum_p[0]))
    return np.array(rows, dtype=np.int64)


def human_agreement(
    groundtruth_dir: str | os.PathLike[str],
    image_ids: Sequence[str] | None = None,
    max_dist: float = 0.0075,
    tiebreak: Tiebreak = "greedy",
    workers: int = 1,
) -> HumanAgreement:
    """Leave-one-out human agreement over ``groundtruth_dir`` (all ``<id>.mat``,
    or only ``image_ids``); see :class:`HumanAgreement`."""
    gt_dir = Path(groundtruth_dir)
    ids = sorted(image_ids) if image_ids is not None else sorted(p.stem for p in gt_dir.glob("*.mat"))
    paths = [gt_dir / f"{i}.mat" for i in ids]
    for p in paths:
        if not p.is_file():
            raise EvaluationError(f"{p}: file not found")
    if workers <= 1:
        per = [_human_image(p, max_dist, tiebreak) for p in paths]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            per = list(pool.map(_human_image, paths, [max_dist] * len(paths), [tiebreak] * len(paths)))
    counts = np.concatenate([np.zeros((0, 4), dtype=np.int64), *per]).astype(np.float64)
    if counts.shape[0] == 0:
        raise EvaluationError(f"{gt_dir}: no image with two or more annotations, no human agreement")
    tot = counts.sum(axis=0)
    r, p = float(_ratio(tot[0], tot[1])), float(_ratio(tot[2], tot[3]))
    pair_f = fmeasure(_ratio(counts[:, 0], counts[:, 1]), _ratio(counts[:, 2], counts[:, 3]))
    return HumanAgreement(
        r, p, float(fmeasure(r, p)), float(pair_f.mean()), sum(1 for c in per if c.shape[0]), counts.shape[0]
    )
