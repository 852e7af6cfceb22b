"""The non-training steps of the pipeline: pseudo labels, multi-scale prediction, evaluation,
and the synthetic data set. Each is a plain function the CLI calls with the same name.

Pseudo labels and predictions are written one PNG per image (VOC palette, atomically), so an
interrupted run is resumed by running the same command again (finished images are skipped;
``overwrite=True`` redoes them). Under ``torchrun`` rank ``r`` of ``R`` takes images
``r, r + R, ...``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ndd.data.voc import read_mask_png, write_mask_png
from ndd.device import resolve_device

from .datasets import build_dataset, geometry_key
from .metrics import confusion_matrix, format_scores, scores_from_confusion

__all__ = ["pseudo_labels", "scores_to_labels", "crop_windows", "multi_scale_probabilities", "predict", "evaluate",
           "synthetic", "PAPER_SCALES"]

#: Test scales of paper §7.
PAPER_SCALES: tuple[float, ...] = (0.7, 0.85, 1.0)


def _rank() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _bar(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc=desc, dynamic_ncols=True)


def _write_masks(
    out: str | Path,
    jobs: Sequence[tuple[str, Any]],
    mask: Callable[[Any], np.ndarray],
    desc: str,
    overwrite: bool,
    progress: bool,
) -> dict[str, Any]:
    """Write ``mask(ref)`` as ``out/<name>.png`` for this rank's share of ``jobs`` (``(name, ref)``),
    skipping PNGs that exist unless ``overwrite``. Returns ``{"written", "skipped", "seconds", "out"}``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rank, world = _rank()
    todo = [job for k, job in enumerate(jobs) if k % world == rank]
    written = skipped = 0
    start = time.perf_counter()
    bar = _bar(len(todo), desc, progress and rank == 0)
    for name, ref in todo:
        target = out / f"{name}.png"
        if target.exists() and not overwrite:
            skipped += 1
        else:
            write_mask_png(target, mask(ref))
            written += 1
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return {"written": written, "skipped": skipped, "seconds": time.perf_counter() - start, "out": str(out)}


def scores_to_labels(scores: Tensor, size: tuple[int, int], allowed: Tensor | None = None) -> Tensor:
    """Class ids ``(H, W)`` from grid scores ``(c, h, w)`` up-sampled to the image.

    The grid node ``(i, j)`` covers pixels ``8i .. 8i+7``: the scores are resized bilinearly to
    ``(8h, 8w)`` (node centres on their cells' centres) and cropped to ``size``; ``allowed``
    ``(c,)`` bool restricts the argmax (an image's own classes and the background).
    """
    c, h, w = scores.shape
    up = F.interpolate(scores[None].float(), size=(8 * h, 8 * w), mode="bilinear", align_corners=False)[0]
    up = up[:, : size[0], : size[1]]
    if allowed is not None:
        up = up.masked_fill(~allowed[:, None, None].to(up.device), float("-inf"))
    return up.argmax(0)


@torch.no_grad()
def pseudo_labels(
    checkpoint: str | Path,
    out: str | Path,
    *,
    dataset: str | None = None,
    data_root: str | Path | None = None,
    split: str | None = None,
    image_labels: str | None = None,
    device: str = "auto",
    restrict: bool = True,
    guidance_cache: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    num_threads: int | None = None,
) -> dict[str, Any]:
    """``ndd wsss pseudo-labels``: a pseudo segmentation (VOC-palette PNG) of every training image.

    The trained network runs on each whole image (its ``P_sg``, or the CAMs for ``gap``); the
    scores are up-sampled to the image and the label is the argmax over the background and the
    image's own classes (``restrict=False``: over all classes).

    Args:
        checkpoint: ``last.pt`` of ``ndd wsss train``.
        out: output folder (``<id>.png``).
        dataset, data_root, split, image_labels: the images (default: the training run's).
        guidance_cache: reuse the kernels of a training run's ``guidance_cache``.

    Returns:
        ``{"written", "skipped", "seconds", "out"}``.
    """
    from .checkpoints import load_wsss_model
    from .guidance import Guidance, KernelCache

    dev = resolve_device(device)
    if num_threads:
        torch.set_num_threads(num_threads)
    model, meta = load_wsss_model(checkpoint, dev)
    run = meta["run_config"]
    data = build_dataset(dataset or run["dataset"], data_root or run["data_root"], split or run["split"],
                         image_labels=image_labels or run.get("image_labels", "auto"))
    if list(data.classes) != list(meta["classes"]):
        raise ValueError(f"the data's classes {list(data.classes)[:4]}... differ from the checkpoint's {meta['classes'][:4]}...")
    guidance = Guidance.from_config(model.config, dev)
    cache = None
    if guidance is not None and guidance_cache is not None:
        cache = KernelCache(guidance_cache, guidance.fingerprint(model.config.spec_diff_net))

    def mask(i: int) -> np.ndarray:
        item = data[i]
        image = item["image"][None].to(dev)
        H, W = image.shape[-2:]
        grid = (math.ceil(H / 8), math.ceil(W / 8))
        K = None
        if guidance is not None:
            K = (cache.get_kernel(guidance, image, grid, [item["id"]], [geometry_key(1.0, 0, 0, False, H, W)])
                 if cache is not None else guidance(image, grid))
        scores = model.segmentation_scores(model(image, K))[0]
        allowed = item["classes"] > 0 if restrict else None
        return scores_to_labels(scores, (H, W), allowed).cpu().numpy().astype(np.uint8)

    jobs = [(name, i) for i, name in enumerate(data.ids)]
    return _write_masks(out, jobs, mask, "pseudo-labels", overwrite, progress)


def crop_windows(size: int, crop: int) -> list[int]:
    """Start offsets of ``ceil(size / crop)`` evenly spaced windows of ``min(crop, size)`` covering ``size``
    (the overlapping crops of :func:`multi_scale_probabilities`, along one axis).

    Example:
        >>> crop_windows(500, 321)
        [0, 179]
    """
    n = math.ceil(size / crop)
    span = size - min(crop, size)
    return [round(k * span / (n - 1)) for k in range(n)] if n > 1 else [0]


@torch.no_grad()
def multi_scale_probabilities(
    model: nn.Module,
    image: Tensor,
    scales: Sequence[float] = PAPER_SCALES,
    crop_size: int = 321,
    flip: bool = False,
    max_batch: int = 4,
) -> Tensor:
    """Paper §7 inference: class probabilities ``(c, H, W)`` averaged over scales and overlapping crops.

    At each scale the image is covered by ``ceil(H_s / crop) x ceil(W_s / crop)`` evenly spaced,
    overlapping ``crop x crop`` windows (a side shorter than the crop is taken whole); each
    window's softmax is accumulated and divided by the number of windows over each pixel, then
    resized back to ``(H, W)``; the scales are averaged (``flip``: with the mirrored image too).

    Args:
        model: images ``(B, 3, h, w)`` -> logits ``(B, c, h, w)``.
        image: ``(3, H, W)`` RGB in ``[0, 1]``.
    """
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got {tuple(image.shape)}")
    if not torch.isfinite(image).all():
        raise ValueError("image has NaN or infinite values")
    H, W = image.shape[-2:]
    total: Tensor | None = None
    views = [image, image.flip(-1)] if flip else [image]
    for view_index, view in enumerate(views):
        for s in scales:
            hs, ws = max(1, round(H * s)), max(1, round(W * s))
            x = view[None] if (hs, ws) == (H, W) else F.interpolate(
                view[None], size=(hs, ws), mode="bilinear", align_corners=False, antialias=s < 1)
            ch, cw = min(crop_size, hs), min(crop_size, ws)
            boxes = [(t, l) for t in crop_windows(hs, crop_size) for l in crop_windows(ws, crop_size)]
            acc: Tensor | None = None
            count = torch.zeros(1, hs, ws, device=image.device)
            for k in range(0, len(boxes), max_batch):
                chunk = boxes[k : k + max_batch]
                batch = torch.cat([x[..., t : t + ch, l : l + cw] for t, l in chunk])
                probs = torch.softmax(model(batch).float(), dim=1)
                if acc is None:
                    acc = torch.zeros(probs.shape[1], hs, ws, device=image.device)
                for p, (t, l) in zip(probs, chunk, strict=True):
                    acc[:, t : t + ch, l : l + cw] += p
                    count[:, t : t + ch, l : l + cw] += 1
            probs = acc / count  # type: ignore[operator]
            if (hs, ws) != (H, W):
                probs = F.interpolate(probs[None], size=(H, W), mode="bilinear", align_corners=False)[0]
            if view_index == 1:
                probs = probs.flip(-1)
            total = probs if total is None else total + probs
    return total / (len(scales) * len(views))  # type: ignore[operator]


def _input_images(inputs: Sequence[str | Path]) -> list[Path]:
    from ndd.batch import collect_inputs

    paths, problems = collect_inputs(inputs)
    if problems:
        raise FileNotFoundError(problems[0])
    if not paths:
        raise FileNotFoundError("no image to predict")
    return paths


@torch.no_grad()
def predict(
    checkpoint: str | Path,
    out: str | Path,
    inputs: Sequence[str | Path] = (),
    *,
    dataset: str | None = None,
    data_root: str | Path | None = None,
    split: str | None = None,
    scales: Sequence[float] = PAPER_SCALES,
    crop_size: int = 321,
    flip: bool = False,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    num_threads: int | None = None,
) -> dict[str, Any]:
    """``ndd wsss predict``: masks (VOC-palette PNG, ``<stem>.png``) from a ``train-seg`` checkpoint.

    Images come from ``inputs`` (files, folders, globs, ``@list.txt``) or from a data set split
    (``dataset``, ``data_root``, ``split``). Inference: :func:`multi_scale_probabilities`.

    Returns:
        ``{"written", "skipped", "seconds", "out"}``.
    """
    from ndd import io

    from .checkpoints import load_segmentation_net

    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive, got {list(scales)}")
    if crop_size < 8:
        raise ValueError(f"crop_size must be at least 8, got {crop_size}")
    if inputs and data_root is not None:
        raise ValueError("give images or a data set (--data), not both")
    items: list[tuple[str, Any]]
    if inputs:
        items = [(p.stem, p) for p in _input_images(inputs)]
        stems = [s for s, _ in items]
        if len(set(stems)) != len(stems):
            raise ValueError("several inputs share a file name: their masks would overwrite each other")
        reader = None
    else:
        if data_root is None:
            raise ValueError("no images: give image files / folders or a data set (--data)")
        data = build_dataset(dataset or "voc", data_root, split or "val")
        items = [(i, k) for k, i in enumerate(data.ids)]
        reader = data
    dev = resolve_device(device)
    if num_threads:
        torch.set_num_threads(num_threads)
    model, _ = load_segmentation_net(checkpoint, dev)

    def mask(ref: Any) -> np.ndarray:
        if reader is None:
            image = torch.from_numpy(io.read_image(ref)).permute(2, 0, 1)
        else:
            image = reader[ref]["image"]
        probs = multi_scale_probabilities(model, image.to(dev), scales, crop_size, flip)
        return probs.argmax(0).cpu().numpy().astype(np.uint8)

    return _write_masks(out, items, mask, "predict", overwrite, progress)


def evaluate(
    predictions: str | Path,
    *,
    dataset: str = "voc",
    data_root: str | Path | None = None,
    split: str | None = None,
    groundtruth: str | Path | None = None,
    classes: Sequence[str] | None = None,
    allow_missing: bool = False,
    json_path: str | Path | None = None,
) -> dict[str, Any]:
    """``ndd wsss evaluate``: mIoU of a folder of masks (``<id>.png``) against the ground truth.

    The ground truth is a data set split with masks (``dataset``, ``data_root``, ``split``: VOC
    val, or the train images to score pseudo labels) or a folder of masks (``groundtruth``, with
    ``classes``: names, default VOC's 21). Every mask is checked (values within the classes and
    255, sizes) as it is read.

    Returns:
        :func:`~ndd.wsss.metrics.scores_from_confusion` plus ``"n_images"``, ``"classes"``,
        ``"confusion"`` (list of lists); written to ``json_path`` too when given.

    Raises:
        FileNotFoundError: a missing folder, or predictions missing (listed) without ``allow_missing``.
        ValueError: a bad mask (named) or a size mismatch.
    """
    from ndd.data.voc import VOC_CLASSES

    pred_dir = Path(predictions)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"prediction folder not found: {pred_dir}")
    if groundtruth is not None:
        gt_dir = Path(groundtruth)
        if not gt_dir.is_dir():
            raise FileNotFoundError(f"ground-truth folder not found: {gt_dir}")
        names = list(classes) if classes is not None else list(VOC_CLASSES)
        gt_paths = {p.stem: p for p in sorted(gt_dir.glob("*.png"))}
        if not gt_paths:
            raise FileNotFoundError(f"no PNG masks in {gt_dir}")
    else:
        data = build_dataset(dataset, data_root, split, require_masks=True)
        names = list(data.classes)
        gt_paths = dict(zip(data.ids, data.mask_paths, strict=True))  # type: ignore[arg-type]
    missing = [i for i in gt_paths if not (pred_dir / f"{i}.png").is_file()]
    if missing and not allow_missing:
        raise FileNotFoundError(f"{len(missing)} of {len(gt_paths)} image(s) have no prediction in {pred_dir}: "
                                + ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else ""))
    ids = [i for i in gt_paths if i not in set(missing)]
    if not ids:
        raise FileNotFoundError(f"no prediction in {pred_dir} matches a ground-truth mask")
    C = len(names)
    conf = np.zeros((C, C + 1), dtype=np.int64)
    for i in ids:
        gt, pred_path = read_mask_png(gt_paths[i], C), pred_dir / f"{i}.png"
        pred = read_mask_png(pred_path, C)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred_path} is {pred.shape[0]}x{pred.shape[1]}, its ground truth "
                             f"{gt.shape[0]}x{gt.shape[1]}")
        conf += confusion_matrix(pred, gt, C)
    scores = scores_from_confusion(conf, names)
    scores.update(n_images=len(ids), n_missing=len(missing), classes=names, confusion=conf.tolist())
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(scores, indent=1))
    return scores


def synthetic(
    out: str | Path,
    num_train: int = 400,
    num_val: int = 100,
    size: tuple[int, int] = (128, 128),
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """``ndd wsss synthetic``: write the synthetic multi-class data set (:mod:`ndd.data.multiclass`)
    in the generic layout (``images/``, ``masks/``, ``labels.csv``, ``classes.txt``, ``train.txt``, ``val.txt``)."""
    from ndd.data.multiclass import write_multiclass_dataset

    return write_multiclass_dataset(out, num_train, num_val, size, seed, overwrite=overwrite, progress=progress)


__all__ += ["format_scores"]
