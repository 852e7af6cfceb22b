"""Reading the benchmark's inputs: machine results, human ground truth, and their pairing.

Machine results, one per image id:

* ``<id>.mat`` with ``ucm2`` (doubleSize ultrametric contour map, 99 scales
  by default) or ``segs`` (a cell of label maps; scales 1..S);
* ``<id>.npz`` with ``ucm2`` ((2h+1, 2w+1)) or ``segs`` ((S, h, w));
* ``<id>/`` a folder of PNG label maps, one per scale, in name order;
* ``<id>.png`` a soft boundary map (8-bit /255 or 16-bit /65535), boundary
  benchmark only;
* ``<id>.npy`` a soft boundary map ((h, w) float in [0, 1], or uint8/uint16),
  or a ``.mat``/``.npz`` whose soft map is stored as ``pb``, ``edges`` or ``E``.

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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ndd.evaluation.boundary import seg2bdry, thin_boundary
from ndd.formats import (
    FormatError, check_ucm2, edge_map_from_array, label_maps, read_edge_map, read_groundtruth, read_labels, read_mat,
)

__all__ = [
    "SOFT_MAP_KEYS",
    "Annotation",
    "EvaluationError",
    "InputPairs",
    "MachineResult",
    "ResultKind",
    "check_pairing",
    "find_groundtruth",
    "find_results",
    "load_groundtruth",
    "load_result",
    "pair_inputs",
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
# The file formats (ground truth, ucm2 / segs variables, label PNGs, images) are read by
# ndd.formats; here their errors become EvaluationError and the benchmark's own checks are added.


@contextmanager
def _as_evaluation_error() -> Iterator[None]:
    """:class:`~ndd.formats.FormatError` (one line, starting with the file name) as :class:`EvaluationError`."""
    try:
        yield
    except FormatError as exc:
        raise EvaluationError(str(exc)) from None


def load_groundtruth(path: str | os.PathLike[str]) -> list[Annotation]:
    """Read a BSDS ``groundTruth`` .mat: a list of K :class:`Annotation`.

    ``Boundaries`` is used as stored (as the official code does); when absent
    it is derived as ``thin(seg2bdry(Segmentation))``, which equals the stored
    maps of BSDS500.
    """
    path = Path(path)
    with _as_evaluation_error():
        humans = read_groundtruth(path)
    annotations = []
    for k, human in enumerate(humans):
        seg = human.segmentation
        if seg.min() < 1:
            raise EvaluationError(f"{path}: groundTruth{{{k + 1}}}.Segmentation has labels < 1")
        bdry = human.boundaries if human.boundaries is not None else thin_boundary(seg2bdry(seg))
        annotations.append(Annotation(seg, bdry))
    return annotations


def _natural_key(name: str) -> list[Any]:
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name)]


def load_result(path: str | os.PathLike[str]) -> MachineResult:
    """Read one machine result (.mat / .npz with ``ucm2``, ``segs`` or a soft
    map ``pb``/``edges``/``E``, a PNG label-map folder, or a soft boundary map
    as 8/16-bit PNG or ``.npy``)."""
    path = Path(path)
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix.lower() == ".png"), key=lambda p: _natural_key(p.name))
        if not files:
            raise EvaluationError(f"{path}: folder holds no PNG label map")
        with _as_evaluation_error():
            return MachineResult("segs", [read_labels(p) for p in files], path)
    suffix = path.suffix.lower()
    if suffix == ".png":
        with _as_evaluation_error():
            return MachineResult("pb", read_edge_map(path), path)
    if suffix == ".npy":
        if not path.is_file():
            raise EvaluationError(f"{path}: file not found")
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise EvaluationError(f"{path}: cannot read .npy file ({type(exc).__name__}: {exc})") from exc
        with _as_evaluation_error():
            return MachineResult("pb", edge_map_from_array(arr, str(path)), path)
    if suffix == ".npz":
        if not path.is_file():
            raise EvaluationError(f"{path}: file not found")
        try:
            with np.load(path, allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
        except Exception as exc:
            raise EvaluationError(f"{path}: cannot read .npz file ({type(exc).__name__}: {exc})") from exc
    elif suffix == ".mat":
        with _as_evaluation_error():
            data = read_mat(path)
    else:
        raise EvaluationError(f"{path}: unsupported result format (expected .mat, .npz, .npy, .png or a folder)")
    if "ucm2" in data:
        with _as_evaluation_error():
            return MachineResult("ucm2", check_ucm2(data["ucm2"], str(path)), path)
    if "segs" in data:
        with _as_evaluation_error():
            return MachineResult("segs", label_maps(data["segs"], str(path)), path)
    for key in SOFT_MAP_KEYS:
        if key in data:
            with _as_evaluation_error():
                return MachineResult("pb", edge_map_from_array(data[key], f"{path}: '{key}'"), path)
    keys = sorted(k for k in data if not k.startswith("__"))
    raise EvaluationError(
        f"{path}: no 'ucm2' or 'segs' variable, nor a soft map {', '.join(map(repr, SOFT_MAP_KEYS))} (found {keys})"
    )


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


def find_groundtruth(groundtruth_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Map image id → ``<id>.mat`` for every ground-truth file of a folder."""
    gt_dir = Path(groundtruth_dir)
    if not gt_dir.is_dir():
        raise EvaluationError(f"{gt_dir}: ground-truth folder not found")
    gts = {p.stem: p for p in gt_dir.glob("*.mat")}
    if not gts:
        raise EvaluationError(f"{gt_dir}: no ground truth (<id>.mat) found")
    return gts


@dataclass(frozen=True)
class InputPairs:
    """The results of a folder paired with their ground truth.

    ``ids``: the image ids evaluated, sorted (MATLAB's order for BSDS ids);
    ``results`` / ``groundtruth``: id → file for those ids; ``missing``:
    ground-truth ids without a result (only with ``allow_missing``);
    ``ignored``: PNG files/folders of the results folder not named after an image.
    """

    ids: list[str]
    results: dict[str, Path]
    groundtruth: dict[str, Path]
    missing: list[str]
    ignored: list[str]


def pair_inputs(
    results_dir: str | os.PathLike[str], groundtruth_dir: str | os.PathLike[str], allow_missing: bool = False
) -> InputPairs:
    """Find the results of ``results_dir`` and pair them with ``groundtruth_dir``.

    A result without ground truth is an error; a ground-truth image without a
    result is one unless ``allow_missing`` (see :func:`check_pairing`).
    """
    gts = find_groundtruth(groundtruth_dir)
    results, ignored = find_results(results_dir, set(gts))
    if not results:
        hint = ""
        if ignored:
            hint = (
                f"; {len(ignored)} PNG file(s)/folder(s) are not named after a ground-truth image "
                f"(e.g. {ignored[0]}, while the ground truth has e.g. {min(gts)}.mat)"
            )
        raise EvaluationError(f"{results_dir}: no result (.mat, .npz, .npy, .png or PNG folder) found{hint}")
    check_pairing(results, gts, results_dir, groundtruth_dir, allow_missing)
    ids = sorted(results)
    return InputPairs(ids, results, {i: gts[i] for i in ids}, sorted(set(gts) - set(results)), ignored)


def _unreadable(path: Path) -> str:
    """``" (also unreadable: WHY)"`` for a result file that cannot be read, else ``""``: a stray
    file is often a broken one, and both problems are said at once."""
    if path.is_dir() or path.suffix.lower() == ".png":  # only .mat/.npz/.npy files count without a name match
        return ""
    try:
        load_result(path)
    except EvaluationError as exc:
        return " (also unreadable: " + str(exc).removeprefix(f"{path}: ") + ")"
    return ""


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
            + _name_list([results[i].name + (_unreadable(results[i]) if k < 10 else "") for k, i in enumerate(no_gt)])
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
