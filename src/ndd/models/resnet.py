"""Dilated torchvision ResNets (output stride 8) as multi-level backbones.

The paper takes its three feature levels from "conv1, conv2, conv5 of
ResNet-101" at 1/2, 1/4 and 1/8 of the image size, i.e. torchvision's
``relu(bn1(conv1))`` (stride 2), ``layer1`` (stride 4) and ``layer4`` (stride 8
once layer3 and layer4 are dilated instead of strided, as in DeepLab).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

import torchvision
from torch import Tensor, nn
from torchvision.models import ResNet
from torchvision.models._api import WeightsEnum

from .backbone_base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    BackboneOutput,
    Normalize,
    load_state_strict,
    read_checkpoint,
    strip_prefixes,
)

__all__ = ["ResNetBackbone", "resnet18", "resnet50", "resnet101", "ResNetWeights"]

#: What ``weights=`` accepts: an enum member (e.g. ``ResNet101_Weights.IMAGENET1K_V2``),
#: its name as a string (``"ResNet101_Weights.IMAGENET1K_V2"``, or just
#: ``"IMAGENET1K_V2"`` / ``"DEFAULT"``), a path to a local state dict, or ``None``.
ResNetWeights = WeightsEnum | str | os.PathLike[str] | None

_ARCHS: dict[str, tuple[type[WeightsEnum], bool]] = {
    # name: (weights enum, has Bottleneck blocks)
    "resnet18": (torchvision.models.ResNet18_Weights, False),
    "resnet50": (torchvision.models.ResNet50_Weights, True),
    "resnet101": (torchvision.models.ResNet101_Weights, True),
}

# Checkpoint keys that belong to a classifier the backbone does not have:
# torchvision's ``fc`` and DeepLab-v2's ASPP classifier ``layer5``.
_CLASSIFIER_PREFIXES = ("fc.", "layer5.")


class ResNetBackbone(Backbone):
    """ResNet-18/50/101 at output stride 8.

    Output (input ``(B, 3, H, W)``, RGB in [0, 1], ImageNet-normalised inside):

    * ``levels[0]``: conv1 after BN and ReLU, 64 channels, stride 2;
    * ``levels[1]``: layer1 ("conv2"), 64 (ResNet-18) or 256 channels, stride 4;
    * ``levels[2]``: layer4 ("conv5", the paper's choice), 512 or 2048 channels,
      stride 8; with ``stride8_level="layer2"`` it is layer2 instead
      (128 or 512 channels), cheaper and less semantic;
    * ``deep``: layer4, 512 or 2048 channels, stride 8.

    Args:
        arch: ``"resnet18"``, ``"resnet50"`` or ``"resnet101"``.
        weights: see :data:`ResNetWeights`; ``None`` is random initialisation.
        freeze_bn: batch norm in eval mode with frozen affine parameters (default).
        stride8_level: which stage gives ``levels[2]``.
    """

    def __init__(
        self,
        arch: str = "resnet101",
        weights: ResNetWeights = None,
        *,
        freeze_bn: bool = True,
        stride8_level: Literal["layer4", "layer2"] = "layer4",
    ) -> None:
        super().__init__(freeze_bn=freeze_bn)
        if arch not in _ARCHS:
            raise ValueError(f"unknown ResNet {arch!r}; choose from {sorted(_ARCHS)}")
        if stride8_level not in ("layer4", "layer2"):
            raise ValueError(f"stride8_level must be 'layer4' or 'layer2', got {stride8_level!r}")
        enum_cls, bottleneck = _ARCHS[arch]
        # Resolve weights before building anything, so a bad argument fails fast.
        state, source = _resolve_weights(arch, enum_cls, weights)

        builder = getattr(torchvision.models, arch)
        if bottleneck:
            net: ResNet = builder(weights=None, replace_stride_with_dilation=[False, True, True])
        else:
            net = builder(weights=None)
            _dilate_basic_layer(net.layer3, previous=1, dilation=2)
            _dilate_basic_layer(net.layer4, previous=2, dilation=4)

        self.arch = arch
        self.stride8_level = stride8_level
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        # Same attribute names as torchvision so checkpoints load key for key.
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

        expansion = 4 if bottleneck else 1
        c8 = 512 * expansion if stride8_level == "layer4" else 128 * expansion
        self.level_channels = (64, 64 * expansion, c8)
        self.deep_channels = 512 * expansion
        self.deep_is_last_level = stride8_level == "layer4"

        if state is not None:
            load_state_strict(self, strip_prefixes(state), ignore=_CLASSIFIER_PREFIXES, source=source)
        self._apply_freeze_bn()

    def extract(self, images: Tensor) -> BackboneOutput:
        x = self.relu(self.bn1(self.conv1(self.normalize(images))))
        f2 = x
        f4 = self.layer1(self.maxpool(x))
        x2 = self.layer2(f4)
        deep = self.layer4(self.layer3(x2))
        f8 = deep if self.stride8_level == "layer4" else x2
        return BackboneOutput(levels=[f2, f4, f8], deep=deep)


def _dilate_basic_layer(layer: nn.Sequential, previous: int, dilation: int) -> None:
    """Turn a strided BasicBlock stage into a dilated one, in place.

    torchvision's BasicBlock refuses ``dilation > 1``, so we edit the convs:
    stride 1 everywhere, and padding = dilation keeps 3x3 convs size-preserving.
    As torchvision does for Bottleneck stages, the first block keeps the
    previous stage's dilation and the others use the new one.
    """
    for i, block in enumerate(layer):
        d = previous if i == 0 else dilation
        for conv in (block.conv1, block.conv2):
            conv.stride, conv.dilation, conv.padding = (1, 1), (d, d), (d, d)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)


def _resolve_weights(
    arch: str, enum_cls: type[WeightsEnum], weights: ResNetWeights
) -> tuple[Mapping[str, Tensor] | None, str]:
    """Turn the ``weights`` argument into a state dict (or ``None``) and a description."""
    if weights is None:
        return None, "random init"
    if isinstance(weights, WeightsEnum):
        if not isinstance(weights, enum_cls):
            raise ValueError(f"{arch} needs {enum_cls.__name__} weights, got {weights}")
        return _download(weights), str(weights)
    if isinstance(weights, os.PathLike) or (isinstance(weights, str) and os.path.isfile(weights)):
        return read_checkpoint(weights), f"checkpoint {os.fspath(weights)!r}"
    if isinstance(weights, str):
        name = weights.split(".", 1)[1] if weights.startswith(enum_cls.__name__ + ".") else weights
        if "." not in name and name in enum_cls.__members__:
            member = enum_cls[name]
            return _download(member), str(member)
        raise ValueError(
            f"weights={weights!r} for {arch} is neither an existing checkpoint file nor a member of "
            f"{enum_cls.__name__} ({', '.join(enum_cls.__members__)})"
        )
    raise ValueError(
        f"weights for {arch} must be None, a {enum_cls.__name__} member, its name or a checkpoint path; "
        f"got {type(weights).__name__}"
    )


def _download(member: WeightsEnum) -> Mapping[str, Tensor]:
    try:
        return member.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        raise RuntimeError(
            f"could not download {member} from {member.url}: {exc}. On an offline machine, download the "
            "file elsewhere and pass its local path as weights=."
        ) from exc


def resnet18(weights: ResNetWeights = None, **kwargs: object) -> ResNetBackbone:
    """ResNet-18 backbone, output stride 8; channels levels (64, 64, 512), deep 512."""
    return ResNetBackbone("resnet18", weights, **kwargs)  # type: ignore[arg-type]


def resnet50(weights: ResNetWeights = None, **kwargs: object) -> ResNetBackbone:
    """ResNet-50 backbone, output stride 8; channels levels (64, 256, 2048), deep 2048."""
    return ResNetBackbone("resnet50", weights, **kwargs)  # type: ignore[arg-type]


def resnet101(weights: ResNetWeights = None, **kwargs: object) -> ResNetBackbone:
    """ResNet-101 backbone (the paper's), output stride 8; levels (64, 256, 2048), deep 2048."""
    return ResNetBackbone("resnet101", weights, **kwargs)  # type: ignore[arg-type]

