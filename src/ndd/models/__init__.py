"""Models: backbones, spec-diff-net and its trained weights."""

from .backbone_base import Backbone, BackboneOutput
from .backbones import BACKBONES, available_backbones, build_backbone
from .spec_diff_net import SpecDiffNet, SpecDiffNetConfig, SpecDiffNetOutput
from .weights import SpecDiffNetWeights, WeightsEntry, load_default_model, load_model, save_model, spec_diff_net

__all__ = [
    "Backbone",
    "BackboneOutput",
    "BACKBONES",
    "available_backbones",
    "build_backbone",
    "SpecDiffNet",
    "SpecDiffNetConfig",
    "SpecDiffNetOutput",
    "SpecDiffNetWeights",
    "WeightsEntry",
    "load_default_model",
    "load_model",
    "save_model",
    "spec_diff_net",
]
