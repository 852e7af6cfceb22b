"""Graphs and features shared by the tests of ``ndd.spectral``'s modules (fixture ``solver_calls``: conftest)."""

import torch

torch.set_default_dtype(torch.float32)  # as the tests of other modules may leave it


def random_graph(n: int, seed: int, batch: int | None = None, density: float = 0.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, n) if batch is None else (batch, n, n)
    A = torch.rand(shape, generator=g, dtype=torch.float64)
    A = A * (torch.rand(shape, generator=g, dtype=torch.float64) < density)
    W = 0.5 * (A + A.transpose(-1, -2))
    return W + torch.eye(n, dtype=torch.float64)  # self-loops: every degree > 0


def grid_features(h=6, w=7, c=3, seed=0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(1, c, h, w, generator=g, dtype=dtype)
    f[..., : h // 2, :] += 2.0  # two regions, so the spectrum is not trivial
    return f


def rel(a, b):
    return float((a - b).norm() / b.norm())


def piecewise_constant_features(h: int, w: int, regions: int = 20, channels: int = 64, seed: int = 0) -> torch.Tensor:
    """What training drives the embedding towards: a Voronoi partition of ``regions`` random
    seeds, each region one random unit vector, plus 1e-3 noise; float64 ``(1, C, h, w)``."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(regions, 2, generator=g, dtype=torch.float64) * torch.tensor([h, w], dtype=torch.float64)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    label = torch.cdist(torch.stack([ys.reshape(-1), xs.reshape(-1)], 1), centres).argmin(1)
    colours = torch.nn.functional.normalize(torch.randn(regions, channels, generator=g, dtype=torch.float64), dim=1)
    f = colours[label].T.reshape(1, channels, h, w)
    return f + 1e-3 * torch.randn(f.shape, generator=g, dtype=torch.float64)
