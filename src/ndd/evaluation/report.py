"""What a benchmark run reports: the JSON schema, the per-image CSV and the printed tables.

* :func:`evaluation_json` - ``{"summary", "images"}`` of one method (``ndd
  evaluate --json``; :meth:`DatasetEvaluation.to_json_dict` returns it);
* :func:`per_image_rows` / :func:`write_csv` - one row per image with the
  per-image figures behind the summary (``ndd evaluate --csv``);
* :func:`format_summary` - the one-method table ``ndd evaluate`` prints;
* :func:`format_comparison` / :func:`comparison_json` - several methods
  (:func:`~ndd.evaluation.compare.compare_methods`) as one table / one JSON.

NumPy only (no torch, no matplotlib); plotting is in :mod:`ndd.evaluation.plot`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ndd.evaluation.aggregate import _ratio, fmeasure, round_g10

if TYPE_CHECKING:  # types only: the driver and the comparison import this module
    from ndd.evaluation.compare import MethodComparison
    from ndd.evaluation.dataset import DatasetEvaluation
    from ndd.evaluation.human import HumanAgreement

__all__ = [
    "CSV_COLUMNS",
    "comparison_json",
    "evaluation_json",
    "format_comparison",
    "format_summary",
    "per_image_rows",
    "write_csv",
]


# ----------------------------------------------------------------------------- JSON


def evaluation_json(ev: DatasetEvaluation) -> dict[str, Any]:
    """The JSON report of one method: ``{"summary": {...}, "images": {id: {...}}}``.

    ``summary``: covering ODS/OIS/Best, PRI and VI ODS/OIS (with their ODS
    thresholds), boundary ODS/OIS/AP with the ODS and OIS recall and
    precision, the paper's AVG/MAX covering; ``images``: each image's kind,
    annotation count, OIS figures and paper covering.  Values not computed
    (``region=False`` / ``boundary=False``) are None.  The schema of ``ndd
    evaluate --json`` (README).
    """
    reg, bd, pap = ev.region, ev.boundary, ev.paper
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
    for i, im in enumerate(ev.images):
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


# ----------------------------------------------------------------------------- CSV


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
    methods = dict(evaluations) if isinstance(evaluations, Mapping) else {"": evaluations}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        for name, ev in methods.items():
            for row in per_image_rows(ev, name):
                writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return path


# ----------------------------------------------------------------------------- tables


def _cell(v: float | None) -> str:
    return "      -" if v is None else f"{v:7.4f}"


def format_summary(ev: DatasetEvaluation) -> str:
    """The one-method table: covering ODS/OIS/Best, PRI and VI ODS/OIS, boundary
    F ODS/OIS/AP, then the paper's covering line ("-" where not computed)."""
    s = evaluation_json(ev)["summary"]
    c, pri, vi, b, pc = s["covering"], s["pri"], s["vi"], s["boundary"], s["paper_covering"]
    return "\n".join(
        [
            f"{'':24s}{'ODS':>8s}{'OIS':>8s}{'Best/AP':>9s}",
            f"{'Covering':24s}{_cell(c['ods']):>8s}{_cell(c['ois']):>8s}{_cell(c['best']):>9s}",
            f"{'PRI':24s}{_cell(pri['ods']):>8s}{_cell(pri['ois']):>8s}",
            f"{'VI':24s}{_cell(vi['ods']):>8s}{_cell(vi['ois']):>8s}",
            f"{'Boundary F':24s}{_cell(b['ods']):>8s}{_cell(b['ois']):>8s}{_cell(b['ap']):>9s}",
            f"Paper covering (optimal image scale): AVG {_cell(pc['avg']).strip()}  "
            f"MAX {_cell(pc['max']).strip()} (best annotation at the image's scale)  "
            f"MAX-any-scale {_cell(pc['max_any_scale']).strip()}",
        ]
    )


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
    if not isinstance(evaluations, Mapping):  # a MethodComparison
        human = human if human is not None else evaluations.human
        evaluations = evaluations.methods
    width = max([len("Method")] + [len(n) for n in evaluations])
    head = f"{'Method':<{width}s}" + "".join(f"{c:>8s}" for c, _ in _TABLE_COLUMNS)
    lines = [head]
    for name, ev in evaluations.items():
        s = evaluation_json(ev)["summary"]
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
        "methods": {name: evaluation_json(ev) for name, ev in comparison.methods.items()},
        "human": comparison.human.to_json_dict() if comparison.human is not None else None,
    }
