"""The training loop of spec-diff-net (paper §5): two stages, checkpoints, exact resume."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ndd.losses import SegmentMatching
from ndd.models import SpecDiffNet, SpecDiffNetConfig, spec_diff_net

from .amp import autocast_dtype, autocast_submodules
from .checkpoint import (
    load_checkpoint,
    restore_training_state,
    save_run_checkpoint,
    seed_everything,
    training_state,
)
from .config import TrainConfig, _plain
from .data import StageData, build_train_dataset, sample_seed
from .distributed import DistInfo, barrier, init_distributed, shutdown_distributed, window_means
from .kernel_eval import evaluate_kernel
from .metrics import MetricLogger, close_all, open_run_dir, progress_bar
from .objective import TrainingObjective
from .optim import build_optimizer, build_scheduler, optimizer_step

__all__ = ["Trainer", "train", "seed_everything"]


def _set_determinism(deterministic: bool) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it before first use
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic


class Trainer:
    """Builds everything a run needs from a :class:`TrainConfig` and runs it with :meth:`fit`.

    Stage 1 (global steps ``[0, stage1_steps)``) minimises the LR kernel
    matching loss; stage 2 (the next ``stage2_steps``) adds ``hr_weight`` x the HR
    segment matching loss. Every random choice is a function of the seed and the
    step (see :mod:`ndd.train.data`), which makes :attr:`TrainConfig.resume` exact.

    Attributes:
        config: the resolved configuration (explicit model keys).
        model: the :class:`SpecDiffNet` being trained (not DDP-wrapped).
        step: completed optimiser steps.
        history: the rows written to ``metrics.csv`` by this process (rank 0).
    """

    def __init__(self, config: TrainConfig) -> None:
        self.info: DistInfo = init_distributed(config.device)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        ckpt = load_checkpoint(config.resume) if config.resume else None
        self.config = cfg = config.resolved()
        _set_determinism(cfg.deterministic)
        self.device = self.info.device
        self.run_dir = Path(cfg.run_dir)
        self.history: list[dict[str, Any]] = []

        model_cfg = cfg.model_config()
        # keys added since the checkpoint was written compare at their defaults
        saved = _plain(SpecDiffNetConfig.from_dict(ckpt["model_config"]).to_dict()) if ckpt is not None else None
        if saved is not None and saved != _plain(model_cfg.to_dict()):
            diff = sorted(k for k, v in _plain(model_cfg.to_dict()).items() if saved.get(k) != v)
            raise ValueError(f"model config differs from the checkpoint {config.resume} in {diff}")
        seed_everything(cfg.seed)  # same initial weights on every rank
        # When resuming, the weights come from the checkpoint: no pretrained file is needed.
        self.model = SpecDiffNet(model_cfg, backbone_weights=None if ckpt is not None else cfg.weights).to(self.device)
        if ckpt is None and cfg.init_from is not None:  # fine-tuning: every weight from the trained model
            self.model.load_state_dict(spec_diff_net(cfg.init_from).state_dict())
        self.amp_dtype = autocast_dtype(cfg.amp, self.device)
        if self.amp_dtype is not None:
            autocast_submodules([self.model.backbone, self.model.projection], self.device.type, self.amp_dtype)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.objective = TrainingObjective(  # --legacy: the authors' preset for the HR loss too
            self.model, hr_weight=cfg.hr_weight, hr_scale=cfg.hr_scale,
            matching=SegmentMatching.authors() if cfg.legacy else SegmentMatching(),
        )
        self.optimizer = build_optimizer(self.model, cfg.lr, cfg.diffusion_lr_mult, cfg.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, cfg.stage1_steps, cfg.stage2_steps, cfg.poly_power)
        build_train_dataset(cfg, 1 if cfg.stage1_steps else 2)  # fail now on a missing or empty dataset
        self.step = restore_training_state(ckpt, self.model, self.optimizer, self.scheduler, self.scaler,
                                           seed=cfg.seed, rank=self.info.rank, world_size=self.info.world_size)

        self.logger: MetricLogger | None = None
        if self.info.is_main:
            self.logger = open_run_dir(self.run_dir, cfg, tensorboard=cfg.tensorboard,
                                       resume_step=self.step if ckpt is not None else None)

    # -- state ------------------------------------------------------------ #
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint payload (see :mod:`ndd.train.checkpoint`)."""
        return {
            "step": self.step,
            "stage": 1 if self.step <= self.config.stage1_steps else 2,  # of the last completed step
            "model": self.model.state_dict(),
            "model_config": _plain(self.model.config.to_dict()),
            "train_config": self.config.to_dict(),
            **training_state(self.optimizer, self.scheduler, self.scaler, self.info.world_size),
        }

    @property
    def total_steps(self) -> int:
        return self.config.stage1_steps + self.config.stage2_steps

    def stage_of(self, step: int) -> int:
        """Stage (1 or 2) of the step that follows ``step`` completed steps."""
        return 1 if step < self.config.stage1_steps else 2

    def save(self, name: str | None = None) -> Path:
        """Write ``checkpoints/step_XXXXXXX.pt`` (or ``name``) and ``last.pt`` (rank 0 only)."""
        name = name or f"step_{self.step:07d}.pt"
        if not self.info.is_main:
            return self.run_dir / "checkpoints" / name
        return save_run_checkpoint(self.run_dir, name, self.state_dict(), self.config.keep_checkpoints)

    # -- stages ----------------------------------------------------------- #
    def _stage_module(self, stage: int) -> nn.Module:
        # The FAI gammas only take part in the HR loss; freezing them in stage 1
        # keeps DDP from waiting for their (absent) gradients.
        self.model.fai.log_gamma.requires_grad_(stage == 2 and self.model.config.learn_gamma)
        if not self.info.distributed:
            return self.objective
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(
            self.objective, device_ids=device_ids, find_unused_parameters=self.config.find_unused_parameters
        )

    def _train_step(self, module: nn.Module, batch: dict[str, Any], stage: int) -> dict[str, float]:
        cfg = self.config
        images = batch["image"].to(self.device, non_blocking=True)
        labels = batch["labels"].to(self.device, non_blocking=True)
        generator = torch.Generator().manual_seed(sample_seed(cfg.seed, 2, self.info.rank, self.step))
        lrs = [float(g["lr"]) for g in self.optimizer.param_groups]  # the rates this step uses
        self.optimizer.zero_grad(set_to_none=True)
        losses = module(images, labels, hr=stage == 2, generator=generator)
        grad_norm = optimizer_step(losses["loss"], self.optimizer, self.scheduler, self.scaler, cfg.grad_clip,
                                   self.step, f"stage {stage}")
        self.step += 1
        out = {k: float(v.detach()) for k, v in losses.items()}
        out.update(grad_norm=float(grad_norm), lr=lrs[0], lr_diffusion=lrs[1])
        return out

    def _evaluate(self) -> float | None:
        cfg = self.config
        if not (self.info.is_main and cfg.eval_every and cfg.val_split):
            return None
        from ndd.data import BSDS500

        dataset = BSDS500(cfg.data_root, cfg.val_split, annotation="all")  # type: ignore[arg-type]
        return float(evaluate_kernel(self.model, dataset, max_images=cfg.eval_max_images)["mean"])

    # -- main loop -------------------------------------------------------- #
    def fit(self) -> Path:
        """Train until ``stage1_steps + stage2_steps``; returns the path of ``last.pt``."""
        cfg = self.config
        last = self.run_dir / "last.pt"
        if self.step >= self.total_steps:
            return last
        bar = progress_bar(self.info.is_main and cfg.progress, self.total_steps, self.step)
        start_time = time.perf_counter()
        try:
            while self.step < self.total_steps:
                stage = self.stage_of(self.step)
                stage_start = 0 if stage == 1 else cfg.stage1_steps
                stage_end = cfg.stage1_steps if stage == 1 else self.total_steps
                module = self._stage_module(stage)
                module.train()
                data = StageData(cfg, stage, self.info)
                window: list[dict[str, float]] = []
                window_start, running = time.perf_counter(), None
                for batch in data.batches(self.step - stage_start):
                    metrics = self._train_step(module, batch, stage)
                    window.append(metrics)
                    running = metrics["loss"] if running is None else 0.9 * running + 0.1 * metrics["loss"]
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(stage=stage, loss=f"{running:.4f}", refresh=False)
                    evaluate = bool(cfg.eval_every) and self.step % cfg.eval_every == 0
                    if self.step % cfg.log_every == 0 or self.step == stage_end or evaluate:
                        now = time.perf_counter()
                        self._log(stage, window, len(window) / (now - window_start), now - start_time, evaluate)
                        window, window_start = [], time.perf_counter()  # evaluation time excluded
                    if cfg.save_every and self.step % cfg.save_every == 0 and self.step < self.total_steps:
                        self.save()
                    if self.step >= stage_end:
                        break
            self.save()
        finally:
            close_all(bar, self.logger)
        return last

    def _log(
        self, stage: int, window: list[dict[str, float]], steps_per_s: float, elapsed: float, evaluate: bool
    ) -> None:
        row: dict[str, Any] = {"stage": stage, **window_means(window, self.info)}  # every rank logs at the same steps
        row.update(
            mu=float(self.model.mu.detach()),
            t=float(self.model.t.detach()),
            tau=float(self.model.tau.detach()),
            steps_per_s=steps_per_s,
            elapsed_s=elapsed,
        )
        if evaluate:
            acc = self._evaluate()
            if acc is not None:
                row["kernel_acc"] = acc
        if self.logger is not None:
            self.logger.log(self.step, row)
            self.history.append({"step": self.step, **row})


def train(config: TrainConfig) -> Path:
    """Train spec-diff-net as ``config`` says; returns the path of the final checkpoint (``last.pt``).

    Runs as one process or, under ``torchrun``, as one DDP rank (see
    :mod:`ndd.train.distributed`). Rank 0 writes ``config.yaml``,
    ``metrics.csv``, ``tb/`` and the checkpoints into ``config.run_dir``.
    """
    return fit_and_leave(Trainer(config))


class _Fits(Protocol):
    info: DistInfo

    def fit(self) -> Path: ...


def fit_and_leave(trainer: _Fits) -> Path:
    """``trainer.fit()``, then leave the process group once every rank has finished; returns the
    path of the final checkpoint. What :func:`train`, ``ndd train`` and the ``ndd wsss`` trainings
    run after building their trainer (which checks config, data and checkpoint before any step)."""
    try:
        last = trainer.fit()
        # every rank finished (rank 0's last checkpoint written) before any tears the group down: a
        # rank leaving early made a peer abort in gloo's teardown now and then (1 run in 8-16)
        barrier(trainer.info)
        return last
    finally:
        shutdown_distributed()
