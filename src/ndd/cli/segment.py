"""``ndd segment IMAGE... --out DIR``: hierarchical segmentation of images."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ndd.cli._commands import subcommand_help




FORMATS = ("labels", "overlay", "strip", "ucm2")
DEFAULT_LEVELS = (2, 4, 8, 16, 32)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(",", " ").split()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected numbers like 2,5,10, got {text!r}") from err
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("numbers of segments must be >= 1")
    return values


def _formats(text: str) -> list[str]:
    chosen = [f.strip() for f in text.split(",") if f.strip()]
    bad = sorted(set(chosen) - set(FORMATS))
    if bad or not chosen:
        raise argparse.ArgumentTypeError(f"unknown format(s) {bad}; choose from {','.join(FORMATS)}")
    return chosen


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("segment", help=subcommand_help("segment"),
                              description="Hierarchical segmentation with the neural diffusion distance (paper §6).")
    p.add_argument("images", nargs="+", type=Path, help="image files (any RGB/grey/RGBA format Pillow reads)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--model", default=None,
                   help="'default' (shipped weights), 'handcrafted', or a checkpoint path (default: default)")
    p.add_argument("--levels", type=_int_list, default=list(DEFAULT_LEVELS),
                   help="numbers of segments of the levels to write (default 2,4,8,16,32)")
    p.add_argument("--format", type=_formats, default=list(FORMATS),
                   help=f"comma-separated outputs among {','.join(FORMATS)} (default all)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--max-side", type=int, default=481,
                   help="longest side processed (default 481, BSDS500's); larger images are scaled down and results mapped back")
    # hierarchy options default to None: ndd.inference.HierarchyOptions owns their defaults
    p.add_argument("--method", choices=("auto", "superpixels", "grid"), default=None,
                   help="superpixels: pixel-accurate regions of the model's edge map merged by contour strength and "
                        "feature similarity; grid: paper §6 on the stride-8 grid; auto (default): superpixels when "
                        "the model has an edge map")
    p.add_argument("--merge-by", choices=("features", "diffusion"), default=None,
                   help="average similarity that merging uses: the feature kernel (paper §6, default) or K_D")
    p.add_argument("--edge-weight", type=float, default=None,
                   help="superpixels: weight of the contour term against feature similarity (default 0.2)")
    p.add_argument("--coverage", type=float, default=None,
                   help="grid: residual coverage at which centre selection stops (default 0.005; paper 0.02)")
    p.add_argument("--ucm-values", choices=("auto", "spread", "height", "rank"), default=None,
                   help="values of the ucm2: spread (merge heights, moved so that every level up to 99 segments "
                        "has a BSDS threshold of its own), rank (merge order), height (merge heights); auto "
                        "(default): spread for superpixels, rank for grid")
    p.add_argument("--lowres", action="store_true", help="grid method: skip FAI (nearest up-sampling of the grid result)")
    p.add_argument("--legacy", action="store_true", help="grid method with the authors' hierarchy choices")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here so that other subcommands start without loading torch.
    from ndd import io
    from ndd.inference import load_segmentation_model, segment_image
    from tqdm import tqdm

    if (args.edge_weight is not None and not 0.0 <= args.edge_weight <= 1.0) or (
            args.coverage is not None and not 0.0 < args.coverage < 1.0):
        print("ndd segment: --edge-weight must be in [0, 1] and --coverage in (0, 1)", file=sys.stderr)
        return 2
    given = {"method": args.method, "merge_by": args.merge_by, "edge_weight": args.edge_weight,
             "coverage_threshold": args.coverage, "ucm_values": args.ucm_values}
    options = {k: v for k, v in given.items() if v is not None}
    try:
        model, description = load_segmentation_model(args.model, args.device)
    except (FileNotFoundError, ValueError) as err:
        print(f"ndd segment: {err}", file=sys.stderr)
        return 2
    if args.method == "superpixels" and not model.has_edge_map:
        print(f"ndd segment: --method superpixels needs a model with an edge map; {description} has none "
              "(use --model default or --method grid)", file=sys.stderr)
        return 2
    print(f"model: {description}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in tqdm(args.images, desc="segment", unit="image", disable=len(args.images) < 2):
        try:
            image = io.read_image(path)
        except (ValueError, OSError) as err:
            print(f"ndd segment: {err}", file=sys.stderr)
            failures += 1
            continue
        result = segment_image(image, model, max_side=args.max_side, highres=not args.lowres, legacy=args.legacy,
                               **options)
        counts = result.available_levels(args.levels)
        skipped = sorted(set(args.levels) - set(counts))
        if skipped and set(args.format) - {"ucm2"}:
            print(f"{path}: the hierarchy has {result.hierarchy.n_segments} segments at its finest; "
                  f"levels {skipped} skipped", file=sys.stderr)
        levels = result.levels(counts)
        stem = args.out / path.stem
        for k, labels in zip(counts, levels):
            if "labels" in args.format:
                io.write_labels(f"{stem}_labels_{k:03d}.png", labels)
            if "overlay" in args.format:
                io.write_overlay(f"{stem}_overlay_{k:03d}.png", image, labels)
        if "strip" in args.format and levels:
            io.write_hierarchy_strip(f"{stem}_hierarchy.png", image, levels[::-1])
        if "ucm2" in args.format:
            io.write_ucm2(f"{stem}.mat", result.to_ucm2())
    return 1 if failures else 0
