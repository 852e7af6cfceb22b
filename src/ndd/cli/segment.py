"""``ndd segment IMAGE... --out DIR``: hierarchical segmentation of images."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ndd.cli._commands import subcommand_help
from ndd.models.config import DEFAULT_MAX_SIDE
from ndd.cli._output import messages_beside

# io is NumPy/Pillow only: importing it keeps --help free of torch
from ndd.io import DEFAULT_SEGMENTATION_FORMATS as DEFAULT_FORMATS
from ndd.io import SEGMENTATION_FORMATS as FORMATS



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
    p.add_argument("images", nargs="+", metavar="INPUT",
                   help="image files (any format Pillow reads), folders (their images), glob patterns ('dir/*.jpg') "
                        "or @FILE (a list of paths, one per line)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--model", default=None,
                   help="'default' (shipped weights), a shipped model name (e.g. bsds500, bsds500_hed_v2), 'handcrafted', "
                        "or a checkpoint path (default: default)")
    p.add_argument("--levels", type=_int_list, default=None,
                   help="numbers of segments of the levels to write, e.g. 2,5,10 (default: 2,4,8,16,32 capped "
                        "at each hierarchy's finest level)")
    p.add_argument("--format", type=_formats, default=list(DEFAULT_FORMATS),
                   help=f"comma-separated outputs among {','.join(FORMATS)}: label PNGs, the photo with boundaries, "
                        "mean-colour segments, a strip of all levels, BSDS ucm2 .mat, the model's soft edge map as a "
                        f"16-bit PNG (for ndd evaluate --no-region) (default {','.join(DEFAULT_FORMATS)})")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N or mps (default cpu)")
    p.add_argument("--int8-edges", action=argparse.BooleanOptionalAction, default=None,
                   help="run the VGG16-HED edge detector's trunk in int8 (CPU, x86): 1.4x faster, edge maps within "
                        "about 0.1 of float32 (default: on for the default model on an x86 CPU, where it tied float32 "
                        "on BSDS500 val; off for every other model and device; README: 'int8 HED')")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")
    p.add_argument("-v", "--verbose", action="store_true", help="list every file written")
    p.add_argument("--workers", type=int, default=None, metavar="K",
                   help="processes on the CPU, each with its own model (default: for several images on the CPU, "
                        "one per core up to 4, see ndd.batch.default_workers; else 1); on GPUs use "
                        "torchrun --nproc_per_node=G -m ndd segment ... (each rank takes a share)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads (default: torch's, one per core; --workers K processes share them); 1 is "
                        "several times faster on a small CPU that other jobs share, where every parallel step waits "
                        "for a busy core")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="skip inputs that an earlier run into --out completed with the same model, options, levels and "
                        "formats (default: on; inputs made with other settings are segmented again)")
    p.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE,
                   help="longest side processed (default %(default)s, BSDS500's); larger images are scaled down and results mapped back")
    # hierarchy options default to None: ndd.inference.HierarchyOptions owns their defaults
    p.add_argument("--method", choices=("auto", "superpixels", "grid"), default=None,
                   help="superpixels: pixel-accurate regions of the model's edge map merged by contour strength and "
                        "feature similarity; grid: paper §6 on the stride-8 grid; auto (default): superpixels when "
                        "the model has an edge map")
    p.add_argument("--merge-by", choices=("features", "diffusion", "affinity"), default=None,
                   help="average similarity that merging uses: the feature kernel (paper §6, default), K_D, or the "
                        "banded kernel W (the authors' code)")
    p.add_argument("--edge-weight", type=float, default=None,
                   help="superpixels: weight of the contour term against feature similarity (default 0.2)")
    p.add_argument("--small-edge-weight", type=float, default=None, metavar="W",
                   help="superpixels: weight of the contour term for pairs with a small region, "
                        "edge_weight + (W - edge_weight) exp(-m / (F A)) with m the smaller region's pixels and A the "
                        "image's (default 0.9; W = --edge-weight: one weight for every pair)")
    p.add_argument("--small-region", type=float, default=None, metavar="F",
                   help="superpixels: F above, the size of 'small' as a fraction of the image (default 0.005)")
    p.add_argument("--merge-mu-scale", type=float, default=None, metavar="S",
                   help="merging by features: kernel exp(-S mu |f_i - f_j|^2) (default: the model's own, chosen "
                        "with its weights on BSDS500 val)")
    p.add_argument("--diffusion-weight", type=float, default=None, metavar="W",
                   help="merging by features: (1 - W) feature kernel + W K_D (default: the model's own; 0: "
                        "features alone, no spectral block)")
    p.add_argument("--diffusion-tau", type=float, default=None, metavar="T",
                   help="merging by features: that share is exp(-T D) (default: the model's own; else K_D's tau)")
    p.add_argument("--coverage", type=float, default=None,
                   help="grid: residual coverage at which centre selection stops (default 0.005; paper 0.02)")
    p.add_argument("--ucm-values", choices=("auto", "spread", "height", "rank"), default=None,
                   help="values of the ucm2: height (1 - merge score, one scale for every image), spread (those "
                        "heights, moved so that every level up to 99 segments has a BSDS threshold of its own), "
                        "rank (merge order); auto (default): height for superpixels, rank for grid")
    p.add_argument("--lowres", action="store_true", help="grid method: skip FAI (nearest up-sampling of the grid result)")
    p.add_argument("--legacy", action="store_true",
                   help="the authors' hierarchy (HierarchyOptions.authors(): grid method, fixed first centre, at most "
                        "9 centres, soft k-means, merging by the banded kernel W); options given above still apply")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if (args.edge_weight is not None and not 0.0 <= args.edge_weight <= 1.0) or (
            args.small_edge_weight is not None and not 0.0 <= args.small_edge_weight <= 1.0) or (
            args.small_region is not None and not 0.0 < args.small_region < 1.0) or (
            args.coverage is not None and not 0.0 < args.coverage < 1.0) or (
            args.merge_mu_scale is not None and not args.merge_mu_scale > 0) or (
            args.diffusion_weight is not None and not 0.0 <= args.diffusion_weight <= 1.0) or (
            args.diffusion_tau is not None and not args.diffusion_tau > 0):
        print("ndd segment: --edge-weight, --small-edge-weight and --diffusion-weight must be in [0, 1], "
              "--coverage and --small-region in (0, 1), "
              "--merge-mu-scale and --diffusion-tau > 0", file=sys.stderr)
        return 2
    if (args.workers is not None and args.workers < 1) or (args.threads is not None and args.threads < 1) or (
            args.max_side < 16):
        print("ndd segment: --workers and --threads must be >= 1, --max-side >= 16", file=sys.stderr)
        return 2
    from ndd.batch import (
        SegmentJob,
        WorkerStartError,
        check_out_dir,
        collect_inputs,
        default_workers,
        recorded_inputs,
        resume_state,
        run_settings,
        segment_files,
    )
    from ndd.device import check_device_name, resolve_device

    # Every mistake is found before torch is imported and the model loads (seconds), and before
    # --out exists: a device name, inputs (each image's header is read), the output folder.
    try:
        check_device_name(args.device)
    except ValueError as err:
        print(f"ndd segment: {err}", file=sys.stderr)
        return 2
    # Under torchrun every rank sees every input: there each header is read by the rank that
    # segments the image (an unreadable one fails there, in one line), not once per rank up front,
    # and rank 0 alone reports the inputs' problems. Inputs an earlier run into --out segmented are
    # not read again (a resumed large run).
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank0 = os.environ.get("RANK", "0") == "0"
    images, problems = collect_inputs(args.images, check=not distributed,
                                      checked_before=recorded_inputs(args.out) if args.resume else ())
    for problem in problems if rank0 else ():
        print(f"ndd segment: {problem}", file=sys.stderr)
    if not images:
        if len(problems) != 1 and rank0:  # one mistake, one line
            print("ndd segment: no image to segment", file=sys.stderr)
        return 2
    try:
        check_out_dir(args.out)
    except ValueError as err:
        print(f"ndd segment: {err}", file=sys.stderr)
        return 2

    # Imported here so that other subcommands start without loading torch.
    import time

    from tqdm import tqdm

    from ndd.inference import HierarchyOptions, load_segmentation_model, resolve_int8_edges

    if args.threads is not None:  # before anything runs: workers split what is set here
        import torch

        torch.set_num_threads(args.threads)

    given = {"method": args.method, "merge_by": args.merge_by, "edge_weight": args.edge_weight,
             "small_edge_weight": args.small_edge_weight, "small_region": args.small_region,
             "merge_mu_scale": args.merge_mu_scale, "diffusion_weight": args.diffusion_weight,
             "diffusion_tau": args.diffusion_tau,
             "coverage_threshold": args.coverage, "ucm_values": args.ucm_values,
             "highres": False if args.lowres else None}
    given = {k: v for k, v in given.items() if v is not None}
    options = HierarchyOptions.authors(**given) if args.legacy else HierarchyOptions(**given)
    job = SegmentJob(args.out, tuple(args.format), tuple(args.levels) if args.levels else None, args.max_side, options)
    rank, world, info = 0, 1, None  # under torchrun (distributed, above): one share per rank
    device = args.device
    if distributed:
        from ndd.train.distributed import init_distributed

        try:
            info = init_distributed(args.device)
        except ValueError as err:
            print(f"ndd segment: {err}", file=sys.stderr)
            return 2
        rank, world, device = info.rank, info.world_size, str(info.device)
    try:  # an absent device (--device cuda without a GPU) is said here, in one line
        int8_edges = resolve_int8_edges(args.model, device) if args.int8_edges is None else args.int8_edges
    except ValueError as err:
        print(f"ndd segment: {err}", file=sys.stderr)
        return 2
    settings = run_settings(job, args.model, int8_edges)
    state = resume_state(images, args.out, settings)
    if not args.resume:  # every input again, but one that killed a process is still run alone
        state = state.redo_all()
    pending = len(state.pending(images[rank::world]))
    model = None
    if pending:  # a finished run re-run loads nothing
        try:
            model, description = load_segmentation_model(args.model, device, int8_edges)
        except (FileNotFoundError, ValueError) as err:
            print(f"ndd segment: {err}", file=sys.stderr)
            return 2
        if args.method == "superpixels" and not model.has_edge_map:
            print(f"ndd segment: --method superpixels needs a model with an edge map; {description} has none "
                  "(use --model default or --method grid)", file=sys.stderr)
            return 2
        if "edges" in args.format and not model.has_edge_map:
            print(f"ndd segment: --format edges needs a model with an edge map; {description} has none "
                  "(use --model default)", file=sys.stderr)
            return 2
    try:  # what check_out_dir could not foresee (a read-only file system, ...), still in one line
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"ndd segment: cannot create the output folder {args.out}: {err.strerror or err}", file=sys.stderr)
        return 2
    workers = args.workers
    if workers is None:  # processes beat threads on the CPU; a GPU or a torchrun rank keeps one
        workers = 1 if distributed else default_workers(pending, str(resolve_device(device)), args.threads)
    workers = min(workers, max(1, pending))  # as segment_files does: no process without an input
    if rank == 0 and model is not None:
        print(f"model: {description}" + (f"; {workers} worker processes" if workers > 1 else ""), file=sys.stderr)
    if workers > 1:
        model = None  # each worker process loads its own
    suspects = len(state.suspected(images))
    if suspects and rank == 0:
        print(f"ndd segment: {suspects} input(s) were being segmented when an earlier run into {args.out} was "
              "killed (or their process died): each is segmented first, alone in a separate process",
              file=sys.stderr)
    if state.redone and rank == 0:  # said once, before the work: outputs made another way are replaced, not kept
        print(f"ndd segment: {state.redone} input(s) completed earlier in {args.out} with other settings "
              f"({', '.join(state.changed)}) are segmented again", file=sys.stderr)
    progress = (sys.stderr.isatty() if args.progress is None else args.progress) and rank == 0
    counts = {"done": 0, "skipped": 0, "failed": len(problems) if rank == 0 else 0}
    missing: dict[int, list[int]] = {}
    stopped = False
    start = time.perf_counter()
    bar = tqdm(total=len(images[rank::world]), desc="segment", unit="image", disable=not progress, file=sys.stderr)

    def stage(path: Path, name: str) -> None:  # a long image shows what it is doing
        bar.set_postfix_str(f"{path.name}: {name}")

    outcomes = segment_files(images, job, model=model, model_spec=args.model, device=device, workers=workers,
                             resume=args.resume, rank=rank, world_size=world, on_stage=stage if progress else None,
                             int8_edges=int8_edges, state=state)
    with messages_beside(bar, "ndd segment"):  # warnings and log records never break the bar's line
        try:
            for outcome in outcomes:
                counts[outcome.status] += 1
                bar.update(1)
                if outcome.error:
                    bar.write(f"ndd segment: {outcome.error}", file=sys.stderr)
                for k in outcome.missing_levels:
                    missing.setdefault(k, []).append(outcome.finest)
                if args.verbose and outcome.status == "done":
                    for file in outcome.written:
                        bar.write(str(file), file=sys.stdout)
        except WorkerStartError as err:  # the run ends; what is done stays recorded
            stopped = True
            bar.write(f"ndd segment: {err}; the run stopped there", file=sys.stderr)
    bar.set_postfix_str("", refresh=False)
    bar.close()
    seconds = time.perf_counter() - start
    if info is not None:  # every rank's counts, reported once by rank 0
        import torch

        from ndd.train.distributed import shutdown_distributed

        total = torch.tensor([counts["done"], counts["skipped"], counts["failed"], stopped], dtype=torch.float64,
                             device=info.device)
        torch.distributed.all_reduce(total)
        *summed, stops = (int(v) for v in total.tolist())
        counts, stopped = dict(zip(("done", "skipped", "failed"), summed, strict=True)), stops > 0
        shutdown_distributed()
        if rank != 0:  # rank 0 alone gives the run's exit status: a rank ending with 1 first makes
            return 0   # torchrun stop the others, rank 0 perhaps before it has printed the totals
    for k, finest in sorted(missing.items()):  # once per run, not once per image
        print(f"ndd segment: level {k} skipped in {len(finest)} of {counts['done']} image(s): their hierarchies "
              f"have {min(finest)}-{max(finest)} segments at the finest", file=sys.stderr)
    done = counts["done"]
    rate = f", {done / seconds:.2f} images/s" if done else ""
    skipped = f", {counts['skipped']} skipped (completed earlier; --no-resume redoes them)" if counts["skipped"] else ""
    print(f"ndd segment: {done} image(s) segmented{skipped}, {counts['failed']} failed, in {seconds:.1f} s{rate}; "
          f"outputs in {args.out}", file=sys.stderr)
    return 1 if counts["failed"] or stopped else 0
