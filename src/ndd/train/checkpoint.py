"""Training checkpoints: save, load, and rebuild the model they hold.

A checkpoint is a plain dict of tensors and Python scalars/containers, so it
loads with ``torch.load(path, map_location="cpu", weights_only=True)`` (a CUDA
run's checkpoint loads on a CPU-only machine)::

    {"format": "ndd-train", "version": 1,
     "step": int (completed optimiser steps), "stage": int (of the last completed step),
     "model": state_dict, "model_config": dict, "train_config": dict,
     "optimizer": ..., "scheduler": ..., "scaler": dict | None,
     "rng": {"torch", "cuda", "numpy", "python"}, "world_size": int,
     "torch_version": str}
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ndd.models import SpecDiffNet, load_model

__all__ = [
    "CHECKPOINT_FORMAT",
    "save_checkpoint",
    "load_checkpoint",
    "load_checkpoint_model",
    "capture_rng_state",
    "restore_rng_state",
    "seed_everything",
    "training_state",
    "restore_training_state",
    "save_run_checkpoint",
    "checkpoint_step",
]

CHECKPOINT_FORMAT = "ndd-train"
CHECKPOINT_VERSION = 1


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), NumPy and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), NumPy and Python RNG states as weights_only-safe values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # type: ignore[misc]
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states only if there are as many GPUs)."""
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def save_checkpoint(path: str | Path, payload: dict[str, Any], *, format: str = CHECKPOINT_FORMAT) -> Path:
    """Write ``payload`` atomically (temporary file, then rename) and return the path.

    ``format`` tags the file (other ``ndd`` trainers, e.g. :mod:`ndd.wsss`, use their own tag).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": format, "version": CHECKPOINT_VERSION, **payload}, tmp)
    os.replace(tmp, path)
    return path


def save_run_checkpoint(
    run_dir: Path, name: str, payload: dict[str, Any], keep: int, *, format: str = CHECKPOINT_FORMAT
) -> Path:
    """Write ``run_dir/checkpoints/<name>`` and ``run_dir/last.pt``; keep the newest ``keep`` numbered
    checkpoints (``step_*.pt``; 0: all). Returns the numbered checkpoint's path."""
    path = run_dir / "checkpoints" / name
    save_checkpoint(path, payload, format=format)
    save_checkpoint(run_dir / "last.pt", payload, format=format)
    if keep > 0:
        for old in sorted((run_dir / "checkpoints").glob("step_*.pt"))[:-keep]:
            old.unlink(missing_ok=True)
    return path


def training_state(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    world_size: int,
) -> dict[str, Any]:
    """The part of a checkpoint payload that resumes a run exactly, shared by every ``ndd`` trainer:
    ``optimizer``, ``scheduler``, ``scaler`` (``None`` when disabled), ``rng`` (this process's),
    ``world_size`` and ``torch_version``."""
    return {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "rng": capture_rng_state(),
        "world_size": world_size,
        "torch_version": str(torch.__version__),
    }


def restore_training_state(
    ckpt: dict[str, Any] | None,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    *,
    seed: int,
    rank: int,
    world_size: int,
) -> int:
    """Load a checkpoint's weights and :func:`training_state` into a run; returns the completed steps.

    ``ckpt=None`` (a fresh run) gives each rank its own RNG streams from ``(seed, rank)`` and returns 0.
    When resuming, rank 0 gets the stored RNG state back and other ranks reseed from
    ``(seed, rank, step)``; a checkpoint written by another number of processes gives a warning.
    """
    from .data import sample_seed  # the data stack (PIL, SciPy) only here, not to read a checkpoint

    if ckpt is None:
        seed_everything(sample_seed(seed, rank))  # per-rank streams from here on
        return 0
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(ckpt["scaler"])
    step = int(ckpt["step"])
    if rank == 0:
        restore_rng_state(ckpt["rng"])
    else:  # only rank 0's RNG state is stored; the loops themselves draw nothing from these
        seed_everything(sample_seed(seed, rank, step))
    if ckpt.get("world_size", 1) != world_size:
        warnings.warn(
            f"resuming a {ckpt.get('world_size')}-process run with {world_size} processes: "
            "the data order differs from an uninterrupted run",
            stacklevel=2,
        )
    return step


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", *, format: str = CHECKPOINT_FORMAT
) -> dict[str, Any]:
    """Read a training checkpoint with ``weights_only=True``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, or not a checkpoint tagged ``format`` (default: written by :mod:`ndd.train`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != format:
        what = "an ndd training" if format == CHECKPOINT_FORMAT else f"a {format!r}"
        raise ValueError(f"{path} is not {what} checkpoint")
    if ckpt.get("version", 0) > CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {ckpt['version']} is newer than this ndd understands")
    return ckpt


def load_checkpoint_model(
    path: str | Path, device: str | torch.device = "cpu", *, eval_mode: bool = True
) -> SpecDiffNet:
    """Rebuild the :class:`SpecDiffNet` of a checkpoint from its stored config and weights.

    The backbone is built without downloading anything (its trained weights come
    from the checkpoint). Returns the model on ``device``, in eval mode by default.
    Same as :func:`ndd.models.load_model`, which also reads shipped weights files.
    """
    model = load_model(path, device)
    return model if eval_mode else model.train()


def checkpoint_step(spec: str | Path | None) -> int | None:
    """The training step stored in the checkpoint file ``spec``; ``None`` for anything else
    (a shipped model's name, a weights file of :func:`ndd.models.save_model`, no file)."""
    if spec is None or not Path(spec).is_file():
        return None
    try:
        return load_checkpoint(spec).get("step")
    except (ValueError, FileNotFoundError):
        return None
