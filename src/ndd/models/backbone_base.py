"""Shared pieces of the feature-extraction backbones.

Every backbone in :mod:`ndd.models.backbones` follows one contract so that
``SpecDiffNet`` can treat them alike:

* input: images ``(B, 3, H, W)``, float RGB in ``[0, 1]``; any normalisation
  (ImageNet mean/std, ...) happens inside the backbone;
* output: :class:`BackboneOutput` with ``levels = [f2, f4, f8]``, the feature
  maps at strides 2, 4 and 8 (fine to coarse), of spatial size
  ``ceil(H / s) x ceil(W / s)`` for any ``H, W`` (odd sizes included), and
  ``deep``, the last stage's features at stride 8;
* channel counts: :attr:`Backbone.level_channels`, :attr:`Backbone.deep_channels`
  (also gathered in :attr:`Backbone.channels`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

#: ImageNet statistics used by torchvision's pretrained models (RGB in [0, 1]).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Strides of the three levels, fine to coarse.
LEVEL_STRIDES: tuple[int, int, int] = (2, 4, 8)

#: Key prefixes that wrappers commonly add to checkpoints (DataParallel, the
#: DeepLab-v2 "Scale" wrapper, Lightning-style ``model.``, ``backbone.``).
COMMON_PREFIXES: tuple[str, ...] = ("module.", "Scale.", "model.", "backbone.")


class BackboneOutput(NamedTuple):
    """What every backbone returns.

    Attributes:
        levels: ``[f2, f4, f8]``, shapes ``(B, C_s, ceil(H/s), ceil(W/s))`` for
            ``s = 2, 4, 8``, fine to coarse.
        deep: ``(B, C_deep, ceil(H/8), ceil(W/8))``, the deepest (most semantic)
            features, at output stride 8.
        edges: ``(B, 1, H, W)`` edge probability in ``[0, 1]`` at the input
            resolution, for backbones that have an edge head (``vgg16_hed``);
            ``None`` otherwise.
    """

    levels: list[Tensor]
    deep: Tensor
    edges: Tensor | None = None


class Backbone(nn.Module):
    """Base class: channel bookkeeping, input checks and frozen batch norm.

    Subclasses set ``level_channels`` and ``deep_channels`` and implement
    :meth:`extract` on already-validated input.

    Args:
        freeze_bn: keep every batch-norm layer in eval mode (running statistics
            used and never updated, even under ``model.train()``) and its affine
            parameters frozen. Usual with pretrained weights and small batches.
    """

    level_channels: tuple[int, int, int]
    deep_channels: int
    strides: tuple[int, int, int] = LEVEL_STRIDES
    #: True when ``deep`` is the very tensor returned as ``levels[2]`` (so a
    #: hypercolumn should not concatenate it twice).
    deep_is_last_level: bool = False
    #: True when :class:`BackboneOutput` carries ``edges`` (an edge head, e.g. ``vgg16_hed``).
    has_edges: bool = False

    def __init__(self, freeze_bn: bool = False) -> None:
        super().__init__()
        self.freeze_bn = freeze_bn

    @property
    def channels(self) -> dict[str, object]:
        """``{"levels": (C2, C4, C8), "deep": C_deep}``."""
        return {"levels": tuple(self.level_channels), "deep": int(self.deep_channels)}

    def _apply_freeze_bn(self) -> None:
        """Freeze the affine parameters of every batch norm (call at the end of ``__init__``)."""
        if not self.freeze_bn:
            return
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                for p in m.parameters(recurse=False):
                    p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode)
        if self.freeze_bn:
            # Batch statistics of a batch of 1-3 crops are too noisy: keep the
            # running statistics of the pretrained model.
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, images: Tensor) -> BackboneOutput:
        """Extract features.

        Args:
            images: ``(B, 3, H, W)`` float RGB in ``[0, 1]``.

        Returns:
            :class:`BackboneOutput`; ``levels[i]`` has ``level_channels[i]``
            channels and size ``ceil(H / s_i) x ceil(W / s_i)``.
        """
        check_images(images)
        # An (H, W, 3) array permuted to (1, 3, H, W) is channels-last in memory, and every conv
        # would then take the channels-last path: 2-3x slower for EfficientNet-Lite0 on a CPU.
        # (VGG16-HED chooses its own layout.)
        out = self.extract(images.contiguous())
        expected = expected_level_sizes(images.shape[-2], images.shape[-1])
        got = [tuple(f.shape[-2:]) for f in out.levels]
        if got != expected or tuple(out.deep.shape[-2:]) != expected[-1]:
            # Guard against a silent off-by-one in padding/striding.
            raise RuntimeError(f"{type(self).__name__} produced sizes {got}, expected {expected}")
        return out

    def extract(self, images: Tensor) -> BackboneOutput:  # pragma: no cover - abstract
        raise NotImplementedError


def check_images(images: Tensor) -> None:
    """Raise ``ValueError`` unless ``images`` is a floating ``(B, 3, H, W)`` tensor."""
    if not isinstance(images, Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point RGB in [0, 1], got dtype {images.dtype}")
    if images.shape[-2] < 1 or images.shape[-1] < 1:
        raise ValueError(f"images must be non-empty, got {tuple(images.shape)}")


def expected_level_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """``[(ceil(H/s), ceil(W/s)) for s in (2, 4, 8)]``."""
    return [(math.ceil(height / s), math.ceil(width / s)) for s in LEVEL_STRIDES]


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; the statistics are not saved in state dicts."""

    def __init__(self, mean: Iterable[float], std: Iterable[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


# ----------------------------------------------------------------------------
# Checkpoint loading
# ----------------------------------------------------------------------------


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a state dict from ``path``, unwrapping ``{"state_dict": ...}`` / ``{"model": ...}``.

    Raises:
        ValueError: the file does not exist or holds no state dict.
    """
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint file not found: {os.fspath(path)!r}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, ...
        raise ValueError(f"could not read checkpoint {os.fspath(path)!r}: {exc}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"checkpoint {os.fspath(path)!r} does not hold a state dict of tensors")
    return dict(obj)


def strip_prefixes(state: Mapping[str, Tensor], prefixes: Iterable[str] = COMMON_PREFIXES) -> dict[str, Tensor]:
    """Remove wrapper prefixes (e.g. ``module.``) shared by *all* keys, repeatedly."""
    out = dict(state)
    changed = True
    while changed and out:
        changed = False
        for p in prefixes:
            if all(k.startswith(p) for k in out):
                out = {k[len(p) :]: v for k, v in out.items()}
                changed = True
    return out


def load_state_strict(
    module: nn.Module,
    state: Mapping[str, Tensor],
    *,
    ignore: Iterable[str] = (),
    source: str = "checkpoint",
) -> None:
    """Load ``state`` into ``module``, requiring every key to match.

    Keys starting with one of ``ignore`` (e.g. a classifier head the backbone
    does not have) are dropped first; any other missing or unexpected key, or a
    shape mismatch, raises ``ValueError`` listing them, so nothing is ever
    loaded partially without saying so.
    """
    ignore = tuple(ignore)
    state = {k: v for k, v in state.items() if not (ignore and k.startswith(ignore))}
    own = module.state_dict()
    # Checkpoints older than PyTorch 0.4.1 (e.g. DeepLab-v2's) have no batch-norm
    # step counters; they only matter for momentum=None, so keep the model's.
    for k in own:
        if k.endswith(".num_batches_tracked") and k not in state:
            state[k] = own[k]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        parts = [f"{source} does not match {type(module).__name__}:"]
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if keys:
                shown = ", ".join(keys[:10]) + (f", ... ({len(keys)} in all)" if len(keys) > 10 else "")
                parts.append(f"  {title}: {shown}")
        raise ValueError("\n".join(parts))
    module.load_state_dict(state, strict=True)


def _at_scale(images: Tensor, scale: float) -> Tensor:
    """``images`` resized by ``scale`` (bilinear; antialiased when shrinking): the input of a
    multi-scale pass. One definition for the edge maps and the side logits."""
    size = (images.shape[-2], images.shape[-1])
    scaled = (max(2, round(size[0] * scale)), max(2, round(size[1] * scale)))
    return torch.nn.functional.interpolate(images, size=scaled, mode="bilinear", align_corners=False,
                                           antialias=scale < 1.0)


def multiscale_side_logits(side_logits: Callable[[Tensor], Tensor], images: Tensor,
                           scales: Sequence[float]) -> Tensor:
    """An edge detector's side logits at several input scales, each resized to the input size
    and stacked: the input of :class:`ndd.models.edge_fusion.EdgeFusionHead`.

    Args:
        side_logits: images ``(B, 3, h, w)`` -> ``(B, C, h, w)`` (e.g.
            :meth:`ndd.models.vgg16_hed.Vgg16HedBackbone.side_logits`, ``C = 5``).
        images: ``(B, 3, H, W)``.
        scales: input scales, e.g. ``(0.5, 1.0, 1.5)``; the images are resized as for
            :func:`multiscale_edges`.

    Returns:
        ``(B, C * len(scales), H, W)``: the ``C`` logits of the first scale, then the next.
    """
    size = (images.shape[-2], images.shape[-1])
    maps = []
    for scale in scales:
        if scale == 1.0:
            maps.append(side_logits(images))
            continue
        logits = side_logits(_at_scale(images, scale))
        maps.append(torch.nn.functional.interpolate(logits, size=size, mode="bilinear", align_corners=False))
    return torch.cat(maps, dim=1)


def multiscale_edges(edge_map: Callable[[Tensor], Tensor], images: Tensor, scales: Sequence[float],
                     at_scale_one: Tensor | None = None) -> Tensor:
    """Mean of an edge detector's maps over input scales, each resized back to the input size.

    Multi-scale averaging is HED's standard test-time setting (it raises boundary F on
    BSDS500 by about a point over one scale).

    Args:
        edge_map: images ``(B, 3, h, w)`` -> edge probabilities ``(B, 1, h, w)``.
        images: ``(B, 3, H, W)``.
        scales: input scales, e.g. ``(0.5, 1.0, 1.5)``.
        at_scale_one: the map at scale 1 when it is already known (it is not recomputed).

    Returns:
        ``(B, 1, H, W)``.
    """
    size = (images.shape[-2], images.shape[-1])
    maps = []
    for scale in scales:
        if scale == 1.0:
            maps.append(at_scale_one if at_scale_one is not None else edge_map(images))
            continue
        maps.append(torch.nn.functional.interpolate(edge_map(_at_scale(images, scale)), size=size, mode="bilinear",
                                                    align_corners=False))
    return torch.stack(maps).mean(0)
