"""Configurations of the WSSS network and of its two training steps: plain data, no torch.

The CLI builds its flags from these dataclasses, so ``ndd wsss ... --help`` never imports
torch. Precedence when a run's configuration is assembled (:meth:`RunConfig.from_sources`,
as ``ndd train`` does): dataclass defaults < the configuration stored in the checkpoint
being resumed < ``--config FILE.yaml`` < flags.

**Presets** (:data:`PRESETS`) fill the network keys the user did not set:

* ``paper`` (default): paper §7 as written: one threshold ``mu`` initialised at 0.5 and learned,
  one class softmax, Eq. 10-12.
* ``authors``: the released code (official-code.md §9): four fixed thresholds
  0.95 / 0.75 / 0.6 / 0.4 fused by a per-class softmax over thresholds, the class softmax applied
  twice before PC-WAP, ``mu`` not learned.

**Variants** (Table 4, :data:`VARIANTS`): ``full`` (Fig. 5), ``no_rfp`` (PRED on the features
themselves), ``no_sharing`` (a second classifier for the class scores), ``gap`` (Zhou et al.'s
CAM: global average pooling, class activation maps) and ``embedding`` (``K_D`` replaced by the
plain feature kernel ``exp(-mu ||f_i - f_j||^2)`` of the spec-diff-net's embedding).
"""

from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ndd.train.config import _plain, apply_sources, coerce_value, merge_overrides

__all__ = [
    "VARIANTS",
    "PRESETS",
    "WSSSNetConfig",
    "RunConfig",
    "WSSSTrainConfig",
    "SegTrainConfig",
    "AUTHORS_THRESHOLDS",
]

#: Table 4's methods: name -> one-line description.
VARIANTS: dict[str, str] = {
    "full": "Fig. 5: RFP by K_D, PRED, PC-WAP, shared classifier (paper: 65.8 mIoU)",
    "no_rfp": "without regional feature pooling: PRED on each node's own features (44.6)",
    "no_sharing": "the class scores use a classifier of their own (64.7)",
    "gap": "GAP / CAM of Zhou et al.: global average pooling, CAM pseudo labels (45.2)",
    "embedding": "RFP by the feature kernel exp(-mu ||f_i - f_j||^2) instead of K_D (54.7)",
}

#: The authors' four RFP thresholds (official-code.md §9).
AUTHORS_THRESHOLDS: tuple[float, ...] = (0.95, 0.75, 0.6, 0.4)

#: Network keys of each preset (applied under the user's own keys).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"thresholds": None, "learn_mu": True, "double_softmax": False},
    "authors": {"thresholds": list(AUTHORS_THRESHOLDS), "learn_mu": False, "double_softmax": True},
}


def _opt(help: str, **kwargs: Any) -> Any:
    """A dataclass field whose help text the CLI shows."""
    return field(metadata={"help": help}, **kwargs)


C = TypeVar("C", bound="_Config")


class _Config:
    """from_dict / to_dict / merged for the dataclasses below (type-checked like ``TrainConfig``)."""

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))  # type: ignore[call-overload]

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
        types_ = cls.field_types()
        return cls(**{k: coerce_value(k, v, types_[k]) for k, v in data.items()})

    def merged(self: C, overrides: dict[str, Any]) -> C:
        """A copy with ``overrides``; ``model`` dicts are merged key by key."""
        return type(self).from_dict(merge_overrides(self.to_dict(), overrides))


@dataclass
class WSSSNetConfig(_Config):
    """Everything that rebuilds a :class:`ndd.wsss.WSSSNet` and its ``K`` guidance (saved in checkpoints)."""

    num_classes: int = _opt("classes, background included (VOC: 21)", default=21)
    background: int | None = _opt("index of the background class (present in every image); None: no background", default=0)
    variant: str = _opt("full, no_rfp, no_sharing, gap or embedding (Table 4)", default="full")
    backbone: str = _opt("segmentation backbone: resnet101 (paper), resnet50, efficientnet_lite0, ... (ndd.models)",
                         default="resnet101")
    feature_dim: int | None = _opt("channels of F after a 3x3 conv on the backbone (authors 1024); None: the backbone's",
                                   default=1024)
    freeze_bn: bool = _opt("batch norm of the backbone in eval mode with frozen affine parameters", default=True)
    freeze_backbone: bool = _opt("train only what follows the backbone (no graph through it; CPU-sized runs)",
                                 default=False)
    mu_init: float = _opt("RFP threshold mu of M = [K > mu] (paper: initialised at 0.5)", default=0.5)
    learn_mu: bool = _opt("learn mu (straight-through gradient of a sigmoid step; the authors' code does not)",
                          default=True)
    mu_surrogate_width: float = _opt("width of the sigmoid whose slope stands for d[K > mu]/d mu", default=0.05)
    thresholds: list[float] | None = _opt("several fixed thresholds fused per class (authors: 0.95 0.75 0.6 0.4)",
                                          default=None)
    threshold_weight_init: float = _opt("authors' per-class weight of the softmax over thresholds", default=1.5)
    double_softmax: bool = _opt("apply the class softmax twice before PC-WAP (authors' code)", default=False)
    pool_scale_init: float = _opt("PC-WAP: spatial softmax of scale * P_sg_i, learned per class (authors: exp(5))",
                                  default=math.exp(5.0))
    learn_pool_scale: bool = _opt("learn the PC-WAP scales (the paper's theta_i)", default=True)
    cam_background: float = _opt("gap variant: background score against max-normalised CAMs", default=0.15)
    rows_per_chunk: int = _opt("RFP: rows of M = [K > mu] built at a time (memory O(rows x N))", default=1024)
    # -- the frozen spec-diff-net that gives K --------------------------------
    spec_diff_net: str = _opt("guidance model: bsds500 (the shipped BSDS500 model; the default model's K_D is the same, "
                              "its HED edges only serve hierarchies), bsds500_hed, handcrafted or a checkpoint / weights file",
                              default="bsds500")
    guidance_scale: float = _opt("input scale of the spec-diff-net (K is resampled to the feature grid)", default=1.0)
    guidance_t: float | None = _opt("override the spec-diff-net's diffusion time t (None: its own)", default=None)
    guidance_window: int | None = _opt("override the spec-diff-net's affinity window (None: its own)", default=None)
    embedding_mu: float | None = _opt("embedding variant: mu of exp(-mu ||f_i - f_j||^2) (None: the model's mu)",
                                      default=None)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.background is not None and not 0 <= self.background < self.num_classes:
            raise ValueError(f"background must be a class index below {self.num_classes} or None, got {self.background}")
        if not 0 < self.mu_init < 1:
            raise ValueError(f"mu_init must be in (0, 1), got {self.mu_init}")
        if self.thresholds is not None and (not self.thresholds or not all(0 < t < 1 for t in self.thresholds)):
            raise ValueError(f"thresholds must be values in (0, 1), got {self.thresholds}")
        if self.pool_scale_init <= 0 or self.mu_surrogate_width <= 0 or self.guidance_scale <= 0:
            raise ValueError("pool_scale_init, mu_surrogate_width and guidance_scale must be positive")
        if self.rows_per_chunk < 1:
            raise ValueError(f"rows_per_chunk must be >= 1, got {self.rows_per_chunk}")

    @property
    def kernel(self) -> str | None:
        """What ``K`` the variant needs: ``"diffusion"`` (``K_D``), ``"embedding"`` or ``None``."""
        return {"full": "diffusion", "no_sharing": "diffusion", "embedding": "embedding"}.get(self.variant)


@dataclass
class RunConfig(_Config):
    """Fields shared by both training steps (run, data, optimisation, logging)."""

    SECTION: ClassVar[str] = "run"
    # -- run ------------------------------------------------------------------
    run_dir: str = _opt("output folder: config.yaml, metrics.csv, tb/, checkpoints/, last.pt", default="runs/wsss")
    seed: int = _opt("seed of initialisation, data order and augmentation", default=0)
    device: str = _opt("auto, cpu, cuda, cuda:N or mps", default="auto")
    deterministic: bool = _opt("deterministic algorithms (slower on CUDA)", default=False)
    num_threads: int | None = _opt("torch CPU threads per process (None: torch's default)", default=None)
    resume: str | None = _opt("checkpoint to continue from exactly", default=None)
    # -- data -----------------------------------------------------------------
    dataset: str = _opt("voc (VOCdevkit/VOC2012 [+ SBD]) or folder (generic layout, ndd.data.ImageLabelFolder)",
                        default="voc")
    data_root: str | None = _opt("VOC2012 / VOCdevkit folder, or the generic-layout folder", default=None)
    split: str | None = _opt("split list (voc: train_aug, train, val; folder: <split>.txt, None for all)",
                             default="train_aug")
    image_labels: str = _opt("voc: image-level labels from xml, mask or auto (xml when it exists)", default="auto")
    crop_size: int = _opt("square training crop (paper 321)", default=321)
    scale_range: tuple[float, float] = _opt("random scale range before cropping", default=(0.9, 1.3))
    flip: bool = _opt("random horizontal flips", default=True)
    batch_size: int = _opt("images per step and per process", default=8)
    num_workers: int = _opt("DataLoader worker processes", default=2)
    # -- optimisation ---------------------------------------------------------
    steps: int = _opt("optimiser steps", default=10_000)
    optimizer: str = _opt("sgd (momentum 0.9) or adam", default="sgd")
    lr: float = _opt("learning rate of the pretrained backbone", default=1e-3)
    head_lr_mult: float = _opt("learning rate of the new layers = this x lr", default=10.0)
    weight_decay: float = _opt("weight decay", default=5e-4)
    poly_power: float = _opt("poly schedule power", default=0.9)
    grad_clip: float | None = _opt("clip the global gradient norm (None: off)", default=None)
    amp: str = _opt("mixed precision of the backbone on CUDA: auto, bf16, fp16, off", default="auto")
    # -- logging ----------------------------------------------------------------
    log_every: int = _opt("steps between metrics.csv / TensorBoard rows", default=20)
    save_every: int = _opt("steps between checkpoints (0: only at the end)", default=1000)
    keep_checkpoints: int = _opt("numbered checkpoints kept (0: all)", default=2)
    progress: bool = _opt("progress bar (rank 0)", default=True)
    tensorboard: bool = _opt("TensorBoard events in <run_dir>/tb", default=True)

    @classmethod
    def from_sources(
        cls: type[C],
        *,
        resume: str | Path | None = None,
        config_file: str | Path | None = None,
        overrides: dict[str, Any] | None = None,
        model: dict[str, Any] | None = None,
    ) -> C:
        """Defaults < the checkpoint's stored config (``resume``) < YAML ``config_file`` < ``overrides`` < ``model``."""
        config = cls()
        if resume is not None:
            from .checkpoints import read_run_config  # torch, only when resuming

            config = cls.from_dict(read_run_config(resume, cls.SECTION)).merged({"resume": str(resume)})
        return apply_sources(config, config_file, overrides, model, what="config")

    def validate(self, check_data: bool = True) -> None:
        """``ValueError`` on inconsistent settings, before any work."""
        if self.dataset not in ("voc", "folder"):
            raise ValueError(f"dataset must be 'voc' or 'folder', got {self.dataset!r}")
        if check_data and self.data_root is None:
            raise ValueError("no data: give data_root (--data)")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ValueError(f"amp must be auto, bf16, fp16 or off, got {self.amp!r}")
        for name in ("steps", "batch_size", "crop_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range must be (lo, hi) with 0 < lo <= hi, got {self.scale_range}")
        if self.image_labels not in ("auto", "xml", "mask"):
            raise ValueError(f"image_labels must be auto, xml or mask, got {self.image_labels!r}")


@dataclass
class WSSSTrainConfig(RunConfig):
    """``ndd wsss train``: the WSSS network of Fig. 5 from image-level labels (Eq. 12)."""

    SECTION: ClassVar[str] = "wsss"
    preset: str = _opt("paper (§7 as written) or authors (their released code: 4 thresholds, double softmax)",
                       default="paper")
    variant: str = _opt("full, no_rfp, no_sharing, gap or embedding (Table 4)", default="full")
    weights: str | None = _opt("backbone weights: torchvision name (ResNets, e.g. IMAGENET1K_V2), 'imagenet' "
                               "(EfficientNet-Lite) or a local file; None: random init", default=None)
    model: dict[str, Any] = _opt("WSSSNetConfig keys (network and guidance); unset keys come from the preset",
                                 default_factory=dict)
    guidance_cache: str | None = _opt("folder caching K per image and crop geometry (pays off when crops repeat: "
                                      "whole images, flips only)", default=None)
    feature_cache: str | None = _opt("folder caching the frozen backbone's features per image and crop geometry "
                                     "(needs freeze_backbone)", default=None)

    def model_config(self, num_classes: int | None = None, background: int | None | str = "keep") -> WSSSNetConfig:
        """The network configuration: preset, then ``model`` keys, then the data's classes."""
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        data = {**PRESETS[self.preset], "variant": self.variant, **self.model}
        if num_classes is not None:
            data["num_classes"] = num_classes
        if background != "keep":
            data["background"] = background
        return WSSSNetConfig.from_dict(data)

    def validate(self, check_data: bool = True) -> None:
        super().validate(check_data)
        net = self.model_config()  # unknown keys and bad values fail here
        if self.feature_cache and not net.freeze_backbone:
            raise ValueError("feature_cache needs a frozen backbone (model freeze_backbone: true)")


@dataclass
class SegTrainConfig(RunConfig):
    """``ndd wsss train-seg``: a segmentation network (DeepLab) trained on pseudo labels."""

    SECTION: ClassVar[str] = "seg"
    pseudo_labels: str | None = _opt("folder of pseudo-label PNGs (ndd wsss pseudo-labels), one per training image",
                                     default=None)
    arch: str = _opt("deeplabv3_resnet101 (paper's ResNet-101), deeplabv3_resnet50, or deeplabv3_<ndd backbone> "
                     "(e.g. deeplabv3_efficientnet_lite0)", default="deeplabv3_resnet101")
    weights: str | None = _opt("backbone weights: torchvision name (e.g. IMAGENET1K_V2), 'imagenet' (EfficientNet-Lite) "
                               "or a local file; None: random init", default=None)
    freeze_bn: bool = _opt("fixed batch norm, as the paper (batch statistics of a few crops are too noisy)", default=True)
    freeze_backbone: bool = _opt("train the head only (no graph through the backbone; CPU-sized runs)", default=False)
    feature_cache: str | None = _opt("folder caching the frozen backbone's features per image and crop geometry "
                                     "(needs freeze_backbone)", default=None)
    num_classes: int | None = _opt("classes (None: from the data set)", default=None)

    def validate(self, check_data: bool = True) -> None:
        super().validate(check_data)
        if check_data and self.pseudo_labels is None:
            raise ValueError("no pseudo labels: give pseudo_labels (--pseudo-labels DIR)")
        if self.feature_cache and not self.freeze_backbone:
            raise ValueError("feature_cache needs a frozen backbone (--freeze-backbone)")
