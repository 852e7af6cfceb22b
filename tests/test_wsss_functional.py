"""The mathematics of paper §7 (ndd.wsss.functional): RFP, PRED, PC-WAP, Eq. 12."""

import math

import pytest
import torch

from ndd.wsss import functional as Fn

pytestmark = pytest.mark.usefixtures("one_thread")


def random_kernel(B=2, N=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(B, N, 3, generator=g)
    K = torch.exp(-torch.cdist(f, f).square() / 2)  # symmetric, diagonal 1, values spread over (0, 1]
    return K, g


def test_rfp_rows_sum_to_one_and_each_node_is_in_its_region():
    K, g = random_kernel()
    valid = torch.rand(2, 30, generator=g) > 0.3
    for mu in (0.05, 0.5, 0.95, 0.999999):
        for v in (None, valid):
            A = Fn.pooling_operator(K, mu, v)
            torch.testing.assert_close(A.sum(-1), torch.ones(2, 30))
            assert (torch.diagonal(A, dim1=1, dim2=2) > 0).all()
            if v is not None:  # no weight on nodes outside the image, except a node's own
                off = A * (1 - torch.eye(30))
                assert (off[~v[:, None, :].expand(-1, 30, -1)] == 0).all()


def test_rfp_is_the_identity_when_k_is_the_identity():
    X = torch.randn(2, 25, 7)
    K = torch.eye(25).expand(2, 25, 25)
    for mu in (0.1, 0.5, 0.9):
        torch.testing.assert_close(Fn.regional_pooling(K, X, mu), X)
        torch.testing.assert_close(Fn.pooling_operator(K, mu), torch.eye(25).expand(2, 25, 25))


def test_rfp_with_a_block_kernel_averages_each_block():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    K = (labels[:, None] == labels[None, :]).float()[None]
    X = torch.arange(6.0).reshape(1, 6, 1)
    Y = Fn.regional_pooling(K, X, 0.5)
    torch.testing.assert_close(Y[0, :, 0], torch.tensor([0.5, 0.5, 3.0, 3.0, 3.0, 5.0]))


@pytest.mark.parametrize("rows", [1, 7, 30, 1000])
def test_chunked_rfp_equals_the_dense_operator(rows):
    K, g = random_kernel()
    X = torch.randn(2, 30, 5, generator=g)
    valid = torch.rand(2, 30, generator=g) > 0.2
    for v in (None, valid):
        dense = Fn.pooling_operator(K, 0.4, v) @ X
        torch.testing.assert_close(Fn.regional_pooling(K, X, 0.4, v, rows_per_chunk=rows), dense)


def test_pooling_the_logits_equals_pooling_the_features_then_the_classifier():
    """RFP is linear: F_M H = RFP(F H), which the network uses to pool c logits instead of d features."""
    K, g = random_kernel()
    F = torch.randn(2, 30, 16, generator=g, dtype=torch.float64)
    H = torch.randn(16, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(Fn.regional_pooling(K.double(), F, 0.5) @ H, Fn.regional_pooling(K.double(), F @ H, 0.5))


def test_rfp_gradients_features_exact_and_mu_straight_through():
    K, g = random_kernel(B=1, N=12)
    K = K.double()
    X = torch.randn(1, 12, 3, generator=g, dtype=torch.float64, requires_grad=True)
    valid = torch.ones(1, 12, dtype=torch.bool)
    valid[0, 3] = False
    assert torch.autograd.gradcheck(lambda x: Fn.regional_pooling(K, x, 0.45, valid, rows_per_chunk=5), (X,))

    # mu: the gradient of sigmoid((K - mu) / w) stands in for the step; compare with a dense
    # straight-through reference built by autograd
    mu = torch.tensor(0.45, dtype=torch.float64, requires_grad=True)
    W = torch.randn(1, 12, 3, generator=g, dtype=torch.float64)
    (Fn.regional_pooling(K, X, mu, valid, rows_per_chunk=5, surrogate_width=0.1) * W).sum().backward()
    got = mu.grad.clone()
    mu_ref = torch.tensor(0.45, dtype=torch.float64, requires_grad=True)
    hard = Fn.region_mask(K, 0.45, valid).double()
    soft = torch.sigmoid((K - mu_ref) / 0.1)
    fixed = torch.eye(12, dtype=torch.bool)[None] | ~valid[:, None, :]
    soft = torch.where(fixed, torch.zeros_like(soft), soft)
    M = hard + soft - soft.detach()
    ref = (M @ X.detach()) / M.sum(-1, keepdim=True)
    (ref * W).sum().backward()
    torch.testing.assert_close(got, mu_ref.grad)
    assert got.abs() > 0


def test_pc_wap_weights_sum_to_one_per_class():
    g = torch.Generator().manual_seed(1)
    P = torch.softmax(torch.randn(3, 40, 5, generator=g), -1)
    valid = torch.rand(3, 40, generator=g) > 0.4
    for scale in (torch.full((5,), 1.0), torch.full((5,), math.exp(5.0)), torch.linspace(0.1, 50, 5)):
        w = Fn.spatial_softmax(P, scale)
        torch.testing.assert_close(w.sum(1), torch.ones(3, 5))
        wv = Fn.spatial_softmax(P, scale, valid)
        torch.testing.assert_close(wv.sum(1), torch.ones(3, 5))
        assert (wv[~valid] == 0).all()
    # Eq. 11: F_gl_i = F^T w_i
    F = torch.randn(3, 40, 8, generator=g)
    F_gl = Fn.weighted_pooling(F, w)
    torch.testing.assert_close(F_gl[1, 2], F[1].T @ w[1, :, 2])


def test_loss_against_a_hand_computed_value():
    class_logits = torch.tensor([[0.0, math.log(3.0)]])  # sigmoid: 0.5, 0.75
    P = torch.tensor([[[0.2, 0.8], [0.6, 0.4]]])  # (B=1, N=2, c=2): max over nodes 0.6, 0.8
    y = torch.tensor([[1.0, 0.0]])
    cls, mil = Fn.wsss_loss(class_logits, P, y)
    assert cls.item() == pytest.approx((math.log(2) + math.log(4)) / 2, abs=1e-6)
    assert mil.item() == pytest.approx((-math.log(0.6) - math.log(0.2)) / 2, abs=1e-6)
    # a node outside the image cannot be the maximum
    cls2, mil2 = Fn.wsss_loss(class_logits, P, y, valid=torch.tensor([[True, False]]))
    assert mil2.item() == pytest.approx((-math.log(0.2) - math.log(0.2)) / 2, abs=1e-6)


def test_pseudo_segmentation_and_gap_pieces():
    logits = torch.randn(2, 10, 4)
    b = torch.randn(4)
    P = Fn.pseudo_segmentation(logits, b)
    torch.testing.assert_close(P.sum(-1), torch.ones(2, 10))
    # GAP leaves the background column out of its loss
    y = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    z = torch.tensor([[-50.0, 3.0, -2.0, 0.0]])
    torch.testing.assert_close(Fn.gap_loss(z, y, 0),
                               torch.nn.functional.binary_cross_entropy_with_logits(z[:, 1:], y[:, 1:]))
    cam = Fn.class_activation_maps(torch.tensor([[[2.0, -1.0], [1.0, -3.0], [0.0, 0.0]]]))
    torch.testing.assert_close(cam[0], torch.tensor([[1.0, 0.0], [0.5, 0.0], [0.0, 0.0]]))


def test_fuse_thresholds_is_a_per_class_softmax_over_thresholds():
    z = torch.randn(4, 2, 6, 3)
    torch.testing.assert_close(Fn.fuse_thresholds(z, torch.zeros(3)), z.mean(0))
    same = torch.randn(1, 2, 6, 3).expand(4, -1, -1, -1)
    torch.testing.assert_close(Fn.fuse_thresholds(same, torch.full((3,), 1.5)), same[0])


def test_resample_kernel_and_grid_valid():
    K, _ = random_kernel(B=1, N=16)
    assert Fn.resample_kernel(K, (4, 4), (4, 4)) is K
    small = Fn.resample_kernel(K, (4, 4), (2, 2))
    assert small.shape == (1, 4, 4)
    # area averaging: entry (0, 0) is the mean of the 2x2 x 2x2 block of nodes {0, 1, 4, 5}
    idx = torch.tensor([0, 1, 4, 5])
    assert small[0, 0, 0].item() == pytest.approx(K[0][idx][:, idx].mean().item(), abs=1e-6)
    big = Fn.resample_kernel(torch.ones(1, 4, 4), (2, 2), (4, 4))
    torch.testing.assert_close(big, torch.ones(1, 16, 16))
    valid = torch.zeros(1, 20, 20, dtype=torch.bool)
    valid[:, :9, :] = True
    v = Fn.grid_valid(valid, (3, 3))
    assert v.reshape(3, 3)[:, 0].tolist() == [True, True, False]
