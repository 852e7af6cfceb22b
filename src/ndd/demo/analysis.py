"""One image analysed once: the forward, ``K_D``, the hierarchy and what a click needs.

:func:`analyse_image` runs :func:`ndd.inference.segment_image` (the network, ``K_D`` and
the hierarchy) and keeps the network's output, so that every later question about the
same image (a level of the hierarchy, the similarity map of a pixel) is answered without
running the network again.

A similarity map is a row of ``K_D`` up-sampled by the model's FAI. FAI is linear in the
map and local (a pixel depends on the grid nodes within a few cells of it), and its
weights depend only on the image's features, so the whole up-sampling is precomputed once
per image as a small local linear operator (:class:`ProbedUpsampler`, built from
``model.upsample`` itself on ``P x P`` "probe" maps); a click then costs a gather and a
weighted sum instead of an FAI pass. The operator is checked against ``model.upsample``
on a random map when it is built; where it does not match (a model whose FAI reaches
further), clicks fall back to :func:`ndd.inference.similarity_maps_from_output`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ndd.inference import (
    DEFAULT_MAX_SIDE,
    SegmentationResult,
    points_to_nodes,
    segment_image,
    similarity_maps_from_output,
)
from ndd.interpolate import infer_stride_ratio
from ndd.models import SpecDiffNet
from ndd.models.specdiffnet import SpecDiffNetOutput

__all__ = ["ImageAnalysis", "ProbedUpsampler", "analyse_image"]


def _window_centres(n_pixels: int, n_nodes: int, ratio: int | None) -> torch.Tensor:
    """``(n_pixels,)`` long: the grid node nearest to each pixel along one axis (as in
    :func:`ndd.inference.points_to_nodes`)."""
    y = torch.arange(n_pixels, dtype=torch.float64)
    if ratio is None:  # a resized grid: corner-aligned
        c = torch.round(y * (n_nodes - 1) / max(n_pixels - 1, 1))
    else:  # node j sits on pixel ratio * j
        c = torch.floor(y / ratio + 0.5)
    return c.clamp(0, n_nodes - 1).long()


def _class_nodes(centres: torch.Tensor, radius: int, n_nodes: int) -> torch.Tensor:
    """``(P, n_pixels)`` long: for each residue class ``a`` (mod ``P = 2 radius + 1``), the one
    node of that class in each pixel's window ``centre - radius .. centre + radius``, clamped
    into the grid (a clamped one gets zero weight: no node of its class reaches the pixel)."""
    p = 2 * radius + 1
    start = centres - radius
    a = torch.arange(p)[:, None]
    return (start[None, :] + torch.remainder(a - start[None, :], p)).clamp(0, n_nodes - 1)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread: a click's few million multiply-adds take ~10 ms on one, but on a
    loaded CPU a second intra-op thread waits for its partner and took 40x longer (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class ProbedUpsampler:
    """``model.upsample`` of one ``(h, w)`` grid map to the working size, precomputed.

    With ``P = 2 radius + 1``, probe ``(a, b)`` is the indicator of the grid nodes ``(gy, gx)``
    with ``gy = a`` and ``gx = b`` (mod ``P``). If every pixel depends only on nodes within
    ``radius`` of its nearest node, each probe's up-sampled value at a pixel is the FAI weight
    of the single node of that class in the pixel's window, so ``upsample(m)`` at the pixel is
    ``sum_ab probe_ab(pixel) * m(node_ab(pixel))`` exactly. The probes are up-sampled to the
    finest feature level; the last step to ``size`` is ``model.upsample``'s own resize.
    :attr:`max_error` is the largest difference from ``model.upsample`` on a random map,
    measured when building.

    Args:
        model: the model whose FAI is reproduced.
        levels: its forward's feature levels (``[f[:1] for f in out.levels]``).
        grid_shape: ``(h, w)`` of the maps.
        size: ``(H, W)`` the maps are up-sampled to (the working size).
        radius: half-width of the window in grid nodes (4 covers FAI with 5x5 windows over
            three levels, whose reach is about 3 nodes).
    """

    @torch.no_grad()
    def __init__(self, model: SpecDiffNet, levels: list[torch.Tensor], grid_shape: tuple[int, int],
                 size: tuple[int, int], radius: int = 4) -> None:
        h, w = grid_shape
        p = 2 * radius + 1
        ref = levels[0]
        # The operator maps to the finest feature level; the last step to the working size
        # (a plain resize in FAI) is left to model.upsample, at a quarter of the cost per click.
        H0, W0 = int(ref.shape[-2]), int(ref.shape[-1])
        a = torch.arange(p, device=ref.device)
        rows = (torch.arange(h, device=ref.device) % p)[None, :] == a[:, None]  # (P, h)
        cols = (torch.arange(w, device=ref.device) % p)[None, :] == a[:, None]  # (P, w)
        probes = (rows[:, None, :, None] & cols[None, :, None, :]).reshape(1, p * p, h, w).to(ref.dtype)
        up = model.upsample(probes, levels)[0].reshape(p, p, H0, W0)
        # (b, a, H0, W0): one contiguous (a, H0, W0) block per column class b, read in __call__'s loop
        self._weights = up.permute(1, 0, 2, 3).contiguous()
        ratio = infer_stride_ratio((H0, W0), (h, w))
        self._rows = _class_nodes(_window_centres(H0, h, ratio), radius, h).to(ref.device)  # (P, H0)
        self._cols = _class_nodes(_window_centres(W0, w, ratio), radius, w).to(ref.device)  # (P, W0)
        self._model, self._levels = model, levels
        self.grid_shape, self.size, self.radius = (h, w), (int(size[0]), int(size[1])), radius
        test = torch.rand(1, 1, h, w, generator=torch.Generator().manual_seed(0)).to(ref)
        direct = model.upsample(test, levels, self.size)[0, 0]
        #: largest absolute difference from ``model.upsample`` on a random map in [0, 1]
        self.max_error = float((self(test[0, 0]) - direct).abs().max())

    @torch.no_grad()
    def __call__(self, grid_map: torch.Tensor) -> torch.Tensor:
        """``(h, w)`` map -> ``(H, W)``, as ``model.upsample(grid_map[None, None], levels, size)[0, 0]``."""
        by_rows = grid_map[self._rows]  # (P, H0, w): each row class's node value per pixel row
        fine = torch.zeros(self._weights.shape[2:], dtype=self._weights.dtype, device=self._weights.device)
        for b in range(self._weights.shape[0]):  # a loop over column classes keeps temporaries small
            fine.add_((by_rows.index_select(2, self._cols[b]) * self._weights[b]).sum(0))
        return self._model.upsample(fine[None, None], self._levels, self.size)[0, 0]


@dataclass
class ImageAnalysis:
    """Everything the demo needs about one image, computed once by :func:`analyse_image`.

    Attributes:
        image: ``(H, W, 3)`` float32 RGB in ``[0, 1]``, the image analysed.
        result: its :class:`ndd.inference.SegmentationResult` (full-resolution hierarchy).
        forward: the network's output on the image at ``result.working_size``.
        model: the model (its FAI up-samples similarity rows).
        seconds: wall time of the network, ``K_D``, the hierarchy and the ``ucm2``.
        timings: the same split into steps, in seconds.
    """

    image: np.ndarray
    result: SegmentationResult
    forward: SpecDiffNetOutput
    model: SpecDiffNet
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    _ucm2: np.ndarray | None = field(default=None, repr=False)
    _upsampler: ProbedUpsampler | None = field(default=None, repr=False)

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of :attr:`image`."""
        return int(self.image.shape[0]), int(self.image.shape[1])

    @property
    def upsampler(self) -> ProbedUpsampler | None:
        """The precomputed FAI clicks use, or ``None`` (clicks call ``model.upsample``)."""
        return self._upsampler

    @property
    def n_segments(self) -> int:
        """Number of segments of the finest level (the slider's maximum)."""
        return self.result.hierarchy.n_segments

    def labels(self, n_segments: int) -> np.ndarray:
        """``(H, W)`` int64 labels ``0 .. k-1`` of the level with ``k = n_segments`` clamped to
        ``1 .. n_segments_of_finest``."""
        k = min(max(int(n_segments), 1), self.n_segments)
        return self.result.hierarchy.labels_at(k)

    def ucm2(self) -> np.ndarray:
        """The BSDS doubleSize ``ucm2`` ``(2H+1, 2W+1)`` in ``[0, 1]`` (computed once)."""
        if self._ucm2 is None:
            self._ucm2 = self.result.to_ucm2()
        return self._ucm2

    @torch.no_grad()
    def similarity(self, x: float, y: float) -> np.ndarray:
        """``(H, W)`` float32 diffusion similarity in ``[0, 1]`` of pixel ``(x, y)`` to every pixel.

        Equal (to float rounding) to ``similarity_maps(image, model, [(x, y)])[0]`` without
        running the network.
        """
        H, W = self.size
        if not (np.isfinite(x) and np.isfinite(y) and 0 <= x <= W - 1 and 0 <= y <= H - 1):
            raise ValueError(f"point ({x:g}, {y:g}) lies outside the {W}x{H} image")
        size = tuple(self.result.working_size)
        if self._upsampler is None:  # the operator did not match model.upsample: the direct path
            return similarity_maps_from_output(self.forward, self.model, [(x, y)], (H, W), size)[0]
        point = (x * size[1] / W, y * size[0] / H)
        node = int(points_to_nodes([point], size, self.forward.grid_shape)[0])
        h, w = self.forward.grid_shape
        with _one_thread():
            up = self._upsampler(self.forward.similarity[0, node].reshape(h, w))
            if size != (H, W):
                up = F.interpolate(up[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
            return up.clamp(0, 1).float().cpu().numpy()


@torch.no_grad()
def analyse_image(
    image: np.ndarray,
    model: SpecDiffNet,
    *,
    max_side: int | None = DEFAULT_MAX_SIDE,
    fast_clicks: bool = True,
    **options: object,
) -> ImageAnalysis:
    """Segment ``image`` once and keep what later levels and clicks need.

    Args:
        image: ``(H, W, 3)`` float RGB in ``[0, 1]``.
        model: a :class:`SpecDiffNet`.
        max_side: longest side the network sees (as in :func:`ndd.inference.segment_image`).
        fast_clicks: precompute the FAI of the image as a :class:`ProbedUpsampler` (a click then
            takes milliseconds); ``False``: every click runs ``model.upsample``.
        **options: fields of :class:`ndd.inference.HierarchyOptions`.

    Returns:
        an :class:`ImageAnalysis`; the network ran exactly once.
    """
    captured: list[SpecDiffNetOutput] = []
    # segment_image runs the forward itself; a hook keeps its output instead of running it twice
    handle = model.register_forward_hook(lambda _module, _args, output: captured.append(output))
    start = time.perf_counter()
    try:
        result = segment_image(image, model, max_side=max_side, **options)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"expected one forward of the network, saw {len(captured)}")
    timings = {"network, K_D and hierarchy": time.perf_counter() - start}
    analysis = ImageAnalysis(np.asarray(image, dtype=np.float32), result, captured[0], model)
    t = time.perf_counter()
    analysis.ucm2()
    timings["ucm2"] = time.perf_counter() - t
    if fast_clicks:
        t = time.perf_counter()
        out = captured[0]
        levels = [f[:1] for f in out.levels]
        with _one_thread():  # 0.12 s instead of 1.7 s on this loaded 2-core CPU (measured)
            upsampler = ProbedUpsampler(model, levels, out.grid_shape, tuple(result.working_size))
        # float32 rounding of sums of ~100 terms is ~1e-6; anything larger means the FAI reaches
        # beyond the window and the operator is wrong
        if math.isfinite(upsampler.max_error) and upsampler.max_error < 1e-4:
            analysis._upsampler = upsampler
        timings["similarity operator"] = time.perf_counter() - t
    analysis.timings = timings
    analysis.seconds = sum(timings.values())
    return analysis
