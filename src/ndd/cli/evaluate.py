"""``ndd evaluate``: the BSDS500 benchmark on a folder of results.

Thin wrapper over :func:`ndd.evaluation.evaluate_dataset` (one method) and
:func:`ndd.evaluation.compare_methods` (several ``--results NAME=DIR``):
parses arguments, prints a table, writes the JSON / CSV reports and the
precision-recall plot through the library (matplotlib only with ``--plot``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ndd.cli._commands import subcommand_help

from ndd.cli._output import write_json_report

if TYPE_CHECKING:  # the library is imported inside run(), only for the command being run
    from ndd.evaluation import DatasetEvaluation

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
            "<id>.png (8/16-bit) or <id>.npy soft boundary maps (boundary only). Several --results NAME=DIR "
            "score several methods in one run and print one table."
        ),
    )
    p.add_argument(
        "--results",
        required=True,
        action="append",
        metavar="[NAME=]DIR",
        help="folder of results, one per image id; repeat as NAME=DIR to compare several methods",
    )
    p.add_argument("--groundtruth", required=True, type=Path, metavar="DIR", help="BSDS groundTruth folder (<id>.mat)")
    p.add_argument("--nthresh", type=int, default=99, help="scales for ucm2 / soft boundary maps (default 99)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write summary and per-image scores as JSON")
    p.add_argument("--workers", type=int, metavar="K",
                   help="parallel processes over images (default: one per core, at most 4 and one per image)")
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
    p.add_argument(
        "--nms",
        action="store_true",
        help="thin soft boundary maps first by the edge papers' non-maximum suppression "
        "(edgesNms: convTri radius 4 orientation, r=1, s=5, m=1.01), as HED/RCF/PiDiNet report",
    )
    p.add_argument(
        "--nms-radius",
        type=int,
        default=1,
        metavar="R",
        help="suppression radius of --nms (default 1 as edgesNms/HED; the RCF and PiDiNet scripts use 2)",
    )
    p.add_argument("--csv", type=Path, metavar="FILE", help="write one row per image (and method) as CSV")
    p.add_argument(
        "--plot", type=Path, metavar="FILE", help="draw the boundary precision-recall curves (PNG; needs matplotlib)"
    )
    p.add_argument("--plot-size", default="600x600", metavar="WxH", help="size of the --plot PNG in pixels (600x600)")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a one-line count of images done on stderr (default: when stderr is a terminal)",
    )
    p.add_argument(
        "--human",
        action="store_true",
        help="also score each annotator against the others (the human point of the PR plot)",
    )
    p.set_defaults(func=run)


def _plot_size(text: str) -> tuple[int, int] | None:
    """``"WxH"`` → (W, H) pixels, each >= 50; None if malformed."""
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or int(w) < 50 or int(h) < 50:
        return None
    return int(w), int(h)


def _print_progress(done: int, total: int, image_id: str) -> None:
    """A one-line progress display on stderr, rewritten in place after each image."""
    end = "\n" if done == total else ""
    print(f"\r[{done}/{total}] {image_id}   ", end=end, file=sys.stderr, flush=True)


def _print_notes(ev: DatasetEvaluation, name: str = "") -> None:
    who = f"{name}: " if name else ""
    if ev.ignored_files:
        print(
            f"note: {who}ignored {len(ev.ignored_files)} PNG file(s) not named after a ground-truth image "
            f"(e.g. {ev.ignored_files[0]})"
        )
    if ev.missing_results:
        print(f"WARNING: {who}{len(ev.missing_results)} ground-truth images without result were skipped")


def run(args: argparse.Namespace) -> int:
    from ndd.batch import default_workers
    from ndd.evaluation import (
        EvaluationError,
        PlotUnavailable,
        compare_methods,
        comparison_json,
        evaluation_json,
        format_comparison,
        format_summary,
        name_methods,
        plot_pr,
        require_matplotlib,
        write_csv,
    )

    if (args.workers is not None and args.workers < 1) or args.nthresh < 1 or args.nms_radius < 1:
        print("ndd evaluate: --workers, --nthresh and --nms-radius must be >= 1", file=sys.stderr)
        return 2
    if args.no_boundary and args.no_region:
        print("ndd evaluate: nothing to do (--no-boundary and --no-region)", file=sys.stderr)
        return 2
    size = _plot_size(args.plot_size)
    if size is None:
        print(f"ndd evaluate: --plot-size must be WxH in pixels, each >= 50 (got {args.plot_size!r})", file=sys.stderr)
        return 2
    if args.plot is not None:
        if args.no_boundary:
            print("ndd evaluate: --plot draws the boundary benchmark, drop --no-boundary", file=sys.stderr)
            return 2
        try:  # fail before the long evaluation, in one line
            require_matplotlib()
        except PlotUnavailable as exc:
            print(f"ndd evaluate: --plot: {exc}", file=sys.stderr)
            return 2
    try:
        methods = name_methods(args.results)
    except EvaluationError as exc:
        print(f"ndd evaluate: error: {exc}", file=sys.stderr)
        return 2

    def progress(name: str, done: int, total: int, image_id: str) -> None:
        _print_progress(done, total, f"{name} {image_id}" if len(methods) > 1 else image_id)

    # as ndd segment: processes beat one (the 200 gPb ucm2 files: 43 s with 2 on 2 cores, 81 s with 1)
    workers = args.workers or default_workers(max(1, len(list(args.groundtruth.glob("*.mat")))), "cpu")
    start = time.perf_counter()
    try:
        cmp = compare_methods(
            methods,
            args.groundtruth,
            human=args.human,
            progress=progress if (sys.stderr.isatty() if args.progress is None else args.progress) else None,
            nthresh=args.nthresh,
            workers=workers,
            region=not args.no_region,
            boundary=not args.no_boundary,
            tiebreak="exact" if args.exact_tiebreak else "greedy",
            allow_missing=args.allow_missing,
            nms=args.nms,
            nms_radius=args.nms_radius,
        )
    except EvaluationError as exc:
        print(f"ndd evaluate: error: {exc}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    evals = cmp.methods
    if args.nms and not any(im.kind == "pb" for ev in evals.values() for im in ev.images):
        print("note: --nms applies to soft boundary maps only; these results are ucm2 / label maps")
    if len(evals) == 1:
        ev = next(iter(evals.values()))
        print(f"BSDS500 benchmark: {len(ev.images)} images, {elapsed:.1f} s, {workers} worker(s)")
        _print_notes(ev)
        print(format_summary(ev))
        if cmp.human is not None:
            print(cmp.human.summary_line())
        report = evaluation_json(ev)
        if cmp.human is not None:
            report["human"] = cmp.human.to_json_dict()
    else:
        n_img = sum(len(ev.images) for ev in evals.values())
        print(
            f"BSDS500 benchmark: {len(evals)} methods, {n_img} image results, {elapsed:.1f} s, "
            f"{workers} worker(s)"
        )
        for name, ev in evals.items():
            _print_notes(ev, name)
        print(format_comparison(cmp))
        report = comparison_json(cmp)
    if args.json:
        if not write_json_report(args.json, report, "ndd evaluate"):
            return 1
    if args.csv:
        try:
            write_csv(evals, args.csv)
        except OSError as exc:
            print(f"ndd evaluate: cannot write {args.csv}: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {args.csv}")
    if args.plot:
        try:
            title = "BSDS500 boundaries" + (" (NMS)" if args.nms else "")
            plot_pr(evals, args.plot, size=size, human=cmp.human, title=title)
        except OSError as exc:
            print(f"ndd evaluate: cannot write {args.plot}: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {args.plot}")
    return 0
