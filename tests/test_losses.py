import pytest
import torch

from ndd.data import label_kernel
from ndd.losses import SegmentMatching, kernel_matching_loss, sample_segment_points, segment_matching_loss


def grid_labels():
    labels = torch.zeros(1, 4, 5, dtype=torch.long)
    labels[:, :, 3:] = 1
    labels[:, 2:, :2] = 2
    return labels


def identity_upsample(maps, b):
    return maps


def test_kernel_loss_minimal_exactly_at_target():
    K_gt, valid = label_kernel(grid_labels())
    assert kernel_matching_loss(K_gt, K_gt).abs() < 1e-6
    noisy = (K_gt + 0.1 * torch.rand_like(K_gt)).clamp(0, 1)
    noisy = 0.5 * (noisy + noisy.transpose(1, 2))
    loss = kernel_matching_loss(noisy, K_gt)
    assert 0 < loss < 1
    assert kernel_matching_loss(torch.ones_like(K_gt), K_gt) > loss


def test_kernel_loss_mask_ignores_invalid_nodes():
    labels = grid_labels()
    labels[0, 0, 0] = -1
    K_gt, valid = label_kernel(labels)
    K = K_gt.clone()
    K[0, 0, :] = 0.7  # whatever the ignored node predicts must not matter
    K[0, :, 0] = 0.7
    assert kernel_matching_loss(K, K_gt, valid).abs() < 1e-6
    assert kernel_matching_loss(K, K_gt) > 1e-3


def test_kernel_loss_gradcheck_and_batch_mean():
    K_gt, _ = label_kernel(torch.cat([grid_labels(), grid_labels().flip(-1)]))
    K = torch.rand(2, 20, 20, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda K: kernel_matching_loss(K, K_gt.double()), (K,))
    single = [kernel_matching_loss(K[b : b + 1], K_gt[b : b + 1].double()) for b in range(2)]
    assert torch.allclose(kernel_matching_loss(K, K_gt.double()), torch.stack(single).mean())


def test_kernel_loss_shape_errors():
    with pytest.raises(ValueError, match="K and K_gt"):
        kernel_matching_loss(torch.ones(1, 3, 3), torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match="valid"):
        kernel_matching_loss(torch.ones(1, 3, 3), torch.ones(1, 3, 3), torch.ones(1, 4, dtype=torch.bool))


def test_sample_segment_points_one_per_segment():
    labels = grid_labels()[0]
    labels[0, 0] = -1
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(20):
        nodes, segments = sample_segment_points(labels, g)
        assert segments.tolist() == [0, 1, 2]
        assert torch.equal(labels.reshape(-1)[nodes], segments)
        seen.add(tuple(nodes.tolist()))
    assert len(seen) > 1  # random within each segment


def test_segment_loss_zero_for_perfect_maps_and_positive_otherwise():
    labels = grid_labels()
    K_gt, _ = label_kernel(labels)
    g = torch.Generator().manual_seed(1)
    assert segment_matching_loss(K_gt, labels, labels, identity_upsample, g) < 1e-6
    assert segment_matching_loss(K_gt, labels, labels, identity_upsample, g, matching=SegmentMatching.authors()) < 1e-6
    flat = torch.ones_like(K_gt)  # everything similar to everything
    assert segment_matching_loss(flat, labels, labels, identity_upsample, g) > 0.1
    assert segment_matching_loss(flat, labels, labels, identity_upsample, g, matching=SegmentMatching.authors()) > 0.1


def test_segment_loss_uses_upsampled_resolution():
    labels = grid_labels()
    fine = labels.repeat_interleave(2, 1).repeat_interleave(2, 2)
    K_gt, _ = label_kernel(labels)

    def nearest(maps, b):
        return maps.repeat_interleave(2, 2).repeat_interleave(2, 3)

    K = K_gt.clone().requires_grad_()
    loss = segment_matching_loss(K, labels, fine, nearest, torch.Generator().manual_seed(0))
    assert loss < 1e-6
    (loss + K.sum() * 0).backward()
    with pytest.raises(ValueError, match="upsample returned"):
        segment_matching_loss(K_gt, labels, fine, identity_upsample)


def test_segment_matching_points_and_distance():
    """The authors' variant is exactly the mean absolute error over 20 sampled nodes' maps."""
    labels = grid_labels()
    K = torch.rand(1, labels[0].numel(), labels[0].numel(), generator=torch.Generator().manual_seed(0))
    got = segment_matching_loss(K, labels, labels, identity_upsample, torch.Generator().manual_seed(3),
                                matching=SegmentMatching(points=20, distance="l1"))
    nodes = torch.randint(labels[0].numel(), (20,), generator=torch.Generator().manual_seed(3))
    maps = K[0, nodes].reshape(20, *labels.shape[1:])
    masks = (labels[0] == labels[0].reshape(-1)[nodes].view(-1, 1, 1)).float()
    assert torch.allclose(got, (maps - masks).abs().mean())
    with pytest.raises(ValueError, match="points"):
        SegmentMatching(points=0)
