"""``ndd train-edge-fusion``: learn a fusion of a model's HED side outputs on BSDS500 boundaries."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ndd.cli._commands import subcommand_help

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from ndd.train.config import EdgeFusionTraining  # torch-free: --help starts at once

    d = EdgeFusionTraining()
    p = subparsers.add_parser(
        "train-edge-fusion",
        help=subcommand_help("train-edge-fusion"),
        description=(
            "Cache the side logits of a model's VGG16-HED at its edge scales for every image of the splits "
            "(resumable), then train an EdgeFusionHead on them against the human boundaries and write it as "
            "a small file (ndd.models.edge_fusion.save_edge_fusion)."
        ),
    )
    p.add_argument("--model", default="default", metavar="SPEC",
                   help="the model whose edge detector and edge scales the head is for, as ndd segment --model "
                        "(default: default)")
    p.add_argument("--data", required=True, type=Path, metavar="ROOT", help="BSDS500 root")
    p.add_argument("--split", nargs="+", default=["train"], metavar="SPLIT",
                   help="BSDS500 splits to train on: train, val (default: train; choose settings on val)")
    p.add_argument("--cache", required=True, type=Path, metavar="DIR",
                   help="folder for the side logits (one .npy per image, float16; kept between runs)")
    p.add_argument("--out", required=True, type=Path, metavar="FILE", help="where to write the trained head")
    p.add_argument("--steps", type=int, default=d.steps, help=f"Adam steps (default {d.steps})")
    p.add_argument("--width", type=int, default=d.width, help=f"hidden channels (default {d.width})")
    p.add_argument("--crop", type=int, default=d.crop, help=f"square crop side (default {d.crop})")
    p.add_argument("--batch", type=int, default=d.batch, help=f"crops per step (default {d.batch})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"initial learning rate, cosine decay (default {d.lr})")
    p.add_argument("--eta", type=float, default=d.eta,
                   help=f"share of annotators that makes a pixel an edge (default {d.eta})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    p.add_argument("--num-threads", type=int, metavar="N", help="torch CPU threads")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar while caching (default: when stderr is a terminal)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ndd.inference import load_segmentation_model
    from ndd.models.edge_fusion import save_edge_fusion
    from ndd.train.config import EdgeFusionTraining
    from ndd.train.edge_fusion import bsds_pairs, cache_side_logits, train_edge_fusion

    prog = "ndd train-edge-fusion"
    try:  # every input checked before the model loads and the caching starts
        settings = EdgeFusionTraining(steps=args.steps, width=args.width, crop=args.crop, batch=args.batch,
                                      lr=args.lr, eta=args.eta, seed=args.seed)
        if (args.num_threads or 1) < 1:
            raise ValueError("--num-threads must be >= 1")
        pairs = bsds_pairs(args.data, args.split)
        if "test" in args.split:
            print(f"{prog}: warning: training on the test split: its scores will no longer mean anything",
                  file=sys.stderr)
        # float32 side logits: the head is trained for the float32 detector
        spec = None if args.model == "default" else args.model
        model, description = load_segmentation_model(spec, int8_edges=False)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        print(f"{description}: side logits of {len(pairs)} images at scales {model.config.edge_scales} -> {args.cache}")
        cached = cache_side_logits(model, [image for image, _ in pairs], args.cache, progress=progress)
        head = train_edge_fusion(cached, [gt for _, gt in pairs], model, settings)
        meta = {"model": args.model, "splits": list(args.split), "settings": dataclasses.asdict(settings)}
        save_edge_fusion(head, model.config.edge_scales, args.out, meta=meta)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0
