"""From an image to a hierarchy or to similarity maps with a trained spec-diff-net.

This is what ``ndd segment`` and ``ndd similarity`` call; everything here is plain
Python API. Large images are processed at a capped working resolution (the
feature grid, and so the ``N x N`` similarity, grows with the image) and the
result is mapped back to the full size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ndd.models import SpecDiffNet
from ndd.segment import Hierarchy, segment_from_similarity

__all__ = ["SegmentationResult", "working_size", "segment_image", "similarity_maps", "points_to_nodes", "load_segmentation_model"]

#: Longest side processed by default: BSDS500's 481, on which the model was trained.
DEFAULT_MAX_SIDE = 481


@dataclass(frozen=True)
class SegmentationResult:
    """A hierarchy of an image.

    Attributes:
        hierarchy: the full-resolution hierarchy ("Ours-HR" with FAI up-sampling).
        grid_hierarchy: the same on the feature grid ("Ours-LR").
        working_size: ``(H, W)`` the model saw.
    """

    hierarchy: Hierarchy
    grid_hierarchy: Hierarchy
    working_size: tuple[int, int]

    def available_levels(self, n_segments: Sequence[int]) -> list[int]:
        """The requested numbers of segments that this hierarchy has (``1 .. finest``), sorted, unique."""
        return sorted({int(k) for k in n_segments if 1 <= int(k) <= self.hierarchy.n_segments})

    def levels(self, n_segments: Sequence[int] | None = None) -> list[np.ndarray]:
        """Label maps (nested) with the given numbers of segments (default: every level)."""
        return self.hierarchy.levels(n_segments)

    def to_ucm2(self) -> np.ndarray:
        """BSDS doubleSize ultrametric contour map ``(2H+1, 2W+1)`` in ``[0, 1]``."""
        return self.hierarchy.to_ucm2()


def working_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """``size`` scaled down (aspect kept) so its longest side is at most ``max_side``."""
    h, w = size
    if max_side is None or max(h, w) <= max_side:
        return h, w
    scale = max_side / max(h, w)
    return max(2, round(h * scale)), max(2, round(w * scale))


def _to_tensor(image: np.ndarray, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    if not np.isfinite(image).all():
        raise ValueError("image contains NaN or Inf")
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None].to(device)
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0, 1)


def _device_of(model: SpecDiffNet) -> torch.device:
    return next(iter(model.state_dict().values())).device


@torch.no_grad()
def segment_image(
    image: np.ndarray,
    model: SpecDiffNet,
    *,
    max_side: int | None = DEFAULT_MAX_SIDE,
    coverage_threshold: float = 0.02,
    highres: bool = True,
    legacy: bool = False,
) -> SegmentationResult:
    """Hierarchical segmentation of one image (paper §6).

    ``K_D`` on the feature grid → coverage centres (Eq. 9) → kernel k-means →
    merging of adjacent segments by average ``K_D`` → full resolution by FAI of the
    finest soft segment maps (``highres``) or nearest up-sampling.

    Args:
        image: ``(H, W, 3)`` float RGB in ``[0, 1]`` (e.g. from :func:`ndd.io.read_image`).
        model: a :class:`SpecDiffNet` (e.g. :func:`ndd.models.load_default_model`).
        max_side: longest side the model sees; larger images are scaled down and
            the hierarchy is mapped back to ``(H, W)``.
        coverage_threshold: stop adding centres when ``mean(1 - U_cov)`` falls below it.
        highres: up-sample the finest soft segment maps with FAI ("Ours-HR").
        legacy: the authors' hierarchy choices (fixed first centre, at most 9 centres,
            soft k-means, merging by the feature kernel ``W``).
    """
    full = image.shape[:2]
    size = working_size(full, max_side)
    model.eval()
    x = _to_tensor(image, size, _device_of(model))
    out = model(x, eigenpairs=False)
    merge_sim = out.affinity.to_dense()[0] if legacy else None
    grid = segment_from_similarity(out.similarity[0].float(), out.grid_shape, merge_similarity=merge_sim,
                                   coverage_threshold=coverage_threshold, legacy=legacy)
    if highres:
        levels = [f[:1] for f in out.levels]

        def fai(maps: torch.Tensor) -> torch.Tensor:
            return model.upsample(maps.to(levels[0]), levels, size)

        hier = grid.upsample(size, upsample=fai)
    else:
        hier = grid.resized(size)
    if tuple(size) != tuple(full):
        hier = hier.resized(full)
    return SegmentationResult(hier, grid, size)


def points_to_nodes(points: Sequence[tuple[float, float]], image_size: tuple[int, int],
                    grid_shape: tuple[int, int]) -> torch.Tensor:
    """Grid nodes nearest to image points ``(x, y)`` (pixels of an ``(H, W)`` image)."""
    H, W = image_size
    h, w = grid_shape
    nodes = []
    for x, y in points:
        if not (0 <= x < W and 0 <= y < H):
            raise ValueError(f"point ({x}, {y}) lies outside the {W}x{H} image")
        # Grid node j sits on pixel (j * (H-1)/(h-1)) in the corner-aligned stride-8 geometry.
        gy = min(h - 1, round(y * (h - 1) / max(H - 1, 1)))
        gx = min(w - 1, round(x * (w - 1) / max(W - 1, 1)))
        nodes.append(gy * w + gx)
    return torch.tensor(nodes, dtype=torch.long)


@torch.no_grad()
def similarity_maps(
    image: np.ndarray,
    model: SpecDiffNet,
    points: Sequence[tuple[float, float]] | None = None,
    *,
    all_grid: int | None = None,
    max_side: int | None = DEFAULT_MAX_SIDE,
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Neural diffusion similarity maps (rows of ``K_D`` up-sampled by FAI, paper Fig. 2).

    Args:
        image: ``(H, W, 3)`` float RGB in ``[0, 1]``.
        model: a :class:`SpecDiffNet`.
        points: ``(x, y)`` pixel positions in ``image``.
        all_grid: instead of points, an ``all_grid x all_grid`` lattice of points.

    Returns:
        ``(M, H, W)`` maps in ``[0, 1]`` at the image's full size, and the points used.
    """
    full = image.shape[:2]
    if points is None:
        if not all_grid or all_grid < 1:
            raise ValueError("give points or all_grid >= 1")
        ys = (np.arange(all_grid) + 0.5) * full[0] / all_grid
        xs = (np.arange(all_grid) + 0.5) * full[1] / all_grid
        points = [(float(x), float(y)) for y in ys for x in xs]
    points = [(float(x), float(y)) for x, y in points]
    if not points:
        raise ValueError("no points given")
    size = working_size(full, max_side)
    model.eval()
    x = _to_tensor(image, size, _device_of(model))
    scale_pts = [(px * size[1] / full[1], py * size[0] / full[0]) for px, py in points]
    out = model(x, eigenpairs=False)
    nodes = points_to_nodes(scale_pts, size, out.grid_shape).to(out.similarity.device)
    h, w = out.grid_shape
    maps = out.similarity[0, nodes].reshape(1, -1, h, w)
    up = model.upsample(maps, [f[:1] for f in out.levels], size)
    if tuple(size) != tuple(full):
        up = F.interpolate(up, size=full, mode="bilinear", align_corners=False)
    return up[0].clamp(0, 1).cpu().numpy(), points


def load_segmentation_model(spec: str | None = None, device: torch.device | str = "cpu") -> tuple[SpecDiffNet, str]:
    """The model behind ``ndd segment --model SPEC``, and a one-line description of it.

    ``spec``: ``None``/``"default"`` for the shipped weights, ``"handcrafted"`` for the
    classical diffusion distance on hand-crafted features, or a weights/checkpoint path.
    """
    from ndd.models import SpecDiffNetConfig, SpecDiffNetWeights, load_default_model, load_model

    if spec in (None, "default"):
        entry = SpecDiffNetWeights.default().value
        if not entry.path.is_file():
            raise FileNotFoundError(
                f"this installation has no shipped model ({entry.filename}); pass --model handcrafted "
                "for the classical diffusion distance or --model CKPT for a trained checkpoint"
            )
        return load_default_model(device), f"shipped model {entry.filename}"
    if spec == "handcrafted":
        return SpecDiffNet(SpecDiffNetConfig.handcrafted()).to(device).eval(), "hand-crafted features (classical diffusion distance)"
    return load_model(spec, device), f"checkpoint {spec}"
