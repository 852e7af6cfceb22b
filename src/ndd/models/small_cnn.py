"""A small conv-BN-ReLU network that trains from scratch on a CPU."""

from __future__ import annotations

import os

from torch import Tensor, nn

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

__all__ = ["SmallCNN", "small_cnn"]


def _conv_bn_relu(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    # 3x3 with padding = dilation: output size is ceil(in / stride) for any size.
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallCNN(Backbone):
    """Six 3x3 conv-BN-ReLU layers, about 288k parameters with the default widths.

    =========  ============================================  ===========
    output     layers                                        shape
    =========  ============================================  ===========
    levels[0]  conv s2 (3->32), conv (32->32)                (B, 32, H/2, W/2)
    levels[1]  conv s2 (32->64), conv (64->64)               (B, 64, H/4, W/4)
    levels[2]  conv s2 (64->128)                             (B, 128, H/8, W/8)
    deep       conv dilation 2 (128->128)                    (B, 128, H/8, W/8)
    =========  ============================================  ===========

    (sizes rounded up). The dilated last layer widens the receptive field
    without a further stride, like the output-stride-8 ResNets.

    Args:
        widths: channels of the three levels.
        deep_channels: channels of ``deep``.
        weights: ``None`` (random init) or a path to a state dict of this module.
        freeze_bn: off by default: trained from scratch, batch norm must learn.
    """

    def __init__(
        self,
        widths: tuple[int, int, int] = (32, 64, 128),
        deep_channels: int = 128,
        weights: str | os.PathLike[str] | None = None,
        *,
        freeze_bn: bool = False,
    ) -> None:
        super().__init__(freeze_bn=freeze_bn)
        c2, c4, c8 = widths
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.stage2 = nn.Sequential(_conv_bn_relu(3, c2, stride=2), _conv_bn_relu(c2, c2))
        self.stage4 = nn.Sequential(_conv_bn_relu(c2, c4, stride=2), _conv_bn_relu(c4, c4))
        self.stage8 = _conv_bn_relu(c4, c8, stride=2)
        self.context = _conv_bn_relu(c8, deep_channels, dilation=2)
        self.level_channels = (c2, c4, c8)
        self.deep_channels = deep_channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if weights is not None:
            if not isinstance(weights, (str, os.PathLike)):
                raise ValueError(f"weights for small_cnn must be None or a checkpoint path, got {type(weights).__name__}")
            if not os.path.isfile(weights):
                raise ValueError(f"weights={weights!r}: small_cnn has no pretrained weights; pass a checkpoint path")
            load_state_strict(self, strip_prefixes(read_checkpoint(weights)), source=f"checkpoint {os.fspath(weights)!r}")
        self._apply_freeze_bn()

    def extract(self, images: Tensor) -> BackboneOutput:
        f2 = self.stage2(self.normalize(images))
        f4 = self.stage4(f2)
        f8 = self.stage8(f4)
        return BackboneOutput(levels=[f2, f4, f8], deep=self.context(f8))


def small_cnn(weights: str | os.PathLike[str] | None = None, **kwargs: object) -> SmallCNN:
    """Small CPU-trainable CNN; levels (32, 64, 128), deep 128 by default."""
    return SmallCNN(weights=weights, **kwargs)  # type: ignore[arg-type]
