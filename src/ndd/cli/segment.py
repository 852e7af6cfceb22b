"""``ndd segment IMAGE... --out DIR``: hierarchical segmentation of images."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ndd.cli._commands import subcommand_help

# io is NumPy/Pillow only: importing it keeps --help free of torch
from ndd.io import DEFAULT_SEGMENTATION_FORMATS as DEFAULT_FORMATS
from ndd.io import SEGMENTATION_FORMATS as FORMATS

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
    p.add_argument("--format", type=_formats, default=list(DEFAULT_FORMATS),
                   help=f"comma-separated outputs among {','.join(FORMATS)}: label PNGs, the photo with boundaries, "
                        f"mean-colour segments, a strip of all levels, BSDS ucm2 .mat (default {','.join(DEFAULT_FORMATS)})")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N or mps (default cpu)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")
    p.add_argument("-v", "--verbose", action="store_true", help="list every file written")
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
    if (args.edge_weight is not None and not 0.0 <= args.edge_weight <= 1.0) or (
            args.coverage is not None and not 0.0 < args.coverage < 1.0):
        print("ndd segment: --edge-weight must be in [0, 1] and --coverage in (0, 1)", file=sys.stderr)
        return 2
    # Missing files and folders are found before the model loads (seconds) and before --out exists.
    images, failures = [], 0
    for path in args.images:
        if path.is_file():
            images.append(path)
        else:
            print(f"ndd segment: {path}: {'is a directory, not an image' if path.is_dir() else 'no such file'}",
                  file=sys.stderr)
            failures += 1
    if not images:
        print("ndd segment: no image to segment", file=sys.stderr)
        return 2

    # Imported here so that other subcommands start without loading torch.
    import time

    from tqdm import tqdm

    from ndd import io
    from ndd.inference import load_segmentation_model, segment_image

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
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    start, done, skipped_in = time.perf_counter(), 0, {}
    bar = tqdm(images, desc="segment", unit="image", disable=not progress, file=sys.stderr)
    for path in bar:
        try:
            image = io.read_image(path)
        except (ValueError, OSError) as err:
            bar.write(f"ndd segment: {err}", file=sys.stderr)  # never breaks the bar's line
            failures += 1
            continue
        bar.set_postfix_str(f"{path.name}: segmenting", refresh=True)  # a 24-megapixel photo takes a minute
        result = segment_image(image, model, max_side=args.max_side, highres=not args.lowres, legacy=args.legacy,
                               **options)
        counts = result.available_levels(args.levels)
        for k in set(args.levels) - set(counts):
            skipped_in.setdefault(k, []).append(result.hierarchy.n_segments)
        bar.set_postfix_str(f"{path.name}: writing {','.join(args.format)}", refresh=True)
        picture = io.to_uint8_image(image)
        del image  # the float copy is 4x larger and no longer needed
        written = io.write_segmentation(args.out, path.stem, picture, result.level_maps(counts), result.to_ucm2,
                                        args.format)
        del result, picture
        done += 1
        if args.verbose:
            for file in written:
                bar.write(str(file), file=sys.stdout)
    seconds = time.perf_counter() - start
    if skipped_in and set(args.format) - {"ucm2"}:  # once per run, not once per image
        for k, finest in sorted(skipped_in.items()):
            print(f"ndd segment: level {k} skipped in {len(finest)} of {done} image(s): their hierarchies have "
                  f"{min(finest)}-{max(finest)} segments at the finest", file=sys.stderr)
    rate = f", {seconds / done:.2f} s per image" if done else ""
    print(f"ndd segment: {done} image(s) segmented, {failures} failed, in {seconds:.1f} s{rate}; outputs in {args.out}",
          file=sys.stderr)
    return 1 if failures else 0
