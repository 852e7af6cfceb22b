"""Speed and accuracy of the diffusion-distance paths on one BSDS-sized grid.

One 321x481 image at stride 8 gives a 41x61 grid (N = 2501); 17x17 window;
Ne = 50; t = 10. Prints, from one run: the time of the approximate path
(accelerated simultaneous iteration + Rayleigh-Ritz on the banded operator), with
its spectral part in float32 and in float64 (``spectral_dtype``; the affinity is
float32 in both), of the exact path (dense ``eigh`` of the symmetric conjugate,
float32) and of SciPy's ARPACK ``eigsh`` (top Ne of the same sparse matrix), their
ratios, the relative Frobenius error of D against the exact spectrum truncated to
Ne, and peak memory.

    python benchmarks/bench_spectral.py [--device cuda] [--image PATH]
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch
import torch.nn.functional as F

from ndd import spectral

MINI = Path(__file__).resolve().parents[1].parent / "shared/data/bsds500-mini/BSDS500/data/images/test/100007.jpg"


def grid_features(path: Path | None, device: torch.device) -> torch.Tensor:
    """Lab colour + position on the 41x61 grid of a 321x481 image (hand-crafted features)."""
    from skimage import color, io

    if path is not None and path.exists():
        rgb = io.imread(path)[:321, :481]
        if rgb.shape[0] > rgb.shape[1]:
            rgb = rgb.transpose(1, 0, 2)
    else:  # synthetic stand-in with a few regions
        rng = np.random.default_rng(0)
        rgb = np.zeros((321, 481, 3), np.uint8)
        for _ in range(12):
            y, x, r = rng.integers(0, 321), rng.integers(0, 481), rng.integers(20, 120)
            yy, xx = np.ogrid[:321, :481]
            rgb[(yy - y) ** 2 + (xx - x) ** 2 < r * r] = rng.integers(0, 255, 3)
    lab = torch.from_numpy(color.rgb2lab(rgb)).permute(2, 0, 1)[None].float()
    lab = F.adaptive_avg_pool2d(lab, (41, 61)) / 10.0
    ys, xs = torch.meshgrid(torch.linspace(0, 4, 41), torch.linspace(0, 6, 61), indexing="ij")
    return torch.cat([lab, ys[None, None], xs[None, None]], 1).to(device)


def eigenpairs(S, n_eigs: int, n_iter: int, n_power: int, dtype: torch.dtype = torch.float32):
    """What ARPACK returns: the top eigenpairs (subspace iteration + Rayleigh-Ritz) in ``dtype``."""
    S = spectral.BandedAffinity(S.weights.to(dtype), S.grid_shape, S.window)
    U, H = spectral.subspace_iteration(S, n_eigs, n_iter=n_iter, n_power=n_power)
    lam, Y = torch.linalg.eigh(H)
    return lam, U @ Y


def literal_eq5_distance(W, t: float, n_eigs: int, n_iter: int) -> torch.Tensor:
    """Eq. 5 read literally: the QR columns as eigenvectors and diag(R) of S^(2t) as lambda^(2t)."""
    d = spectral.degree(W)
    S = spectral.symmetric_normalize(W)
    power = spectral.default_power(t)
    U = spectral.initial_subspace(W.num_nodes, n_eigs, W.grid_shape, d.dtype, d.device).expand(1, -1, -1)
    for _ in range(n_iter):
        Z = U
        for _ in range(power):
            Z = spectral.apply_operator(S, Z)
        U, R = torch.linalg.qr(Z)
    psi = (d.sum(-1, keepdim=True) / d).sqrt().unsqueeze(-1) * U
    M = (psi * R.diagonal(dim1=-2, dim2=-1).abs().unsqueeze(-2)) @ psi.transpose(-1, -2)
    diag = M.diagonal(dim1=-2, dim2=-1)
    return (diag.unsqueeze(-1) + diag.unsqueeze(-2) - 2 * M).clamp_min(0)


def timed(fn, repeats: int, device: torch.device):
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image", type=Path, default=MINI)
    parser.add_argument("--n-eigs", type=int, default=50)
    parser.add_argument("--t", type=float, default=10.0)
    parser.add_argument("--n-iter", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fast-power", type=int, default=6, help="a second, cheaper products-per-QR-step setting")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    feats = grid_features(args.image, device)
    mu = 1.0
    W = spectral.local_affinity(feats, mu, window=17)
    n = W.num_nodes
    print(f"graph: 41x61 grid (N={n}), 17x17 window, Ne={args.n_eigs}, t={args.t}, T={args.n_iter}, "
          f"device={device}, torch threads={torch.get_num_threads()}")

    powers = [spectral.default_power(args.t), args.fast_power]
    dtypes = {"float32": torch.float32, "float64": torch.float64}
    with torch.no_grad():
        S_band = spectral.symmetric_normalize(W)
        approx = {}
        for p in powers:
            for name, dtype in dtypes.items():
                D_p, t_p = timed(lambda: spectral.diffusion_distance(W, args.t, args.n_eigs, args.n_iter, n_power=p,
                                                                     spectral_dtype=dtype), args.repeats, device)
                _, t_eig = timed(lambda: eigenpairs(S_band, args.n_eigs, args.n_iter, p, dtype), args.repeats, device)
                approx[p, name] = (D_p, t_p, t_eig)
        Wd = W.to_dense()
        D_full, t_eigh = timed(lambda: spectral.diffusion_distance(Wd, args.t, spectral_dtype=torch.float32), 2, device)
        D_full64 = spectral.diffusion_distance(Wd.double(), args.t)
        D_trunc64 = spectral.diffusion_distance(W.to_dense().double(), args.t, args.n_eigs, solver="eigh")

        D_literal = literal_eq5_distance(W, args.t, args.n_eigs, args.n_iter)

    S = spectral.symmetric_normalize(Wd)[0].cpu().double().numpy()
    S_sparse = scipy.sparse.csr_matrix(S)
    _, t_arpack = timed(lambda: scipy.sparse.linalg.eigsh(S_sparse.astype(np.float32), k=args.n_eigs, which="LM"), 2, torch.device("cpu"))

    def rel(a, b):
        return float((a.double() - b.double()).norm() / b.double().norm())

    print(f"time exact path: dense eigh of S + D (float32):                {t_eigh * 1e3:8.1f} ms")
    print(f"time ARPACK eigsh (sparse S, top {args.n_eigs} eigenpairs only, float32):  {t_arpack * 1e3:8.1f} ms")
    for p in powers:
        label = "paper default round(2t)" if p == powers[0] else "fewer products"
        print(f"approximate path, {p:2d} products per QR step ({label}), spectral part float32 | float64:")
        (D32, t32, e32), (D64, t64, e64) = approx[p, "float32"], approx[p, "float64"]
        print(f"    eigenpairs (subspace iteration + Rayleigh-Ritz): {e32 * 1e3:7.1f} ms | {e64 * 1e3:7.1f} ms  "
              f"({t_arpack / e32:5.1f}x | {t_arpack / e64:5.1f}x faster than ARPACK)")
        print(f"    whole D:                                         {t32 * 1e3:7.1f} ms | {t64 * 1e3:7.1f} ms  "
              f"({t_eigh / t32:5.1f}x | {t_eigh / t64:5.1f}x faster than the exact path)")
        print(f"    relative Frobenius error of D vs exact spectrum truncated to Ne (float64): "
              f"{rel(D32, D_trunc64):.2e} | {rel(D64, D_trunc64):.2e}")
    print(f"relative Frobenius error of D, truncated-to-Ne vs full spectrum (float64):                        {rel(D_trunc64, D_full64):.2e}")
    print(f"relative Frobenius error of D, literal Eq. 5 reading (QR columns, diag R) vs truncated exact:      {rel(D_literal, D_trunc64):.2e}")
    print(f"relative Frobenius error of D, exact float32 eigh vs float64:                                     {rel(D_full, D_full64):.2e}")
    if device.type == "cuda":
        for name, dtype in dtypes.items():
            torch.cuda.reset_peak_memory_stats()
            with torch.no_grad():
                spectral.diffusion_distance(W, args.t, args.n_eigs, args.n_iter, spectral_dtype=dtype)
            print(f"peak CUDA memory of the approximate path, spectral part {name}: "
                  f"{torch.cuda.max_memory_allocated() / 2**20:.1f} MiB")
    from ndd.models import SpecDiffNet, SpecDiffNetConfig

    for backbone in ("small_cnn", "efficientnet_lite0"):
        image = torch.rand(1, 3, 321, 481, device=device)
        times = []
        for name in dtypes:
            net = SpecDiffNet(SpecDiffNetConfig(backbone=backbone, spectral_dtype=name)).to(device).eval()
            with torch.no_grad():
                times.append(timed(lambda: net(image, eigenpairs=False), args.repeats, device)[1])
        print(f"whole SpecDiffNet forward, {backbone}, one 321x481 image (window 17, Ne 50, T 2, t 10), "
              f"spectral part float32 | float64: {times[0] * 1e3:8.1f} ms | {times[1] * 1e3:8.1f} ms")
    print(f"peak resident memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
