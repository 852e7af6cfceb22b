"""Dead-leaves images: synthetic natural-looking scenes with exact segment labels."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from ._sample import Sample
from .labels import relabel_consecutive

__all__ = ["DeadLeaves"]

ShapeKind = Literal["disc", "ellipse", "polygon"]


class DeadLeaves(Dataset[Sample]):
    """Occluding random textured shapes ("dead leaves") with their exact segmentation.

    Image ``i`` is a textured background covered by ``num_shapes`` random discs,
    ellipses and star-shaped polygons painted back to front, each with its own
    colour and texture (flat, oriented sinusoid or linear gradient), plus pixel
    noise. Radii are log-uniform (a crude version of the dead-leaves model's
    scale invariance). The labels are the visible parts of the shapes,
    relabelled ``0..n-1``. Rendering depends only on ``(seed, i)``, never on a
    global RNG, so the data set is identical in every process and run.

    Args:
        num_images: length of the data set.
        size: ``(H, W)`` of the images.
        seed: data-set seed.
        num_shapes: inclusive range of the number of shapes besides the background.
        radius: range of shape radii as fractions of ``min(H, W)``.
        shapes: shape kinds to draw from.
        texture: add per-shape texture; ``False`` gives flat colours.
        noise: standard deviation of i.i.d. Gaussian pixel noise (image in [0, 1]).
        blur: Gaussian blur sigma in pixels applied to the image only (soft
            edges like a camera's); labels stay exact.
        split_disconnected: give each 4-connected visible piece of a shape its
            own label (default), since an occluded shape's pieces are not
            connected on the image grid; ``False`` gives one label per shape.
        transform: callable applied to the sample dict.

    Items are dicts: ``"image"`` ``(3, H, W)`` float32 in ``[0, 1]``, ``"labels"``
    ``(H, W)`` int64 (no ignored pixels), ``"id"`` ``"deadleaves-<seed>-<i>"``.
    A 64x64 image takes a few milliseconds on one CPU core.
    """

    def __init__(
        self,
        num_images: int,
        size: tuple[int, int] = (64, 64),
        seed: int = 0,
        num_shapes: tuple[int, int] = (4, 12),
        radius: tuple[float, float] = (0.08, 0.45),
        shapes: Sequence[ShapeKind] = ("disc", "ellipse", "polygon"),
        texture: bool = True,
        noise: float = 0.02,
        blur: float = 0.0,
        split_disconnected: bool = True,
        transform: Callable[[Sample], Sample] | None = None,
    ) -> None:
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be (H, W) with positive entries, got {size}")
        if not 0 <= num_shapes[0] <= num_shapes[1]:
            raise ValueError(f"num_shapes must be a range (lo, hi) with 0 <= lo <= hi, got {num_shapes}")
        if not 0 < radius[0] <= radius[1]:
            raise ValueError(f"radius must be a range (lo, hi) with 0 < lo <= hi, got {radius}")
        unknown = set(shapes) - {"disc", "ellipse", "polygon"}
        if not shapes or unknown:
            raise ValueError(f"shapes must be a non-empty subset of disc/ellipse/polygon, got {shapes}")
        self.num_images = int(num_images)
        self.size = (int(size[0]), int(size[1]))
        self.seed = int(seed)
        self.num_shapes = num_shapes
        self.radius = radius
        self.shapes = tuple(shapes)
        self.texture = texture
        self.noise = noise
        self.blur = blur
        self.split_disconnected = split_disconnected
        self.transform = transform

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> Sample:
        index = range(self.num_images)[index]
        image, labels, _ = self._render(index)
        sample: Sample = {
            "image": torch.from_numpy(image),
            "labels": torch.from_numpy(labels),
            "id": f"deadleaves-{self.seed}-{index}",
        }
        return self.transform(sample) if self.transform is not None else sample

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Render image ``index``.

        Returns:
            ``(image, labels, shape_map)``: ``(H, W, 3)`` float32 image in
            ``[0, 1]``; ``(H, W)`` int64 labels ``0..n-1``; ``(H, W)`` int64 index
            of the shape visible at each pixel (0 = background, then in painting
            order) — every label lies inside one shape.
        """
        image, labels, shape_map = self._render(index)
        return image.transpose(1, 2, 0), labels, shape_map

    def _render(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Channel-first internally: the tensor needs no copy and masked writes are contiguous per channel.
        rng = np.random.default_rng((self.seed, index))
        H, W = self.size
        image = np.empty((3, H, W), dtype=np.float32)
        shape_map = np.zeros((H, W), dtype=np.int64)
        yy = np.arange(H, dtype=np.float32)[:, None] + 0.5  # pixel centres
        xx = np.arange(W, dtype=np.float32)[None, :] + 0.5

        image[:] = self._texture(rng, yy, xx)  # background leaf covers everything
        s = min(H, W)
        lo, hi = math.log(self.radius[0] * s), math.log(self.radius[1] * s)
        for shape_id in range(1, int(rng.integers(self.num_shapes[0], self.num_shapes[1] + 1)) + 1):
            r = math.exp(rng.uniform(lo, hi))
            cy, cx = rng.uniform(-0.1 * H, 1.1 * H), rng.uniform(-0.1 * W, 1.1 * W)
            # Work on the shape's bounding box only, so cost scales with its area.
            y0, y1 = max(0, int(cy - r)), min(H, math.ceil(cy + r) + 1)
            x0, x1 = max(0, int(cx - r)), min(W, math.ceil(cx + r) + 1)
            kind = self.shapes[int(rng.integers(len(self.shapes)))]
            params = _shape_params(rng, kind, r)  # drawn even when off-image, to keep the stream fixed
            tex_rng = np.random.default_rng(rng.integers(2**63))
            if y0 >= y1 or x0 >= x1:
                continue
            by, bx = yy[y0:y1], xx[:, x0:x1]
            mask = _shape_mask(kind, params, by - cy, bx - cx)
            if not mask.any():
                continue
            np.copyto(image[:, y0:y1, x0:x1], self._texture(tex_rng, by, bx), where=mask)
            np.copyto(shape_map[y0:y1, x0:x1], shape_id, where=mask)

        if self.blur > 0:
            image = ndimage.gaussian_filter(image, sigma=(0, self.blur, self.blur), mode="nearest")
        if self.noise > 0:
            image += np.float32(self.noise) * rng.standard_normal(image.shape, dtype=np.float32)
        np.clip(image, 0.0, 1.0, out=image)
        return image, self._labels(shape_map), shape_map

    def _labels(self, shape_map: np.ndarray) -> np.ndarray:
        if not self.split_disconnected:
            return relabel_consecutive(shape_map, ignore_index=None)
        from skimage.measure import label  # deferred: heavy import, only needed here

        # One pass over the map: 4-connected runs of equal shape index, numbered 1..n.
        return label(shape_map, background=-1, connectivity=1).astype(np.int64) - 1

    def _texture(self, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        """A ``(3, h, w)`` patch of one leaf's texture on the pixel grid ``yy x xx``."""
        base = rng.uniform(0.05, 0.95, size=(3, 1, 1)).astype(np.float32)
        h, w = yy.shape[0], xx.shape[1]
        if not self.texture:
            return np.broadcast_to(base, (3, h, w))
        kind = int(rng.integers(3))  # 0 flat, 1 oriented sinusoid, 2 linear gradient
        theta = rng.uniform(0, math.pi)
        u = yy * math.sin(theta) + xx * math.cos(theta)  # coordinate along the texture direction
        contrast = rng.uniform(0.05, 0.25) * rng.choice([-1.0, 1.0], size=(3, 1, 1)).astype(np.float32)
        if kind == 1:
            period = rng.uniform(3.0, 12.0)
            wave = np.sin(2 * math.pi * u / period + rng.uniform(0, 2 * math.pi)).astype(np.float32)
        elif kind == 2:
            wave = ((u - u.mean()) / (0.5 * max(self.size))).astype(np.float32)
        else:
            wave = np.zeros((1, 1), dtype=np.float32)
        return np.broadcast_to(base + contrast * wave, (3, h, w))


def _shape_params(rng: np.random.Generator, kind: str, r: float) -> tuple[float, ...]:
    if kind == "disc":
        return (r,)
    if kind == "ellipse":
        return (r, r * rng.uniform(0.3, 1.0), rng.uniform(0, math.pi))
    n = int(rng.integers(3, 9))
    # Jittered, evenly spaced angles keep every angular gap below pi, which the
    # star-shaped inside test needs.
    jitter = rng.uniform(-0.2, 0.2, size=n)
    angles = np.sort(np.mod(rng.uniform(0, 2 * math.pi) + (np.arange(n) + jitter) * 2 * math.pi / n, 2 * math.pi))
    radii = r * rng.uniform(0.5, 1.0, size=n)
    return (n, *angles, *radii)


def _shape_mask(kind: str, params: tuple[float, ...], dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Boolean mask of a shape centred at 0 on offsets ``dy (h, 1)``, ``dx (1, w)``."""
    if kind == "disc":
        return dy**2 + dx**2 <= params[0] ** 2
    if kind == "ellipse":
        a, b, theta = params
        c, s = math.cos(theta), math.sin(theta)
        u, v = dx * c + dy * s, -dx * s + dy * c
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    # Star-shaped polygon: vertices at sorted angles; a point is inside if it lies
    # on the centre's side of the edge spanning its own angle.
    n = int(params[0])
    angles = np.asarray(params[1 : 1 + n])
    radii = np.asarray(params[1 + n : 1 + 2 * n])
    vx, vy = radii * np.cos(angles), radii * np.sin(angles)
    phi = np.mod(np.arctan2(dy, dx), 2 * math.pi)
    i1 = np.searchsorted(angles, phi) % n  # first vertex at or after phi (wrapping)
    i0 = (i1 - 1) % n
    ax, ay, bx, by = vx[i0], vy[i0], vx[i1], vy[i1]
    # Sign of cross((b - a), (p - a)) equals the centre's sign (vertices go counter-clockwise).
    cross = (bx - ax) * (dy - ay) - (by - ay) * (dx - ax)
    centre = (bx - ax) * (-ay) - (by - ay) * (-ax)
    return cross * centre >= 0
