"""Label-map helpers: consecutive relabelling, majority downsampling to the
feature grid, and the ground-truth "same segment" kernel ``K_gt``.

Convention used throughout :mod:`ndd.data`: segment labels are ``0..n-1``
(int64) and ``-1`` (:data:`IGNORE_INDEX`) marks pixels without ground truth
(padding from crops, user-declared "void" values).
"""

from __future__ import annotations

from typing import Literal, TypeVar

import numpy as np
import torch

from ndd.formats.labels import nearest_indices
from ndd.formats.labels import relabel_consecutive as _relabel_numpy

__all__ = ["IGNORE_INDEX", "relabel_consecutive", "resize_labels_nearest", "downsample_labels", "label_kernel"]

IGNORE_INDEX = -1
"""Label value of pixels that carry no ground truth (padding, void)."""

_LUT_LIMIT = 1 << 22  # label spans up to this use a lookup table (32 MiB at most)

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)


def relabel_consecutive(labels: ArrayOrTensor, ignore_index: int | None = IGNORE_INDEX) -> ArrayOrTensor:
    """Map the distinct labels of ``labels`` to ``0..n-1``, keeping their order.

    Values equal to ``ignore_index`` become :data:`IGNORE_INDEX` (``-1``);
    ``ignore_index=None`` relabels every value.
    :func:`ndd.formats.relabel_consecutive` (whose default numbers every value) with the
    data sets' default ``ignore_index``, for a NumPy array or a torch tensor of any shape;
    returns the same type as int64. The whole array is relabelled jointly; relabel each map
    of a batch separately if their labels are unrelated.

    Example: ``[[5, 5, 9], [-1, 2, 9]] -> [[1, 1, 2], [-1, 0, 2]]``.
    """
    if isinstance(labels, torch.Tensor):  # the NumPy implementation, on the CPU
        out = _relabel_numpy(labels.detach().cpu().numpy(), ignore_index=ignore_index)
        return torch.from_numpy(out).to(labels.device)
    return _relabel_numpy(labels, ignore_index=ignore_index)


def _cell_index(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    # Pixel p belongs to cell floor(p * n_out / n_in): a partition of the rows
    # (columns) into n_out runs of floor/ceil(n_in / n_out) pixels, exact
    # blocks when n_in is a multiple of n_out.
    return torch.arange(n_in, device=device) * n_out // n_in


def _count_pairs(keys: torch.Tensor, num_keys: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct values of ``keys`` (in ``[0, num_keys)``) and their counts."""
    if num_keys <= _LUT_LIMIT:  # dense histogram: O(n), the common case (few labels, coarse grid)
        counts = torch.bincount(keys, minlength=num_keys)
        present = counts.nonzero().squeeze(1)
        return present, counts[present]
    # Sparse: sort and count runs (memory O(n) however many labels). Avoids
    # torch.unique, which is very slow on CPU for large inputs.
    keys = torch.sort(keys).values
    starts = torch.ones_like(keys, dtype=torch.bool)
    starts[1:] = keys[1:] != keys[:-1]
    idx = starts.nonzero().squeeze(1)
    ends = torch.cat([idx[1:], idx.new_tensor([keys.numel()])])
    return keys[idx], ends - idx


def resize_labels_nearest(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of ``(..., H, W)`` labels to ``size = (h, w)``: an index gather.

    The tensor twin of :func:`ndd.formats.resize_labels`, with the same pixel-centre rule
    (:func:`ndd.formats.nearest_indices`), on ``labels``' device.

    Example:
        >>> resize_labels_nearest(torch.tensor([[1, 2]]), (2, 4)).tolist()
        [[1, 1, 2, 2], [1, 1, 2, 2]]
    """
    H, W = labels.shape[-2:]
    h, w = int(size[0]), int(size[1])
    iy = torch.from_numpy(nearest_indices(H, h)).to(labels.device)
    ix = torch.from_numpy(nearest_indices(W, w)).to(labels.device)
    return labels[..., iy[:, None], ix[None, :]]


def downsample_labels(
    labels: torch.Tensor,
    size: tuple[int, int],
    mode: Literal["majority", "nearest"] = "majority",
) -> torch.Tensor:
    """Downsample label maps to a coarser grid, e.g. the feature grid.

    Args:
        labels: ``(B, H, W)`` int64 labels, ``-1`` = ignore.
        size: ``(h, w)`` with ``h <= H`` and ``w <= W``.
        mode: ``"majority"`` (default): the grid is partitioned into ``h x w``
            cells (pixel row ``y`` goes to cell row ``floor(y * h / H)``, same
            for columns) and each cell takes its most frequent label, ignoring
            ``-1`` unless the whole cell is ignored; ties go to the smallest
            label. ``"nearest"``: the label of the pixel nearest the cell centre
            (half-pixel convention, like ``F.interpolate(mode="nearest-exact")``).

    Returns:
        ``(B, h, w)`` int64 labels.

    The authors' code instead subsamples ``labels[:, ::8, ::8]`` (321 -> 41);
    callers wanting that exact behaviour can slice directly.
    """
    if labels.ndim != 3:
        raise ValueError(f"labels must be (B, H, W), got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    b, H, W = labels.shape
    h, w = int(size[0]), int(size[1])
    if not (0 < h <= H and 0 < w <= W):
        raise ValueError(f"size {(h, w)} must be positive and at most the label size {(H, W)}")
    labels = labels.to(torch.int64)
    device = labels.device

    if mode == "nearest":
        return resize_labels_nearest(labels, (h, w))
    if mode != "majority":
        raise ValueError(f"unknown mode {mode!r}; expected 'majority' or 'nearest'")

    num_cells = b * h * w
    cell = _cell_index(H, h, device)[:, None] * w + _cell_index(W, w, device)[None, :]  # (H, W)
    cell = (cell.unsqueeze(0) + torch.arange(b, device=device)[:, None, None] * (h * w)).reshape(-1)
    flat = labels.reshape(-1)
    valid = flat >= 0
    out = torch.full((num_cells,), IGNORE_INDEX, dtype=torch.int64, device=device)
    if not valid.any():
        return out.reshape(b, h, w)
    cell, flat = cell[valid], flat[valid]
    num_labels = int(flat.max()) + 1
    keys, counts = _count_pairs(cell * num_labels + flat, num_cells * num_labels)
    key_cell, key_label = keys // num_labels, keys % num_labels
    # One score per (cell, label) pair: higher count first, then smaller label.
    score = counts * num_labels + (num_labels - 1 - key_label)
    best = torch.full((num_cells,), -1, dtype=torch.int64, device=device)
    best.scatter_reduce_(0, key_cell, score, reduce="amax")
    has = best >= 0
    out[has] = num_labels - 1 - best[has] % num_labels
    return out.reshape(b, h, w)


def label_kernel(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth similarity ``K_gt`` of the LR kernel matching loss.

    Args:
        labels: ``(B, h, w)`` or ``(B, N)`` int64 labels on the feature grid
            (e.g. from :func:`downsample_labels`), ``-1`` = ignore.

    Returns:
        ``(K_gt, valid)``: ``K_gt`` is ``(B, N, N)`` float32 with
        ``K_gt[b, i, j] = 1`` when ``i`` and ``j`` carry the same valid label,
        else 0 (rows/columns of ignored points are all zero); ``valid`` is the
        ``(B, N)`` bool mask of non-ignored points, for masked losses.
    """
    flat = labels.reshape(labels.shape[0], -1)
    valid = flat >= 0
    same = (flat[:, :, None] == flat[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    return same.to(torch.float32), valid
