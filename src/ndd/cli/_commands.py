"""The table of ``ndd`` subcommands: name, module and one-line help.

Kept apart from the subcommand modules so that ``ndd --help`` (and any one
subcommand) can list every command without importing the others: the training
command imports torch to build its flags, the benchmark never needs it.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Subcommand", "SUBCOMMANDS", "subcommand_help"]


class Subcommand(NamedTuple):
    name: str
    module: str  # inside ndd.cli
    help: str


#: In the order ``ndd --help`` lists them.
SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand("segment", "segment", "hierarchical segmentation of images"),
    Subcommand("similarity", "similarity", "diffusion-similarity maps of chosen pixels"),
    Subcommand("evaluate", "evaluate", "BSDS500 region and boundary benchmark of ucm2 / label-map results"),
    Subcommand("train", "train", "train spec-diff-net (two stages, checkpoints, exact resume, DDP under torchrun)"),
    Subcommand("train-edge-fusion", "train_edge_fusion", "learn a fusion of the HED side outputs on BSDS500 boundaries"),
    Subcommand("evaluate-kernel", "evaluate_kernel", "kernel accuracy (paper Table 1) of a model on BSDS500"),
    Subcommand("demo", "demo", "interactive web page: segment an image, explore its diffusion similarity (needs [demo])"),
    Subcommand("wsss", "wsss", "weakly supervised semantic segmentation (paper §7): train, pseudo-labels, train-seg, predict, evaluate"),
)


def subcommand_help(name: str) -> str:
    """The one-line help of subcommand ``name``."""
    return next(c.help for c in SUBCOMMANDS if c.name == name)
