"""A weight-free feature extractor: CIE Lab colour, position and a Gaussian filter bank.

With these features the diffusion distance is the classical (unlearned) one,
the baseline that the neural diffusion distance improves on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .backbone_base import LEVEL_STRIDES, Backbone, BackboneOutput

__all__ = ["rgb_to_lab", "HandcraftedFeatures", "handcrafted"]

# sRGB (D65) -> CIE XYZ, and the D65 / 2-degree reference white (as in skimage).
_XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_WHITE_D65 = (0.95047, 1.0, 1.08883)
_LAB_EPS = 0.008856  # (6/29)^3 as rounded by the CIE standard
_DOG_RATIO = 1.6  # sigma ratio that makes a DoG approximate a Laplacian of Gaussian


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """Differentiable sRGB -> CIE Lab (D65, 2-degree observer), as ``skimage.color.rgb2lab``.

    Args:
        rgb: ``(..., 3, H, W)`` sRGB in ``[0, 1]``, any float dtype.

    Returns:
        ``(..., 3, H, W)``: L in ``[0, 100]``, a and b roughly in ``[-128, 128]``.
    """
    if rgb.ndim < 3 or rgb.shape[-3] != 3:
        raise ValueError(f"rgb must have shape (..., 3, H, W), got {tuple(rgb.shape)}")
    # Inverse sRGB gamma. The clamp keeps the unused branch of `where` finite
    # so that its (discarded) gradient cannot turn into NaN.
    linear = torch.where(
        rgb > 0.04045,
        ((rgb.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4,
        rgb / 12.92,
    )
    matrix = torch.tensor(_XYZ_FROM_RGB, dtype=rgb.dtype, device=rgb.device)
    white = torch.tensor(_WHITE_D65, dtype=rgb.dtype, device=rgb.device)
    xyz = torch.einsum("ij,...jhw->...ihw", matrix / white[:, None], linear)
    # Cube root above the threshold, its linear continuation below
    # (the cube root has an infinite slope at 0).
    f = torch.where(xyz > _LAB_EPS, xyz.clamp_min(_LAB_EPS) ** (1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f.unbind(dim=-3)
    return torch.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), dim=-3)


def _gaussian_kernels(sigma: float, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """1-D Gaussian (sum 1) and its scale-normalised derivative ``sigma * g'``, radius ceil(3 sigma)."""
    radius = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    dg = -x / sigma * g  # sigma * d/dx: comparable magnitudes across scales
    return g, dg


def _filter_1d(x: Tensor, kernel: Tensor, dim: int) -> Tensor:
    """Correlate each channel of ``(B, C, H, W)`` with ``kernel`` along H (dim=2) or W (dim=3)."""
    r = kernel.numel() // 2
    c = x.shape[1]
    if dim == 2:
        weight = kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1)
        x = F.pad(x, (0, 0, r, r), mode="replicate")
    else:
        weight = kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1)
        x = F.pad(x, (r, r, 0, 0), mode="replicate")
    return F.conv2d(x, weight, groups=c)


def _pool(x: Tensor, stride: int) -> Tensor:
    """Average over ``stride x stride`` cells; output ``ceil(H/stride) x ceil(W/stride)``."""
    pad_h, pad_w = (-x.shape[-2]) % stride, (-x.shape[-1]) % stride
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return F.avg_pool2d(x, stride, stride)


class HandcraftedFeatures(Backbone):
    """Fixed features pooled to strides 2, 4, 8; no learnable parameters, no state.

    Channels at every level (``3 + 2 + 3 * len(sigmas)``, 14 by default):

    * Lab colour / 100, times ``color_scale`` (3);
    * position ``(y, x) / max(H, W)`` of the pixel centre, times ``position_scale`` (2);
    * for each ``sigma`` (in input pixels): ``|sigma dG/dx * L|``, ``|sigma dG/dy * L|`` and
      the difference of Gaussians ``|G_sigma * L - G_{1.6 sigma} * L|``, on L / 100,
      times ``texture_scale`` (3 per sigma).

    Features are computed at full resolution and average-pooled over
    ``s x s`` cells (``s = 2, 4, 8``); ``deep`` is the stride-8 level.
    Everything is differentiable w.r.t. the input image.
    """

    def __init__(
        self,
        sigmas: Sequence[float] = (1.0, 2.0, 4.0),
        *,
        color_scale: float = 1.0,
        position_scale: float = 1.0,
        texture_scale: float = 1.0,
    ) -> None:
        super().__init__(freeze_bn=False)
        if not sigmas or any(s <= 0 for s in sigmas):
            raise ValueError(f"sigmas must be positive, got {tuple(sigmas)}")
        self.sigmas = tuple(float(s) for s in sigmas)
        self.color_scale = float(color_scale)
        self.position_scale = float(position_scale)
        self.texture_scale = float(texture_scale)
        c = 5 + 3 * len(self.sigmas)
        self.level_channels = (c, c, c)
        self.deep_channels = c
        self.deep_is_last_level = True

    def full_resolution(self, images: Tensor) -> Tensor:
        """The unpooled features, ``(B, C, H, W)``."""
        b, _, h, w = images.shape
        lab = rgb_to_lab(images) / 100.0
        ys = (torch.arange(h, dtype=images.dtype, device=images.device) + 0.5) / max(h, w)
        xs = (torch.arange(w, dtype=images.dtype, device=images.device) + 0.5) / max(h, w)
        pos = torch.stack(torch.meshgrid(ys, xs, indexing="ij")).expand(b, 2, h, w)
        lum = lab[:, :1]
        texture = []
        for sigma in self.sigmas:
            g, dg = _gaussian_kernels(sigma, images.dtype, images.device)
            g2, _ = _gaussian_kernels(_DOG_RATIO * sigma, images.dtype, images.device)
            smooth_y = _filter_1d(lum, g, dim=2)
            dx = _filter_1d(smooth_y, dg, dim=3)
            dy = _filter_1d(_filter_1d(lum, g, dim=3), dg, dim=2)
            dog = _filter_1d(smooth_y, g, dim=3) - _filter_1d(_filter_1d(lum, g2, dim=2), g2, dim=3)
            texture += [dx.abs(), dy.abs(), dog.abs()]
        return torch.cat(
            [self.color_scale * lab, self.position_scale * pos, self.texture_scale * torch.cat(texture, dim=1)],
            dim=1,
        )

    def extract(self, images: Tensor) -> BackboneOutput:
        full = self.full_resolution(images)
        levels = [_pool(full, s) for s in LEVEL_STRIDES]
        return BackboneOutput(levels=levels, deep=levels[-1])


def handcrafted(weights: None = None, *, freeze_bn: bool = False, **kwargs: object) -> HandcraftedFeatures:
    """The weight-free Lab + position + filter-bank extractor; 14 channels at every level.

    ``freeze_bn`` is accepted for a uniform builder signature and ignored (there is no batch norm).
    """
    del freeze_bn
    if weights is not None:
        raise ValueError(f"the handcrafted extractor has no weights; got weights={weights!r}")
    return HandcraftedFeatures(**kwargs)  # type: ignore[arg-type]
