"""Weakly supervised semantic segmentation guided by the neural diffusion distance (paper §7, Fig. 5).

The pipeline, one function per step (the ``ndd wsss`` subcommands, same names)::

    from ndd import wsss
    wsss.synthetic("data/shapes")                                        # ndd wsss synthetic
    ckpt = wsss.train(dataset="folder", data_root="data/shapes", split="train", weights="imagenet",
                      model={"backbone": "efficientnet_lite0"}, run_dir="runs/w")  # ndd wsss train
    wsss.pseudo_labels(ckpt, "runs/w/pseudo")                            # ndd wsss pseudo-labels
    seg = wsss.train_seg(dataset="folder", data_root="data/shapes", split="train",
                         pseudo_labels="runs/w/pseudo", arch="deeplabv3_efficientnet_lite0",
                         run_dir="runs/s")                               # ndd wsss train-seg
    wsss.predict(seg, "runs/s/val", dataset="folder", data_root="data/shapes", split="val")  # predict
    wsss.evaluate("runs/s/val", dataset="folder", data_root="data/shapes", split="val")      # evaluate

Modules: :mod:`~ndd.wsss.functional` (RFP, PRED, PC-WAP, Eq. 12 as pure tensor functions),
:mod:`~ndd.wsss.network` (``WSSSNet`` and its modules; background handling),
:mod:`~ndd.wsss.guidance` (the frozen spec-diff-net giving ``K``, kernel cache),
:mod:`~ndd.wsss.config` (configs, presets, variants; torch-free), :mod:`~ndd.wsss.datasets`,
:mod:`~ndd.wsss.training` (the two training steps), :mod:`~ndd.wsss.segnet` (DeepLab),
:mod:`~ndd.wsss.steps` (pseudo labels, multi-scale prediction, evaluation, synthetic data),
:mod:`~ndd.wsss.metrics` (confusion matrix, mIoU; NumPy), :mod:`~ndd.wsss.checkpoints`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ndd._lazy import lazy_attributes

if TYPE_CHECKING:
    from .checkpoints import load_segmentation_net, load_wsss_checkpoint, load_wsss_model
    from .config import PRESETS, VARIANTS, SegTrainConfig, WSSSNetConfig, WSSSTrainConfig
    from .guidance import Guidance, KernelCache
    from .metrics import confusion_matrix, format_scores, scores_from_confusion
    from .network import WSSSNet, WSSSOutput
    from .segnet import SegmentationNet, build_segmentation_net
    from .steps import evaluate, multi_scale_probabilities, predict, pseudo_labels, synthetic
    from .training import train, train_seg

# Imported on first use (PEP 562): the configs need no torch, so ``ndd wsss --help`` starts at once.
_WHERE = {
    "train": "training",
    "train_seg": "training",
    "pseudo_labels": "steps",
    "predict": "steps",
    "evaluate": "steps",
    "synthetic": "steps",
    "multi_scale_probabilities": "steps",
    "WSSSNet": "network",
    "WSSSOutput": "network",
    "Guidance": "guidance",
    "KernelCache": "guidance",
    "SegmentationNet": "segnet",
    "build_segmentation_net": "segnet",
    "WSSSNetConfig": "config",
    "WSSSTrainConfig": "config",
    "SegTrainConfig": "config",
    "PRESETS": "config",
    "VARIANTS": "config",
    "confusion_matrix": "metrics",
    "scores_from_confusion": "metrics",
    "format_scores": "metrics",
    "load_wsss_checkpoint": "checkpoints",
    "load_wsss_model": "checkpoints",
    "load_segmentation_net": "checkpoints",
}

__all__ = list(_WHERE)


__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)
