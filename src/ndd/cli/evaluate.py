"""``ndd evaluate``: the BSDS500 benchmark on a folder of results.

Thin wrapper over :func:`ndd.evaluation.evaluate_dataset`: parses arguments,
prints a table, writes the JSON report.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ndd.cli._commands import subcommand_help

from ndd.cli._output import write_json_report

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "evaluate",
        help=subcommand_help("evaluate"),
        description=(
            "Score results against BSDS ground truth exactly as the official BSDS500 benchmark: "
            "Segmentation Covering (ODS, OIS, Best), PRI and VI (ODS, OIS), the paper's AVG/MAX covering, "
            "and boundary F (ODS, OIS) and AP. RESULTS holds <id>.mat with 'ucm2' (doubleSize) or 'segs' "
            "(cell of label maps), <id>.npz with the same keys, <id>/ folders of PNG label maps, or "
            "<id>.png soft boundary maps (boundary only)."
        ),
    )
    p.add_argument("--results", required=True, type=Path, metavar="DIR", help="folder of results, one per image id")
    p.add_argument("--groundtruth", required=True, type=Path, metavar="DIR", help="BSDS groundTruth folder (<id>.mat)")
    p.add_argument("--nthresh", type=int, default=99, help="scales for ucm2 / soft boundary maps (default 99)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write summary and per-image scores as JSON")
    p.add_argument("--workers", type=int, default=1, metavar="K", help="parallel processes over images (default 1)")
    p.add_argument("--no-boundary", action="store_true", help="skip the boundary benchmark")
    p.add_argument("--no-region", action="store_true", help="skip the region benchmark")
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="evaluate the images that have results even if some ground-truth images have none",
    )
    p.add_argument(
        "--exact-tiebreak",
        action="store_true",
        help="boundary matching: exact minimum-distance optimum among maximum matchings (slow)",
    )
    p.set_defaults(func=run)


def _fmt(v: float | None) -> str:
    return "      -" if v is None else f"{v:7.4f}"


def run(args: argparse.Namespace) -> int:
    from ndd.evaluation import EvaluationError, evaluate_dataset
    from ndd.evaluation.bsds import print_progress

    if args.workers < 1 or args.nthresh < 1:
        print("ndd evaluate: --workers and --nthresh must be >= 1", file=sys.stderr)
        return 2
    if args.no_boundary and args.no_region:
        print("ndd evaluate: nothing to do (--no-boundary and --no-region)", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        ev = evaluate_dataset(
            args.results,
            args.groundtruth,
            nthresh=args.nthresh,
            workers=args.workers,
            region=not args.no_region,
            boundary=not args.no_boundary,
            tiebreak="exact" if args.exact_tiebreak else "greedy",
            allow_missing=args.allow_missing,
            progress=print_progress if sys.stderr.isatty() else None,
        )
    except EvaluationError as exc:
        print(f"ndd evaluate: error: {exc}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    report = ev.to_json_dict()
    s = report["summary"]
    print(f"BSDS500 benchmark: {len(ev.images)} images, {elapsed:.1f} s, {args.workers} worker(s)")
    if ev.ignored_files:
        print(
            f"note: ignored {len(ev.ignored_files)} PNG file(s) not named after a ground-truth image "
            f"(e.g. {ev.ignored_files[0]})"
        )
    if ev.missing_results:
        print(f"WARNING: {len(ev.missing_results)} ground-truth images without result were skipped")
    print(f"{'':24s}{'ODS':>8s}{'OIS':>8s}{'Best/AP':>9s}")
    c, pri, vi, b = s["covering"], s["pri"], s["vi"], s["boundary"]
    print(f"{'Covering':24s}{_fmt(c['ods']):>8s}{_fmt(c['ois']):>8s}{_fmt(c['best']):>9s}")
    print(f"{'PRI':24s}{_fmt(pri['ods']):>8s}{_fmt(pri['ois']):>8s}")
    print(f"{'VI':24s}{_fmt(vi['ods']):>8s}{_fmt(vi['ois']):>8s}")
    print(f"{'Boundary F':24s}{_fmt(b['ods']):>8s}{_fmt(b['ois']):>8s}{_fmt(b['ap']):>9s}")
    pc = s["paper_covering"]
    print(
        f"Paper covering (optimal image scale): AVG {_fmt(pc['avg']).strip()}  "
        f"MAX {_fmt(pc['max']).strip()} (best annotation at the image's scale)  "
        f"MAX-any-scale {_fmt(pc['max_any_scale']).strip()}"
    )
    if args.json:
        if not write_json_report(args.json, report, "ndd evaluate"):
            return 1
    return 0
