"""Images per second of ``ndd segment`` over a folder, with 1 and with 2 worker processes.

Runs the real command (``python -m ndd segment``, a fresh output folder each time, ``--no-resume``)
once per setting, one after the other in this run (whole command: start-up and model load included),
and prints wall time, images/s and the load
average around each run (a CPU that other jobs share gives slower, noisier figures)::

    python benchmarks/bench_segment_many.py [--images data/BSDS500/data/images/test] [--count 200]
        [--model default] [--format ucm2] [--settings 1x2 2x1 2x1+float]

A setting ``KxT`` is K workers with T torch threads each (``--workers K --threads T``); a
``+int8`` suffix adds ``--int8-edges`` (the HED trunk in int8), ``+float`` adds
``--no-int8-edges`` (float32 HED: the default model runs its trunk in int8 on an x86 CPU).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(images: list[Path], model: str, formats: str, workers: int, threads: int, extra: list[str]) -> float:
    """Wall seconds of one ``ndd segment`` over ``images`` (listed in a file: no shell limits)."""
    work = Path(tempfile.mkdtemp(prefix="ndd_bench_many_"))
    try:
        listing = work / "inputs.txt"
        listing.write_text("\n".join(str(p) for p in images) + "\n")
        cmd = [sys.executable, "-m", "ndd", "segment", f"@{listing}", "--out", str(work / "out"), "--model", model,
               "--format", formats, "--workers", str(workers), "--threads", str(threads), "--no-progress",
               "--no-resume", *extra]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"ndd segment failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
        return seconds
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=REPO / "data/BSDS500/data/images/test")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--model", default="default")
    parser.add_argument("--format", default="ucm2")
    parser.add_argument("--settings", nargs="+", default=["1x2", "2x1"],
                        help="KxT: K workers, T threads each; KxT+int8 adds --int8-edges, KxT+float --no-int8-edges")
    args = parser.parse_args()
    images = sorted(args.images.glob("*.jpg"))[: args.count]
    if not images:
        raise SystemExit(f"no .jpg images in {args.images}")
    print(f"{len(images)} images from {args.images}, model {args.model}, format {args.format}, {os.cpu_count()} CPUs")
    for setting in args.settings:
        shape, _, flag = setting.lower().partition("+")
        workers, threads = (int(v) for v in shape.split("x"))
        extra = {"": [], "int8": ["--int8-edges"], "float": ["--no-int8-edges"]}[flag]
        before = os.getloadavg()[0]
        seconds = run(images, args.model, args.format, workers, threads, extra)
        print(f"--workers {workers} --threads {threads}{' ' + ' '.join(extra) if extra else ''}: {seconds:.1f} s, {len(images) / seconds:.3f} images/s, "
              f"{seconds / len(images):.2f} s/image (load average {before:.1f} -> {os.getloadavg()[0]:.1f})",
              flush=True)


if __name__ == "__main__":
    main()
