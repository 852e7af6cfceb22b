import pytest
import torch

from ndd.models import SpecDiffNet, SpecDiffNetConfig


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(**kw):
    base = dict(backbone="small_cnn", window=5, n_eigs=8, n_power=4)
    base.update(kw)
    return SpecDiffNetConfig(**base)


def test_forward_shapes_and_kernel_properties():
    torch.manual_seed(0)
    net = SpecDiffNet(tiny_config()).eval()
    out = net(torch.rand(2, 3, 45, 61))
    h, w = 6, 8  # ceil(45/8), ceil(61/8)
    assert out.grid_shape == (h, w)
    assert out.distance.shape == out.similarity.shape == (2, h * w, h * w)
    assert out.eigenvalues.shape == (2, 8) and out.eigenvectors.shape == (2, h * w, 8)
    assert torch.allclose(out.eigenvalues[:, 0], torch.ones(2), atol=1e-4)
    K = out.similarity
    assert torch.allclose(K, K.transpose(1, 2), atol=1e-5)
    assert torch.allclose(K.diagonal(dim1=1, dim2=2), torch.ones(2, h * w), atol=1e-5)
    assert ((K > 0) & (K <= 1 + 1e-6)).all()
    assert [tuple(f.shape[-2:]) for f in out.levels] == [(23, 31), (12, 16), (6, 8)]


def test_spectral_dtype_of_one_call_overrides_the_config():
    torch.manual_seed(0)
    net = SpecDiffNet(tiny_config()).eval()
    x = torch.rand(1, 3, 40, 48)
    with torch.no_grad():
        d64 = net(x).distance
        d32 = net(x, spectral_dtype="float32").distance
    assert d32.dtype == d64.dtype == torch.float32  # the network's dtype either way
    assert not torch.equal(d32, d64)  # computed in another precision ...
    assert torch.allclose(d32, d64, rtol=1e-3, atol=1e-5)  # ... to the same D
    with pytest.raises(ValueError, match="spectral_dtype"):
        net(x, spectral_dtype="float16")


def test_gradients_reach_backbone_and_diffusion_parameters():
    torch.manual_seed(0)
    net = SpecDiffNet(tiny_config())
    out = net(torch.rand(1, 3, 40, 40))
    maps = out.similarity[:, :3].reshape(1, 3, *out.grid_shape)
    up = net.upsample(maps, out.levels, (40, 40))
    assert up.shape == (1, 3, 40, 40)
    (out.similarity.mean() + up.mean()).backward()
    for name in ("log_mu", "log_t", "log_tau"):
        assert getattr(net, name).grad is not None and getattr(net, name).grad.abs() > 0, name
    assert net.fai.log_gamma.grad is not None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.backbone.parameters())
    ids = {id(p) for p in net.diffusion_parameters()} | {id(p) for p in net.backbone_parameters()}
    assert len(ids) == len(list(net.parameters()))


def test_config_round_trip_and_unknown_key():
    cfg = tiny_config(fai_gammas=(2.0, 3.0, 4.0))
    again = SpecDiffNetConfig.from_dict(cfg.to_dict())
    assert again == cfg
    with pytest.raises(ValueError, match="unknown"):
        SpecDiffNetConfig.from_dict({"backbone": "small_cnn", "nope": 1})


def test_handcrafted_baseline_has_no_trainable_parameters():
    net = SpecDiffNet(SpecDiffNetConfig.handcrafted(window=5, n_eigs=8))
    assert not any(p.requires_grad for p in net.parameters())
    img = torch.zeros(1, 3, 32, 48)
    img[..., :24] = torch.tensor([0.9, 0.1, 0.1]).view(3, 1, 1)
    img[..., 24:] = torch.tensor([0.1, 0.2, 0.9]).view(3, 1, 1)
    out = net(img)
    K = out.similarity[0].reshape(4, 6, 4, 6)
    # Same-colour nodes are more similar than nodes across the colour edge.
    assert K[1, 0, 1, 2] > K[1, 0, 1, 5]


def test_legacy_mode_uses_fixed_grid():
    net = SpecDiffNet(SpecDiffNetConfig.authors(backbone="small_cnn", window=5, n_eigs=8, legacy_grid=(7, 7), n_power=6))
    out = net(torch.rand(1, 3, 40, 64))
    assert out.grid_shape == (7, 7) and out.distance.shape == (1, 49, 49)
    assert net.t.item() == pytest.approx(0.5) and net.tau.item() == pytest.approx(1e3)
    assert net.fai.geometry == "authors"  # their clamped-border FAI window too
    assert SpecDiffNet(tiny_config()).fai.geometry == "stride"


def test_authors_preset_is_explicit_and_overridable():
    # no hidden defaults: a legacy config takes the t and tau it is given, the preset sets the authors'
    assert SpecDiffNet(tiny_config(legacy=True, t_init=10.0)).t.item() == pytest.approx(10.0)
    assert SpecDiffNetConfig.authors(t_init=2.0) == SpecDiffNetConfig(legacy=True, t_init=2.0, tau_init=1e3)


def test_similarity_maps_for_points():
    net = SpecDiffNet(tiny_config()).eval()
    maps = net.similarity_maps(torch.rand(1, 3, 33, 41), torch.tensor([0, 5]))
    assert maps.shape == (2, 33, 41)
    assert maps.min() >= 0 and maps.max() <= 1


def test_frozen_backbone_gets_no_gradient_and_no_graph():
    """freeze_backbone: the head still learns; the backbone has no grad and stays in eval mode."""
    torch.manual_seed(0)
    net = SpecDiffNet(tiny_config(freeze_backbone=True, freeze_bn=False)).train()
    assert not any(p.requires_grad for p in net.backbone.parameters())
    assert not net.backbone.training and net.projection.training
    emb, levels = net.embed(torch.rand(1, 3, 40, 40))
    assert emb.requires_grad and not any(f.requires_grad for f in levels)  # no graph through the backbone
    out = net(torch.rand(1, 3, 40, 40))
    out.similarity.mean().backward()
    assert all(p.grad is None for p in net.backbone.parameters())
    assert all(p.grad is not None for p in net.projection.parameters())
    assert net.log_mu.grad is not None and net.log_tau.grad.abs() > 0
    # the same weights, unfrozen, give the same forward values
    free = SpecDiffNet(tiny_config(freeze_bn=False)).eval()
    free.load_state_dict(net.state_dict())
    with torch.no_grad():
        x = torch.rand(1, 3, 33, 41)
        assert torch.allclose(free(x).similarity, net.eval()(x).similarity, atol=1e-6)


def test_multiscale_edges_average_of_resized_maps():
    from ndd.models.backbone_base import multiscale_edges

    calls = []

    def edge_map(x):  # an "edge detector" that is linear in x and records its input size
        calls.append(tuple(x.shape[-2:]))
        return x.mean(1, keepdim=True)

    x = torch.rand(2, 3, 20, 30)
    one = edge_map(x)
    calls.clear()
    got = multiscale_edges(edge_map, x, (0.5, 1.0, 2.0), at_scale_one=one)
    assert calls == [(10, 15), (40, 60)]  # scale 1 not recomputed
    assert got.shape == (2, 1, 20, 30)
    # a constant image has the same constant edge map at every scale
    c = torch.full((1, 3, 20, 30), 0.3)
    assert torch.allclose(multiscale_edges(edge_map, c, (0.5, 1.5)), torch.full((1, 1, 20, 30), 0.3))
    with pytest.raises(ValueError, match="edge_scales"):
        SpecDiffNetConfig(edge_scales=())
    cfg = SpecDiffNetConfig.from_dict({**SpecDiffNetConfig().to_dict(), "edge_scales": [0.5, 1.0]})
    assert cfg.edge_scales == (0.5, 1.0)


def test_loading_a_weights_file_takes_every_tensor_from_it_and_draws_no_random_numbers(tmp_path):
    from ndd.models import load_model, save_model, spec_diff_net

    torch.manual_seed(0)
    src = spec_diff_net(backbone="efficientnet_lite0", edge_detector="vgg16_hed", window=5, n_eigs=8)
    path = save_model(src, tmp_path / "m.pt")
    torch.manual_seed(1)
    expected_draw = torch.rand(3)
    torch.manual_seed(1)
    loaded = load_model(path)  # built without its random initialisation, then filled from the file
    assert torch.equal(torch.rand(3), expected_draw)  # the global generator was not used
    own = loaded.state_dict()
    assert set(own) == set(src.state_dict())
    for key, value in src.state_dict().items():
        assert torch.equal(own[key], value), key
    # the non-persistent constants (input normalisation, HED's mean) are built as usual
    assert torch.equal(loaded.backbone.normalize.mean, src.backbone.normalize.mean)
    assert torch.equal(loaded.edge_detector.mean_bgr, src.edge_detector.mean_bgr)
    x = torch.rand(1, 3, 24, 40)
    with torch.no_grad():
        a, b = src.eval()(x), loaded(x)
    assert torch.equal(a.similarity, b.similarity) and torch.equal(a.edges, b.edges)
    # a module built outside the loader is initialised as usual
    assert torch.nn.Conv2d(3, 4, 3).weight.abs().sum() > 0
