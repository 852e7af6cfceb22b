"""Tests of ``ndd.spectral.legacy``."""

import pytest
import torch

from ndd import spectral

from spectral_helpers import grid_features

pytestmark = pytest.mark.usefixtures("one_thread")


def test_legacy_path_runs_and_is_a_distance():
    f = grid_features(9, 9, seed=6)
    W = spectral.local_affinity(f, 0.5, window=5)
    D = spectral.legacy_diffusion_distance(W, t=0.5, n_power=10)
    assert D.shape == (1, 81, 81)
    assert (D >= 0).all() and torch.allclose(D, D.transpose(-1, -2))
