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
from dataclasses import MISSING, fields
from typing import Any

import yaml

from ndd.cli._commands import subcommand_help
from ndd.cli.train import _add_field

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
_SKIP = {"model", "resume"}


def _config_flags(p: argparse.ArgumentParser, cls: type, title: str) -> None:
    p.add_argument("--config", metavar="YAML", help="config file (flags override it)")
    p.add_argument("--resume", metavar="CKPT", default=argparse.SUPPRESS,
                   help="continue exactly from a checkpoint (its stored config is the base)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    group = p.add_argument_group(title)
    types_ = cls.field_types()
    for f in fields(cls):
        if f.name not in _SKIP:
            default = f.default_factory() if f.default_factory is not MISSING else f.default  # type: ignore[misc]
            _add_field(group, f.name, types_[f.name], f.metadata.get("help", ""), default)


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
    _config_flags(p, WSSSTrainConfig, "training config (WSSSTrainConfig fields)")
    net = p.add_argument_group("network and guidance (WSSSNetConfig keys)")
    for flag, (key, tp, help_text) in _NET_FLAGS.items():
        net.add_argument(flag, dest=f"model.{key}", type=tp, metavar=key.upper(), default=argparse.SUPPRESS, help=help_text)
    net.add_argument("--freeze-backbone", dest="model.freeze_backbone", action=argparse.BooleanOptionalAction,
                     default=argparse.SUPPRESS, help="train only what follows the backbone (CPU-sized runs)")
    net.add_argument("--model", dest="model_items", action="append", metavar="KEY=VALUE", default=[],
                     help="any other WSSSNetConfig key (YAML value), e.g. --model thresholds=[0.9,0.6]")
    p.set_defaults(func=_run_train, config_cls="wsss")

    p = steps.add_parser("pseudo-labels", help="pseudo segmentation labels (VOC-palette PNGs) of the training images",
                         description="Run a trained WSSS network on every training image and write its pseudo "
                         "segmentation, restricted to the background and the image's own classes.")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="last.pt of ndd wsss train")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (<id>.png)")
    _add_data(p, "images to label (default: the training run's data and split)")
    p.add_argument("--no-restrict", dest="restrict", action="store_false",
                   help="argmax over all classes, not only the image's own and the background")
    p.add_argument("--guidance-cache", metavar="DIR", help="reuse a training run's kernel cache")
    _add_device(p)
    p.set_defaults(func=_run_pseudo)

    p = steps.add_parser("train-seg", help="train a segmentation network (DeepLab) on pseudo labels",
                         description="Train DeepLab (default: DeepLabV3 on a dilated ResNet-101, fixed batch norm) on "
                         "the pseudo labels. Multi-GPU: torchrun --standalone --nproc_per_node=K -m ndd wsss train-seg ...")
    _config_flags(p, SegTrainConfig, "training config (SegTrainConfig fields)")
    p.set_defaults(func=_run_train, config_cls="seg")

    p = steps.add_parser("predict", help="segment images at scales 0.7, 0.85, 1 with overlapping 321x321 crops",
                         description="Class masks (VOC-palette PNGs) from a train-seg checkpoint: probabilities averaged "
                         "over scales and overlapping crops (paper §7).")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="images, folders, glob patterns or @list.txt")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="last.pt of ndd wsss train-seg")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (<stem>.png)")
    _add_data(p, "data-set split to predict instead of INPUTs (default: val)")
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

    cls = WSSSTrainConfig if args.config_cls == "wsss" else SegTrainConfig
    ns = vars(args)
    names = {f.name for f in fields(cls)}
    model = {key[len("model."):]: value for key, value in ns.items() if key.startswith("model.")}
    for item in ns.get("model_items", []):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--model expects KEY=VALUE, got {item!r}")
        model[key.strip()] = yaml.safe_load(value)
    return cls.from_sources(resume=ns.get("resume"), config_file=ns.get("config"),
                            overrides={k: v for k, v in ns.items() if k in names}, model=model or None)


def _run_train(args: argparse.Namespace) -> int:
    import os

    step = "train" if args.config_cls == "wsss" else "train-seg"
    try:
        config = config_from_args(args)
        config.validate(check_data=not args.print_config)
        if args.print_config:
            print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
            return 0
        from ndd.train.distributed import shutdown_distributed
        from ndd.wsss.training import SegTrainer, WSSSTrainer

        trainer = (WSSSTrainer if args.config_cls == "wsss" else SegTrainer)(config)
    except (ValueError, FileNotFoundError) as exc:
        return _fail(step, exc)
    try:
        path = trainer.fit()
    finally:
        shutdown_distributed()
    if os.environ.get("RANK", "0") == "0":
        print(f"final checkpoint: {path}")
    return 0


def _summary(kind: str, result: dict[str, Any]) -> str:
    return (f"{result['written']} {kind} written, {result['skipped']} already there, "
            f"{result['seconds']:.1f} s -> {result['out']}")


def _run_pseudo(args: argparse.Namespace) -> int:
    from ndd.wsss.steps import pseudo_labels

    try:
        result = pseudo_labels(args.checkpoint, args.out, dataset=args.dataset, data_root=args.data_root,
                               split=args.split, device=args.device, restrict=args.restrict,
                               guidance_cache=args.guidance_cache, overwrite=args.overwrite,
                               progress=_progress(args.progress), num_threads=args.threads)
    except (ValueError, FileNotFoundError) as exc:
        return _fail("pseudo-labels", exc)
    print(_summary("pseudo labels", result), file=sys.stderr)
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    from ndd.wsss.steps import predict

    try:
        result = predict(args.checkpoint, args.out, args.inputs, dataset=args.dataset, data_root=args.data_root,
                         split=args.split, scales=args.scales, crop_size=args.crop_size, flip=args.flip,
                         device=args.device, overwrite=args.overwrite, progress=_progress(args.progress),
                         num_threads=args.threads)
    except (ValueError, FileNotFoundError) as exc:
        return _fail("predict", exc)
    print(_summary("masks", result), file=sys.stderr)
    return 0


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
