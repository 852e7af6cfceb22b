"""Time and peak memory of ``ndd segment`` on one large photo, per output format, side by side.

Writes a synthetic photo (smooth colour regions plus noise, JPEG) of the size asked for, then
runs ``ndd segment`` on it in a fresh process for each output set and prints wall time and
peak resident memory (``resource.getrusage(RUSAGE_CHILDREN)``; each run is its own child)::

    python benchmarks/bench_big_image.py [--size 6000x4000] [--model default] [--threads 2]

Rows: labels only, ucm2 only, overlay + strip, every default format. The ratios to the
labels-only row are what issue targets are stated in.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def synthetic_photo(path: Path, width: int, height: int, seed: int = 0) -> None:
    """A photo-like JPEG: a few dozen smooth colour blobs, soft shading and sensor noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (height // 200 + 2, width // 200 + 2, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.Resampling.NEAREST)
    arr = np.asarray(img, dtype=np.int16)
    arr = arr + rng.integers(-12, 13, arr.shape, dtype=np.int16)
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="6000x4000", help="WIDTHxHEIGHT")
    parser.add_argument("--model", default="default")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--formats", nargs="+", default=["labels", "ucm2", "overlay,strip", "labels,overlay,strip,ucm2"])
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    os.environ.update(env)
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "photo.jpg"
        synthetic_photo(photo, width, height)
        print(f"{width}x{height} synthetic JPEG, model {args.model}, {args.threads} threads")
        rows = []
        for fmt in args.formats:
            # one measuring process per row: RUSAGE_CHILDREN is a maximum over all children
            probe = (
                "import resource, subprocess, sys, time; s = time.perf_counter(); "
                "subprocess.run(sys.argv[1:], check=True, capture_output=True); "
                "print(time.perf_counter() - s, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
            )
            cmd = [sys.executable, "-m", "ndd", "segment", str(photo), "--out", str(Path(tmp) / fmt.replace(",", "_")),
                   "--model", args.model, "--format", fmt, "--no-progress"]
            done = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True, env=env)
            if done.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
            seconds, kib = done.stdout.split()
            rows.append((fmt, float(seconds), int(kib) / 1024**2))
        base = rows[0][1]
        print(f"{'formats':<28} {'seconds':>8} {'x ' + rows[0][0]:>10} {'peak GB':>8}")
        for fmt, seconds, gb in rows:
            print(f"{fmt:<28} {seconds:8.1f} {seconds / base:10.2f} {gb:8.2f}")


if __name__ == "__main__":
    main()
