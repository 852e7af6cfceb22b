"""BSDS files: the benchmark's thresholds, ``groundTruth`` / ``ucm2`` / ``segs`` ``.mat`` files.

* ground truth ``<id>.mat``: a 1xK MATLAB cell ``groundTruth`` of structs with
  ``Segmentation`` (labels from 1) and ``Boundaries`` (:func:`read_groundtruth`);
* ``ucm2``: a doubleSize ultrametric contour map (2H+1, 2W+1) in [0, 1] (:func:`read_ucm2`,
  :func:`write_ucm2`; :mod:`ndd.formats.ucm` converts it to and from label maps);
* ``segs``: a 1xS cell of label maps with ids from 1 (:func:`read_segs`, :func:`write_segs`).

``scipy.io`` is imported by the functions that need it. Every problem raises a one-line
:class:`~ndd.formats.errors.FormatError` (a ``ValueError``) that starts with the file name, or
:class:`~ndd.formats.errors.MissingFileError` (also a ``FileNotFoundError``).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FormatError, MissingFileError

__all__ = [
    "BSDS_THRESHOLDS",
    "bsds_thresholds",
    "HumanSegmentation",
    "read_mat",
    "read_groundtruth",
    "read_ucm2",
    "check_ucm2",
    "write_ucm2",
    "read_segs",
    "write_segs",
    "label_maps",
]

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------- thresholds
def bsds_thresholds(nthresh: int = 99) -> np.ndarray:
    """The benchmark's thresholds of a ``ucm2`` or soft boundary map: ``linspace(1/(n+1), 1 - 1/(n+1), n)``.

    Computed as MATLAB's ``linspace`` (``[d1 + (0:n-2) * (d2 - d1) / (n-1), d2]``, in that order
    of operations), so that a map value equal to a threshold compares as in the official code.

    Example:
        >>> bsds_thresholds(3).tolist()
        [0.25, 0.5, 0.75]
    """
    if nthresh < 1:
        raise ValueError("nthresh must be >= 1")
    d1, d2 = 1.0 / (nthresh + 1), 1.0 - 1.0 / (nthresh + 1)
    if nthresh == 1:
        return np.array([d2])
    return np.append(d1 + np.arange(nthresh - 1) * (d2 - d1) / (nthresh - 1), d2)


#: the 99 thresholds of the official benchmark, 0.01 .. 0.99 (:func:`bsds_thresholds`)
BSDS_THRESHOLDS: np.ndarray = bsds_thresholds(99)
BSDS_THRESHOLDS.flags.writeable = False


# --------------------------------------------------------------------------- .mat files
def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def read_mat(path: PathLike) -> dict[str, Any]:
    """The variables of a MATLAB v5 ``.mat`` file (cells as lists, structs as dicts:
    ``scipy.io.loadmat(simplify_cells=True)``), with one-line errors naming the file."""
    import scipy.io  # deferred: only the .mat readers need it

    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"{p}: file not found")
    try:
        return scipy.io.loadmat(str(p), simplify_cells=True)
    except NotImplementedError as exc:  # MATLAB v7.3 (HDF5) files
        raise FormatError(f"{p}: MATLAB v7.3 files are not supported, save with -v7 ({_one_line(exc)})") from None
    except Exception as exc:  # corrupt or not a .mat file: loadmat raises many types
        raise FormatError(f"{p}: cannot read .mat file ({type(exc).__name__}: {_one_line(exc)})") from None


def _as_list(cell: Any) -> list[Any]:
    """A MATLAB cell read with ``simplify_cells`` as a list (1x1 cells come back bare)."""
    if isinstance(cell, (list, tuple)):
        return list(cell)
    if isinstance(cell, np.ndarray) and cell.dtype == object:
        return list(cell.ravel())
    return [cell]


@dataclass(frozen=True)
class HumanSegmentation:
    """One human annotation of a BSDS ground-truth file: (h, w) int64 ``segmentation`` as stored
    (labels from 1) and (h, w) bool ``boundaries``, or None when the file has none."""

    segmentation: np.ndarray
    boundaries: np.ndarray | None


def read_groundtruth(path: PathLike) -> list[HumanSegmentation]:
    """Read the K human annotations of a BSDS ground-truth ``.mat`` (its ``groundTruth`` cell).

    Checks that every ``Segmentation`` is a non-empty 2-D map of finite integer values, that
    they share one shape, and that a stored ``Boundaries`` has that shape.
    """
    p = Path(path)
    mat = read_mat(p)
    if "groundTruth" not in mat:
        raise FormatError(f"{p}: no 'groundTruth' variable (found {sorted(k for k in mat if not k.startswith('__'))})")
    out: list[HumanSegmentation] = []
    shape = None
    for k, entry in enumerate(_as_list(mat["groundTruth"])):
        where = f"{p}: groundTruth{{{k + 1}}}"
        if not isinstance(entry, dict) or "Segmentation" not in entry:
            raise FormatError(f"{where} has no 'Segmentation' field")
        seg = np.asarray(entry["Segmentation"])
        if seg.ndim != 2 or seg.size == 0 or not np.issubdtype(seg.dtype, np.number):
            raise FormatError(f"{where}.Segmentation is not a 2-D label map (shape {seg.shape}, dtype {seg.dtype})")
        if shape is None:
            shape = seg.shape
        elif seg.shape != shape:
            raise FormatError(f"{p}: annotations of different shapes {shape} and {seg.shape}")
        if np.issubdtype(seg.dtype, np.floating):
            if not np.all(np.isfinite(seg)):
                raise FormatError(f"{where}.Segmentation contains NaN/Inf")
            if not np.array_equal(seg, np.round(seg)):
                raise FormatError(f"{where}.Segmentation has non-integer values")
        bdry = entry.get("Boundaries")
        if bdry is not None and np.size(bdry):
            bdry = np.asarray(bdry).astype(bool)
            if bdry.shape != shape:
                raise FormatError(f"{where}.Boundaries has shape {bdry.shape}, not {shape}")
        else:
            bdry = None
        out.append(HumanSegmentation(seg.astype(np.int64), bdry))
    if not out:
        raise FormatError(f"{p}: empty groundTruth cell")
    return out


def check_ucm2(ucm2: Any, where: str) -> np.ndarray:
    """A stored ``ucm2`` as float64, checked: 2-D, numeric, finite (``where`` starts the messages)."""
    u = np.asarray(ucm2)
    if u.ndim != 2 or not np.issubdtype(u.dtype, np.number):
        raise FormatError(f"{where}: 'ucm2' must be a 2-D numeric array, got shape {u.shape} dtype {u.dtype}")
    u = u.astype(np.float64)
    if not np.all(np.isfinite(u)):
        raise FormatError(f"{where}: 'ucm2' contains NaN/Inf")
    return u


def read_ucm2(path: PathLike) -> np.ndarray:
    """Read the ``ucm2`` array of a BSDS-style ``.mat`` file as float64 (2-D, finite)."""
    p = Path(path)
    mat = read_mat(p)
    if "ucm2" not in mat:
        raise FormatError(f"{p}: no 'ucm2' variable (found {sorted(k for k in mat if not k.startswith('__'))})")
    return check_ucm2(mat["ucm2"], str(p))


def label_maps(segs: Any, where: str) -> list[np.ndarray]:
    """The label maps of a ``segs`` variable: a cell read by :func:`read_mat` (a list, or the
    bare map of a 1x1 cell) or an (S, h, w) array; each a 2-D finite numeric array, colour
    maps (h, w, c) coded one id per colour. ``where`` starts the error messages."""
    if isinstance(segs, np.ndarray) and segs.dtype != object and segs.ndim == 3:
        items = list(segs)  # (S, h, w)
    elif isinstance(segs, np.ndarray) and segs.dtype != object and segs.ndim == 2:
        items = [segs]  # a 1x1 cell comes back as the bare map
    else:
        items = _as_list(segs)
    if not items:
        raise FormatError(f"{where}: 'segs' is empty")
    return [_label_map(s, f"{where}: segs{{{k + 1}}}") for k, s in enumerate(items)]


def _label_map(arr: Any, where: str) -> np.ndarray:
    """A label map from a stored array: 2-D numbers, or colours (h, w, c) -> one code per colour."""
    arr = np.asarray(arr)
    if arr.ndim == 3:
        _, inv = np.unique(arr.reshape(-1, arr.shape[2]), axis=0, return_inverse=True)
        arr = inv.reshape(arr.shape[:2])
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise FormatError(f"{where}: not a 2-D label map (shape {arr.shape}, dtype {arr.dtype})")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise FormatError(f"{where}: label map contains NaN/Inf")
    return arr


def read_segs(path: PathLike) -> list[np.ndarray]:
    """Read the label maps of a BSDS ``segs`` ``.mat`` file (ids as stored, from 1)."""
    p = Path(path)
    mat = read_mat(p)
    if "segs" not in mat:
        raise FormatError(f"{p}: no 'segs' variable (found {sorted(k for k in mat if not k.startswith('__'))})")
    return label_maps(mat["segs"], str(p))


def write_segs(path: PathLike, levels: Sequence[np.ndarray]) -> None:
    """Save label maps as a BSDS ``segs`` ``.mat`` (a 1xL cell of uint16 maps with ids >= 1,
    as the benchmark's segmentation-stack input requires): ids ``0 ..`` are stored as ``1 ..``."""
    cell = np.empty((1, len(levels)), dtype=object)
    for k, lab in enumerate(levels):
        lab = np.asarray(lab)
        if lab.ndim != 2 or lab.min() < 0 or lab.max() >= 65535:
            raise ValueError("each level must be a 2-D map of ids in 0 .. 65534")
        cell[0, k] = (lab + 1).astype(np.uint16)
    import scipy.io

    scipy.io.savemat(_out(path), {"segs": cell}, do_compression=True)


def write_ucm2(path: PathLike, ucm2: np.ndarray) -> None:
    """Save a doubleSize ``ucm2`` ((2H+1, 2W+1), values in [0, 1]) as ``.mat`` key ``ucm2``
    (float64, MATLAB v5 format, compressed, as the BSDS benchmark reads it)."""
    u = np.asarray(ucm2, dtype=np.float64)
    if u.ndim != 2 or u.shape[0] % 2 == 0 or u.shape[1] % 2 == 0 or min(u.shape) < 3:
        raise ValueError(f"ucm2 must be (2H+1, 2W+1) with H, W >= 1, got {u.shape}")
    if not np.all(np.isfinite(u)) or u.min() < 0.0 or u.max() > 1.0:
        raise ValueError("ucm2 values must be finite and in [0, 1]")
    _write_mat_double(_out(path), "ucm2", u)


def _out(path: PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def _write_mat_double(path: Path, name: str, array: np.ndarray, chunk_columns: int = 256) -> None:
    """One real 2-D double matrix as a compressed MATLAB v5 ``.mat`` file, streamed.

    Written by hand because ``scipy.io.savemat(do_compression=True)`` builds the whole
    uncompressed element in memory and copies it again before compressing: three copies of a
    768 MB ``ucm2`` for a 24-megapixel photo. Here the columns go through ``zlib`` a band at a
    time. The layout (MATLAB's "MAT-File Format", level 5) is what savemat writes: a 128-byte
    header, then one ``miCOMPRESSED`` element holding the ``miMATRIX`` element (array flags,
    dimensions, name, column-major ``miDOUBLE`` data). ``scipy.io.loadmat`` reads it back.
    """
    a = np.asarray(array, dtype="<f8")
    rows, cols = a.shape
    name_bytes = name.encode("latin1")
    pad = (-len(name_bytes)) % 8

    def tag(kind: int, nbytes: int) -> bytes:
        return np.array([kind, nbytes], dtype="<u4").tobytes()

    mi_int8, mi_int32, mi_uint32, mi_double, mi_matrix, mi_compressed, mx_double_class = 1, 5, 6, 9, 14, 15, 6
    data_bytes = rows * cols * 8
    body = (
        tag(mi_uint32, 8) + np.array([mx_double_class, 0], dtype="<u4").tobytes()
        + tag(mi_int32, 8) + np.array([rows, cols], dtype="<i4").tobytes()
        + tag(mi_int8, len(name_bytes)) + name_bytes + b"\0" * pad
        + tag(mi_double, data_bytes)
    )
    header = b"MATLAB 5.0 MAT-file, written by ndd".ljust(116, b" ") + b" " * 8 + np.array([0x0100], "<u2").tobytes() + b"IM"
    # level 1: a third of the time of zlib's default 6 on a 321x481 ucm2, which stays small
    # (mostly zeros: 77 kB instead of 35 kB, of 7.7 MB of doubles)
    compressor = zlib.compressobj(1)
    with open(path, "wb") as f:
        f.write(header)
        tag_at = f.tell()
        f.write(tag(mi_compressed, 0))  # its byte count is known only at the end
        written = f.write(compressor.compress(tag(mi_matrix, len(body) + data_bytes) + body))
        for c0 in range(0, cols, chunk_columns):  # column-major: columns c0.. one after another
            band = np.ascontiguousarray(a[:, c0 : c0 + chunk_columns].T)
            written += f.write(compressor.compress(band.tobytes()))
        written += f.write(compressor.flush())
        f.seek(tag_at)
        f.write(tag(mi_compressed, written))
