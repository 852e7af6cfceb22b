"""Time the BSDS500 benchmark with ndd: start-up, the full ucm2 benchmark, soft edge maps.

Prints, each with wall time, CPU time (this process and its workers) and the
load average before and after:

1. ``ndd evaluate --help`` as a subprocess (start-up: the benchmark imports no torch),
   then the time to compile (first use after installing) or load the numba kernels;
2. :func:`ndd.evaluation.evaluate_dataset` on the 200 gPb-owt-ucm ``ucm2``
   files of the BSDS500 test split (region + boundary, 99 thresholds) and,
   when the official outputs (``ucm2/test_eval``) are present, the deviation
   of every figure from them;
3. with ``--soft DIR`` (repeatable), the boundary benchmark alone on a folder
   of soft edge maps (``<id>.png`` as HED/RCF/PiDiNet write them), as ``ndd
   evaluate --no-region``.

Optionally times another Python BSDS evaluator on a few images for
comparison: pyEdgeEval (``pip install pyEdgeEval``; a Cython port of the
official C++ matcher), run with another interpreter if it is not installed in
this one::

    python benchmarks/bench_evaluation.py [--root data/BSDS500] [--workers 2] [--soft DIR ...]
        [--skip-ucm2] [--other-python PATH] [--other-images 3] [--json-dir DIR]

``--json-dir`` writes each run's figures and per-image counts (``ndd
evaluate --json``) there, to check that a faster version gives the same
figures (``soft_<folder>.json``, ``ucm2.json``).

Fetch the data first (git-ignored ``data/``)::

    git --git-dir=<mirror of github.com/BIDS/BSDS500> archive HEAD BSDS500/data \
        BSDS500/ucm2/test BSDS500/ucm2/test_eval | tar -x -C data/
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# Run by the other interpreter: pyEdgeEval's multi-annotation boundary
# evaluation on ucm2[2::2, 2::2] (the official ucm2 boundary map), 99 thresholds.
OTHER_SNIPPET = r"""
import sys, time, numpy as np, scipy.io
from pyEdgeEval.common.binary_label.evaluate_boundaries import evaluate_boundaries_threshold_multiple_gts
ucm_dir, gt_dir, ids = sys.argv[1], sys.argv[2], sys.argv[3:]
th = np.linspace(0.01, 0.99, 99)
t0 = time.perf_counter()
for iid in ids:
    pb = scipy.io.loadmat(f"{ucm_dir}/{iid}.mat")["ucm2"][2::2, 2::2]
    gts = scipy.io.loadmat(f"{gt_dir}/{iid}.mat", simplify_cells=True)["groundTruth"]
    gts = [g["Boundaries"].astype(bool) for g in (gts if isinstance(gts, list) else [gts])]
    cr, sr, cp, sp = evaluate_boundaries_threshold_multiple_gts(th, pb, gts, max_dist=0.0075, apply_thinning=True)
    print("COUNTS", iid, *cr.astype(int), *sr.astype(int), *cp.astype(int), *sp.astype(int), flush=True)
print("SECONDS", time.perf_counter() - t0)
"""


def load() -> str:
    """The 1-minute load average, for the record (the machine may be shared)."""
    return f"{os.getloadavg()[0]:.1f}"


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker processes)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def compare_official(ev, eval_dir: Path) -> None:
    """Print our figures beside the official ``eval_*.txt`` ones."""

    def row(name: str) -> np.ndarray:
        return np.loadtxt(eval_dir / name, ndmin=2)

    r, b = ev.region, ev.boundary
    ids = ev.image_ids
    print("\nfigure                      ours        official    diff")
    pairs = []
    if r is not None:
        cov, rv = row("eval_cover.txt")[0], row("eval_RI_VOI.txt")[0]
        pairs += [
            ("covering ODS", r.covering_ods, cov[1]),
            ("covering OIS", r.covering_ois, cov[2]),
            ("covering Best", r.covering_best, cov[3]),
            ("PRI ODS", r.pri_ods, rv[1]),
            ("PRI OIS", r.pri_ois, rv[2]),
            ("VI ODS", r.voi_ods, rv[4]),
            ("VI OIS", r.voi_ois, rv[5]),
        ]
    if b is not None:
        bd = row("eval_bdry.txt")[0]
        pairs += [
            ("boundary ODS F", b.ods_f, bd[3]),
            ("boundary ODS R", b.ods_recall, bd[1]),
            ("boundary ODS P", b.ods_precision, bd[2]),
            ("boundary OIS F", b.ois_f, bd[6]),
            ("boundary OIS R", b.ois_recall, bd[4]),
            ("boundary OIS P", b.ois_precision, bd[5]),
            ("boundary AP", b.ap, bd[7]),
        ]
    for name, ours, off in pairs:
        print(f"{name:24s}{ours:12.6f}{off:12.6f}{ours - off:+12.6f}")
    if r is not None:
        img = row("eval_cover_img.txt")
        assert img.shape[0] == len(ids)
        print(
            f"per-image covering OIS: max |diff| {np.abs(r.img_best_r - img[:, 2]).max():.2e}, "
            f"thresholds equal {int(np.sum(np.isclose(r.img_best_t, img[:, 1])))}/{len(ids)}"
        )
        th = row("eval_cover_th.txt")
        print(f"covering curve (99 thresholds): max |diff| {np.abs(r.covering_curve - th[:, 1]).max():.2e}")
    if b is not None:
        img = row("eval_bdry_img.txt")
        d = b.img_best_f - img[:, 4]
        print(
            f"per-image boundary F: max |diff| {np.abs(d).max():.4f}, mean diff {d.mean():+.5f}, "
            f"over 0.005: {int(np.sum(np.abs(d) > 0.005))}"
        )
        th = row("eval_bdry_thr.txt")
        print(
            f"boundary curve: max |diff| R {np.abs(b.recall - th[:, 1]).max():.4f}, "
            f"P {np.abs(b.precision - th[:, 2]).max():.4f}, F {np.abs(b.f - th[:, 3]).max():.4f}"
        )


def run_other(python: str, ucm_dir: Path, gt_dir: Path, ids: list[str], ours: dict[str, object]) -> None:
    """Time pyEdgeEval on a few images and compare its counts with ours."""
    print(f"\npyEdgeEval (via {python}) on {len(ids)} images, boundary only, 99 thresholds, 1 process:")
    proc = subprocess.run(
        [python, "-c", OTHER_SNIPPET, str(ucm_dir), str(gt_dir), *ids], capture_output=True, text=True
    )
    if proc.returncode != 0:
        print("  failed:", proc.stderr.strip().splitlines()[-1:] or proc.returncode)
        return
    seconds = None
    for line in proc.stdout.splitlines():
        if line.startswith("SECONDS"):
            seconds = float(line.split()[1])
        elif line.startswith("COUNTS"):
            parts = line.split()
            iid, vals = parts[1], np.array(parts[2:], dtype=np.int64).reshape(4, -1)
            mine = ours[iid]
            print(
                f"  {iid}: matched GT pixels pyEdgeEval {vals[0].sum()} ours {mine.cnt_r.sum()} | "
                f"matched machine pixels pyEdgeEval {vals[2].sum()} ours {mine.cnt_p.sum()}"
            )
    if seconds is not None:
        print(
            f"  {seconds:.1f} s for {len(ids)} images = {seconds / len(ids):.1f} s/image "
            f"-> {200 * seconds / len(ids) / 60:.0f} min single-core for the 200 test images"
        )


def time_help() -> None:
    """Wall time of ``ndd evaluate --help`` in a fresh interpreter (best of 3)."""
    cmd = [sys.executable, "-m", "ndd", "evaluate", "--help"]
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        best = min(best, time.perf_counter() - t0)
    print(f"ndd evaluate --help: {best:.2f} s (best of 3, load {load()})")


def time_kernels() -> None:
    """Make the compiled matching and thinning kernels ready before timing.

    numba compiles them at their first use after installing and caches them;
    this call does it here (or loads them from the cache) so that the worker
    processes timed below find them cached.
    """
    from ndd.evaluation.boundary import boundary_counts

    gt = np.zeros((8, 8), dtype=bool)
    gt[3] = True
    t0 = time.perf_counter()
    boundary_counts([gt], [gt], np.array([0.5]))
    print(f"compiled kernels ready in {time.perf_counter() - t0:.1f} s (compiled now, or loaded from numba's cache)")


def time_evaluation(label: str, results: Path, gt_dir: Path, **kwargs: object):
    """Run evaluate_dataset once, print wall/CPU time and load; return the evaluation."""
    from ndd.evaluation import evaluate_dataset

    n = len({p.stem for p in results.iterdir() if not p.name.startswith(".")})
    load0 = load()
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    ev = evaluate_dataset(results, gt_dir, **kwargs)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    print(
        f"{label}: {n} images, {kwargs.get('workers', 1)} workers: wall {wall:.1f} s, "
        f"CPU {cpu:.1f} s ({cpu / n:.2f} s/image), load {load0} -> {load()}"
    )
    return ev


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=REPO / "data/BSDS500", help="BSDS500 folder (data/, ucm2/)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--nthresh", type=int, default=99)
    ap.add_argument("--soft", type=Path, action="append", default=[], help="folder of soft edge maps to time")
    ap.add_argument("--skip-ucm2", action="store_true", help="do not time the ucm2 benchmark")
    ap.add_argument("--other-python", help="interpreter with pyEdgeEval installed, to time it too")
    ap.add_argument("--other-images", type=int, default=3, help="images for the other evaluator (it is slow)")
    ap.add_argument("--json-dir", type=Path, help="write each run's figures and per-image counts here as JSON")
    args = ap.parse_args()

    def save(ev, name: str) -> None:
        if args.json_dir is not None:
            args.json_dir.mkdir(parents=True, exist_ok=True)
            (args.json_dir / name).write_text(json.dumps(ev.to_json_dict()))

    ucm_dir, gt_dir = args.root / "ucm2/test", args.root / "data/groundTruth/test"
    if not gt_dir.is_dir():
        print(f"{gt_dir} not found; fetch BSDS500 into data/ first (see the docstring)", file=sys.stderr)
        return 1
    print(f"{os.cpu_count()} CPUs, {args.nthresh} thresholds")
    time_help()
    time_kernels()
    for soft in args.soft:
        ev = time_evaluation(
            f"boundary benchmark on soft maps {soft}", soft, gt_dir, nthresh=args.nthresh, workers=args.workers,
            region=False,
        )
        b = ev.boundary
        print(f"  boundary ODS {b.ods_f:.4f}  OIS {b.ois_f:.4f}  AP {b.ap:.4f}")
        save(ev, f"soft_{soft.name}.json")
    if args.skip_ucm2:
        return 0
    if not ucm_dir.is_dir():
        print(f"{ucm_dir} not found; fetch BSDS500 into data/ first (see the docstring)", file=sys.stderr)
        return 1
    ev = time_evaluation(
        "region + boundary benchmark on gPb-owt-ucm ucm2", ucm_dir, gt_dir, nthresh=args.nthresh, workers=args.workers
    )
    save(ev, "ucm2.json")
    eval_dir = args.root / "ucm2/test_eval"
    if (eval_dir / "eval_cover.txt").is_file() and args.nthresh == 99:  # the full release only
        compare_official(ev, eval_dir)
    if args.other_python:
        ids = ev.image_ids[: args.other_images]
        run_other(args.other_python, ucm_dir, gt_dir, ids, {im.image_id: im.boundary for im in ev.images})
    return 0


if __name__ == "__main__":
    sys.exit(main())
