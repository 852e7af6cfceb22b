"""Time ``segment_image`` per image with each shipped model, side by side in one process.

For every shipped model (:class:`ndd.models.SpecDiffNetWeights`) this loads the weights once,
then segments the same images with the model's default method and writes nothing; it prints
the load time, the seconds per image (median and mean over the images, after one warm-up
image) and where the time goes (the model's forward as ``segment_image`` runs it, the rest
being the hierarchy), on the CPU and, when a GPU is present, on CUDA too (``--devices``). It
also times the spectral block (``D`` and ``K_D``, in float32 as ``segment_image`` runs it) on
each image's affinity, which the grid method runs and the superpixel hierarchy only when its
merging kernel has a ``K_D`` share (``merge_diffusion_weight > 0``: ``BSDS500_HED_V3`` and later). On the CPU, models with a VGG16-HED edge detector are
timed a second time with its trunk in int8 (``ndd segment --int8-edges``)::

    python benchmarks/bench_segment.py [--images data/BSDS500/data/images/val] [--count 10] [--threads 2]
        [--devices cpu cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from ndd import io
from ndd.inference import segment_image
from ndd.models import SpecDiffNetWeights, spec_diff_net
from ndd.models.vgg16_hed import Vgg16HedBackbone

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=REPO / "data/BSDS500/data/images/val")
    parser.add_argument("--count", type=int, default=10, help="images timed (after one warm-up image)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []),
                        help="devices timed one after the other (default: cpu, and cuda when present)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    paths = sorted(args.images.glob("*.jpg"))[: args.count + 1]
    if len(paths) < 2:
        raise SystemExit(f"need at least 2 images in {args.images}")
    images = [io.read_image(p) for p in paths]
    print(f"{len(paths) - 1} images from {args.images} ({images[0].shape[1]}x{images[0].shape[0]} and similar), "
          f"{args.threads} torch threads")
    for device in args.devices:
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        runs = [(member, False) for member in SpecDiffNetWeights]
        runs += [(member, True) for member in SpecDiffNetWeights] if device == "cpu" else []
        for member, int8 in runs:
            t0 = time.perf_counter()
            model = spec_diff_net(member, device=device)
            if int8:
                if not isinstance(model.edge_detector, Vgg16HedBackbone):
                    continue
                model.edge_detector.quantize_int8()
            load = time.perf_counter() - t0
            segment_image(images[0], model)  # warm-up: caches, allocator, kernels
            seconds, forward, spectral = [], [], []
            # as segment_image decides: the grid method reads K_D, superpixels only with a K_D share
            needs_diffusion = not model.has_edge_map or model.config.merge_diffusion_weight > 0
            for image in images[1:]:
                sync()
                t0 = time.perf_counter()
                with torch.no_grad():
                    x = torch.from_numpy(image).permute(2, 0, 1)[None].float().to(device)
                    out = model(x, eigenpairs=False, diffusion=needs_diffusion, spectral_dtype="float32")
                    sync()
                    forward.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    model.diffuse(out.affinity, "float32")  # segment_image's precision
                    sync()
                    spectral.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                result = segment_image(image, model)
                sync()
                seconds.append(time.perf_counter() - t0)
            method = "superpixels" if result.grid_hierarchy is None else "grid"
            name = member.name + (" int8" if int8 else "")
            print(f"{device:5s} {name:19s} load {load:5.2f} s | segment_image ({method}) median "
                  f"{statistics.median(seconds):5.2f} s, mean {statistics.mean(seconds):5.2f} s per image | "
                  f"of which model forward ~{statistics.median(forward):5.2f} s | spectral block "
                  f"{statistics.median(spectral):5.2f} s ({'included' if needs_diffusion else 'skipped'})")

if __name__ == "__main__":
    main()
