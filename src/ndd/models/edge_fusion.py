"""A learned fusion of an edge detector's side outputs over several input scales.

HED fuses its five side outputs with one 1x1 convolution per scale, and multi-scale
testing averages the fused probabilities. :class:`EdgeFusionHead` replaces both by a
small convolutional head trained on BSDS500 boundaries (:mod:`ndd.train.edge_fusion`):
it sees all ``5 x S`` side logits at once, with a little spatial context (3x3
convolutions at dilations 1, 2, 4), and starts as the mean over scales of HED's own
fused logit (its residual branch starts at zero). On BSDS500 val it raised the
NMS-thinned edge map's boundary F ODS from 0.736 to 0.748 and the default hierarchy's
from 0.712 to 0.730 (docs/segmentation.md, "A learned fusion of HED's side outputs").
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["EdgeFusionHead", "LOGIT_SCALE", "save_edge_fusion", "read_edge_fusion"]

#: Side logits of a trained HED span about -30 .. 15; the head sees them divided by this
#: (activations of order 1 for its ReLU branch) and its linear branch undoes it.
LOGIT_SCALE = 10.0


class EdgeFusionHead(nn.Module):
    """Edge logits from the side logits of an edge detector at several scales.

    ``logit = s linear(x / s) + body(x / s)`` (``s`` = :data:`LOGIT_SCALE`; both branches see
    inputs of order 1, so one learning rate suits them) with ``linear`` a 1x1 convolution and
    ``body`` three 3x3 convolutions (dilations 1, 2, 4; receptive field 15 x 15) with ReLUs
    and a 1x1 output convolution that starts at zero.

    Args:
        in_channels: number of side logits, ``5 * len(scales)`` for VGG16-HED.
        width: channels of the hidden convolutions.

    Example:
        >>> head = EdgeFusionHead(15, width=16)
        >>> head(torch.zeros(1, 15, 20, 30)).shape
        torch.Size([1, 1, 20, 30])
    """

    def __init__(self, in_channels: int, width: int = 16) -> None:
        super().__init__()
        if in_channels < 1 or width < 1:
            raise ValueError(f"in_channels and width must be >= 1, got {in_channels} and {width}")
        self.linear = nn.Conv2d(in_channels, 1, 1)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=2, dilation=2), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=4, dilation=4), nn.ReLU(),
            nn.Conv2d(width, 1, 1),
        )
        with torch.no_grad():
            self.body[-1].weight.zero_()
            self.body[-1].bias.zero_()

    @torch.no_grad()
    def init_from_fuse(self, fuse_weight: Tensor, fuse_bias: Tensor, n_scales: int) -> EdgeFusionHead:
        """Start as the mean over ``n_scales`` of the detector's fused logit (``fuse`` applied to
        each scale's side logits): ``fuse_weight`` ``(1, 5, 1, 1)`` or ``(5,)``, ``fuse_bias`` ``(1,)``."""
        w = fuse_weight.reshape(-1).to(self.linear.weight.dtype)
        if w.numel() * n_scales != self.linear.in_channels:
            raise ValueError(f"{w.numel()} side outputs x {n_scales} scales != {self.linear.in_channels} inputs")
        self.linear.weight.copy_((w / n_scales).repeat(n_scales).view_as(self.linear.weight))
        self.linear.bias.copy_(fuse_bias.reshape(1).to(self.linear.bias.dtype) / LOGIT_SCALE)
        self.body[-1].weight.zero_()
        self.body[-1].bias.zero_()
        return self

    def forward(self, side_logits: Tensor) -> Tensor:
        """``(B, C, H, W)`` side logits -> ``(B, 1, H, W)`` edge logits."""
        if side_logits.dim() != 4 or side_logits.shape[1] != self.linear.in_channels:
            raise ValueError(f"side logits must be (B, {self.linear.in_channels}, H, W), got {tuple(side_logits.shape)}")
        x = side_logits / LOGIT_SCALE
        return LOGIT_SCALE * self.linear(x) + self.body(x)

    def edge_map(self, side_logits: Tensor) -> Tensor:
        """Edge probability ``(B, 1, H, W)`` in [0, 1]."""
        return torch.sigmoid(self(side_logits))


def save_edge_fusion(head: EdgeFusionHead, scales: Sequence[float], path: str | os.PathLike[str],
                     meta: dict[str, Any] | None = None) -> Path:
    """Write a trained head as a small file (float32 state dict, the scales it was trained for,
    its width and ``meta``) that a :class:`ndd.models.WeightsEntry` can name.

    The scales belong to the head: its input channels are the side logits at each of them, in
    that order.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width = head.body[0].out_channels
    state = {k: v.detach().float().cpu() for k, v in head.state_dict().items()}
    torch.save({"width": width, "scales": tuple(float(s) for s in scales), "model": state, "meta": dict(meta or {})}, path)
    return path


def read_edge_fusion(path: str | os.PathLike[str], sha256: str | None = None) -> dict[str, Any]:
    """The payload of :func:`save_edge_fusion` (``width``, ``scales``, ``model``, ``meta``),
    its sha256 checked when given; one-line errors for a missing, corrupt or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"edge fusion file not found: {path}")
    data = path.read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"{path} is corrupt: its sha256 does not match the one recorded in ndd")
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"not an edge fusion file: {path} (unreadable: {err})") from err
    if not isinstance(payload, dict) or not {"width", "scales", "model"} <= set(payload):
        raise ValueError(f"not an edge fusion file: {path} (no 'width', 'scales' and 'model' entries)")
    return payload
