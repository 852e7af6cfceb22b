"""Training speed (optimiser steps per second) of spec-diff-net.

Times full training steps (forward, LR [+ HR] loss, backward, clipping, Adam) of
:class:`ndd.train.TrainingObjective` on pre-built dead-leaves batches, so data
loading is left out. Configurations:

- ``cpu``:   small_cnn, crop 97, batch 2, window 9, Ne 20, t 2, HR at half resolution;
- ``paper``: efficientnet_lite0, crop 321, batch 3, window 17, Ne 50, t 10, HR at full
  resolution (the paper's sizes with this project's default backbone);
- ``finetune``: the shipped default model (Lite0 + its VGG16-HED edge detector, frozen
  backbone) on whole 321x481 images, batch 1: the recipe that made it (``--init-from``), whose
  steps must not run the edge detector (the losses never read it).

Both stages are timed. On CUDA the paper configuration is also timed with bf16
autocast of the backbone (the spectral part stays float32).

    python benchmarks/bench_train.py                       # CPU, both configurations
    python benchmarks/bench_train.py --device cuda         # GPU
    python benchmarks/bench_train.py --configs cpu --steps 20 --threads 2
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from ndd.data import DeadLeaves, collate
from ndd.models import SpecDiffNet, SpecDiffNetConfig, spec_diff_net
from ndd.train.amp import autocast_submodules
from ndd.train.objective import TrainingObjective
from ndd.train.optim import build_optimizer

CONFIGS: dict[str, dict[str, Any]] = {
    "cpu": dict(crop=97, batch=2, hr_scale=0.5,
                model=dict(backbone="small_cnn", window=9, n_eigs=20, embed_dim=32, mu_init=20.0, t_init=2.0,
                           freeze_bn=False)),
    "paper": dict(crop=321, batch=3, hr_scale=1.0,
                  model=dict(backbone="efficientnet_lite0", window=17, n_eigs=50, freeze_bn=True)),
    "finetune": dict(crop=(321, 481), batch=1, hr_scale=1.0, weights="DEFAULT"),
}


def time_steps(name: str, stage: int, device: torch.device, steps: int, amp: torch.dtype | None) -> float:
    """Steps per second of ``steps`` training steps after two warm-up steps."""
    spec = CONFIGS[name]
    torch.manual_seed(0)
    if "weights" in spec:  # a shipped model as it is fine-tuned: its own config, backbone frozen
        model = spec_diff_net(spec["weights"], device=device).train()
        model.backbone.requires_grad_(False)
    else:
        model = SpecDiffNet(SpecDiffNetConfig(**spec["model"])).to(device).train()
    if amp is not None:
        autocast_submodules([model.backbone, model.projection], device.type, amp)
    objective = TrainingObjective(model, hr_scale=spec["hr_scale"])
    optimizer = build_optimizer(model, 1e-4, 10.0, 0.0)
    crop = spec["crop"] if isinstance(spec["crop"], tuple) else (spec["crop"], spec["crop"])
    data = DeadLeaves(spec["batch"], crop, seed=0)
    batch = collate([data[i] for i in range(spec["batch"])])
    images, labels = batch["image"].to(device), batch["labels"].to(device)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = objective(images, labels, hr=stage == 2, generator=gen)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement (default 10)")
    parser.add_argument("--paper-steps", type=int, default=None,
                        help="timed steps for 'paper' and 'finetune' on CPU (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {where}; torch {torch.__version__}")
    print(f"{'config':8s}{'stage':>6s}{'precision':>10s}{'steps/s':>10s}{'s/step':>9s}{'images/s':>10s}")
    for name in args.configs:
        steps = args.steps
        if name in ("paper", "finetune") and device.type == "cpu":
            steps = args.paper_steps or 3  # seconds per step on a CPU
        precisions: list[torch.dtype | None] = [None]
        if device.type == "cuda" and name == "paper":
            precisions.append(torch.bfloat16)
        for amp in precisions:
            for stage in (1, 2):
                rate = time_steps(name, stage, device, steps, amp)
                label = "fp32" if amp is None else "bf16"
                batch = CONFIGS[name]["batch"]
                print(f"{name:8s}{stage:6d}{label:>10s}{rate:10.3f}{1 / rate:9.2f}{rate * batch:10.2f}", flush=True)


if __name__ == "__main__":
    main()
