"""Training and kernel-accuracy evaluation of spec-diff-net (paper §5, Table 1).

Example (CPU smoke run on synthetic data)::

    from ndd.train import TrainConfig, train, load_checkpoint_model, evaluate_kernel
    cfg = TrainConfig(dataset="synthetic", crop_size=64, batch_size=2, stage1_steps=200,
                      stage2_steps=50, lr=1e-3, num_workers=0, run_dir="runs/smoke",
                      model={"backbone": "small_cnn", "window": 9, "n_eigs": 20})
    ckpt = train(cfg)
    model = load_checkpoint_model(ckpt)

Modules: :mod:`~ndd.train.config` (``TrainConfig``, YAML), :mod:`~ndd.train.data`
(datasets, resumable sampling), :mod:`~ndd.train.objective` (losses),
:mod:`~ndd.train.optim` (Adam, poly schedule), :mod:`~ndd.train.amp`,
:mod:`~ndd.train.distributed` (torchrun/DDP), :mod:`~ndd.train.checkpoint`,
:mod:`~ndd.train.metrics` (CSV/TensorBoard), :mod:`~ndd.train.loop` (the
trainer) and :mod:`~ndd.train.kernel_eval` (Table-1 metric).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ndd._lazy import lazy_attributes

if TYPE_CHECKING:
    from .checkpoint import checkpoint_step, load_checkpoint, load_checkpoint_model, save_checkpoint, seed_everything
    from .config import TrainConfig, load_yaml, save_yaml
    from .distributed import DistInfo, init_distributed
    from .kernel_eval import (PAPER_TABLE1, evaluate_kernel, format_kernel_grid, format_kernel_report,
                              kernel_accuracy_grid, kernel_cosine, kernel_cosine_per_annotation, kernel_grid_report,
                              kernel_report)
    from .loop import Trainer, train
    from .objective import TrainingObjective

# Imported on first use (PEP 562): ``ndd.train.config`` needs no torch, so
# ``ndd train --help`` starts at once.
_WHERE = {
    "TrainConfig": "config",
    "load_yaml": "config",
    "save_yaml": "config",
    "train": "loop",
    "Trainer": "loop",
    "TrainingObjective": "objective",
    "seed_everything": "checkpoint",
    "evaluate_kernel": "kernel_eval",
    "kernel_cosine": "kernel_eval",
    "kernel_cosine_per_annotation": "kernel_eval",
    "kernel_report": "kernel_eval",
    "format_kernel_report": "kernel_eval",
    "kernel_accuracy_grid": "kernel_eval",
    "kernel_grid_report": "kernel_eval",
    "format_kernel_grid": "kernel_eval",
    "PAPER_TABLE1": "kernel_eval",
    "checkpoint_step": "checkpoint",
    "load_checkpoint": "checkpoint",
    "load_checkpoint_model": "checkpoint",
    "save_checkpoint": "checkpoint",
    "DistInfo": "distributed",
    "init_distributed": "distributed",
}

__all__ = list(_WHERE)


__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)
