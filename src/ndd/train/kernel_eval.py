"""Kernel accuracy, the metric of the paper's Table 1.

For one image and one human annotation it is the cosine similarity
``<K_D, K_gt>_F / (||K_D||_F ||K_gt||_F)`` of the predicted similarity
``K_D = exp(-tau D)`` with the ground-truth kernel ``K_gt`` (1 where two grid
nodes lie in the same segment) on the stride-8 feature grid; labels reach the
grid by majority vote (:func:`ndd.data.downsample_labels`). It is averaged over
the image's annotations, then over images. Nodes whose grid cell is unlabelled
(``-1``) are left out of both kernels, exactly as in the training loss, so the
metric equals ``1 - kernel_matching_loss`` for a single annotation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ndd.data import downsample_labels
from ndd.models import SpecDiffNet

__all__ = ["PAPER_TABLE1", "kernel_cosine", "kernel_cosine_per_annotation", "evaluate_kernel", "kernel_report",
           "format_kernel_report", "kernel_accuracy_grid", "kernel_grid_report", "format_kernel_grid"]

#: Kernel accuracy of the paper's Table 1 (ResNet-101, (T, t) = (2, 10), 160k steps on BSDS500
#: train+val), by split: the setting ``ndd``'s defaults follow.
PAPER_TABLE1: dict[str, float] = {"trainval": 0.794, "test": 0.741}


def kernel_cosine(K: Tensor | np.ndarray, K_gt: Tensor | np.ndarray) -> Tensor:
    """Cosine similarity of two kernels, ``<K, K_gt>_F / (||K||_F ||K_gt||_F)``: the metric's definition.

    Args:
        K, K_gt: ``(..., N, N)`` similarity matrices (tensors or arrays; broadcastable
            leading batch dimensions).

    Returns:
        float64 tensor of the batch shape (``()`` for single matrices), in [-1, 1]; 0 where
        either kernel is all zeros. :func:`kernel_cosine_per_annotation` is the same number
        for label kernels, computed without building them.

    Example:
        >>> float(kernel_cosine(torch.eye(2), torch.ones(2, 2)))  # 2 / (sqrt(2) * 2)
        0.7071067811865475
    """
    K = torch.as_tensor(K).double()
    K_gt = torch.as_tensor(K_gt, device=K.device).double()
    if K.ndim < 2 or K_gt.ndim < 2 or K.shape[-2:] != K_gt.shape[-2:]:
        raise ValueError(f"kernels must be (..., N, N) of equal N, got {tuple(K.shape)} and {tuple(K_gt.shape)}")
    dot = (K * K_gt).sum((-2, -1))
    norm = K.square().sum((-2, -1)).sqrt() * K_gt.square().sum((-2, -1)).sqrt()
    return torch.where(norm > 0, dot / torch.where(norm > 0, norm, torch.ones_like(norm)), torch.zeros_like(dot))


def kernel_cosine_per_annotation(K: Tensor, grid_labels: Tensor) -> Tensor:
    """Cosine of one ``(N, N)`` kernel with the label kernel of each of ``A`` annotations.

    Args:
        K: ``(N, N)`` similarity on the grid.
        grid_labels: ``(A, N)`` (or ``(A, h, w)``) int64 labels, ``-1`` = ignore.

    Returns:
        ``(A,)`` float64 cosines (0 for an annotation without any labelled node).

    For annotation ``a`` this is :func:`kernel_cosine` of ``K`` with the rows and columns of
    unlabelled nodes zeroed and the label kernel ``K_gt`` (:func:`ndd.data.label_kernel`),
    computed from one-hot sums instead of materialising ``A`` dense ``N x N`` kernels: one
    product of ``K`` with the one-hot columns of every annotation's segments.
    """
    K = K.double()
    labels = grid_labels.reshape(grid_labels.shape[0], -1)
    count = labels.shape[0]
    columns, owner = [], []
    for a, lab in enumerate(labels):
        valid = lab >= 0
        if valid.any():
            onehot = torch.zeros(lab.numel(), int(lab.max()) + 1, dtype=torch.float64, device=K.device)
            onehot[valid, lab[valid]] = 1.0
            columns.append(onehot)
            owner += [a] * onehot.shape[1]
    out = torch.zeros(count, dtype=torch.float64, device=K.device)
    if not columns:
        return out
    onehot = torch.cat(columns, 1)  # (N, S): every segment of every annotation
    owner_t = torch.tensor(owner, device=K.device)
    dot = out.index_add(0, owner_t, (onehot * (K @ onehot)).sum(0))  # sum of K over same-segment pairs
    gt_norm = out.index_add(0, owner_t, onehot.sum(0).square()).sqrt()  # ||K_gt||_F = sqrt(sum_s n_s^2)
    valid = (labels >= 0).double()
    K2 = K.square()
    if bool((labels >= 0).all()):  # the usual case: one norm for all
        k_norm = K2.sum().sqrt().expand(count)
    else:
        k_norm = ((valid @ K2) * valid).sum(1).sqrt()  # ||K restricted to labelled nodes||_F
    denom = gt_norm * k_norm
    return torch.where(denom > 0, dot / torch.where(denom > 0, denom, torch.ones_like(denom)), out)


def _outputs(model: SpecDiffNet, dataset: Dataset[Any], device: str | torch.device | None, max_images: int | None,
             progress: bool, desc: str, eigenpairs: bool = True) -> Iterator[tuple[int, Any, Any, Tensor]]:
    """``(index, sample, model output, grid labels (A, h, w))`` for each image, one at a time at
    full size, the model in eval mode (its mode restored after)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    n = len(dataset) if max_images is None else min(max_images, len(dataset))  # type: ignore[arg-type]
    indices: Sequence[int] = range(n)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc=desc, unit="img")
    try:
        for i in indices:
            sample = dataset[i]
            labels = sample["labels"]
            labels = labels.unsqueeze(0) if labels.dim() == 2 else labels
            out = model(sample["image"].unsqueeze(0).to(device), eigenpairs=eigenpairs, edges=False)
            yield i, sample, out, downsample_labels(labels.to(device), out.grid_shape)
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate_kernel(
    model: SpecDiffNet,
    dataset: Dataset[Any],
    *,
    device: str | torch.device | None = None,
    max_images: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Kernel accuracy (Table 1) of ``model`` on ``dataset``, one image at a time, at full size.

    Args:
        model: a :class:`SpecDiffNet` (unwrap DDP first); evaluated in eval mode,
            its previous mode is restored.
        dataset: yields samples whose ``"labels"`` are ``(H, W)`` or ``(A, H, W)``
            (all annotations, e.g. ``BSDS500(..., annotation="all")``).
        device: where to run (default: the model's device).
        max_images: evaluate only the first ``max_images`` items.
        progress: show a tqdm bar.

    Returns:
        ``{"mean", "num_images", "num_annotations", "seconds", "per_image":
        [{"id", "mean", "annotations": [...]}]}``; ``mean`` is NaN for an empty set.
    """
    per_image: list[dict[str, Any]] = []
    start = time.perf_counter()
    for i, sample, out, grid in _outputs(model, dataset, device, max_images, progress, "kernel accuracy",
                                         eigenpairs=False):
        scores = kernel_cosine_per_annotation(out.similarity[0], grid).tolist()
        per_image.append({"id": str(sample.get("id", i)), "mean": sum(scores) / len(scores), "annotations": scores})
    means = [r["mean"] for r in per_image]
    return {
        "mean": sum(means) / len(means) if means else math.nan,
        "num_images": len(per_image),
        "num_annotations": sum(len(r["annotations"]) for r in per_image),
        "seconds": time.perf_counter() - start,
        "per_image": per_image,
    }


@torch.no_grad()
def kernel_accuracy_grid(
    model: SpecDiffNet,
    dataset: Dataset[Any],
    times: Sequence[float],
    taus: Sequence[float],
    *,
    device: str | torch.device | None = None,
    max_images: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Kernel accuracy of ``K = exp(-tau D_t)`` for every ``(t, tau)`` of a grid: how to
    re-calibrate a trained model's ``t`` and ``tau`` for its ``K_D`` (choose on val).

    The eigenpairs do not depend on ``t``, so each image runs the network and the eigen-solver
    once (at the model's own ``t``, which only sets the solver's accuracy check) and every
    ``D_t`` comes from them (:func:`ndd.spectral.distance_from_embedding`). Arguments as
    :func:`evaluate_kernel`; ``times`` and ``taus`` positive.

    Returns:
        ``{"times", "taus", "mean"`` (``len(times) x len(taus)`` means over images), ``"best"``
        (``{"t", "tau", "mean"}``), ``"model"`` (the model's own ``t``, ``tau`` and its
        :func:`evaluate_kernel` mean), ``"num_images", "seconds"}``.

    Example:
        >>> from ndd.data import BSDS500  # doctest: +SKIP
        >>> grid = kernel_accuracy_grid(model, BSDS500("data", "val", annotation="all"),
        ...                             [10, 20, 40], [0.2, 0.4])  # doctest: +SKIP
        >>> grid["best"]  # doctest: +SKIP
        {'t': 40.0, 'tau': 0.4, 'mean': 0.736...}
    """
    from ndd.spectral import diffusion_similarity, distance_from_embedding

    times, taus = [float(t) for t in times], [float(tau) for tau in taus]
    if not times or not taus or min(times + taus) <= 0 or not all(math.isfinite(v) for v in times + taus):
        raise ValueError(f"times and taus must be non-empty lists of positive numbers, got {times} and {taus}")
    sums = torch.zeros(len(times), len(taus), dtype=torch.float64)
    own, n = 0.0, 0
    start = time.perf_counter()
    for _, _, out, grid in _outputs(model, dataset, device, max_images, progress, "kernel accuracy grid"):
        own += float(kernel_cosine_per_annotation(out.similarity[0], grid).mean())
        lam, psi = out.eigenvalues[0].double(), out.eigenvectors[0].double()
        for a, t in enumerate(times):
            D = distance_from_embedding(lam, psi, t)
            for b, tau in enumerate(taus):
                # float(): `sums` stays on the CPU whatever device the model runs on
                sums[a, b] += float(kernel_cosine_per_annotation(diffusion_similarity(D, tau), grid).mean())
        n += 1
    mean = (sums / max(n, 1)).tolist()
    a, b = divmod(int(torch.argmax(sums)), len(taus))
    return {
        "times": times,
        "taus": taus,
        "mean": mean,
        "best": {"t": times[a], "tau": taus[b], "mean": mean[a][b]},
        "model": {"t": float(model.t.detach()), "tau": float(model.tau.detach()), "mean": own / max(n, 1)},
        "num_images": n,
        "seconds": time.perf_counter() - start,
    }


def kernel_grid_report(
    model: SpecDiffNet,
    datasets: dict[str, Dataset[Any]],
    times: Sequence[float],
    taus: Sequence[float],
    *,
    description: str,
    checkpoint: str | None = None,
    data: str | None = None,
    max_images: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """:func:`kernel_accuracy_grid` on several splits, as ``ndd evaluate-kernel --t-grid ... --tau-grid
    ...`` prints (:func:`format_kernel_grid` per split) and saves: a JSON-ready ``{"model",
    "checkpoint", "data", "grids": {split: grid}}``."""
    grids = {s: kernel_accuracy_grid(model, d, times, taus, max_images=max_images, progress=progress)
             for s, d in datasets.items()}
    return {"model": description, "checkpoint": checkpoint, "data": data, "grids": grids}


def format_kernel_grid(grid: dict[str, Any]) -> str:
    """A :func:`kernel_accuracy_grid` result as a table (rows ``t``, columns ``tau``)."""
    corner = "t \\ tau"
    lines = [f"kernel accuracy over {grid['num_images']} images, K = exp(-tau D_t)",
             f"{corner:>10s}" + "".join(f"{tau:>8.3g}" for tau in grid["taus"])]
    for t, row in zip(grid["times"], grid["mean"], strict=True):
        lines.append(f"{t:>10.4g}" + "".join(f"{v:8.4f}" for v in row))
    best, own = grid["best"], grid["model"]
    lines.append(f"best: t {best['t']:.4g}, tau {best['tau']:.4g}: {best['mean']:.4f}; "
                 f"the model's own: t {own['t']:.4g}, tau {own['tau']:.4g}: {own['mean']:.4f}")
    return "\n".join(lines)


def kernel_report(
    model: SpecDiffNet,
    datasets: dict[str, Dataset[Any]],
    *,
    description: str,
    checkpoint: str | None = None,
    step: int | None = None,
    data: str | None = None,
    max_images: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Kernel accuracy of ``model`` on several splits, as the report ``ndd evaluate-kernel`` prints and saves.

    Args:
        model: a :class:`SpecDiffNet`.
        datasets: ``{split: dataset}`` (e.g. ``BSDS500(root, split, annotation="all")``).
        description: how the model is named in the report (e.g. a shipped model's name).
        checkpoint, step, data: where the model and the data came from (recorded as given).
        max_images, progress: as :func:`evaluate_kernel`.

    Returns:
        A JSON-ready dict: ``model``, ``checkpoint``, ``step``, ``model_config``, ``data``,
        ``splits`` (``{split: {"mean", "num_images", "num_annotations", "seconds"}}``),
        ``per_image`` (``{split: [...]}``) and ``paper_table1`` (:data:`PAPER_TABLE1`).
    """
    results = {s: evaluate_kernel(model, d, max_images=max_images, progress=progress) for s, d in datasets.items()}
    return {
        "model": description,
        "checkpoint": checkpoint,
        "step": step,
        "model_config": model.config.to_dict(),
        "data": data,
        "splits": {s: {k: r[k] for k in ("mean", "num_images", "num_annotations", "seconds")} for s, r in results.items()},
        "per_image": {s: r["per_image"] for s, r in results.items()},
        "paper_table1": dict(PAPER_TABLE1),
    }


def format_kernel_report(report: dict[str, Any]) -> str:
    """The report of :func:`kernel_report` as a table, one row per split, beside the paper's figure."""
    at_step = f"step {report['step']}, " if report.get("step") is not None else ""
    lines = [f"kernel accuracy of {report['model']} ({at_step}backbone {report['model_config']['backbone']})",
             f"{'split':10s}{'mean':>8s}{'images':>8s}{'annots':>8s}{'paper':>8s}"]
    for split, r in report["splits"].items():
        paper = report["paper_table1"].get(split)
        lines.append(f"{split:10s}{r['mean']:8.4f}{r['num_images']:8d}{r['num_annotations']:8d}"
                     + (f"{paper:8.3f}" if paper is not None else "       -"))
    lines.append("paper: Table 1, ResNet-101, (T, t) = (2, 10), 160k steps on BSDS500 train+val")
    return "\n".join(lines)
