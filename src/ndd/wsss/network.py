"""The weakly supervised segmentation network of Fig. 5 and its Table-4 variants.

``WSSSNet`` holds the parameters (backbone, ``F``'s projection, the classifier ``H, b``, the
RFP threshold, the PC-WAP scales) and calls the pure functions of
:mod:`ndd.wsss.functional`. The similarity ``K`` is an input: it comes from the frozen
spec-diff-net (:class:`ndd.wsss.guidance.Guidance`), run outside the trained network.

**Background.** The paper is silent; ``ndd`` treats the background as a class of its own
(index ``config.background``, 0 for VOC) that is **present in every image**: its image label
is always 1, so Eq. 12 asks every image to have at least one confidently-background node
(MIL term) and a positive background score (classification term), and the class softmax of
Eq. 10 has a place for nodes that belong to no object. This keeps Eq. 10-12 unchanged and
needs no threshold. The GAP baseline has no class softmax: its background column is left out
of its loss, and its pseudo labels follow CAM practice (a node is background unless some
present class's max-normalised CAM exceeds ``cam_background``). Pseudo labels of every
variant only choose among the image's own classes and the background (training images'
labels are known).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ndd.models import build_backbone

from . import functional as Fn
from .config import WSSSNetConfig

__all__ = ["WSSSOutput", "RegionalFeaturePooling", "MultiThresholdPooling", "PCWAP", "WSSSNet"]


class WSSSOutput(NamedTuple):
    """What :meth:`WSSSNet.forward` returns (``N = h * w`` nodes, ``c`` classes).

    Attributes:
        class_logits: ``(B, c)`` logits of ``P_cl`` (or of the GAP classifier).
        seg_probs: ``(B, N, c)`` ``P_sg`` (Eq. 10); ``None`` for ``gap``.
        node_logits: ``(B, N, c)`` ``F H`` on each node, unpooled, no bias (CAMs for ``gap``).
        pool_weights: ``(B, N, c)`` PC-WAP weights (Eq. 11), ``None`` for ``gap``.
        grid_shape: ``(h, w)``.
        valid: ``(B, N)`` bool nodes inside the image, or ``None`` (all).
    """

    class_logits: Tensor
    seg_probs: Tensor | None
    node_logits: Tensor
    pool_weights: Tensor | None
    grid_shape: tuple[int, int]
    valid: Tensor | None


class RegionalFeaturePooling(nn.Module):
    """RFP with one threshold ``mu`` (paper: initialised at 0.5; learned by a straight-through gradient).

    ``mu`` is kept in ``(0, 1)`` as ``sigmoid(mu_logit)``.
    """

    def __init__(self, mu_init: float = 0.5, learn_mu: bool = True, surrogate_width: float = 0.05,
                 rows_per_chunk: int = 1024) -> None:
        super().__init__()
        self.mu_logit = nn.Parameter(torch.tensor(math.log(mu_init / (1 - mu_init))), requires_grad=learn_mu)
        self.surrogate_width = surrogate_width
        self.rows_per_chunk = rows_per_chunk

    @property
    def mu(self) -> Tensor:
        return torch.sigmoid(self.mu_logit)

    def forward(self, K: Tensor, X: Tensor, valid: Tensor | None = None) -> Tensor:
        """``(B, N, N)``, ``(B, N, C)`` -> ``(B, N, C)``."""
        return Fn.regional_pooling(K, X, self.mu, valid, rows_per_chunk=self.rows_per_chunk,
                                   surrogate_width=self.surrogate_width)


class MultiThresholdPooling(nn.Module):
    """The authors' RFP: fixed thresholds, pooled logits fused per class (official-code.md §9)."""

    def __init__(self, thresholds: list[float], num_classes: int, weight_init: float = 1.5,
                 rows_per_chunk: int = 1024) -> None:
        super().__init__()
        self.register_buffer("thresholds", torch.tensor(list(thresholds)), persistent=False)
        self.weight = nn.Parameter(torch.full((num_classes,), float(weight_init)))
        self.rows_per_chunk = rows_per_chunk

    def forward(self, K: Tensor, X: Tensor, valid: Tensor | None = None) -> Tensor:
        """``(B, N, N)``, logits ``(B, N, c)`` -> fused pooled logits ``(B, N, c)``."""
        pooled = torch.stack([Fn.regional_pooling(K, X, float(t), valid, rows_per_chunk=self.rows_per_chunk)
                              for t in self.thresholds.tolist()])
        return Fn.fuse_thresholds(pooled, self.weight)


class PCWAP(nn.Module):
    """Per-category weighted average pooling weights, Eq. 11, with a learned scale per class."""

    def __init__(self, num_classes: int, scale_init: float, learn: bool = True) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.full((num_classes,), math.log(scale_init)), requires_grad=learn)

    @property
    def scale(self) -> Tensor:
        return self.log_scale.exp()

    def forward(self, P: Tensor, valid: Tensor | None = None) -> Tensor:
        """``(B, N, c)`` -> weights ``(B, N, c)``, each class summing to one over the nodes."""
        return Fn.spatial_softmax(P, self.scale, valid)


class WSSSNet(nn.Module):
    """Fig. 5: backbone -> ``F``; RFP by ``K`` -> PRED (``P_sg``) -> PC-WAP -> class scores.

    Args:
        config: :class:`~ndd.wsss.config.WSSSNetConfig` (variant, classes, backbone, RFP and PC-WAP settings).
        backbone_weights: as :func:`ndd.models.build_backbone` takes them (a torchvision enum or
            name for ResNets, ``"imagenet"`` for EfficientNet-Lite, a local file, or ``None``).

    Shape:
        ``forward(images (B, 3, H, W) RGB in [0, 1], K (B, N, N) or None, valid (B, N) or None)``
        with ``N = ceil(H / 8) * ceil(W / 8)``.
    """

    def __init__(self, config: WSSSNetConfig, backbone_weights: object = None) -> None:
        super().__init__()
        self.config = cfg = config
        kwargs = {} if cfg.backbone == "handcrafted" else {"freeze_bn": cfg.freeze_bn}
        self.backbone = build_backbone(cfg.backbone, weights=backbone_weights, **kwargs)
        if cfg.freeze_backbone:
            self.backbone.requires_grad_(False)
        channels = self.backbone.deep_channels
        # authors: a 3x3 convolution with bias and no ReLU turns layer4 into F
        self.projection = None if cfg.feature_dim is None else nn.Conv2d(channels, cfg.feature_dim, 3, padding=1)
        dim = cfg.feature_dim or channels
        c = cfg.num_classes
        self.classifier = nn.Conv2d(dim, c, 1)  # H (dim x c) and b
        self.class_classifier = nn.Conv2d(dim, c, 1) if cfg.variant == "no_sharing" else None
        self.rfp: nn.Module | None = None
        if cfg.kernel is not None:
            if cfg.thresholds:
                self.rfp = MultiThresholdPooling(cfg.thresholds, c, cfg.threshold_weight_init, cfg.rows_per_chunk)
            else:
                self.rfp = RegionalFeaturePooling(cfg.mu_init, cfg.learn_mu, cfg.mu_surrogate_width, cfg.rows_per_chunk)
        self.pcwap = None if cfg.variant == "gap" else PCWAP(c, cfg.pool_scale_init, cfg.learn_pool_scale)
        for conv in (self.projection, self.classifier, self.class_classifier):
            if conv is not None:
                nn.init.normal_(conv.weight, std=0.01)
                nn.init.zeros_(conv.bias)

    # -- parameter groups ---------------------------------------------------- #
    def backbone_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def scalar_parameters(self) -> list[nn.Parameter]:
        """``mu``, threshold weights and PC-WAP scales (no weight decay)."""
        mods = [m for m in (self.rfp, self.pcwap) if m is not None]
        return [p for m in mods for p in m.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        """The new convolutions: projection and classifier(s)."""
        mods = [m for m in (self.projection, self.classifier, self.class_classifier) if m is not None]
        return [p for m in mods for p in m.parameters()]

    @property
    def mu(self) -> float | None:
        """The RFP threshold (``None`` without a single learned one)."""
        return float(self.rfp.mu.detach()) if isinstance(self.rfp, RegionalFeaturePooling) else None

    # -- forward ----------------------------------------------------------- #
    def train(self, mode: bool = True) -> WSSSNet:
        super().train(mode)
        if self.config.freeze_backbone:
            self.backbone.eval()  # a frozen backbone behaves as at inference
        return self

    def backbone_features(self, images: Tensor) -> Tensor:
        """The backbone's deep features ``(B, C, h, w)`` at stride 8 (no graph when it is frozen)."""
        if self.config.freeze_backbone:
            with torch.no_grad():
                return self.backbone(images).deep
        return self.backbone(images).deep

    def features(self, images: Tensor, deep: Tensor | None = None) -> Tensor:
        """``F`` ``(B, d, h, w)`` at stride 8 (``deep``: the backbone's output, if already known)."""
        deep = self.backbone_features(images) if deep is None else deep
        return deep if self.projection is None else self.projection(deep)

    def forward(self, images: Tensor, K: Tensor | None = None, valid: Tensor | None = None,
                deep: Tensor | None = None) -> WSSSOutput:
        """See the class docstring; ``deep``: precomputed :meth:`backbone_features` (a cache)."""
        cfg = self.config
        feats = self.features(images, deep)
        B, _, h, w = feats.shape
        N = h * w
        if valid is not None and tuple(valid.shape) != (B, N):
            raise ValueError(f"valid must be (B, N) = {(B, N)}, got {tuple(valid.shape)}")
        H, b = self.classifier.weight[:, :, 0, 0], self.classifier.bias  # (c, d), (c,)
        flat = feats.flatten(2).transpose(1, 2)  # (B, N, d)
        node_logits = flat @ H.T  # F H, (B, N, c)
        if cfg.variant == "gap":
            if valid is None:
                pooled = flat.mean(1)
            else:
                v = valid[..., None].to(flat.dtype)
                pooled = (flat * v).sum(1) / v.sum(1).clamp_min(1)
            return WSSSOutput(pooled @ H.T + b, None, node_logits, None, (h, w), valid)
        if self.rfp is not None:
            if K is None:
                raise ValueError(f"variant {cfg.variant!r} needs the similarity K (B, N, N)")
            if tuple(K.shape) != (B, N, N):
                raise ValueError(f"K must be (B, N, N) = {(B, N, N)} for a {h}x{w} grid, got {tuple(K.shape)}")
            if K.device != flat.device:
                raise ValueError(f"K is on {K.device}, the network on {flat.device}")
            # RFP then H is H then RFP (linear): pool the c logits, not the d features
            pooled_logits = self.rfp(K, node_logits, valid)
        else:
            pooled_logits = node_logits
        P = Fn.pseudo_segmentation(pooled_logits, b)
        P_pool = torch.softmax(P, dim=-1) if cfg.double_softmax else P  # authors apply it twice
        weights = self.pcwap(P_pool, valid)  # type: ignore[misc]
        if self.class_classifier is None:
            class_logits = (weights * node_logits).sum(1) + b  # H_i^T F_gl_i + b_i
        else:
            H2, b2 = self.class_classifier.weight[:, :, 0, 0], self.class_classifier.bias
            class_logits = (weights * (flat @ H2.T)).sum(1) + b2
        return WSSSOutput(class_logits, P, node_logits, weights, (h, w), valid)

    def loss(self, out: WSSSOutput, targets: Tensor) -> dict[str, Tensor]:
        """Eq. 12 (``loss = loss_cls + loss_mil``); the GAP baseline: BCE on the object classes."""
        if out.seg_probs is None:
            cls = Fn.gap_loss(out.class_logits, targets, self.config.background)
            return {"loss": cls, "loss_cls": cls}
        cls, mil = Fn.wsss_loss(out.class_logits, out.seg_probs, targets, out.valid)
        return {"loss": cls + mil, "loss_cls": cls, "loss_mil": mil}

    @torch.no_grad()
    def segmentation_scores(self, out: WSSSOutput) -> Tensor:
        """Scores ``(B, c, h, w)`` whose argmax over the image's classes is the pseudo label.

        ``P_sg`` for every variant with a class softmax; for ``gap``, max-normalised CAMs with the
        background (if any) at the constant ``cam_background``.
        """
        h, w = out.grid_shape
        if out.seg_probs is not None:
            scores = out.seg_probs
        else:
            scores = Fn.class_activation_maps(out.node_logits, out.valid)
            if self.config.background is not None:
                scores = scores.clone()
                scores[..., self.config.background] = self.config.cam_background
        return scores.transpose(1, 2).reshape(scores.shape[0], -1, h, w)
