"""ndd.segment.kernel_kmeans: kernel k-means with the similarity as kernel."""

from __future__ import annotations

import pytest
import torch

from ndd.segment import coverage_centers, kernel_kmeans
from segment_helpers import H, W, block_kernel, block_labels, same_partition


@pytest.mark.parametrize("temperature", [None, 50.0])
def test_kernel_kmeans_recovers_blocks(temperature: float | None) -> None:
    g = block_labels()
    K = block_kernel(g, noise=0.05)
    labels = kernel_kmeans(K, coverage_centers(K), temperature=temperature)
    assert labels.shape == (H * W,) and labels.dtype == torch.int64
    assert same_partition(labels.numpy(), g)


def test_kernel_kmeans_drops_empty_and_batches() -> None:
    g = block_labels()
    K = block_kernel(g)
    centers = coverage_centers(K)
    # a duplicated centre leaves one cluster empty after the first assignment: dropped
    labels = kernel_kmeans(K, torch.cat([centers, centers[:1]]))
    assert labels.max().item() + 1 == 6 and same_partition(labels.numpy(), g)
    batch = kernel_kmeans(torch.stack([K, K]), centers)
    assert batch.shape == (2, H * W)
    assert torch.equal(batch[0], batch[1]) and same_partition(batch[0].numpy(), g)
