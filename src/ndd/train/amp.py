"""Mixed precision for the convolutional part only.

The spectral part (affinity, simultaneous iteration, QR, eigen-solves) and the
losses must stay in float32: half-precision matrix products there lose the
small eigenvalue gaps the diffusion distance depends on. Autocast is therefore
applied to the backbone and projection ``forward`` only, and their outputs are
cast back to float32 before anything spectral sees them.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

__all__ = ["autocast_dtype", "autocast_submodules"]


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for an ``amp`` setting on ``device`` (``None``: full precision).

    AMP is a CUDA feature here: on the CPU every setting gives ``None``.
    """
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def _to_float32(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # NamedTuple
        return type(value)(*(_to_float32(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float32(v) for v in value)
    return value


def autocast_submodules(modules: list[nn.Module | None], device_type: str, dtype: torch.dtype) -> None:
    """Run each module's ``forward`` under autocast and return float32 outputs.

    Patches the instances (not their classes); parameters, state-dict keys and
    DDP wrapping are unaffected.
    """
    for module in modules:
        if module is None:
            continue
        inner = module.forward

        @functools.wraps(inner)
        def forward(*args: Any, _inner: Any = inner, **kwargs: Any) -> Any:
            with torch.autocast(device_type, dtype=dtype):
                out = _inner(*args, **kwargs)
            return _to_float32(out)

        module.forward = forward  # type: ignore[method-assign]
