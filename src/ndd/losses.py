"""Training losses of spec-diff-net (paper §5, Eqs. 7 and 8), as quantities to minimise.

Ground-truth kernels come from label maps with :func:`ndd.data.label_kernel`
(``K_gt[i, j] = 1`` when ``i`` and ``j`` share a segment).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "SegmentMatching", "balanced_edge_loss", "kernel_matching_loss", "sample_segment_points", "segment_matching_loss",
]


@dataclass(frozen=True)
class SegmentMatching:
    """Which similarity maps the HR loss (:func:`segment_matching_loss`) compares, and how.

    Attributes:
        points: ``None``: one random node per ground-truth segment (Eq. 8); ``k``: ``k`` nodes
            drawn uniformly with replacement among the labelled ones.
        distance: ``"cosine"`` (``1 - cosine`` of map and mask, Eq. 8) or ``"l1"`` (mean
            absolute error over labelled pixels).

    Example:
        >>> SegmentMatching.authors()
        SegmentMatching(points=20, distance='l1')
    """

    points: int | None = None
    distance: Literal["cosine", "l1"] = "cosine"

    def __post_init__(self) -> None:
        if self.points is not None and self.points < 1:
            raise ValueError(f"points must be None or >= 1, got {self.points}")
        if self.distance not in ("cosine", "l1"):
            raise ValueError(f"distance must be 'cosine' or 'l1', got {self.distance!r}")

    @classmethod
    def authors(cls) -> SegmentMatching:
        """The authors' released variant: 20 random nodes, L1 to the mask."""
        return cls(points=20, distance="l1")


def _cosine(a: Tensor, b: Tensor, dim: tuple[int, ...]) -> Tensor:
    eps = torch.finfo(a.dtype).tiny
    return (a * b).sum(dim) / (a.square().sum(dim).sqrt() * b.square().sum(dim).sqrt()).clamp_min(eps)


def kernel_matching_loss(K: Tensor, K_gt: Tensor, valid: Tensor | None = None) -> Tensor:
    """LR kernel matching loss (Eq. 7): ``1 - <K/||K||_F, K_gt/||K_gt||_F>``, batch mean.

    The paper writes the negated inner product; adding 1 makes the loss 0 exactly
    when ``K`` is a positive multiple of ``K_gt`` (for kernels with unit diagonal,
    exactly when they are equal) and keeps it in ``[0, 1]`` for non-negative kernels.

    Args:
        K: ``(B, N, N)`` predicted similarity ``K_D``.
        K_gt: ``(B, N, N)`` ground-truth kernel.
        valid: optional ``(B, N)`` bool; rows and columns of invalid nodes
            (ignored or padded pixels) are left out of both kernels.

    Returns:
        scalar loss.
    """
    if K.shape != K_gt.shape or K.dim() != 3:
        raise ValueError(f"K and K_gt must both be (B, N, N), got {tuple(K.shape)} and {tuple(K_gt.shape)}")
    K_gt = K_gt.to(K.dtype)
    if valid is not None:
        if valid.shape != K.shape[:2]:
            raise ValueError(f"valid must be (B, N) = {tuple(K.shape[:2])}, got {tuple(valid.shape)}")
        mask = (valid[:, :, None] & valid[:, None, :]).to(K.dtype)
        K, K_gt = K * mask, K_gt * mask
    return (1 - _cosine(K, K_gt, (1, 2))).mean()


def sample_segment_points(grid_labels: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """One random grid node per segment present on the grid (the set ``S`` of Eq. 8).

    Args:
        grid_labels: ``(h, w)`` or ``(N,)`` int64 labels on the feature grid, ``-1`` = ignore.

    Returns:
        ``(nodes, segments)``: flat node indices ``(M,)`` and their labels ``(M,)``.
    """
    flat = grid_labels.reshape(-1)
    segments = torch.unique(flat[flat >= 0])
    if segments.numel() == 0:
        return flat.new_empty(0), flat.new_empty(0)
    # Random keys, then the node with the largest key within each segment.
    keys = torch.rand(flat.shape, generator=generator, device="cpu").to(flat.device)
    keys = torch.where(flat >= 0, keys, torch.full_like(keys, -1.0))
    member = flat.unsqueeze(0) == segments.unsqueeze(1)  # (M, N)
    nodes = torch.where(member, keys.unsqueeze(0), torch.full_like(keys, -2.0).unsqueeze(0)).argmax(1)
    return nodes, segments


def segment_matching_loss(
    K: Tensor,
    grid_labels: Tensor,
    labels: Tensor,
    upsample: Callable[[Tensor, int], Tensor],
    generator: torch.Generator | None = None,
    *,
    matching: SegmentMatching = SegmentMatching(),
) -> Tensor:
    """HR segment matching loss (Eq. 8), averaged over sampled points and the batch.

    For every ground-truth segment visible on the feature grid, one random node
    ``i`` is drawn; its similarity map (row ``i`` of ``K_D``) is up-sampled to image
    resolution by ``upsample`` (feature-attentional interpolation) and compared with
    the segment's binary mask by ``1 - cosine``. The paper sums over points; the
    mean keeps the loss scale independent of the number of segments.

    ``matching=SegmentMatching.authors()`` is the authors' released variant: 20 nodes drawn
    uniformly with replacement and the mean absolute error to the mask.

    Args:
        K: ``(B, N, N)`` similarity on the ``h x w`` grid.
        grid_labels: ``(B, h, w)`` labels on the grid (``-1`` = ignore).
        labels: ``(B, H, W)`` labels at the resolution ``upsample`` returns.
        upsample: ``upsample(maps (1, M, h, w), b) -> (1, M, H, W)`` for batch item ``b``.
        generator: random source of the sampled nodes.
        matching: points and distance (:class:`SegmentMatching`; default Eq. 8).

    Returns:
        scalar loss.
    """
    batch, h, w = grid_labels.shape
    if K.shape != (batch, h * w, h * w):
        raise ValueError(f"K must be (B, h*w, h*w) = {(batch, h * w, h * w)}, got {tuple(K.shape)}")
    if labels.dim() != 3 or labels.shape[0] != batch:
        raise ValueError(f"labels must be (B, H, W) with B={batch}, got {tuple(labels.shape)}")
    losses = []
    for b in range(batch):
        if matching.points is not None:
            valid_nodes = (grid_labels[b].reshape(-1) >= 0).nonzero().squeeze(1)
            if valid_nodes.numel() == 0:
                continue
            pick = torch.randint(valid_nodes.numel(), (matching.points,), generator=generator).to(valid_nodes.device)
            nodes = valid_nodes[pick]
            segments = grid_labels[b].reshape(-1)[nodes]
        else:
            nodes, segments = sample_segment_points(grid_labels[b], generator)
            if nodes.numel() == 0:
                continue
        maps = K[b, nodes].reshape(1, -1, h, w)
        up = upsample(maps, b)[0]  # (M, H, W)
        if up.shape[-2:] != labels.shape[-2:]:
            raise ValueError(f"upsample returned {tuple(up.shape[-2:])}, labels are {tuple(labels.shape[-2:])}")
        target = (labels[b].unsqueeze(0) == segments.view(-1, 1, 1)).to(up.dtype)
        keep = (labels[b] >= 0).to(up.dtype).unsqueeze(0)
        if matching.distance == "l1":
            losses.append(((up - target).abs() * keep).sum() / (keep.sum() * up.shape[0]).clamp_min(1))
        else:
            losses.append((1 - _cosine(up * keep, target, (1, 2))).mean())
    if not losses:
        return K.sum() * 0  # keeps the graph (and DDP's gradient hooks) intact
    return torch.stack(losses).mean()


def balanced_edge_loss(logits: Tensor, agreement: Tensor, eta: float = 0.3, negative_weight: float = 1.1) -> Tensor:
    """Class-balanced binary cross-entropy of edge logits against human boundaries (RCF's loss).

    A pixel is an edge where at least a share ``eta`` of the annotators drew a boundary, a
    non-edge where none did, and ignored in between (disputed). Over the whole batch, with
    ``P`` edges and ``Q`` non-edges, edges weigh ``Q / (P + Q)`` and non-edges
    ``negative_weight * P / (P + Q)``, so the rare edges are not drowned.

    Args:
        logits: ``(B, 1, H, W)`` edge logits.
        agreement: ``(B, 1, H, W)`` share of annotators marking each pixel, in [0, 1].
        eta: edge threshold in (0, 1].
        negative_weight: RCF's ``lambda``.

    Returns:
        scalar: the weighted sum over pixels divided by ``B``.

    Example:
        >>> agreement = torch.tensor([[[[0.0, 1.0]]]])
        >>> float(balanced_edge_loss(torch.tensor([[[[-20.0, 20.0]]]]), agreement)) < 1e-6
        True
    """
    if logits.shape != agreement.shape or logits.dim() != 4:
        raise ValueError(f"logits and agreement must both be (B, 1, H, W), got {tuple(logits.shape)} and {tuple(agreement.shape)}")
    if not 0.0 < eta <= 1.0:
        raise ValueError(f"eta must be in (0, 1], got {eta}")
    edge = (agreement >= eta).to(logits.dtype)
    non_edge = (agreement <= 0).to(logits.dtype)
    n_edge, n_non = edge.sum(), non_edge.sum()
    total = (n_edge + n_non).clamp_min(1.0)
    weight = edge * (n_non / total) + non_edge * (negative_weight * n_edge / total)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, edge, weight=weight, reduction="sum")
    return loss / logits.shape[0]
