"""Optimiser and learning-rate schedule (the authors' choices, see official-code.md §7)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR

from ndd.models import SpecDiffNet

__all__ = ["build_optimizer", "poly_factor", "build_scheduler", "optimizer_step"]


def build_optimizer(model: SpecDiffNet, lr: float, diffusion_lr_mult: float, weight_decay: float) -> torch.optim.Adam:
    """Adam with two groups: backbone + projection at ``lr``; ``mu, t, tau`` and FAI gammas at ``lr x mult``.

    Every parameter is listed, frozen ones included: the FAI gammas only get
    gradients in stage 2, and Adam skips parameters without a gradient.
    """
    return torch.optim.Adam(
        [
            {"params": model.backbone_parameters(), "lr": lr, "name": "backbone"},
            {"params": model.diffusion_parameters(), "lr": lr * diffusion_lr_mult, "name": "diffusion"},
        ],
        lr=lr,
        weight_decay=weight_decay,
    )


def poly_factor(stage1_steps: int, stage2_steps: int, power: float) -> Callable[[int], float]:
    """Multiplier of the base rates at global step ``s``: ``(1 - s_k / S_k) ** power``.

    ``s_k`` counts steps within the current stage and ``S_k`` is its length: the
    poly schedule restarts at stage 2, as in the authors' two training scripts.
    """

    def factor(step: int) -> float:
        if step < stage1_steps:
            s, total = step, stage1_steps
        else:
            s, total = step - stage1_steps, stage2_steps
        return max(0.0, 1.0 - s / max(total, 1)) ** power

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, stage1_steps: int, stage2_steps: int, power: float) -> LambdaLR:
    """Per-step poly schedule over both stages (state: the step count only)."""
    return LambdaLR(optimizer, poly_factor(stage1_steps, stage2_steps, power))


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    grad_clip: float | None,
    step: int,
    context: str,
) -> torch.Tensor:
    """One update from ``loss``: backward through ``scaler``, clip the global gradient norm to
    ``grad_clip`` (``None`` or 0: only measure it), step the optimiser (skipped with a warning on a
    non-finite norm) and the schedule. Returns the gradient norm.

    Raises:
        FloatingPointError: a non-finite ``loss``; the message names ``step`` and ``context``
            (e.g. the stage or the images of the batch).
    """
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss {loss.item()} at step {step} ({context})")
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip else math.inf)
    if torch.isfinite(grad_norm) or scaler.is_enabled():
        scaler.step(optimizer)  # the fp16 scaler skips non-finite steps itself
    else:
        warnings.warn(f"non-finite gradient norm at step {step}: update skipped", stacklevel=3)  # the loop's line
    scaler.update()
    scheduler.step()
    return grad_norm
