"""The mathematics of paper §7 as pure functions on tensors.

Notation: ``B`` images, ``N = h * w`` nodes of the stride-8 feature grid, ``C`` channels,
``c`` classes. ``K`` is the similarity on the grid (``K_D`` of spec-diff-net, or a feature
kernel), ``valid`` ``(B, N)`` marks nodes inside the image (crops padded beyond the image
have invalid nodes); ``None`` means all valid.

* RFP: ``M = [K > mu]`` (each node always in its own region), ``F_M = diag(M 1)^-1 M F``
  (:func:`regional_pooling`, never materialising more than ``rows_per_chunk x N`` of ``M``).
* PRED (Eq. 10): ``P_sg = softmax_classes(F_M H + 1 b^T)``. Pooling is linear, so
  ``F_M H = RFP(F H)``: the network pools the ``c`` class logits instead of the ``C``
  features, the same numbers at ``c / C`` of the cost (tested).
* PC-WAP (Eq. 11): ``F_gl_i = F^T softmax_spatial(theta_i P_sg_i)`` (:func:`spatial_softmax`,
  :func:`weighted_pooling`); the class logit ``H_i^T F_gl_i + b_i`` is again the weighted mean
  of the node logits ``(F H)_i``.
* Loss (Eq. 12): ``BCE(P_cl, y) + BCE(max_nodes P_sg, y)`` (:func:`wsss_loss`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "region_mask",
    "pooling_operator",
    "regional_pooling",
    "fuse_thresholds",
    "pseudo_segmentation",
    "spatial_softmax",
    "weighted_pooling",
    "wsss_loss",
    "gap_loss",
    "class_activation_maps",
    "resample_kernel",
    "grid_valid",
]


def _check_kernel(K: Tensor, X: Tensor | None = None) -> None:
    if K.dim() != 3 or K.shape[1] != K.shape[2]:
        raise ValueError(f"K must be (B, N, N), got {tuple(K.shape)}")
    if X is not None and (X.dim() != 3 or X.shape[:2] != K.shape[:2]):
        raise ValueError(f"features must be (B, N, C) with K (B, N, N) = {tuple(K.shape)}, got {tuple(X.shape)}")


def region_mask(K: Tensor, mu: Tensor | float, valid: Tensor | None = None, row_start: int = 0) -> Tensor:
    """``M = [K > mu]`` for a block of rows, as floats: each node is always in its own region.

    Args:
        K: ``(B, R, N)`` rows ``row_start .. row_start + R - 1`` of the similarity.
        mu: threshold (scalar).
        valid: ``(B, N)`` bool; invalid nodes are in no region but their own.
        row_start: index of the first row (to place the diagonal).

    Returns:
        ``(B, R, N)`` bool.
    """
    mu_value = mu.detach() if isinstance(mu, Tensor) else torch.as_tensor(mu)
    M = K.float() > mu_value.to(K.device, torch.float32)
    if valid is not None:
        M = M & valid[:, None, :]
    rows = torch.arange(K.shape[1], device=K.device)
    M[:, rows, rows + row_start] = True  # a node always belongs to its own region
    return M


def pooling_operator(K: Tensor, mu: Tensor | float, valid: Tensor | None = None) -> Tensor:
    """The dense RFP operator ``diag(M 1)^-1 M`` ``(B, N, N)``: every row sums to one.

    For inspection and tests on small grids; :func:`regional_pooling` applies it chunk by chunk.
    """
    _check_kernel(K)
    M = region_mask(K, mu, valid).float()
    return M / M.sum(-1, keepdim=True)


class _RegionalPooling(torch.autograd.Function):
    """``Y = diag(M 1)^-1 M X`` with ``M = [K > mu]`` built ``rows`` rows at a time.

    The gradient in ``X`` is exact (``M^T diag(M 1)^-1 G``). ``[K > mu]`` is a step in ``mu``;
    its derivative is replaced by that of ``sigmoid((K - mu) / width)`` (straight-through), so
    ``dL/dmu = sum_ij dL/dM_ij * (-sigmoid'((K_ij - mu) / width) / width)`` with
    ``dL/dM_ij = (G_i . (X_j - Y_i)) / (M 1)_i``; the diagonal and invalid columns are fixed.
    """

    @staticmethod
    def forward(ctx, X: Tensor, mu: Tensor, K: Tensor, valid: Tensor | None, rows: int, width: float) -> Tensor:  # type: ignore[override]
        B, N, _ = X.shape
        Y = torch.empty_like(X)
        counts = X.new_empty(B, N)
        for s in range(0, N, rows):
            M = region_mask(K[:, s : s + rows], mu, valid, s).to(X.dtype)
            cnt = M.sum(-1)
            Y[:, s : s + rows] = torch.bmm(M, X) / cnt[..., None]
            counts[:, s : s + rows] = cnt
        ctx.rows, ctx.width = rows, width
        ctx.has_valid = valid is not None
        ctx.save_for_backward(X, mu, K, valid if valid is not None else X.new_empty(0), Y, counts)
        return Y

    @staticmethod
    def backward(ctx, G: Tensor):  # type: ignore[override]
        X, mu, K, valid, Y, counts = ctx.saved_tensors
        valid = valid if ctx.has_valid else None
        need_x, need_mu = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        N, rows, width = X.shape[1], ctx.rows, ctx.width
        gX = torch.zeros_like(X) if need_x else None
        gmu = torch.zeros((), dtype=torch.float64, device=X.device) if need_mu else None
        mu_f = mu.detach().float()
        for s in range(0, N, rows):
            e = min(N, s + rows)
            M = region_mask(K[:, s:e], mu, valid, s).to(X.dtype)
            Gn = G[:, s:e] / counts[:, s:e, None]  # (B, R, C)
            if need_x:
                gX += torch.bmm(M.transpose(1, 2), Gn)
            if need_mu:
                sig = torch.sigmoid((K[:, s:e].float() - mu_f) / width)
                slope = -(sig * (1 - sig)) / width  # d soft-M / d mu
                fixed = torch.zeros_like(slope, dtype=torch.bool)
                r = torch.arange(e - s, device=X.device)
                fixed[:, r, r + s] = True
                if valid is not None:
                    fixed |= ~valid[:, None, :]
                slope = slope.masked_fill(fixed, 0.0).to(X.dtype)
                dM = torch.bmm(Gn, X.transpose(1, 2)) - (Gn * Y[:, s:e]).sum(-1, keepdim=True)  # (B, R, N)
                gmu += (slope * dM).sum().double()
        return gX, (gmu.to(mu.dtype).reshape(mu.shape) if gmu is not None else None), None, None, None, None


def regional_pooling(
    K: Tensor,
    X: Tensor,
    mu: Tensor | float,
    valid: Tensor | None = None,
    *,
    rows_per_chunk: int = 1024,
    surrogate_width: float = 0.05,
) -> Tensor:
    """Regional feature pooling (RFP): ``diag(M 1)^-1 M X`` with ``M = [K > mu]``.

    Each node's output is the mean of ``X`` over the nodes whose similarity to it exceeds ``mu``
    (itself included). Memory: ``O(rows_per_chunk x N)`` besides the inputs.

    Args:
        K: ``(B, N, N)`` similarity (no gradient is taken through it).
        X: ``(B, N, C)`` features (or class logits: the operation is linear).
        mu: threshold; a tensor requiring grad gets a straight-through gradient (see
            :class:`_RegionalPooling`).
        valid: ``(B, N)`` bool, nodes that may be pooled.
        rows_per_chunk: rows of ``M`` built at a time.
        surrogate_width: width of the sigmoid standing in for the step in the ``mu`` gradient.

    Returns:
        ``(B, N, C)``.
    """
    _check_kernel(K, X)
    mu_t = mu if isinstance(mu, Tensor) else torch.tensor(float(mu), dtype=X.dtype, device=X.device)
    return _RegionalPooling.apply(X, mu_t, K.detach(), valid, int(rows_per_chunk), float(surrogate_width))


def fuse_thresholds(logits: Tensor, weight: Tensor) -> Tensor:
    """The authors' multi-threshold RFP: per class, a softmax over thresholds weights the logits.

    Args:
        logits: ``(T, B, N, c)`` pooled class logits, one per threshold.
        weight: ``(c,)`` per-class sharpness (authors: learnable, initialised at 1.5).

    Returns:
        ``(B, N, c)``: ``sum_t softmax_t(weight_c z_t) z_t``.
    """
    alpha = torch.softmax(weight * logits, dim=0)
    return (alpha * logits).sum(0)


def pseudo_segmentation(pooled_logits: Tensor, bias: Tensor) -> Tensor:
    """PRED, Eq. 10: ``P_sg = softmax_classes(F_M H + 1 b^T)``.

    Args:
        pooled_logits: ``(B, N, c)`` = ``F_M H``.
        bias: ``(c,)``.

    Returns:
        ``(B, N, c)`` class probabilities per node.
    """
    return torch.softmax(pooled_logits + bias, dim=-1)


def spatial_softmax(P: Tensor, scale: Tensor, valid: Tensor | None = None) -> Tensor:
    """The PC-WAP weights of Eq. 11: per class, a softmax over the nodes of ``scale_i * P_i``.

    Args:
        P: ``(B, N, c)`` pseudo-segmentation probabilities.
        scale: ``(c,)`` positive per-class scale (the paper's temperature ``theta_i``).
        valid: ``(B, N)`` bool; invalid nodes get weight 0.

    Returns:
        ``(B, N, c)``; each column sums to one over the nodes.
    """
    z = P * scale
    if valid is not None:
        z = z.masked_fill(~valid[..., None], float("-inf"))
    return torch.softmax(z, dim=1)


def weighted_pooling(X: Tensor, weights: Tensor) -> Tensor:
    """``F_gl_i = X^T w_i`` for every class: ``(B, N, C)``, ``(B, N, c)`` -> ``(B, c, C)``."""
    return torch.einsum("bnc,bnk->bkc", X, weights)


def wsss_loss(class_logits: Tensor, P: Tensor, targets: Tensor, valid: Tensor | None = None,
              eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Eq. 12: ``BCE(P_cl, y)`` and the multiple-instance term ``BCE(max_nodes P_sg, y)``.

    Args:
        class_logits: ``(B, c)`` logits of ``P_cl`` (``H_i^T F_gl_i + b_i``; the sigmoid is in the BCE).
        P: ``(B, N, c)`` ``P_sg``.
        targets: ``(B, c)`` multi-hot image labels (background included where there is one).
        valid: ``(B, N)`` bool, nodes the maximum may pick.

    Returns:
        ``(classification term, multiple-instance term)``, each a mean over images and classes.
    """
    cls = F.binary_cross_entropy_with_logits(class_logits, targets)
    if valid is not None:
        P = P.masked_fill(~valid[..., None], 0.0)
    p_max = P.amax(dim=1).clamp(eps, 1 - eps)
    mil = F.binary_cross_entropy(p_max, targets)
    return cls, mil


def gap_loss(class_logits: Tensor, targets: Tensor, background: int | None) -> Tensor:
    """The GAP (CAM) baseline: ``BCE(P_cl, y)`` over the object classes (the background is in
    every image, so it carries no information for a classifier)."""
    if background is not None:
        keep = torch.ones(targets.shape[-1], dtype=torch.bool, device=targets.device)
        keep[background] = False
        class_logits, targets = class_logits[:, keep], targets[:, keep]
    return F.binary_cross_entropy_with_logits(class_logits, targets)


def class_activation_maps(logits: Tensor, valid: Tensor | None = None) -> Tensor:
    """Zhou et al.'s CAMs: ``relu(F H)`` per class divided by its maximum over the image.

    Args:
        logits: ``(B, N, c)`` node logits ``F H`` (no bias).

    Returns:
        ``(B, N, c)`` in ``[0, 1]``.
    """
    cam = logits.clamp_min(0)
    if valid is not None:
        cam = cam.masked_fill(~valid[..., None], 0.0)
    return cam / cam.amax(dim=1, keepdim=True).clamp_min(1e-8)


def resample_kernel(K: Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int]) -> Tensor:
    """A node similarity on grid ``src_grid`` carried to ``dst_grid`` (rows, then columns).

    Each row is an ``h x w`` map and is resized like an image (area averaging when shrinking,
    bilinear when growing); then the same for the columns. Used when spec-diff-net ran at
    another input scale or on its own fixed grid.

    Args:
        K: ``(B, N_src, N_src)``.

    Returns:
        ``(B, N_dst, N_dst)``.
    """
    if tuple(src_grid) == tuple(dst_grid):
        return K
    B = K.shape[0]
    n_dst = dst_grid[0] * dst_grid[1]
    shrink = dst_grid[0] <= src_grid[0] and dst_grid[1] <= src_grid[1]
    kw: dict[str, object] = {"mode": "area"} if shrink else {"mode": "bilinear", "align_corners": False}

    def resize_last(x: Tensor) -> Tensor:  # (B, R, n_src) -> (B, R, n_dst)
        R = x.shape[1]
        y = F.interpolate(x.reshape(B * R, 1, *src_grid).float(), size=dst_grid, **kw)  # type: ignore[arg-type]
        return y.reshape(B, R, n_dst)

    K = resize_last(K)  # columns
    return resize_last(K.transpose(1, 2)).transpose(1, 2).contiguous()  # rows


def grid_valid(valid_pixels: Tensor, grid: tuple[int, int], stride: int = 8) -> Tensor:
    """Grid nodes whose stride-``stride`` cell holds at least one valid pixel: ``(B, H, W)`` -> ``(B, N)``."""
    v = F.max_pool2d(valid_pixels[:, None].float(), kernel_size=stride, stride=stride, ceil_mode=True)
    if tuple(v.shape[-2:]) != tuple(grid):
        v = F.interpolate(v, size=grid, mode="nearest")
    return v.flatten(1) > 0
