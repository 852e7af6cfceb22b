"""The matrix function ``f(S) = (S^2)^t`` with gradients through Daleckii-Krein divided differences
(finite for clustered eigenvalues).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _power_and_derivatives(theta: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``f = (theta^2)^t``, ``df/dtheta`` and ``df/dt``, safe at ``theta = 0``."""
    tiny = torch.finfo(theta.dtype).tiny
    log_sq = torch.log(theta.square().clamp_min(tiny))
    f = torch.exp(t * log_sq)
    df_dtheta = 2 * t * theta * torch.exp((t - 1) * log_sq)
    return f, df_dtheta, f * log_sq


class _SpectralPower(torch.autograd.Function):
    """``f(A) = (A^2)^t`` for batched symmetric ``A``; backward by divided differences.

    Also returns the eigendecomposition ``(theta, Y)`` of ``A`` (not differentiable)
    so callers need not diagonalise twice.
    """

    @staticmethod
    def forward(ctx, A: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        theta, Y = torch.linalg.eigh(A)
        ctx.t_shape = t.shape
        f, df, dft = _power_and_derivatives(theta, t)
        ctx.save_for_backward(theta, Y, f, df, dft)
        ctx.mark_non_differentiable(theta, Y)
        return (Y * f.unsqueeze(-2)) @ Y.transpose(-1, -2), theta, Y

    @staticmethod
    def backward(ctx, grad: Tensor, _grad_theta: Tensor, _grad_Y: Tensor) -> tuple[Tensor | None, Tensor | None]:
        theta, Y, f, df, dft = ctx.saved_tensors
        G = Y.transpose(-1, -2) @ (0.5 * (grad + grad.transpose(-1, -2))) @ Y
        grad_A = grad_t = None
        if ctx.needs_input_grad[0]:
            diff = theta.unsqueeze(-1) - theta.unsqueeze(-2)
            fdiff = f.unsqueeze(-1) - f.unsqueeze(-2)
            mean_slope = 0.5 * (df.unsqueeze(-1) + df.unsqueeze(-2))
            # Where eigenvalues (nearly) coincide the divided difference becomes the derivative.
            scale = theta.abs().amax(-1, keepdim=True).unsqueeze(-1).clamp_min(1.0)
            close = diff.abs() <= 1e3 * torch.finfo(theta.dtype).eps * scale
            L = torch.where(close, mean_slope, fdiff / torch.where(close, torch.ones_like(diff), diff))
            grad_A = Y @ (L * G) @ Y.transpose(-1, -2)
        if ctx.needs_input_grad[1]:
            grad_t = (G.diagonal(dim1=-2, dim2=-1) * dft).sum().reshape(ctx.t_shape)
        return grad_A, grad_t


def _spectral_power_eig(A: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
    t = torch.as_tensor(t, dtype=A.dtype, device=A.device)
    return _SpectralPower.apply(A, t)


def spectral_power(A: Tensor, t: Tensor | float) -> Tensor:
    """``(A^2)^t`` of symmetric ``A`` ``(..., n, n)``, i.e. ``Y diag(|theta|^(2t)) Y^T``.

    Differentiable w.r.t. ``A`` and ``t``; the gradient uses divided differences
    of ``f(x) = (x^2)^t`` (Daleckii-Krein), so it stays finite for repeated
    eigenvalues, unlike back-propagating through ``eigh``'s eigenvectors.
    """
    return _spectral_power_eig(A, t)[0]
