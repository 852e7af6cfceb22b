"""Device names: one parser and check for every command and API that takes ``device``.

:func:`check_device_name` needs no torch (a command line checks the spelling before it
imports torch, seconds); :func:`resolve_device` also checks the device exists.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICE_NAMES", "check_device_name", "resolve_device", "usable_cores"]

#: What ``device`` may be, for messages.
DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"
_PATTERN = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)")


def usable_cores() -> int:
    """The CPU cores this process may run on (its CPU affinity where the system has one), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def check_device_name(name: str) -> str:
    """``name`` normalised (stripped, lower case) if it is a device name ``ndd`` knows.

    Only the spelling is checked, without importing torch; :func:`resolve_device` checks
    that the device exists.

    Raises:
        ValueError: an unknown name, in one line.

    Example:
        >>> check_device_name(" CUDA:1 ")
        'cuda:1'
    """
    text = str(name).strip().lower()
    if not _PATTERN.fullmatch(text):
        raise ValueError(f"unknown device {name!r}: use {DEVICE_NAMES}")
    return text


def resolve_device(name: str | torch.device, local_rank: int = 0) -> torch.device:
    """The torch device that ``name`` means, checked to exist on this machine.

    ``"auto"`` is ``cuda:<local_rank>`` when CUDA is available, else the CPU;
    ``"cuda"`` without an index is ``cuda:<local_rank>`` (one GPU per process under
    torchrun). Checking here, before a model loads, turns torch's long
    driver tracebacks into one line.

    Raises:
        ValueError: an unknown name, or a device this machine does not have.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    import torch

    if isinstance(name, torch.device):
        name = str(name)
    text = check_device_name(name)
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(text)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is a CPU-only build" if torch.version.cuda is None else "no NVIDIA GPU or driver found"
            raise ValueError(f"device {name!r}: CUDA is not available ({why}); use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: Apple MPS is not available on this machine; use --device cpu")
    return device
