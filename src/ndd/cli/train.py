"""``ndd train``: train spec-diff-net (paper §5) from flags and/or a YAML file.

Every :class:`ndd.train.TrainConfig` field is a flag (``--crop-size``,
``--stage1-steps``, ...); model settings have their own flags (``--backbone``,
``--window``, ...) or ``--model KEY=VALUE``. Precedence: defaults < the
checkpoint's stored config (with ``--resume``) < ``--config FILE`` < flags.

Multi-GPU: ``torchrun --standalone --nproc_per_node=K -m ndd train ...``.
"""

from __future__ import annotations

import argparse
import sys
import typing
from dataclasses import MISSING, fields
from typing import Any

import yaml

from ndd.cli._commands import subcommand_help

__all__ = ["register", "run", "config_from_args"]

# Model (SpecDiffNetConfig) keys with a flag of their own: flag -> (key, type).
_MODEL_FLAGS: dict[str, tuple[str, Any, str]] = {
    "--backbone": ("backbone", str, "backbone name (small_cnn, efficientnet_lite0, resnet101, ...)"),
    "--window": ("window", int, "affinity window on the feature grid (paper 17)"),
    "--n-eigs": ("n_eigs", int, "eigenpairs Ne (paper 50)"),
    "--n-iter": ("n_iter", int, "simultaneous-iteration steps T (paper 2)"),
    "--embed-dim": ("embed_dim", int, "channels of the affinity embedding"),
    "--t-init": ("t_init", float, "initial diffusion time t (paper 10)"),
    "--mu-init": ("mu_init", float, "initial mu of the affinity (Eq. 1)"),
    "--tau-init": ("tau_init", float, "initial tau of K_D = exp(-tau D)"),
    "--affinity": ("affinity", str, "features (paper Eq. 1), contour or features+contour (needs an edge map)"),
}
# Flags named differently from their field.
_ALIASES = {"data_root": ["--data"]}
_SKIP = {"model", "resume"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_field(group: argparse._ArgumentGroup, name: str, tp: Any, help_text: str, default: Any) -> None:
    flags = [_flag(name), *_ALIASES.get(name, [])]
    shown_default = default not in (None, {}, [])  # unset, empty model dict, empty list: nothing to show
    if shown_default:
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        help_text += f" (default {shown})"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    optional = type(None) in args
    if optional:
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        help_text += " ('none' to unset)"
    kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
    if tp is bool:
        group.add_argument(*flags, action=argparse.BooleanOptionalAction, **kwargs)
    elif origin is tuple:
        group.add_argument(*flags, nargs=len(args), metavar=tuple(a.__name__.upper() for a in args), **kwargs)
    elif origin is list:
        group.add_argument(*flags, nargs="+", metavar=args[0].__name__.upper(), **kwargs)
    else:
        group.add_argument(*flags, metavar=name.upper(), **kwargs)


def add_config_flags(
    p: argparse.ArgumentParser, cls: type, types_: dict[str, Any], title: str, config_help: str
) -> None:
    """``--config``, ``--resume``, ``--print-config`` and a flag per field of the config dataclass ``cls``
    (``types_``: its resolved field types) but ``model`` and ``resume``; also for ``ndd wsss``."""
    p.add_argument("--config", metavar="YAML", help=config_help)
    p.add_argument("--resume", metavar="CKPT", default=argparse.SUPPRESS,
                   help="continue exactly from a checkpoint (its stored config is the base)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    group = p.add_argument_group(title)
    for f in fields(cls):
        if f.name not in _SKIP:
            default = f.default_factory() if f.default_factory is not MISSING else f.default  # type: ignore[misc]
            _add_field(group, f.name, types_[f.name], f.metadata.get("help", ""), default)


def add_model_flags(
    group: argparse._ArgumentGroup,
    flags: dict[str, tuple[str, Any, str]],
    switches: dict[str, str],
    model_help: str,
) -> None:
    """Model keys as flags: ``flags`` (flag -> (key, type, help)), ``switches`` (boolean key -> help,
    ``--key/--no-key``), then ``--model KEY=VALUE`` (help ``model_help``) for any other key."""
    for flag, (key, tp, help_text) in flags.items():
        group.add_argument(flag, dest=f"model.{key}", type=tp, metavar=key.upper(), default=argparse.SUPPRESS,
                           help=help_text)
    for key, help_text in switches.items():
        group.add_argument(_flag(key), dest=f"model.{key}", action=argparse.BooleanOptionalAction,
                           default=argparse.SUPPRESS, help=help_text)
    group.add_argument("--model", dest="model_items", action="append", metavar="KEY=VALUE", default=[],
                       help=model_help)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from ndd.train.config import TrainConfig, field_types

    p = subparsers.add_parser(
        "train",
        help=subcommand_help("train"),
        description=(
            "Train spec-diff-net on BSDS500, a folder of PNG label maps or synthetic dead leaves. Stage 1: LR kernel "
            "matching loss; stage 2: LR + HR segment matching loss. Writes config.yaml, metrics.csv, tb/, "
            "checkpoints/ and last.pt into --run-dir. Multi-GPU: torchrun --standalone --nproc_per_node=K "
            "-m ndd train ... (batch size is per process)."
        ),
    )
    add_config_flags(p, TrainConfig, field_types(), "training config (TrainConfig fields)",
                     "training config file (flags override it)")
    add_model_flags(
        p.add_argument_group("model config (SpecDiffNetConfig keys)"),
        _MODEL_FLAGS,
        {
            "freeze_bn": "freeze batch norm (default: exactly when --weights is given)",
            "freeze_backbone": "train only projection, mu, t, tau (alpha) and FAI gammas; "
                               "the backbone runs without a graph",
        },
        "any other SpecDiffNetConfig key (YAML value), e.g. --model fai_gammas=[1,4,8]",
    )
    p.set_defaults(func=run)


def config_from_namespace(cls: Any, ns: dict[str, Any]) -> Any:
    """The config of class ``cls`` that parsed flags ``ns`` describe (``cls.from_sources`` precedence):
    its fields, ``model.KEY`` flags, ``--model KEY=VALUE`` items, ``--config`` and ``--resume``."""
    names = {f.name for f in fields(cls)}
    model = {key[len("model."):]: value for key, value in ns.items() if key.startswith("model.")}
    for item in ns.get("model_items", []):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--model expects KEY=VALUE, got {item!r}")
        model[key.strip()] = yaml.safe_load(value)
    return cls.from_sources(
        resume=ns.get("resume"),
        config_file=ns.get("config"),
        overrides={key: value for key, value in ns.items() if key in names},
        model=model,
    )


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`TrainConfig` the parsed flags describe (:meth:`TrainConfig.from_sources`)."""
    from ndd.train.config import TrainConfig

    return config_from_namespace(TrainConfig, vars(args))


def fit_and_report(trainer: Any) -> int:
    """Run ``trainer.fit()``, leave the process group, print the final checkpoint (rank 0); exit status 0."""
    import os

    from ndd.train.loop import fit_and_leave

    path = fit_and_leave(trainer)
    if os.environ.get("RANK", "0") == "0":
        print(f"final checkpoint: {path}")
    return 0


def run(args: argparse.Namespace) -> int:
    from ndd.train.distributed import shutdown_distributed
    from ndd.train.loop import Trainer

    try:
        config = config_from_args(args)
        if args.print_config:
            # the data folder is only needed to train: the config prints without one
            print(yaml.safe_dump(config.resolved(check_data=False).to_dict(), sort_keys=False), end="")
            return 0
        trainer = Trainer(config)  # checks config, data and checkpoint before any step
    except (ValueError, FileNotFoundError) as exc:
        print(f"ndd train: error: {exc}", file=sys.stderr)
        shutdown_distributed()
        return 2
    return fit_and_report(trainer)
