"""Training the learned edge fusion (:class:`ndd.models.edge_fusion.EdgeFusionHead`).

The edge detector is frozen, so its side logits at every scale are computed once per image
and cached (:func:`cache_side_logits`: about 6 s per 321x481 image at scales 0.5, 1, 1.5 on
one core of this project's CPU, float16 on disk, 4.6 MB per image); a training step then
costs only the small head (:func:`train_edge_fusion`: 8 crops of 192 x 192, about 0.4 s at
one thread), so the whole training fits a CPU in minutes. The targets are the BSDS500
boundaries as the share of annotators marking each pixel (:func:`boundary_agreement`), the
loss :func:`ndd.losses.balanced_edge_loss`.

Example (what made the shipped head; docs/segmentation.md, "A learned fusion of HED's side outputs")::

    from ndd.models import spec_diff_net
    from ndd.train.edge_fusion import cache_side_logits, bsds_pairs, train_edge_fusion
    model = spec_diff_net("DEFAULT")  # its VGG16-HED and edge scales; its own head is not used here
    pairs = bsds_pairs("data", ["train", "val"])
    cache = cache_side_logits(model, [image for image, _ in pairs], "runs/sides")
    head = train_edge_fusion(cache, [gt for _, gt in pairs], model)
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ndd.losses import balanced_edge_loss
from ndd.models.backbone_base import multiscale_side_logits
from ndd.models.edge_fusion import EdgeFusionHead
from ndd.models.specdiffnet import SpecDiffNet

from .config import EdgeFusionTraining

__all__ = ["EdgeFusionTraining", "boundary_agreement", "bsds_pairs", "cache_side_logits", "train_edge_fusion"]

StrPath = str | os.PathLike[str]


def bsds_pairs(root: StrPath, splits: Sequence[str]) -> list[tuple[Path, Path]]:
    """``(image, groundTruth .mat)`` of every image of BSDS500 ``splits`` (sorted by id), as
    :class:`ndd.data.BSDS500` indexes them (same checks: missing folders, images without
    ground truth)."""
    from ndd.data.bsds import BSDS500

    pairs: list[tuple[Path, Path]] = []
    for split in splits:
        dataset = BSDS500(root, split)  # type: ignore[arg-type]
        pairs += list(zip(dataset.image_paths, dataset.gt_paths))
    return pairs


def boundary_agreement(groundtruth: StrPath) -> np.ndarray:
    """``(H, W)`` float32 share of a BSDS ``groundTruth`` file's annotators whose boundary map
    marks each pixel."""
    from ndd.evaluation.inputs import load_groundtruth

    annotations = load_groundtruth(groundtruth)
    return np.mean([a.boundaries.astype(np.float32) for a in annotations], axis=0).astype(np.float32)


@torch.no_grad()
def cache_side_logits(model: SpecDiffNet, images: Sequence[StrPath], out_dir: StrPath,
                      progress: bool = False) -> list[Path]:
    """Write the side logits that ``model``'s edge fusion reads (its edge detector at every
    ``edge_scales``, :func:`ndd.models.backbone_base.multiscale_side_logits`) as one float16
    ``(5 S, H, W)`` ``<id>.npy`` per image; files already there are kept (a stopped run
    resumes), each is written to a temporary name first.

    Returns:
        the ``.npy`` paths, in the order of ``images``.
    """
    from ndd.formats.images import read_image

    detector = model.edge_network
    if not hasattr(detector, "side_logits"):
        raise ValueError("the model has no edge detector with side outputs (vgg16_hed)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    detector.eval()
    paths = []
    items: Sequence[StrPath] = images
    if progress:
        from tqdm import tqdm

        items = tqdm(images, desc="side logits", unit="img")
    for image in items:
        target = out / f"{Path(image).stem}.npy"
        paths.append(target)
        if target.is_file():
            continue
        rgb = read_image(image)
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].contiguous()
        sides = multiscale_side_logits(detector.side_logits, x, model.config.edge_scales)[0]
        partial = target.with_name(target.stem + ".partial.npy")
        np.save(partial, sides.numpy().astype(np.float16))
        os.replace(partial, target)
    return paths


def train_edge_fusion(side_logits: Sequence[StrPath | np.ndarray], groundtruth: Sequence[StrPath | np.ndarray],
                      model: SpecDiffNet | None = None, settings: EdgeFusionTraining = EdgeFusionTraining(),
                      log_every: int = 100) -> EdgeFusionHead:
    """Train an :class:`~ndd.models.edge_fusion.EdgeFusionHead` on cached side logits.

    Args:
        side_logits: per image, a ``(C, H, W)`` array or its ``.npy`` (:func:`cache_side_logits`).
        groundtruth: per image, a ``groundTruth`` ``.mat`` or an ``(H, W)`` annotator share
            (:func:`boundary_agreement`).
        model: when given, the head starts as the mean over scales of its edge detector's
            fused logit (``EdgeFusionHead.init_from_fuse``).
        settings: see :class:`EdgeFusionTraining`.
        log_every: print the loss every this many steps (0: never).

    Returns:
        the trained head (CPU, eval mode).
    """
    if len(side_logits) != len(groundtruth) or not side_logits:
        raise ValueError(f"need as many side-logit maps as ground truths (> 0), got {len(side_logits)} and {len(groundtruth)}")
    features = [torch.from_numpy(np.load(f) if not isinstance(f, np.ndarray) else f) for f in side_logits]
    targets = [torch.from_numpy(boundary_agreement(g) if not isinstance(g, np.ndarray) else g.astype(np.float32))
               for g in groundtruth]
    channels = features[0].shape[0]
    for f, g in zip(features, targets):
        if f.dim() != 3 or f.shape[0] != channels or tuple(f.shape[1:]) != tuple(g.shape):
            raise ValueError(f"side logits {tuple(f.shape)} do not fit ground truth {tuple(g.shape)} ({channels} channels)")
    torch.manual_seed(settings.seed)
    head = EdgeFusionHead(channels, settings.width)
    if model is not None:
        detector = model.edge_network
        head.init_from_fuse(detector.fuse.weight, detector.fuse.bias, channels // detector.n_side_outputs)
    optimiser = torch.optim.Adam(head.parameters(), settings.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, settings.steps)
    rng = np.random.default_rng(settings.seed)
    start = time.perf_counter()
    head.train()
    for step in range(settings.steps):
        x, y = _batch(features, targets, settings.crop, settings.batch, rng)
        loss = balanced_edge_loss(head(x), y, eta=settings.eta)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if log_every and (step % log_every == 0 or step == settings.steps - 1):
            print(f"edge fusion step {step}: loss {loss.item():.1f} ({time.perf_counter() - start:.0f} s)", flush=True)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"edge fusion loss is {loss.item()} at step {step}")
    return head.eval()


def _batch(features: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], crop: int, batch: int,
           rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crops (one size for the batch: the smallest image bounds it) with random flips."""
    size_h = min(crop, *(f.shape[1] for f in features))
    size_w = min(crop, *(f.shape[2] for f in features))
    xs, ys = [], []
    for _ in range(batch):
        i = int(rng.integers(len(features)))
        f, g = features[i], targets[i]
        r = int(rng.integers(f.shape[1] - size_h + 1))
        c = int(rng.integers(f.shape[2] - size_w + 1))
        x, y = f[:, r:r + size_h, c:c + size_w].float(), g[r:r + size_h, c:c + size_w]
        if rng.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        xs.append(x)
        ys.append(y)
    return torch.stack(xs), torch.stack(ys)[:, None]
