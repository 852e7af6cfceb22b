"""The learned edge fusion: head, multi-scale side logits, its file, its training, its use in SpecDiffNet."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ndd.losses import balanced_edge_loss
from ndd.models import SpecDiffNetConfig
from ndd.models.backbone_base import multiscale_side_logits
from ndd.models.edge_fusion import EdgeFusionHead, read_edge_fusion, save_edge_fusion
from ndd.models.specdiffnet import SpecDiffNet
from ndd.models.vgg16_hed import vgg16_hed
from ndd.train.edge_fusion import EdgeFusionTraining, cache_side_logits, train_edge_fusion

pytestmark = pytest.mark.usefixtures("one_thread")

SCALES = (0.5, 1.0, 1.5)


@pytest.fixture(scope="module")
def hed():
    torch.manual_seed(0)
    net = vgg16_hed().eval()
    with torch.no_grad():  # HED's own init has zero side outputs: make them say something
        for i in range(1, 6):
            getattr(net, f"dsn{i}").weight.normal_(0, 0.05)
            getattr(net, f"dsn{i}").bias.normal_(0, 0.5)
        net.fuse.weight.copy_(torch.tensor([0.3, 0.1, 0.2, 0.25, 0.15]).view(1, 5, 1, 1))
        net.fuse.bias.fill_(-0.4)
    return net


def test_multiscale_side_logits_stack_each_scale_resized_to_the_input(hed):
    images = torch.rand(1, 3, 22, 30, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        sides = multiscale_side_logits(hed.side_logits, images, SCALES)
        one = hed.side_logits(images)
        half = hed.side_logits(F.interpolate(images, size=(11, 15), mode="bilinear", align_corners=False, antialias=True))
    assert sides.shape == (1, 15, 22, 30)
    torch.testing.assert_close(sides[:, 5:10], one, rtol=0, atol=0)  # scale 1: not resized
    torch.testing.assert_close(sides[:, :5], F.interpolate(half, size=(22, 30), mode="bilinear", align_corners=False))


def test_head_starts_as_the_mean_over_scales_of_the_fused_logit(hed):
    images = torch.rand(2, 3, 22, 30, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        sides = multiscale_side_logits(hed.side_logits, images, SCALES)
        head = EdgeFusionHead(15, width=4).init_from_fuse(hed.fuse.weight, hed.fuse.bias, len(SCALES))
        expected = torch.stack([hed.fuse(sides[:, 5 * k:5 * k + 5]) for k in range(3)]).mean(0)
        got = head(sides)
    assert float(expected.std()) > 0.05  # the comparison means something
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="side logits must be"):
        head(sides[:, :10])
    with pytest.raises(ValueError, match="5 side outputs x 2 scales"):
        EdgeFusionHead(15).init_from_fuse(hed.fuse.weight, hed.fuse.bias, 2)


def test_edge_fusion_file_round_trip_and_errors(tmp_path):
    torch.manual_seed(3)
    head = EdgeFusionHead(10, width=3)
    path = save_edge_fusion(head, (1.0, 2.0), tmp_path / "head.pt", meta={"note": "x"})
    payload = read_edge_fusion(path)
    assert payload["width"] == 3 and payload["scales"] == (1.0, 2.0) and payload["meta"] == {"note": "x"}
    again = EdgeFusionHead(10, width=3)
    again.load_state_dict(payload["model"])
    torch.testing.assert_close(again.state_dict(), head.state_dict(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="sha256 does not match"):
        read_edge_fusion(path, sha256="0" * 64)
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not an edge fusion file"):
        read_edge_fusion(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="edge fusion file not found"):
        read_edge_fusion(tmp_path / "missing.pt")


def test_specdiffnet_edges_come_from_the_head_over_the_side_logits(hed):
    config = SpecDiffNetConfig(backbone="small_cnn", embed_dim=8, edge_detector="vgg16_hed", edge_scales=(1.0, 0.5),
                               edge_fusion_width=4)
    torch.manual_seed(4)
    model = SpecDiffNet(config).eval()
    model.edge_detector.load_state_dict(hed.state_dict())
    with torch.no_grad():
        model.edge_fusion.body[-1].weight.normal_(0, 0.1)  # not the initial (zero) residual
        images = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(5))
        out = model(images, diffusion=False)
        sides = multiscale_side_logits(hed.side_logits, images, (1.0, 0.5))
    torch.testing.assert_close(out.edges, torch.sigmoid(model.edge_fusion(sides)), rtol=1e-5, atol=1e-6)
    assert not any(p.requires_grad for p in model.edge_fusion.parameters())
    with pytest.raises(ValueError, match="needs an edge detector with side outputs"):
        SpecDiffNet(SpecDiffNetConfig(backbone="small_cnn", embed_dim=8, edge_fusion_width=4))
    with pytest.raises(ValueError, match="edge_fusion_width must be"):
        SpecDiffNetConfig(edge_fusion_width=0)


def test_balanced_edge_loss_weighs_edges_by_the_non_edge_share_and_ignores_disputed_pixels():
    logits = torch.tensor([[[[0.5, -1.0, 2.0, 0.3]]]])
    agreement = torch.tensor([[[[1.0, 0.0, 0.2, 0.0]]]])  # edge, non-edge, disputed (eta 0.3), non-edge
    bce = lambda z, y: float(F.binary_cross_entropy_with_logits(torch.tensor(z), torch.tensor(y)))  # noqa: E731
    # P = 1 edge, Q = 2 non-edges: edges weigh 2/3, non-edges 1.1 * 1/3
    expected = 2 / 3 * bce(0.5, 1.0) + 1.1 / 3 * (bce(-1.0, 0.0) + bce(0.3, 0.0))
    assert float(balanced_edge_loss(logits, agreement)) == pytest.approx(expected, rel=1e-6)
    changed = logits.clone()
    changed[..., 2] = -7.0  # the disputed pixel does not count
    assert float(balanced_edge_loss(changed, agreement)) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="must both be"):
        balanced_edge_loss(logits[0], agreement[0])


def _synthetic_edges(seed: int, size: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Side logits whose channel 3 says where the edges are, through noise; the others are noise."""
    rng = np.random.default_rng(seed)
    agreement = np.zeros((size, size), np.float32)
    agreement[:, rng.integers(4, size - 4)] = 1.0
    agreement[rng.integers(4, size - 4), :] = 1.0
    sides = rng.normal(0, 3, (6, size, size)).astype(np.float32)
    sides[3] += 8 * agreement - 4
    return sides, agreement


def test_training_learns_the_informative_side_output():
    data = [_synthetic_edges(s) for s in range(4)]
    settings = EdgeFusionTraining(steps=150, width=4, crop=16, batch=4, lr=1e-2)
    head = train_edge_fusion([d[0] for d in data], [d[1] for d in data], settings=settings, log_every=0)
    sides, agreement = _synthetic_edges(99)
    with torch.no_grad():
        p = head.edge_map(torch.from_numpy(sides)[None])[0, 0].numpy()
    edge, other = agreement > 0, agreement == 0
    assert p[edge].mean() > 0.7 and p[other].mean() < 0.3
    weights = head.linear.weight.detach().abs().view(-1)
    assert int(weights.argmax()) == 3  # it relies on the channel that carries the edges
    with pytest.raises(ValueError, match="do not fit ground truth"):
        train_edge_fusion([sides], [agreement[:-1]], settings=settings, log_every=0)


def test_cache_side_logits_writes_each_image_once_and_resumes(hed, tmp_path):
    from PIL import Image

    config = SpecDiffNetConfig(backbone="small_cnn", embed_dim=8, edge_detector="vgg16_hed", edge_scales=(1.0, 0.5))
    model = SpecDiffNet(config).eval()
    model.edge_detector.load_state_dict(hed.state_dict())
    rng = np.random.default_rng(6)
    images = []
    for k in range(2):
        path = tmp_path / f"im{k}.png"
        Image.fromarray(rng.integers(0, 256, (20, 26, 3), dtype=np.uint8)).save(path)
        images.append(path)
    paths = cache_side_logits(model, images, tmp_path / "cache")
    assert [p.name for p in paths] == ["im0.npy", "im1.npy"]
    arr = np.load(paths[0])
    assert arr.dtype == np.float16 and arr.shape == (10, 20, 26)
    x = torch.from_numpy(np.asarray(Image.open(images[0]), dtype=np.float32) / 255).permute(2, 0, 1)[None].contiguous()
    with torch.no_grad():
        expected = multiscale_side_logits(hed.side_logits, x, (1.0, 0.5))[0].numpy()
    np.testing.assert_allclose(arr.astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    np.save(paths[1], np.zeros((1,), np.float16))  # an existing file is kept: the run resumes
    cache_side_logits(model, images, tmp_path / "cache")
    assert np.load(paths[1]).shape == (1,)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["im0.npy", "im1.npy"]  # no partial files
