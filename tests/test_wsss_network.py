"""WSSSNet (Fig. 5) and its Table-4 variants, the guidance, the configs and the segmentation network."""

import math

import pytest
import torch

from ndd.wsss import WSSSNet, WSSSNetConfig, WSSSTrainConfig
from ndd.wsss import functional as Fn
from ndd.wsss.config import PRESETS
from ndd.wsss.guidance import Guidance, TensorCache, load_guidance_model
from ndd.wsss.segnet import build_segmentation_net

pytestmark = pytest.mark.usefixtures("one_thread")


def net(variant="full", **kw):
    torch.manual_seed(0)
    cfg = WSSSNetConfig(num_classes=4, variant=variant, backbone="small_cnn", feature_dim=8, **kw)
    return WSSSNet(cfg).eval()


def inputs(B=2, size=32):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(B, 3, size, size, generator=g)
    n = (size // 8) ** 2
    f = torch.randn(B, n, 2, generator=g)
    K = torch.exp(-torch.cdist(f, f).square())
    y = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 1.0]])[:B]
    return x, K, y


@pytest.mark.parametrize("variant", ["full", "no_rfp", "no_sharing", "embedding", "gap"])
def test_variants_shapes_and_losses(variant):
    model = net(variant)
    x, K, y = inputs()
    out = model(x, K if model.config.kernel else None)
    assert out.class_logits.shape == (2, 4) and out.node_logits.shape == (2, 16, 4) and out.grid_shape == (4, 4)
    losses = model.loss(out, y)
    assert torch.isfinite(losses["loss"])
    if variant == "gap":
        assert out.seg_probs is None and set(losses) == {"loss", "loss_cls"}
        scores = model.segmentation_scores(out)
        assert (scores[:, 0] == model.config.cam_background).all()  # constant background against the CAMs
    else:
        torch.testing.assert_close(out.seg_probs.sum(-1), torch.ones(2, 16))
        torch.testing.assert_close(out.pool_weights.sum(1), torch.ones(2, 4))
        assert losses["loss"].item() == pytest.approx((losses["loss_cls"] + losses["loss_mil"]).item())
    losses["loss"].backward()
    assert model.classifier.weight.grad is not None
    assert (model.class_classifier is not None) == (variant == "no_sharing")
    assert (model.rfp is not None) == (variant in ("full", "no_sharing", "embedding"))


def test_full_network_follows_equations_10_to_12():
    model = net("full")
    x, K, y = inputs()
    out = model(x, K)
    F = model.features(x).flatten(2).transpose(1, 2)  # (B, N, d)
    H, b = model.classifier.weight[:, :, 0, 0].T, model.classifier.bias  # (d, c), (c,)
    F_M = Fn.pooling_operator(K, 0.5) @ F  # RFP on the features themselves
    P = torch.softmax(F_M @ H + b, -1)  # Eq. 10
    torch.testing.assert_close(out.seg_probs, P, atol=1e-5, rtol=1e-4)
    w = torch.softmax(math.exp(5.0) * P, dim=1)  # Eq. 11, spatial softmax at the initial scale
    F_gl = torch.einsum("bnd,bnc->bcd", F, w)
    P_cl = torch.einsum("bcd,dc->bc", F_gl, H) + b  # the shared classifier
    torch.testing.assert_close(out.class_logits, P_cl, atol=1e-5, rtol=1e-4)


def test_no_rfp_equals_full_with_an_identity_kernel():
    x, K, _ = inputs()
    full, no_rfp = net("full"), net("no_rfp")
    no_rfp.load_state_dict(full.state_dict(), strict=False)
    eye = torch.eye(16).expand(2, 16, 16)
    torch.testing.assert_close(full(x, eye).seg_probs, no_rfp(x).seg_probs)


def test_authors_preset_thresholds_and_double_softmax():
    model = net("full", **{k: v for k, v in PRESETS["authors"].items()})
    assert model.rfp.thresholds.tolist() == pytest.approx([0.95, 0.75, 0.6, 0.4])
    assert not any(p.requires_grad for p in [getattr(model.rfp, "mu_logit", torch.zeros(()))])
    x, K, y = inputs()
    out = model(x, K)
    torch.testing.assert_close(out.seg_probs.sum(-1), torch.ones(2, 16))
    model.loss(out, y)["loss"].backward()
    assert model.rfp.weight.grad is not None
    cfg = WSSSTrainConfig(preset="authors", variant="no_sharing", model={"double_softmax": False})
    assert cfg.model_config().thresholds == [0.95, 0.75, 0.6, 0.4] and not cfg.model_config().double_softmax


def test_bad_inputs_get_one_line_errors():
    model = net("full")
    x, K, _ = inputs()
    with pytest.raises(ValueError, match="needs the similarity K"):
        model(x)
    with pytest.raises(ValueError, match=r"K must be \(B, N, N\) = \(2, 16, 16\) for a 4x4 grid"):
        model(x, K[:, :9, :9])
    with pytest.raises(ValueError, match="K is on meta, the network on cpu"):
        model(x, torch.empty(2, 16, 16, device="meta"))
    with pytest.raises(ValueError, match="variant must be one of"):
        WSSSNetConfig(variant="crf")
    with pytest.raises(ValueError, match=r"unknown WSSSNetConfig keys: \['mu'\]"):
        WSSSTrainConfig(model={"mu": 0.3}).model_config()
    with pytest.raises(ValueError, match="feature_cache needs a frozen backbone"):
        WSSSTrainConfig(data_root=".", feature_cache="x").validate()


def test_guidance_kernels_on_the_feature_grid_and_cache(tmp_path):
    model = load_guidance_model("handcrafted")
    x = torch.rand(2, 3, 40, 48)
    for kind in ("diffusion", "embedding"):
        g = Guidance(model, kind)
        K = g(x, (5, 6))
        assert K.shape == (2, 30, 30) and torch.isfinite(K).all()
        assert torch.diagonal(K, dim1=1, dim2=2).min() > 0.99  # K_ii = 1 for both kernels
    g = Guidance(load_guidance_model("handcrafted"), "diffusion", scale=2.0)
    assert g(x, (5, 6)).shape == (2, 30, 30)  # ran on a 10x12 grid, resampled
    cache = TensorCache(tmp_path, g.fingerprint("handcrafted"))
    a = cache.get(lambda im: g(im, (5, 6)), x, ["a", "b"], ["s1", "s1"])
    b = cache.get(lambda im: g(im, (5, 6)) * 0, x, ["a", "b"], ["s1", "s1"])  # read back, not recomputed
    torch.testing.assert_close(a, b)
    assert cache.hits == 2 and cache.misses == 2
    with pytest.raises(ValueError, match="unknown weights 'nope'"):
        load_guidance_model("nope")


def test_segmentation_net_and_frozen_backbone():
    model = build_segmentation_net("deeplabv3_small_cnn", 5, freeze_backbone=True).train()
    logits = model(torch.rand(2, 3, 33, 40))
    assert logits.shape == (2, 5, 33, 40)
    assert not any(p.requires_grad for p in model.backbone.parameters()) and not model.backbone.training
    with pytest.raises(ValueError, match="unknown segmentation network 'pspnet'"):
        build_segmentation_net("pspnet", 5)
