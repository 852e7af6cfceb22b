"""``ndd wsss``: weakly supervised semantic segmentation (paper §7), one subcommand per step.

    ndd wsss train          the WSSS network of Fig. 5 from image-level labels
    ndd wsss pseudo-labels  pseudo segmentation labels of the training images
    ndd wsss train-seg      DeepLab trained on the pseudo labels
    ndd wsss predict        multi-scale, overlapping-crop inference
    ndd wsss evaluate       mIoU / per-class IoU against ground-truth masks
    ndd wsss synthetic      the synthetic multi-class data set

Parsing and printing only: the work is done by :mod:`ndd.wsss` (same names). Flags of the two
training steps are the fields of :class:`ndd.wsss.config.WSSSTrainConfig` /
:class:`~ndd.wsss.config.SegTrainConfig`; precedence: defaults < the resumed checkpoint's config
< ``--config FILE`` < flags. ``torchrun --standalone --nproc_per_node=K -m ndd wsss train ...``
trains with DDP.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import yaml

from ndd.cli._commands import subcommand_help
from ndd.cli.train import add_config_flags, add_model_flags, config_from_namespace, fit_and_report

__all__ = ["register"]

# WSSSNetConfig keys with a flag of their own: flag -> (key, type, help)
_NET_FLAGS: dict[str, tuple[str, Any, str]] = {
    "--backbone": ("backbone", str, "segmentation backbone: resnet101 (paper), resnet50, efficientnet_lite0, ..."),
    "--feature-dim": ("feature_dim", int, "channels of F (3x3 conv on the backbone; authors 1024)"),
    "--mu-init": ("mu_init", float, "RFP threshold mu of M = [K > mu] (paper 0.5)"),
    "--spec-diff-net": ("spec_diff_net", str, "guidance: bsds500 (default), bsds500_hed, default, handcrafted or a checkpoint"),
    "--guidance-scale": ("guidance_scale", float, "input scale of the spec-diff-net"),
    "--guidance-t": ("guidance_t", float, "override the spec-diff-net's diffusion time t"),
    "--guidance-window": ("guidance_window", int, "override the spec-diff-net's affinity window"),
    "--embedding-mu": ("embedding_mu", float, "embedding variant: mu of the feature kernel (default: the model's)"),
}
_CONFIG_HELP = "config file (flags override it)"


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: on a terminal)")
    p.add_argument("--overwrite", action="store_true", help="redo images whose PNG exists (default: skip them)")


def _add_data(p: argparse.ArgumentParser, split_help: str) -> None:
    p.add_argument("--data", dest="data_root", metavar="ROOT", help="VOC2012 / VOCdevkit folder or generic-layout folder")
    p.add_argument("--dataset", choices=("voc", "folder"), default=None, help="layout of --data (default: voc)")
    p.add_argument("--split", default=None, help=split_help)


def _add_checkpoint_out_data(p: argparse.ArgumentParser, checkpoint_help: str, out_help: str, split_help: str) -> None:
    """The steps that run a trained network and write one PNG per image: its checkpoint, their folder, the images."""
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help=checkpoint_help)
    p.add_argument("--out", required=True, metavar="DIR", help=out_help)
    _add_data(p, split_help)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from ndd.wsss.config import VARIANTS, SegTrainConfig, WSSSTrainConfig

    parser = subparsers.add_parser(
        "wsss", help=subcommand_help("wsss"),
        description="Weakly supervised semantic segmentation guided by the neural diffusion distance (paper §7): "
                    "train -> pseudo-labels -> train-seg -> predict -> evaluate.",
    )
    steps = parser.add_subparsers(dest="wsss_command", metavar="STEP")

    variants = "; ".join(f"{k}: {v}" for k, v in VARIANTS.items())
    p = steps.add_parser("train", help="train the WSSS network (Fig. 5, Eq. 10-12) from image-level labels",
                         description="Train the WSSS network from image-level labels. Variants (--variant): " + variants
                         + ". Writes config.yaml, metrics.csv, tb/, checkpoints/ and last.pt into --run-dir. "
                         "Multi-GPU: torchrun --standalone --nproc_per_node=K -m ndd wsss train ...")
    add_config_flags(p, WSSSTrainConfig, WSSSTrainConfig.field_types(), "training config (WSSSTrainConfig fields)",
                     _CONFIG_HELP)
    add_model_flags(p.add_argument_group("network and guidance (WSSSNetConfig keys)"), _NET_FLAGS,
                    {"freeze_backbone": "train only what follows the backbone (CPU-sized runs)"},
                    "any other WSSSNetConfig key (YAML value), e.g. --model thresholds=[0.9,0.6]")
    p.set_defaults(func=_run_train, config_cls="wsss")

    p = steps.add_parser("pseudo-labels", help="pseudo segmentation labels (VOC-palette PNGs) of the training images",
                         description="Run a trained WSSS network on every training image and write its pseudo "
                         "segmentation, restricted to the background and the image's own classes.")
    _add_checkpoint_out_data(p, "last.pt of ndd wsss train", "output folder (<id>.png)",
                             "images to label (default: the training run's data and split)")
    p.add_argument("--no-restrict", dest="restrict", action="store_false",
                   help="argmax over all classes, not only the image's own and the background")
    p.add_argument("--guidance-cache", metavar="DIR", help="reuse a training run's kernel cache")
    _add_device(p)
    p.set_defaults(func=_run_pseudo)

    p = steps.add_parser("train-seg", help="train a segmentation network (DeepLab) on pseudo labels",
                         description="Train DeepLab (default: DeepLabV3 on a dilated ResNet-101, fixed batch norm) on "
                         "the pseudo labels. Multi-GPU: torchrun --standalone --nproc_per_node=K -m ndd wsss train-seg ...")
    add_config_flags(p, SegTrainConfig, SegTrainConfig.field_types(), "training config (SegTrainConfig fields)",
                     _CONFIG_HELP)
    p.set_defaults(func=_run_train, config_cls="seg")

    p = steps.add_parser("predict", help="segment images at scales 0.7, 0.85, 1 with overlapping 321x321 crops",
                         description="Class masks (VOC-palette PNGs) from a train-seg checkpoint: probabilities averaged "
                         "over scales and overlapping crops (paper §7).")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="images, folders, glob patterns or @list.txt")
    _add_checkpoint_out_data(p, "last.pt of ndd wsss train-seg", "output folder (<stem>.png)",
                             "data-set split to predict instead of INPUTs (default: val)")
    p.add_argument("--scales", type=float, nargs="+", default=[0.7, 0.85, 1.0], help="test scales (default 0.7 0.85 1)")
    p.add_argument("--crop-size", type=int, default=321, help="window size (default 321)")
    p.add_argument("--flip", action="store_true", help="average with the mirrored image too")
    _add_device(p)
    p.set_defaults(func=_run_predict)

    p = steps.add_parser("evaluate", help="mIoU and per-class IoU of masks against the ground truth",
                         description="Score a folder of masks (<id>.png) against ground-truth masks: a data-set split "
                         "(--data, e.g. VOC val; or the training images to score pseudo labels) or --groundtruth DIR.")
    p.add_argument("predictions", metavar="PRED_DIR", help="folder of predicted masks")
    _add_data(p, "split whose masks are the ground truth (voc default: val)")
    p.add_argument("--groundtruth", metavar="DIR", help="folder of ground-truth masks instead of a data set")
    p.add_argument("--classes", metavar="FILE", help="with --groundtruth: class names, one per line (default VOC's 21)")
    p.add_argument("--allow-missing", action="store_true", help="score the images that have a prediction")
    p.add_argument("--json", metavar="FILE", help="write the scores (and the confusion matrix) as JSON")
    p.set_defaults(func=_run_evaluate)

    p = steps.add_parser("synthetic", help="write the synthetic multi-class data set (generic layout)",
                         description="Textured objects of 5 classes (disc, square, triangle, star, cross) on cluttered "
                         "textured backgrounds; image-level labels in labels.csv, hidden masks in masks/.")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--train", type=int, default=400, help="training images (default 400)")
    p.add_argument("--val", type=int, default=100, help="validation images (default 100)")
    p.add_argument("--size", type=int, nargs=2, default=[128, 128], metavar=("H", "W"), help="image size (default 128 128)")
    p.add_argument("--seed", type=int, default=0, help="data-set seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing data set")
    p.set_defaults(func=_run_synthetic)

    parser.set_defaults(func=lambda args: (parser.print_help(), 0)[1])


def _fail(step: str, exc: BaseException) -> int:
    print(f"ndd wsss {step}: error: {exc}", file=sys.stderr)
    return 2


def _progress(flag: bool | None) -> bool:
    return sys.stderr.isatty() if flag is None else flag


def config_from_args(args: argparse.Namespace) -> Any:
    """The training config the flags describe (``from_sources`` precedence)."""
    from ndd.wsss.config import SegTrainConfig, WSSSTrainConfig

    return config_from_namespace(WSSSTrainConfig if args.config_cls == "wsss" else SegTrainConfig, vars(args))


def _run_train(args: argparse.Namespace) -> int:
    step = "train" if args.config_cls == "wsss" else "train-seg"
    try:
        config = config_from_args(args)
        config.validate(check_data=not args.print_config)
        if args.print_config:
            shown = config.to_dict()
            if args.config_cls == "wsss":  # every network key as it would run (preset, then given keys)
                # the classes come from the data and the variant is a field of its own: giving them
                # as model keys would override both when the printed YAML is read back
                shown["model"] = {key: value for key, value in config.model_config().to_dict().items()
                                  if key not in ("num_classes", "background", "variant")}
            print(yaml.safe_dump(shown, sort_keys=False), end="")
            return 0
        from ndd.wsss.training import SegTrainer, WSSSTrainer

        trainer = (WSSSTrainer if args.config_cls == "wsss" else SegTrainer)(config)
    except (ValueError, FileNotFoundError) as exc:
        return _fail(step, exc)
    return fit_and_report(trainer)


def _device_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keywords of the flags :func:`_add_device` adds."""
    return {"device": args.device, "overwrite": args.overwrite, "progress": _progress(args.progress),
            "num_threads": args.threads}


def _run_writer(step: str, kind: str, work: Callable[[], dict[str, Any]]) -> int:
    """Run a step that writes one PNG per image (``work``) and print its summary."""
    try:
        result = work()
    except (ValueError, FileNotFoundError) as exc:
        return _fail(step, exc)
    print(f"{result['written']} {kind} written, {result['skipped']} already there, "
          f"{result['seconds']:.1f} s -> {result['out']}", file=sys.stderr)
    return 0


def _run_pseudo(args: argparse.Namespace) -> int:
    from ndd.wsss.steps import pseudo_labels

    return _run_writer("pseudo-labels", "pseudo labels", lambda: pseudo_labels(
        args.checkpoint, args.out, dataset=args.dataset, data_root=args.data_root, split=args.split,
        restrict=args.restrict, guidance_cache=args.guidance_cache, **_device_options(args)))


def _run_predict(args: argparse.Namespace) -> int:
    from ndd.wsss.steps import predict

    return _run_writer("predict", "masks", lambda: predict(
        args.checkpoint, args.out, args.inputs, dataset=args.dataset, data_root=args.data_root, split=args.split,
        scales=args.scales, crop_size=args.crop_size, flip=args.flip, **_device_options(args)))


def _run_evaluate(args: argparse.Namespace) -> int:
    from ndd.wsss.metrics import format_scores
    from ndd.wsss.steps import evaluate

    try:
        if (args.groundtruth is None) == (args.data_root is None):
            raise ValueError("give the ground truth as a data set (--data) or a folder (--groundtruth), one of them")
        classes = None
        if args.classes:
            from ndd.data.voc import read_class_list

            classes = read_class_list(args.classes)
        scores = evaluate(args.predictions, dataset=args.dataset or "voc", data_root=args.data_root,
                          split=args.split or ("val" if (args.dataset or "voc") == "voc" else None),
                          groundtruth=args.groundtruth, classes=classes, allow_missing=args.allow_missing,
                          json_path=args.json)
    except (ValueError, FileNotFoundError) as exc:
        return _fail("evaluate", exc)
    print(format_scores(scores, f"{args.predictions}: IoU per class (%)"))
    if scores.get("n_missing"):
        print(f"{scores['n_missing']} image(s) without a prediction were left out", file=sys.stderr)
    return 0


def _run_synthetic(args: argparse.Namespace) -> int:
    from ndd.wsss.steps import synthetic

    try:
        result = synthetic(args.out, args.train, args.val, tuple(args.size), args.seed, overwrite=args.overwrite,
                           progress=sys.stderr.isatty())
    except (ValueError, FileExistsError) as exc:
        return _fail("synthetic", exc)
    print(json.dumps(result))
    return 0
