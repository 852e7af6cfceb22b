"""Full-resolution segmentations ("Ours-HR") from the grid hierarchy ("Ours-LR").

The finest segments are turned into one-hot soft maps, up-sampled with a caller-supplied
function (the feature-attentional interpolation of ``ndd.interpolate`` in the paper, default
bilinear), and the per-pixel argmax gives full-resolution finest labels. The coarser levels
are then rebuilt from those with the grid hierarchy's merge sequence, so every level is
nested in the next one at full resolution too.

This module imports :class:`Hierarchy`, never the reverse: a hierarchy is a value, and
up-sampling is one thing done to it (``upsample_hierarchy(hier, (H, W), upsample=fai)``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .cleanup import reattach_pieces
from .hierarchy import Hierarchy
from .merge import agglomerate
from .regions import region_adjacency

__all__ = ["upsample_labels", "upsample_hierarchy"]

Upsampler = Callable[[Tensor], Tensor]


def upsample_labels(
    labels_or_soft_maps: np.ndarray | Tensor,
    size: tuple[int, int],
    upsample: Upsampler | None = None,
    mode: str = "bilinear",
) -> np.ndarray:
    """Up-sample a label map through its soft (one-hot) maps and take the argmax.

    Args:
        labels_or_soft_maps: (h, w) integer labels ``0 .. M-1`` (turned into one-hot maps), or
            soft maps (M, h, w) / (1, M, h, w).
        size: output (H, W).
        upsample: callable mapping (1, M, h, w) float values to (1, M, H, W); e.g. FAI as
            ``lambda v: fai_upsample(v, features, gammas, (H, W))``. Default:
            ``torch.nn.functional.interpolate`` with ``mode``.
        mode: interpolation mode of the default up-sampler (``"bilinear"`` or ``"nearest"``).

    Returns:
        (H, W) int64 labels; label ``m`` is map ``m``, so ids keep their meaning (a label whose
        map never wins is absent).
    """
    x = torch.as_tensor(np.asarray(labels_or_soft_maps)) if isinstance(labels_or_soft_maps, np.ndarray) \
        else labels_or_soft_maps
    if x.ndim == 2:
        if x.dtype.is_floating_point:
            raise ValueError("a 2-D input must be an integer label map")
        x = F.one_hot(x.long()).permute(2, 0, 1).float()
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"expected (h, w) labels or (M, h, w) / (1, M, h, w) maps, got {tuple(x.shape)}")
    x = x.float()
    H, W = int(size[0]), int(size[1])
    if upsample is None:
        kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
        y = F.interpolate(x, size=(H, W), mode=mode, **kw)
    else:
        y = upsample(x)
    if tuple(y.shape[-2:]) != (H, W) or y.shape[1] != x.shape[1]:
        raise ValueError(f"upsample returned {tuple(y.shape)}, expected (1, {x.shape[1]}, {H}, {W})")
    return y[0].argmax(dim=0).cpu().numpy().astype(np.int64)


def upsample_hierarchy(
    hierarchy: Hierarchy,
    size: tuple[int, int],
    upsample: Upsampler | None = None,
    mode: str = "bilinear",
) -> Hierarchy:
    """Full-resolution hierarchy whose levels are nested and 4-connected.

    1. Finest labels at (H, W) by :func:`upsample_labels` of the finest one-hot maps.
    2. Up-sampling can leave stray islands of a label; each island takes the neighbouring
       label that joins its own earliest in the hierarchy, so every finest segment is one
       4-connected piece. Labels that vanish are pruned from the hierarchy.
    3. The merging is re-run on the grid's segment similarities with permissions
       "adjacent on the grid and at full resolution" (then "adjacent at full resolution" once
       those run out). When the up-sampling keeps every grid adjacency - the usual case - this
       is exactly the grid's merge sequence; otherwise the nearest sequence whose levels are
       all 4-connected at full resolution, which a ``ucm2`` needs. A hierarchy without
       ``segment_similarity`` has its merges replayed unchanged instead.

    Args:
        hierarchy: grid hierarchy (e.g. from ``segment_from_similarity``).
        size: full resolution (H, W).
        upsample: (1, M, h, w) → (1, M, H, W) callable, default bilinear (see ``upsample_labels``).
        mode: mode of the default up-sampler.

    Returns:
        :class:`Hierarchy` at (H, W).

    Example:
        >>> hier = Hierarchy.from_merges(np.array([[0, 1]]), [(0, 1, 0.5)])
        >>> upsample_hierarchy(hier, (2, 4), mode="nearest").finest.tolist()
        [[0, 0, 1, 1], [0, 0, 1, 1]]
    """
    fine = upsample_labels(hierarchy.finest, size, upsample, mode)
    # prefer the neighbour that is closest in the hierarchy (lowest joining height)
    fine = reattach_pieces(fine, affinity=-hierarchy.ultrametric("rank"))
    pruned = hierarchy.with_finest(fine)
    if pruned.segment_similarity is None or pruned.segment_sizes is None:
        return pruned
    n = pruned.n_segments
    sizes = np.asarray(pruned.segment_sizes, dtype=np.float64)
    sums = pruned.segment_similarity * np.outer(sizes, sizes)
    hr_adj = region_adjacency(pruned.finest, n)
    # grid adjacency between the surviving leaves, in their new numbering
    keep = np.unique(fine)
    grid_adj = region_adjacency(hierarchy.finest, hierarchy.n_segments)[np.ix_(keep, keep)]
    pairs, sims = agglomerate(sums, sizes, allowed=grid_adj & hr_adj, fallback=hr_adj)
    return Hierarchy.from_merges(pruned.finest, pairs, sims, pruned.segment_similarity, sizes)
