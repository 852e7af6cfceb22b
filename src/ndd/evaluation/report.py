"""Reports of benchmark runs: per-image tables, several methods side by side,
and the human-agreement reference point.

* :func:`per_image_rows` / :func:`write_csv` - one row per image with the
  per-image figures behind the summary (``ndd evaluate --csv``);
* :func:`compare_methods` / :func:`format_comparison` - several result folders
  scored against the same ground truth, printed as one table;
* :func:`human_agreement` - each annotator's boundaries scored against the
  other annotators of the image (leave-one-out), the "human" point of the
  BSDS precision-recall plots.

NumPy only (no torch, no matplotlib); plotting is in :mod:`ndd.evaluation.plot`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ndd.evaluation.aggregate import _ratio, fmeasure, round_g10
from ndd.evaluation.boundary import boundary_counts
from ndd.evaluation.bsds import DatasetEvaluation, EvaluationError, evaluate_dataset, load_groundtruth
from ndd.evaluation.matching import Tiebreak

__all__ = [
    "CSV_COLUMNS",
    "HumanAgreement",
    "MethodComparison",
    "compare_methods",
    "comparison_json",
    "format_comparison",
    "human_agreement",
    "name_methods",
    "per_image_rows",
    "write_csv",
]

#: columns of :func:`write_csv`, in order (see :func:`per_image_rows`)
CSV_COLUMNS = (
    "method",
    "image_id",
    "kind",
    "n_annotations",
    "covering_ods",
    "covering_ods_threshold",
    "covering_ois",
    "covering_ois_threshold",
    "covering_best",
    "pri_ods",
    "pri_ods_threshold",
    "pri_ois",
    "pri_ois_threshold",
    "vi_ods",
    "vi_ods_threshold",
    "vi_ois",
    "vi_ois_threshold",
    "paper_avg",
    "paper_max",
    "paper_max_any_scale",
    "boundary_ods_recall",
    "boundary_ods_precision",
    "boundary_ods_f",
    "boundary_ods_threshold",
    "boundary_ois_recall",
    "boundary_ois_precision",
    "boundary_ois_f",
    "boundary_ois_threshold",
)


# ----------------------------------------------------------------------------- per-image table


def per_image_rows(ev: DatasetEvaluation, method: str = "") -> list[dict[str, Any]]:
    """One dict per image (keys :data:`CSV_COLUMNS`), in the evaluation's order.

    ``*_ods``: the image's value at the data-set ODS scale (covering: the
    image's own covering there, which the pooled ODS does not average;
    PRI/VI: their image means are exactly the summary's ODS; boundary: R and P
    interpolated linearly between the two scales around the interpolated ODS
    threshold, as ``maxF`` does, and their F).  ``*_ois``: the image's best
    scale (covering, boundary: as in the JSON ``images``; PRI/VI: last best
    scale, as ``collect_eval_reg``); image means of ``pri_ois``, ``vi_ois``,
    ``paper_*`` are the summary's figures, and ``covering_ois`` averages to the
    paper AVG.  Values not computed (``--no-region`` / ``--no-boundary``) are None.
    """
    reg, bd, pap = ev.region, ev.boundary, ev.paper
    rnd = round_g10 if ev.official_rounding else (lambda a: np.asarray(a, dtype=np.float64))
    rows: list[dict[str, Any]] = []
    if reg is not None:
        i_cov = int(np.argmax(reg.covering_curve))  # the indices collect_eval_reg chose
        i_pri, i_voi = int(np.argmax(reg.pri_curve)), int(np.argmin(reg.voi_curve))
    if bd is not None:
        bthr = bd.thresholds
    for k, im in enumerate(ev.images):
        row: dict[str, Any] = dict.fromkeys(CSV_COLUMNS)
        row.update(method=method, image_id=im.image_id, kind=im.kind, n_annotations=im.n_annotations)
        if reg is not None and pap is not None and im.region is not None:
            c = im.region
            cnt_r, sum_r = rnd(c.cnt_r), rnd(c.sum_r)
            pri, voi = rnd(c.pri), rnd(c.voi)
            t = reg.thresholds
            j_pri = pri.size - 1 - int(np.argmax(pri[::-1]))  # last maximiser, as the summary
            j_voi = voi.size - 1 - int(np.argmin(voi[::-1]))
            row.update(
                covering_ods=float(_ratio(cnt_r[i_cov], sum_r[i_cov])),
                covering_ods_threshold=float(t[i_cov]),
                covering_ois=float(reg.img_best_r[k]),
                covering_ois_threshold=float(reg.img_best_t[k]),
                covering_best=float(reg.img_best_cover[k]),
                pri_ods=float(pri[i_pri]),
                pri_ods_threshold=float(t[i_pri]),
                pri_ois=float(reg.img_pri_ois[k]),
                pri_ois_threshold=float(t[j_pri]),
                vi_ods=float(voi[i_voi]),
                vi_ods_threshold=float(t[i_voi]),
                vi_ois=float(reg.img_voi_ois[k]),
                vi_ois_threshold=float(t[j_voi]),
                paper_avg=float(pap.img_avg[k]),
                paper_max=float(pap.img_max[k]),
                paper_max_any_scale=float(pap.img_max_any_scale[k]),
            )
        if bd is not None and im.boundary is not None:
            b = im.boundary
            r_img, p_img = _ratio(b.cnt_r, b.sum_r), _ratio(b.cnt_p, b.sum_p)
            # maxF interpolates t, R and P with the same weight, so R(t) is linear in t
            r_ods = float(np.interp(bd.ods_threshold, bthr, r_img))
            p_ods = float(np.interp(bd.ods_threshold, bthr, p_img))
            row.update(
                boundary_ods_recall=r_ods,
                boundary_ods_precision=p_ods,
                boundary_ods_f=float(fmeasure(r_ods, p_ods)),
                boundary_ods_threshold=float(bd.ods_threshold),
                boundary_ois_recall=float(bd.img_best_r[k]),
                boundary_ois_precision=float(bd.img_best_p[k]),
                boundary_ois_f=float(bd.img_best_f[k]),
                boundary_ois_threshold=float(bd.img_best_t[k]),
            )
        rows.append(row)
    return rows


def write_csv(
    evaluations: DatasetEvaluation | Mapping[str, DatasetEvaluation], path: str | os.PathLike[str]
) -> Path:
    """Write the per-image table (:func:`per_image_rows`) of one or several methods.

    One row per image and method, columns :data:`CSV_COLUMNS`; values not
    computed are empty cells; floats are written in full precision.  A single
    :class:`DatasetEvaluation` gets an empty ``method`` column.  Returns the path.
    """
    methods = {"": evaluations} if isinstance(evaluations, DatasetEvaluation) else dict(evaluations)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        for name, ev in methods.items():
            for row in per_image_rows(ev, name):
                writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return path


# ----------------------------------------------------------------------------- human agreement


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


# ----------------------------------------------------------------------------- several methods


@dataclass(frozen=True)
class MethodComparison:
    """Several methods scored on the same ground truth: ``methods`` (name →
    evaluation, in the order given) and the optional ``human`` agreement."""

    methods: dict[str, DatasetEvaluation]
    human: HumanAgreement | None = None


def name_methods(specs: Sequence[str]) -> dict[str, Path]:
    """Method names and folders from ``NAME=DIR`` or plain ``DIR`` specs (``--results``).

    ``NAME=DIR`` is split at the first ``=`` unless the whole spec is an
    existing path; a plain ``DIR`` is named after its last component (its full
    path when two plain folders share a name).  A repeated name is an error.
    """
    pairs: list[tuple[str | None, Path]] = []
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if sep and name and folder and not Path(spec).exists():
            pairs.append((name, Path(folder)))
        else:
            pairs.append((None, Path(spec)))
    base_names = [p.name or str(p) for n, p in pairs if n is None]
    out: dict[str, Path] = {}
    for name, folder in pairs:
        if name is None:
            base = folder.name or str(folder)
            name = base if base_names.count(base) == 1 else str(folder)
        if name in out:
            raise EvaluationError(f"method name {name!r} given twice (use NAME=DIR to name the results)")
        out[name] = folder
    return out


def compare_methods(
    results: Mapping[str, str | os.PathLike[str]],
    groundtruth_dir: str | os.PathLike[str],
    human: bool = False,
    progress: Callable[[str, int, int, str], None] | None = None,
    **evaluate_kwargs: Any,
) -> MethodComparison:
    """Score every folder of ``results`` (name → folder) with :func:`evaluate_dataset`.

    ``evaluate_kwargs`` (nthresh, workers, region, boundary, nms, ...) apply to
    every method.  ``human``: also compute :func:`human_agreement` on the
    images of the first method.  ``progress(method, done, total, image_id)``.
    """
    if not results:
        raise ValueError("no method to compare")
    evals: dict[str, DatasetEvaluation] = {}
    for name, folder in results.items():
        cb = None
        if progress is not None:
            cb = lambda d, t, i, _n=name: progress(_n, d, t, i)  # noqa: E731 - binds the method name
        evals[name] = evaluate_dataset(folder, groundtruth_dir, progress=cb, **evaluate_kwargs)
    agreement = None
    if human:
        first = next(iter(evals.values()))
        agreement = human_agreement(
            groundtruth_dir,
            first.image_ids,
            max_dist=evaluate_kwargs.get("max_dist", 0.0075),
            tiebreak=evaluate_kwargs.get("tiebreak", "greedy"),
            workers=evaluate_kwargs.get("workers", 1),
        )
    return MethodComparison(evals, agreement)


_TABLE_COLUMNS = (
    ("N", None),
    ("Cov-ODS", ("covering", "ods")),
    ("Cov-OIS", ("covering", "ois")),
    ("Best", ("covering", "best")),
    ("PRI-ODS", ("pri", "ods")),
    ("PRI-OIS", ("pri", "ois")),
    ("VI-ODS", ("vi", "ods")),
    ("VI-OIS", ("vi", "ois")),
    ("F-ODS", ("boundary", "ods")),
    ("F-OIS", ("boundary", "ois")),
    ("AP", ("boundary", "ap")),
    ("AVG", ("paper_covering", "avg")),
    ("MAX", ("paper_covering", "max")),
)


def format_comparison(
    evaluations: Mapping[str, DatasetEvaluation] | MethodComparison, human: HumanAgreement | None = None
) -> str:
    """One table, one row per method: N images, covering ODS/OIS/Best, PRI and VI
    ODS/OIS, boundary F ODS/OIS and AP, the paper's AVG/MAX covering ("-" where
    not computed), then the human agreement line when given."""
    if isinstance(evaluations, MethodComparison):
        human = human if human is not None else evaluations.human
        evaluations = evaluations.methods
    width = max([len("Method")] + [len(n) for n in evaluations])
    head = f"{'Method':<{width}s}" + "".join(f"{c:>8s}" for c, _ in _TABLE_COLUMNS)
    lines = [head]
    for name, ev in evaluations.items():
        s = ev.to_json_dict()["summary"]
        cells = [f"{len(ev.images):8d}"]
        for _, key in _TABLE_COLUMNS[1:]:
            v = s[key[0]][key[1]]
            cells.append(f"{'-':>8s}" if v is None else f"{v:8.4f}")
        lines.append(f"{name:<{width}s}" + "".join(cells))
    if human is not None:
        lines.append(human.summary_line())
    return "\n".join(lines)


def comparison_json(comparison: MethodComparison) -> dict[str, Any]:
    """``{"methods": {name: {"summary", "images"}}, "human": {...} | None}`` for ``--json``."""
    return {
        "methods": {name: ev.to_json_dict() for name, ev in comparison.methods.items()},
        "human": comparison.human.to_json_dict() if comparison.human is not None else None,
    }
