"""Speed of the demo's callbacks (what ``ndd demo`` runs per event), without a browser.

Opens one 321x481 image (``examples/coffee.jpg`` resized, or ``--image``) through
:class:`ndd.demo.DemoBackend` as the page does: read, network forward, ``K_D``, hierarchy,
``ucm2``, the precomputed FAI for clicks, the first picture and the downloads ("time to first
result"). Then it moves the slider over several levels and clicks several pixels, and prints
the median and worst time per slider move and per click (picture and label PNG included; the
Gradio transport, a PNG encode of the picture and the network round trip, is not)::

    python benchmarks/bench_demo.py [--model default|bsds500|handcrafted|CKPT] [--threads 2] [--repeats 20]

Target (issue 16): slider and click under 0.2 s.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ndd.demo import DemoBackend, DemoSettings
from ndd.inference import load_segmentation_model

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=REPO / "examples" / "coffee.jpg")
    parser.add_argument("--model", default=None, help="as ndd demo --model (default: the shipped default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20, help="slider moves and clicks timed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, description = load_segmentation_model(args.model)
    print(f"model: {description} (loaded in {time.perf_counter() - start:.2f} s), {args.threads} torch threads")
    with tempfile.TemporaryDirectory(prefix="ndd-bench-demo-") as tmp:
        path = Path(tmp) / "image.png"
        with Image.open(args.image) as im:  # BSDS500's 321x481 (landscape 481 wide)
            im.convert("RGB").resize((481, 321), Image.LANCZOS).save(path)
        backend = DemoBackend(model, description, Path(tmp) / "work", DemoSettings())
        view = backend.open_image(path)
        if view.key is None:
            raise SystemExit(view.message)
        print(f"time to first result (321x481): {view.seconds:.2f} s  [{view.message.splitlines()[1]}]")
        rng = np.random.default_rng(0)
        levels = rng.integers(1, view.max_segments + 1, args.repeats)
        points = np.stack([rng.integers(0, 481, args.repeats), rng.integers(0, 321, args.repeats)], axis=1)
        slider = [backend.show_level(view.key, int(k)).seconds for k in levels]
        clicks = [backend.click(view.key, int(x), int(y)).seconds for x, y in points]
        for name, times in (("slider move", slider), ("click", clicks)):
            print(f"per {name}: median {1000 * statistics.median(times):.0f} ms, worst {1000 * max(times):.0f} ms "
                  f"({len(times)} timed)")
        print(f"forwards run: {backend.analyses_run} (one per image)")


if __name__ == "__main__":
    main()
