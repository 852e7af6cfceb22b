"""The segmentation network trained on pseudo labels (paper §7): DeepLab on a dilated backbone.

``deeplabv3_resnet101`` is torchvision's DeepLabV3 (ResNet-101 with layers 3-4 dilated, output
stride 8, and torchvision's ASPP head ``DeepLabHead``) built from ``ndd``'s ResNet backbone,
which takes the same ImageNet weights (a torchvision enum or its name, e.g. ``IMAGENET1K_V2``,
or a local file) and normalises inside. ``deeplabv3_<name>`` puts the same head on any other
``ndd`` backbone (``efficientnet_lite0`` with its offline ImageNet weights, ``resnet50``, ...).
Batch norm of a pretrained backbone stays fixed (paper: "fixed batch normalization").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead

from ndd.models import available_backbones, build_backbone

__all__ = ["SegmentationNet", "build_segmentation_net", "SEG_ARCH_PREFIX"]

SEG_ARCH_PREFIX = "deeplabv3_"


class SegmentationNet(nn.Module):
    """DeepLabV3: backbone (stride 8) -> ASPP head -> class logits up-sampled to the input size.

    Args:
        backbone: an ``ndd`` backbone name.
        num_classes: output classes.
        weights: backbone weights (see :func:`ndd.models.build_backbone`); ``None``: random init.
        freeze_bn: batch norm of the backbone in eval mode with frozen affine parameters.

    Shape:
        ``forward(images (B, 3, H, W) RGB in [0, 1]) -> logits (B, num_classes, H, W)``.
    """

    def __init__(self, backbone: str, num_classes: int, weights: object = None, freeze_bn: bool = True,
                 freeze_backbone: bool = False) -> None:
        super().__init__()
        kwargs = {} if backbone == "handcrafted" else {"freeze_bn": freeze_bn}
        self.backbone = build_backbone(backbone, weights=weights, **kwargs)
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            self.backbone.requires_grad_(False)
        self.head = DeepLabHead(self.backbone.deep_channels, num_classes)
        self.num_classes = num_classes

    def train(self, mode: bool = True) -> SegmentationNet:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def backbone_features(self, images: Tensor) -> Tensor:
        """The backbone's deep features (no graph when it is frozen)."""
        if self.freeze_backbone:
            with torch.no_grad():
                return self.backbone(images).deep
        return self.backbone(images).deep

    def forward(self, images: Tensor, deep: Tensor | None = None) -> Tensor:
        """Logits at the input size; ``deep``: precomputed :meth:`backbone_features` (a cache)."""
        logits = self.head(self.backbone_features(images) if deep is None else deep)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())


def build_segmentation_net(arch: str, num_classes: int, weights: object = None, freeze_bn: bool = True,
                           freeze_backbone: bool = False) -> SegmentationNet:
    """``arch`` = ``deeplabv3_<ndd backbone>`` (``deeplabv3_resnet101`` is the paper's network).

    Raises:
        ValueError: an unknown architecture (the message lists the choices).
    """
    name = arch[len(SEG_ARCH_PREFIX):] if arch.startswith(SEG_ARCH_PREFIX) else ""
    if name not in available_backbones():
        choices = ", ".join(SEG_ARCH_PREFIX + b for b in available_backbones())
        raise ValueError(f"unknown segmentation network {arch!r}; choose from {choices}")
    return SegmentationNet(name, num_classes, weights, freeze_bn, freeze_backbone)
