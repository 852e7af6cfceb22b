"""``ndd evaluate-kernel``: kernel accuracy (paper Table 1) of a training checkpoint on BSDS500 splits."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ndd.cli._commands import subcommand_help
from ndd.cli._output import write_json_report

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "evaluate-kernel",
        help=subcommand_help("evaluate-kernel"),
        description=(
            "Cosine similarity of the predicted K_D with the ground-truth kernel K_gt on the stride-8 feature grid, "
            "per image averaged over its human annotations, then over images; whole images, batch 1."
        ),
    )
    p.add_argument("--model", default=None, metavar="SPEC",
                   help="as ndd segment: 'default' (shipped model), a shipped model name (e.g. bsds500, bsds500_hed_v3), "
                        "'handcrafted', or a checkpoint / weights file (default: default)")
    p.add_argument("--checkpoint", type=Path, metavar="CKPT", help="same as --model CKPT")
    p.add_argument("--data", required=True, type=Path, metavar="ROOT", help="BSDS500 root")
    p.add_argument("--split", nargs="+", default=["test"], metavar="SPLIT",
                   help="splits: train, val, test, trainval (default: test)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the summary and per-image scores as JSON")
    p.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda[:N]' (default auto)")
    p.add_argument("--max-images", type=int, metavar="N", help="evaluate only the first N images of each split")
    p.add_argument("--num-threads", type=int, metavar="N", help="torch CPU threads")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")
    p.add_argument("--t-grid", type=_positive_list, metavar="T,T,...",
                   help="with --tau-grid: the accuracy of K = exp(-tau D_t) for every (t, tau) instead, and the "
                        "best pair (re-calibrating a trained model; choose on val)")
    p.add_argument("--tau-grid", type=_positive_list, metavar="TAU,TAU,...", help="see --t-grid")
    p.set_defaults(func=run)


def _positive_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) <= 0 or not all(v < float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers separated by commas, got {text!r}")
    return values


def run(args: argparse.Namespace) -> int:
    from ndd.device import check_device_name

    try:  # before torch is imported: a misspelt device or a wrong pair of flags answers at once
        check_device_name(args.device)
        if args.checkpoint is not None and args.model is not None:
            raise ValueError("give --model or --checkpoint, not both")
        if args.max_images is not None and args.max_images < 1 or (args.num_threads or 1) < 1:
            raise ValueError("--max-images and --num-threads must be >= 1")
        if (args.t_grid is None) != (args.tau_grid is None):
            raise ValueError("give --t-grid and --tau-grid together")
    except ValueError as exc:
        print(f"ndd evaluate-kernel: error: {exc}", file=sys.stderr)
        return 2
    import torch

    from ndd.data import BSDS500
    from ndd.inference import load_segmentation_model
    from ndd.train import checkpoint_step, format_kernel_report, kernel_report

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        spec = str(args.checkpoint) if args.checkpoint is not None else args.model
        datasets = {s: BSDS500(args.data, s, annotation="all") for s in args.split}  # before the model loads
        # checks the device first; K_D reads no edges, so HED stays as it is
        model, description = load_segmentation_model(spec, args.device, int8_edges=False)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"ndd evaluate-kernel: error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.t_grid is not None:
            from ndd.train import format_kernel_grid, kernel_grid_report

            report = kernel_grid_report(model, datasets, args.t_grid, args.tau_grid, description=description,
                                        checkpoint=spec, data=str(args.data), max_images=args.max_images,
                                        progress=progress)
            for split, grid in report["grids"].items():
                print(f"{split}: {format_kernel_grid(grid)}")
        else:
            report = kernel_report(model, datasets, description=description, checkpoint=spec,
                                   step=checkpoint_step(spec), data=str(args.data), max_images=args.max_images,
                                   progress=progress)
            print(format_kernel_report(report))
    except (ValueError, FileNotFoundError) as exc:
        print(f"ndd evaluate-kernel: error: {exc}", file=sys.stderr)
        return 1
    if args.json and not write_json_report(args.json, report, "ndd evaluate-kernel"):
        return 1
    return 0
