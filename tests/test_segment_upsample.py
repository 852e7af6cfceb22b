"""ndd.segment.upsample: full-resolution ("Ours-HR") labels and hierarchies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ndd.segment import Hierarchy, upsample_hierarchy, upsample_labels
from segment_helpers import H, W, assert_ucm2_reproduces, block_hierarchy, block_labels, four_connected, is_refinement, same_partition


@pytest.fixture(scope="module")
def hierarchy() -> Hierarchy:
    return block_hierarchy()


def test_upsample_labels_default_and_callable() -> None:
    lab = block_labels()
    up = upsample_labels(lab, (40, 48))
    assert up.shape == (40, 48) and same_partition(up[::2, ::2], lab)
    near = upsample_labels(lab, (40, 48),
                           upsample=lambda v: torch.nn.functional.interpolate(v, size=(40, 48), mode="nearest"))
    assert np.array_equal(near, np.kron(lab, np.ones((2, 2), dtype=np.int64)))
    soft = torch.nn.functional.one_hot(torch.tensor(lab)).permute(2, 0, 1).float()
    assert np.array_equal(upsample_labels(soft, (H, W), mode="nearest"), lab)


def test_upsample_hierarchy_nested_and_exact(hierarchy: Hierarchy) -> None:
    hr = upsample_hierarchy(hierarchy, (41, 53))
    assert hr.shape == (41, 53) and hr.n_segments == hierarchy.n_segments
    # same merge sequence as on the grid when up-sampling keeps the adjacencies
    assert np.array_equal(hr.merges, hierarchy.merges)
    for fine, coarse in zip(hr.levels()[:-1], hr.levels()[1:]):
        assert is_refinement(fine, coarse)
    assert_ucm2_reproduces(hr)


def test_upsample_hierarchy_with_noisy_upsampler(hierarchy: Hierarchy) -> None:
    gen = torch.Generator().manual_seed(0)

    def noisy(v: torch.Tensor) -> torch.Tensor:  # creates stray islands and vanishing labels
        up = torch.nn.functional.interpolate(v, size=(50, 60), mode="bilinear", align_corners=False)
        return up + 0.6 * torch.rand(up.shape, generator=gen)

    hr = upsample_hierarchy(hierarchy, (50, 60), upsample=noisy)
    assert hr.shape == (50, 60)
    for lab in hr.levels():
        assert four_connected(lab)
    assert_ucm2_reproduces(hr)
