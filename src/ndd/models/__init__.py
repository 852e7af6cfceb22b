"""Models: backbones, spec-diff-net and its trained weights.

Names are imported on first use (PEP 562), so that ``ndd.models.config`` (plain
data) can be read without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ndd._lazy import lazy_attributes

if TYPE_CHECKING:
    from .backbone_base import Backbone, BackboneOutput
    from .backbones import BACKBONES, available_backbones, build_backbone
    from .config import SpecDiffNetConfig
    from .specdiffnet import SpecDiffNet, SpecDiffNetOutput
    from .weights import SpecDiffNetWeights, WeightsEntry, get_weights, load_default_model, load_model, save_model, spec_diff_net

_WHERE = {
    "Backbone": "backbone_base",
    "BackboneOutput": "backbone_base",
    "BACKBONES": "backbones",
    "available_backbones": "backbones",
    "build_backbone": "backbones",
    "SpecDiffNet": "specdiffnet",
    "SpecDiffNetConfig": "config",
    "SpecDiffNetOutput": "specdiffnet",
    "SpecDiffNetWeights": "weights",
    "WeightsEntry": "weights",
    "get_weights": "weights",
    "load_default_model": "weights",
    "load_model": "weights",
    "save_model": "weights",
    "spec_diff_net": "weights",
}

__all__ = list(_WHERE)


__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)
