"""``ndd similarity IMAGE --points x,y ...``: diffusion-similarity maps of chosen pixels (paper Fig. 2)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ndd.cli._commands import subcommand_help
from ndd.models.config import DEFAULT_MAX_SIDE



def _point(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"a point is x,y in pixels, got {text!r}") from err
    return x, y


def _grid(text: str) -> int:
    try:
        k = int(text)
    except ValueError:
        k = 0
    if k < 1:
        raise argparse.ArgumentTypeError(f"K is a number of points per side, >= 1, got {text!r}")
    return k


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("similarity", help=subcommand_help("similarity"),
                              description="Neural diffusion similarity of pixels (rows of K_D up-sampled by FAI).")
    p.add_argument("image", type=Path)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--points", type=_point, nargs="+", metavar="X,Y",
                       help="pixel positions in the image as given (x = column, y = row)")
    where.add_argument("--all-grid", type=_grid, metavar="K", help="a contact sheet of a K x K lattice of points")
    p.add_argument("--out", type=Path, default=Path("."), help="output folder (default: current)")
    p.add_argument("--model", default=None, help="'default', a shipped model name (e.g. bsds500), 'handcrafted' or a checkpoint path")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N or mps (default cpu)")
    p.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE, help="longest side processed (default %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ndd import io
    from ndd.batch import check_out_dir
    from ndd.device import check_device_name

    # Every mistake is found before the model loads (device names, the folder and the image before
    # torch is even imported) and gets one line.
    try:
        if args.max_side < 16:
            raise ValueError(f"--max-side must be >= 16, got {args.max_side}")
        check_device_name(args.device)
        check_out_dir(args.out)
        image = io.read_image(args.image)
        if args.points is not None:
            io.check_points(args.points, image.shape[:2])  # in the user's pixels, before torch is imported
    except ValueError as err:
        print(f"ndd similarity: {err}", file=sys.stderr)
        return 2
    from ndd.inference import load_segmentation_model, similarity_maps

    try:
        model, description = load_segmentation_model(args.model, args.device, int8_edges=False)  # K_D reads no edges
    except (FileNotFoundError, ValueError) as err:
        print(f"ndd similarity: {err}", file=sys.stderr)
        return 2
    print(f"model: {description}", file=sys.stderr)
    maps, points = similarity_maps(image, model, args.points, all_grid=args.all_grid, max_side=args.max_side)
    stem = args.out / args.image.stem
    tiles = [io.heatmap_overlay(image, m, p) for m, p in zip(maps, points)]
    if args.all_grid:
        written = {f"{stem}_similarity_grid.png": io.contact_sheet(tiles, columns=args.all_grid)}
    else:
        written = {f"{stem}_similarity_{round(x)}_{round(y)}.png": tile for (x, y), tile in zip(points, tiles)}
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        for path, picture in written.items():
            io.write_image(path, picture)
            print(path)
    except OSError as err:
        print(f"ndd similarity: cannot write to {args.out}: {err.strerror or err}", file=sys.stderr)
        return 1
    return 0
