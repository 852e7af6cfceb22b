"""Checkpoints of the two WSSS training steps, and the trained networks they hold.

A checkpoint is :func:`ndd.train.checkpoint.save_checkpoint`'s atomic, ``weights_only``-safe
dict tagged ``format="ndd-wsss"``::

    {"format": "ndd-wsss", "version": 1, "kind": "wsss" | "seg", "step": int,
     "model": state_dict, "model_config": dict, "run_config": dict,
     "classes": [names], "background": int | None,
     "optimizer", "scheduler", "scaler", "rng", "world_size", "torch_version"}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ndd.train.checkpoint import load_checkpoint, save_checkpoint

from .config import WSSSNetConfig
from .network import WSSSNet
from .segnet import SegmentationNet, build_segmentation_net

__all__ = ["FORMAT", "save_wsss_checkpoint", "load_wsss_checkpoint", "read_run_config", "load_wsss_model",
           "load_segmentation_net"]

FORMAT = "ndd-wsss"


def save_wsss_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    return save_checkpoint(path, payload, format=FORMAT)


def load_wsss_checkpoint(path: str | Path, kind: str | None = None, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint of ``ndd wsss train`` (``kind="wsss"``) or ``train-seg`` (``"seg"``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an ``ndd wsss`` checkpoint, or of the other kind.
    """
    path = Path(path)
    if path.is_file():
        with open(path, "rb") as f:
            magic = f.read(4)
        # a zip archive (torch.save) or an old-style pickle; anything else fails deep in the unpickler
        if magic[:4] != b"PK\x03\x04" and magic[:1] != b"\x80":
            raise ValueError(f"{path} is not a {FORMAT!r} checkpoint (not a PyTorch file)")
    try:
        ckpt = load_checkpoint(path, map_location, format=FORMAT)
    except ValueError as exc:  # torch's unpickling messages run over many lines
        raise ValueError(str(exc).splitlines()[0]) from None
    if kind is not None and ckpt.get("kind") != kind:
        step = {"wsss": "ndd wsss train", "seg": "ndd wsss train-seg"}
        raise ValueError(f"{path} is a checkpoint of {step.get(ckpt.get('kind'), ckpt.get('kind'))!s}, "
                         f"not of {step[kind]}")
    return ckpt


def read_run_config(path: str | Path, kind: str) -> dict[str, Any]:
    """The run configuration stored in a checkpoint (to resume it)."""
    return dict(load_wsss_checkpoint(path, kind)["run_config"])


def load_wsss_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[WSSSNet, dict[str, Any]]:
    """The trained :class:`WSSSNet` of a ``wsss`` checkpoint (eval mode) and the checkpoint's metadata
    (``classes``, ``background``, ``step``, ``run_config``)."""
    ckpt = load_wsss_checkpoint(path, "wsss")
    model = WSSSNet(WSSSNetConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    meta = {k: ckpt[k] for k in ("classes", "background", "step", "run_config")}
    return model.to(device).eval(), meta


def load_segmentation_net(path: str | Path, device: torch.device | str = "cpu") -> tuple[SegmentationNet, dict[str, Any]]:
    """The trained :class:`SegmentationNet` of a ``seg`` checkpoint (eval mode) and its metadata."""
    ckpt = load_wsss_checkpoint(path, "seg")
    cfg = ckpt["model_config"]
    model = build_segmentation_net(cfg["arch"], int(cfg["num_classes"]), None, bool(cfg.get("freeze_bn", True)),
                                   bool(cfg.get("freeze_backbone", False)))
    model.load_state_dict(ckpt["model"])
    meta = {k: ckpt[k] for k in ("classes", "background", "step", "run_config")}
    return model.to(device).eval(), meta
