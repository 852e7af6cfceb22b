"""Several methods scored against the same ground truth in one run (``ndd evaluate --results A=.. --results B=..``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ndd.evaluation.dataset import DatasetEvaluation, evaluate_dataset
from ndd.evaluation.human import HumanAgreement, human_agreement
from ndd.evaluation.inputs import EvaluationError

__all__ = ["MethodComparison", "compare_methods", "name_methods"]


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
