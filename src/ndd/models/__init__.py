"""Models: backbones and spec-diff-net."""

from .backbone_base import Backbone, BackboneOutput
from .backbones import BACKBONES, available_backbones, build_backbone
from .spec_diff_net import SpecDiffNet, SpecDiffNetConfig, SpecDiffNetOutput

__all__ = [
    "Backbone",
    "BackboneOutput",
    "BACKBONES",
    "available_backbones",
    "build_backbone",
    "SpecDiffNet",
    "SpecDiffNetConfig",
    "SpecDiffNetOutput",
]
