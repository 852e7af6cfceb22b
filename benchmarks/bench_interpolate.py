"""Time and peak memory of feature-attentional interpolation (ndd.interpolate).

Up-samples M = 20 maps from the stride-8 grid of a 321x481 image (41x61) to
321x481 through ResNet-101-sized feature levels (conv1: 64 ch at 161x241,
layer1: 256 ch at 81x121, layer4: 2048 ch at 41x61; the values already live
on the layer4 grid, so that level is skipped):

* ``3-level``: FAI to 81x121 and 161x241, then bilinear to 321x481 (authors);
* ``4-level``: the image (3 ch at 321x481) as an extra finest FAI level;
* ``3-level+grad``: forward and backward w.r.t. values, features and gammas.

Every case runs in a fresh process, so its peak resident memory (ru_maxrss,
minus the process's peak after building the inputs and a warm-up on a small
grid) is its own. ``--device cuda`` reports torch.cuda.max_memory_allocated
instead.

Usage: python benchmarks/bench_interpolate.py [--device cpu|cuda] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from ndd.interpolate import FeatureAttentionalInterpolation

CASES = ("3-level", "4-level", "3-level+grad")
IMAGE = (321, 481)
LEVELS = ((64, 161, 241), (256, 81, 121), (2048, 41, 61))  # fine to coarse
M = 20


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 2**20 if sys.platform == "darwin" else kb / 1024


def _inputs(case: str, device: torch.device, scale: int = 1):
    """Values and features; ``scale > 1`` shrinks every grid (for the warm-up)."""
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(1, c, h // scale, w // scale, generator=g) for c, h, w in LEVELS]
    values = torch.rand(1, M, LEVELS[-1][1] // scale, LEVELS[-1][2] // scale, generator=g)
    gammas = (1.0, 4.0, 8.0)
    if case == "4-level":
        feats.insert(0, torch.rand(1, 3, IMAGE[0] // scale, IMAGE[1] // scale, generator=g))
        gammas = (10.0,) + gammas
    feats = [f.to(device) for f in feats]
    return values.to(device), feats, gammas


def _run(fai, values, feats, out_size, grad: bool) -> None:
    if grad:
        v = values.clone().requires_grad_()
        fs = [f.clone().requires_grad_() for f in feats]
        fai(v, fs, out_size).square().mean().backward()
    else:
        with torch.no_grad():
            fai(values, feats, out_size)


def _one_case(case: str, device: torch.device, repeats: int) -> dict:
    grad = case.endswith("+grad")
    values, feats, gammas = _inputs(case, device)
    out_size = None if case == "4-level" else IMAGE
    fai = FeatureAttentionalInterpolation(gamma_init=gammas, freeze_gamma=not grad).to(device)
    small_v, small_f, _ = _inputs(case, device, scale=4)
    _run(fai, small_v, small_f, None if case == "4-level" else (80, 120), grad)  # load kernels/pools
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20
    base_rss = _peak_rss_mb()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        _run(fai, values, feats, out_size, grad)
        sync()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20 - base
    else:
        peak = _peak_rss_mb() - base_rss
    return {"case": case, "best_s": min(times), "median_s": sorted(times)[len(times) // 2], "peak_mb": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # child process
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.case:
        print(json.dumps(_one_case(args.case, device, args.repeats)))
        return

    print(
        f"FAI: M={M} maps, {LEVELS[-1][1]}x{LEVELS[-1][2]} -> {IMAGE[0]}x{IMAGE[1]}, "
        f"neighbourhood 5, device={device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {args.repeats} repeats"
    )
    print(f"{'case':<14} {'best [s]':>9} {'median [s]':>11} {'peak mem [MB]':>14}")
    for case in CASES:
        cmd = [sys.executable, __file__, "--case", case, "--device", args.device, "--repeats", str(args.repeats)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        print(f"{case:<14} {res['best_s']:>9.3f} {res['median_s']:>11.3f} {res['peak_mb']:>14.0f}")
    print("peak mem: growth of the peak over inputs + warm-up (CPU: ru_maxrss; CUDA: max_memory_allocated)")


if __name__ == "__main__":
    main()
