"""From an image to a hierarchy or to similarity maps with a trained spec-diff-net.

This is what ``ndd segment`` and ``ndd similarity`` call; everything here is plain
Python API. Large images are processed at a capped working resolution (the
feature grid, and so the ``N x N`` similarity, grows with the image) and the
result is mapped back to the full size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ndd import spectral
from ndd.formats.images import check_points
from ndd.device import resolve_device
from ndd.interpolate import infer_stride_ratio
from ndd.models import SpecDiffNet, SpecDiffNetWeights
from ndd.models.config import DEFAULT_MAX_SIDE  # torch-free: the CLI reads the same constant
from ndd.segment import GridClustering, Hierarchy, segment_from_edges, segment_from_similarity, upsample_hierarchy
from ndd.segment.hierarchy import UcmValues

__all__ = ["HierarchyOptions", "SegmentationResult", "working_size", "segment_image", "similarity_maps",
           "points_to_nodes", "check_points", "load_segmentation_model", "resolve_int8_edges"]



Method = Literal["auto", "superpixels", "grid"]
MergeBy = Literal["features", "diffusion", "affinity"]
#: ``ucm_values="auto"`` for each method, chosen on BSDS500 val (docs/segmentation.md, "`ucm2` values,
#: chosen again"): raw heights for superpixel hierarchies (their scores are comparable across images; spreading them
#: to make every level reachable cost boundary F and covering ODS there), evenly spaced ranks for
#: the grid method (whose late merges crowd above the last thresholds)
AUTO_UCM_VALUES: dict[str, UcmValues] = {"superpixels": "height", "grid": "rank"}


@dataclass(frozen=True)
class HierarchyOptions:
    """How :func:`segment_image` builds the hierarchy. The defaults were chosen on BSDS500 val.

    Attributes:
        method: ``"grid"``: paper §6 on the stride-8 grid (coverage centres, kernel k-means,
            merging), finest segments snapped to full resolution by FAI; ``"superpixels"``:
            watershed regions of the model's edge map, merged by contour strength and
            feature similarity, with every boundary pixel-accurate (needs a model with an
            edge map); ``"auto"``: superpixels when the model has an edge map, else grid.
        merge_by: average similarity used for merging: ``"features"``, the unmasked feature
            kernel ``exp(-mu ||f_i - f_j||^2)`` (paper §6, "average feature similarity", as in
            the authors' code), or ``"diffusion"``, ``K_D``. Between separated regions
            ``K_D ~ exp(-tau (1/pi_A + 1/pi_B))`` depends on their sizes, so merging by it
            follows region size more than appearance. ``"affinity"``: the banded feature
            kernel ``W`` the diffusion starts from (zero beyond the window; the authors' code).
        coverage_threshold: grid method: residual coverage at which centre selection stops
            (paper 0.02; smaller gives a finer finest level).
        highres: grid method: FAI up-sampling of the finest segments ("Ours-HR").
        superpixel_depth: superpixels: h of the h-minima that seed the watershed.
        min_region: superpixels: regions smaller than this fraction of the image are absorbed
            first (slivers between the flanks of a contour).
        edge_weight: superpixels: weight of the contour term against feature similarity.
        small_edge_weight: superpixels: weight of the contour term for a pair of regions one of
            which is small: ``edge_weight + (small_edge_weight - edge_weight) exp(-m / (s A))``
            with ``m`` the smaller region's pixels, ``A`` the image's and ``s`` =
            ``small_region``, so fragments merge by their contours (as OWT-UCM) and large
            regions by their features; ``None``: ``edge_weight`` for every pair.
        small_region: superpixels: ``s`` above, a fraction of the image.
        merge_mu_scale: merging by features: the kernel is ``exp(-s * mu ||f_i - f_j||^2)``
            with this ``s``; ``None`` (default): the model's own
            (:attr:`ndd.models.SpecDiffNetConfig.merge_mu_scale`, chosen with its weights).
        diffusion_weight: merging by features: weight ``w`` of ``K_D`` mixed into that kernel,
            ``(1 - w) kernel + w K_D``; ``None`` (default): the model's own
            (:attr:`ndd.models.SpecDiffNetConfig.merge_diffusion_weight`).
        diffusion_tau: ``tau'`` of that share, ``exp(-tau' D)`` in place of ``K_D``; ``None``
            (default): the model's own (:attr:`ndd.models.SpecDiffNetConfig.merge_diffusion_tau`,
            else the ``tau`` of its ``K_D``).
        ucm_values: values written to the ``ucm2`` (:meth:`ndd.segment.Hierarchy.merge_values`):
            ``"height"`` (``1 -`` merge score: one scale for every image, so one threshold means
            the same everywhere; levels whose merges fall between the same two BSDS thresholds
            cannot be told apart by the benchmark), ``"spread"`` (those heights, moved just
            enough that every level with at most 99 segments has a BSDS threshold of its own),
            ``"rank"`` (evenly spaced by merge order: the same for hierarchies of at most 99
            segments) or ``"auto"`` (default: :data:`AUTO_UCM_VALUES`, the best on BSDS500 val
            for each method).
        clustering: grid method: centres, k-means and clean-up
            (:class:`ndd.segment.GridClustering`).

    :meth:`authors` is the authors' released hierarchy as a preset.
    """

    method: Method = "auto"
    merge_by: MergeBy = "features"
    coverage_threshold: float = 0.005
    highres: bool = True
    superpixel_depth: float = 0.02
    min_region: float = 200 / (321 * 481)
    edge_weight: float = 0.2
    small_edge_weight: float | None = 0.9
    small_region: float = 0.005
    merge_mu_scale: float | None = None
    diffusion_weight: float | None = None
    diffusion_tau: float | None = None
    ucm_values: UcmValues | Literal["auto"] = "auto"
    clustering: GridClustering = GridClustering()

    @classmethod
    def authors(cls, **changes: object) -> HierarchyOptions:
        """The authors' released hierarchy: the grid method, :meth:`GridClustering.authors`
        (fixed first centre, at most 9 centres, soft k-means, largest piece kept) and merging by
        the banded feature kernel ``W``; ``changes`` are fields to set on top.

        Example:
            >>> HierarchyOptions.authors(coverage_threshold=0.02).merge_by
            'affinity'
        """
        preset = cls(method="grid", merge_by="affinity", clustering=GridClustering.authors())
        return replace(preset, **changes)


@dataclass(frozen=True)
class SegmentationResult:
    """A hierarchy of an image.

    Attributes:
        hierarchy: the full-resolution hierarchy.
        grid_hierarchy: the hierarchy on the feature grid ("Ours-LR"; grid method only).
        working_size: ``(H, W)`` the model saw.
        ucm_values: what :meth:`to_ucm2` writes (see :class:`HierarchyOptions`).
        edges: ``working_size`` float32 soft edge map in ``[0, 1]`` of a model with an edge
            detector (the map the superpixels came from), else ``None``; :meth:`edge_map` gives
            it at the image's size.
    """

    hierarchy: Hierarchy
    grid_hierarchy: Hierarchy | None
    working_size: tuple[int, int]
    ucm_values: UcmValues = "spread"
    edges: np.ndarray | None = None

    def available_levels(self, n_segments: Sequence[int]) -> list[int]:
        """The requested numbers of segments that this hierarchy has (``1 .. finest``), sorted, unique."""
        return sorted({int(k) for k in n_segments if 1 <= int(k) <= self.hierarchy.n_segments})

    def levels(self, n_segments: Sequence[int] | None = None) -> list[np.ndarray]:
        """Label maps (nested) with the given numbers of segments (default: every level)."""
        return self.hierarchy.levels(n_segments)

    def level_maps(self, n_segments: Sequence[int]) -> Mapping[int, np.ndarray]:
        """``{k: labels}`` for the available ``n_segments``, each map computed when it is read.

        Nothing is held: for a 24-megapixel photo five int64 levels would be about 1 GB.
        """
        return _LevelMaps(self.hierarchy, self.available_levels(n_segments))

    def to_ucm2(self) -> np.ndarray:
        """BSDS doubleSize ultrametric contour map ``(2H+1, 2W+1)`` in ``[0, 1]``."""
        return self.hierarchy.to_ucm2(values=self.ucm_values)

    def edge_map(self) -> np.ndarray:
        """The model's soft edge map ``(H, W)`` at the image's size (bilinear from
        ``working_size``), float32 in ``[0, 1]``; ``ndd segment --format edges`` writes it."""
        if self.edges is None:
            raise ValueError("no edge map: the model has no edge detector (e.g. use the default model)")
        if tuple(self.edges.shape) == tuple(self.hierarchy.shape):
            return self.edges
        edges = torch.from_numpy(self.edges)[None, None]
        resized = F.interpolate(edges, size=self.hierarchy.shape, mode="bilinear", align_corners=False)
        return resized[0, 0].clamp_(0, 1).numpy()


class _LevelMaps(Mapping[int, np.ndarray]):
    """Read-only mapping ``n_segments -> labels`` that computes each level on access."""

    def __init__(self, hierarchy: Hierarchy, counts: Sequence[int]) -> None:
        self._hierarchy, self._counts = hierarchy, list(counts)

    def __getitem__(self, k: int) -> np.ndarray:
        if k not in self._counts:
            raise KeyError(k)
        return self._hierarchy.labels_at(k)

    def __iter__(self) -> Iterator[int]:
        return iter(self._counts)

    def __len__(self) -> int:
        return len(self._counts)


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
    options: HierarchyOptions | None = None,
    **overrides: object,
) -> SegmentationResult:
    """Hierarchical segmentation of one image (paper §6, and its pixel-accurate variant).

    Args:
        image: ``(H, W, 3)`` float RGB in ``[0, 1]`` (e.g. from :func:`ndd.io.read_image`).
        model: a :class:`SpecDiffNet` (e.g. :func:`ndd.models.load_default_model`).
        max_side: longest side the model sees; larger images are scaled down and
            the hierarchy is mapped back to ``(H, W)``.
        options: :class:`HierarchyOptions` (default: the defaults).
        **overrides: fields of :class:`HierarchyOptions` to change, e.g. ``method="grid"``.

    Example::

        result = segment_image(io.read_image("photo.jpg"), load_default_model())
        coarse = result.levels(result.available_levels([8]))
    """
    opts = replace(options or HierarchyOptions(), **overrides)
    full = image.shape[:2]
    size = working_size(full, max_side)
    model.eval()
    x = _to_tensor(image, size, _device_of(model))
    method = opts.method
    if method == "auto":
        method = "superpixels" if model.has_edge_map else "grid"
    # superpixels merged by features alone or by W never read D: the spectral block is skipped
    needs_diffusion = (method != "superpixels" or opts.merge_by == "diffusion"
                       or (opts.merge_by == "features" and _diffusion_weight(model, opts) > 0))
    _diffusion_tau(model, opts)  # a bad value fails before the network runs
    # float32 spectral block: no gradient is taken here, and on BSDS500 val the default's 100
    # ucm2 were identical to float64's, at about half the spectral block's time
    out = model(x, eigenpairs=False, diffusion=needs_diffusion, spectral_dtype="float32")
    if method == "superpixels":
        if out.edges is None:
            raise ValueError("method 'superpixels' needs a model with an edge map (e.g. the default model)")
        hier, grid = _superpixel_hierarchy(out, model, size, opts), None
    elif method == "grid":
        grid = _grid_hierarchy(out, model, opts)
        if opts.highres:
            levels = [f[:1] for f in out.levels]

            def fai(maps: torch.Tensor) -> torch.Tensor:
                return model.upsample(maps.to(levels[0]), levels, size)

            hier = upsample_hierarchy(grid, size, upsample=fai)
        else:
            hier = grid.resized(size)
    else:
        raise ValueError(f"method must be 'auto', 'superpixels' or 'grid', got {opts.method!r}")
    if tuple(size) != tuple(full):
        hier = hier.resized(full)
    values = opts.ucm_values if opts.ucm_values != "auto" else AUTO_UCM_VALUES[method]
    edges = None if out.edges is None else out.edges[0, 0].detach().float().clamp(0, 1).cpu().numpy()
    return SegmentationResult(hier, grid, size, values, edges)


def _diffusion_weight(model: SpecDiffNet, opts: HierarchyOptions) -> float:
    weight = model.config.merge_diffusion_weight if opts.diffusion_weight is None else opts.diffusion_weight
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"diffusion_weight must be in [0, 1], got {weight!r}")
    return weight


def _diffusion_tau(model: SpecDiffNet, opts: HierarchyOptions) -> float | None:
    tau = model.config.merge_diffusion_tau if opts.diffusion_tau is None else opts.diffusion_tau
    if tau is not None and not tau > 0:
        raise ValueError(f"diffusion_tau must be > 0, got {tau!r}")
    return tau


def _merge_similarity(out, model: SpecDiffNet, opts: HierarchyOptions) -> torch.Tensor:
    merge_by = opts.merge_by
    if merge_by == "features":
        scale = model.config.merge_mu_scale if opts.merge_mu_scale is None else opts.merge_mu_scale
        K = spectral.feature_kernel(out.embedding[:1].float(), scale * model.mu.float())[0]
        weight = _diffusion_weight(model, opts)
        if weight > 0:  # the diffusion's global grouping as a second cue (chosen on val)
            tau = _diffusion_tau(model, opts)
            share = out.similarity[0] if tau is None else spectral.diffusion_similarity(out.distance[0], tau)
            K = (1 - weight) * K + weight * share.float()
        return K
    if merge_by == "diffusion":
        return out.similarity[0].float()
    if merge_by == "affinity":
        return out.affinity.to_dense()[0].float()
    raise ValueError(f"merge_by must be 'features', 'diffusion' or 'affinity', got {merge_by!r}")


def _grid_hierarchy(out, model: SpecDiffNet, opts: HierarchyOptions) -> Hierarchy:
    return segment_from_similarity(out.similarity[0].float(), out.grid_shape,
                                   merge_similarity=_merge_similarity(out, model, opts),
                                   coverage_threshold=opts.coverage_threshold, clustering=opts.clustering)


def _superpixel_hierarchy(out, model: SpecDiffNet, size: tuple[int, int], opts: HierarchyOptions) -> Hierarchy:
    edges = out.edges[0, 0].float().cpu().numpy()
    similarity = _merge_similarity(out, model, opts)
    return segment_from_edges(edges, similarity, out.grid_shape, depth=opts.superpixel_depth,
                              min_size=round(opts.min_region * size[0] * size[1]), edge_weight=opts.edge_weight,
                              small_edge_weight=opts.small_edge_weight, small_size=opts.small_region * size[0] * size[1])


def points_to_nodes(points: Sequence[tuple[float, float]], image_size: tuple[int, int],
                    grid_shape: tuple[int, int]) -> torch.Tensor:
    """Grid nodes nearest to image points ``(x, y)`` (pixels of an ``(H, W)`` image)."""
    H, W = image_size
    h, w = grid_shape
    ratio = infer_stride_ratio((H, W), (h, w))  # 8 for the backbones' ceil(H / 8) grids
    nodes = []
    for x, y in points:
        if not (0 <= x < W and 0 <= y < H):
            raise ValueError(f"point ({x}, {y}) lies outside the {W}x{H} image")
        if ratio is None:  # a resized grid (legacy 41x41): corner-aligned
            gy = min(h - 1, round(y * (h - 1) / max(H - 1, 1)))
            gx = min(w - 1, round(x * (w - 1) / max(W - 1, 1)))
        else:  # grid node j sits on pixel ratio * j; ties go up, as in FAI
            gy = min(h - 1, math.floor(y / ratio + 0.5))
            gx = min(w - 1, math.floor(x / ratio + 0.5))
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
    points = check_points(points, full)  # in the user's pixels, before the network runs
    size = working_size(full, max_side)
    model.eval()
    out = model(_to_tensor(image, size, _device_of(model)), eigenpairs=False, edges=False)
    return similarity_maps_from_output(out, model, points, full, size), points


def resolve_int8_edges(spec: str | None, device: torch.device | str = "cpu") -> bool:
    """What ``int8_edges=None`` (``ndd segment`` without ``--int8-edges``/``--no-int8-edges``)
    means for the model ``spec`` on ``device``: int8 exactly when the device is a CPU whose
    PyTorch has the x86 int8 layers (:func:`ndd.models.vgg16_hed.int8_supported`) and ``spec``
    names a shipped model whose entry says so (:attr:`ndd.models.WeightsEntry.cpu_int8_edges`:
    the default, whose int8 segmentation tied float32 on BSDS500 val); float32 for every other
    model, device and checkpoint.

    Example:
        >>> from ndd.models.vgg16_hed import int8_supported
        >>> resolve_int8_edges("handcrafted"), resolve_int8_edges("default", "cpu") == int8_supported()
        (False, True)
    """
    if resolve_device(device).type != "cpu":
        return False
    member = _shipped_member(spec)  # a checkpoint or "handcrafted": None, float32 as trained
    if member is None or not member.value.cpu_int8_edges:
        return False
    from ndd.models.vgg16_hed import int8_supported

    return int8_supported()  # elsewhere (ARM, a PyTorch without int8 layers): float32, silently


def load_segmentation_model(spec: str | None = None, device: torch.device | str = "cpu",
                            int8_edges: bool | None = None) -> tuple[SpecDiffNet, str]:
    """The model behind ``ndd segment --model SPEC``, and a one-line description of it.

    ``spec``: ``None``/``"default"`` for the shipped default weights, the name of a shipped
    model (:class:`ndd.models.SpecDiffNetWeights`, any case: ``bsds500`` is the small fast
    one), ``"handcrafted"`` for the classical diffusion distance on hand-crafted features, or a
    weights/checkpoint path. ``int8_edges`` (``ndd segment --int8-edges``): run the VGG16-HED
    edge detector's trunk in int8 (:meth:`ndd.models.vgg16_hed.Vgg16HedBackbone.quantize_int8`;
    CPU only, faster, slightly different edge maps); ``None`` (default):
    :func:`resolve_int8_edges` (int8 for the default model on an x86 CPU).
    """
    device = resolve_device(device)  # a bad or absent device fails here, in one line, before any loading
    if int8_edges is None:
        int8_edges = resolve_int8_edges(spec, device)
    if int8_edges and device.type != "cpu":
        raise ValueError(f"--int8-edges runs on the CPU only, not on {device}")
    model, description = _load_segmentation_model(spec, device)
    if int8_edges:
        from ndd.models.vgg16_hed import Vgg16HedBackbone

        if not isinstance(model.edge_detector, Vgg16HedBackbone):
            raise ValueError(f"--int8-edges needs a VGG16-HED edge detector; {description} has none")
        try:
            model.edge_detector.quantize_int8()
        except RuntimeError as err:  # no x86 quantized engine (e.g. an ARM CPU)
            raise ValueError(f"--int8-edges: {err}") from None
        description += ", HED trunk in int8"
    return model, description


def _shipped_member(spec: str | None) -> SpecDiffNetWeights | None:
    """The shipped weights that ``ndd segment --model SPEC`` names, or ``None`` (``handcrafted``,
    a file, an unknown name). ``default`` is the shipped default even beside a file of that name."""
    from ndd.models import get_weights

    if spec == "handcrafted" or (spec not in (None, "default") and Path(spec).exists()):
        return None
    return get_weights(spec or "default")


def _load_segmentation_model(spec: str | None, device: torch.device) -> tuple[SpecDiffNet, str]:
    from ndd.models import SpecDiffNetConfig, load_model, spec_diff_net

    if spec == "handcrafted":
        return SpecDiffNet(SpecDiffNetConfig.handcrafted()).to(device).eval(), "hand-crafted features (classical diffusion distance)"
    member = _shipped_member(spec)
    if member is not None:
        entry = member.value
        if not entry.path.is_file():
            raise FileNotFoundError(
                f"this installation has no shipped model ({entry.filename}); pass --model handcrafted "
                "for the classical diffusion distance or --model CKPT for a trained checkpoint"
            )
        return spec_diff_net(member, device=device).eval(), f"shipped model {member.name} ({entry.filename})"
    if not Path(spec).exists():  # a misspelt name as much as a missing file
        names = {name.lower() for name in SpecDiffNetWeights.__members__} | {"handcrafted"}
        raise FileNotFoundError(f"model {spec!r}: no such file, nor a model name ({', '.join(sorted(names))})")
    if Path(spec).is_dir():
        raise ValueError(f"model {spec!r} is a folder: give a checkpoint file (e.g. {Path(spec) / 'last.pt'})")
    return load_model(spec, device), f"checkpoint {spec}"


@torch.no_grad()
def similarity_maps_from_output(
    out,
    model: SpecDiffNet,
    points: Sequence[tuple[float, float]],
    image_size: tuple[int, int],
    working_size: tuple[int, int],
) -> np.ndarray:
    """:func:`similarity_maps` from a forward that was already run (no network call).

    The same steps as :func:`similarity_maps` after its forward: points scaled to the working
    size, :func:`points_to_nodes`, rows of ``K_D`` up-sampled by ``model.upsample`` (FAI), a
    bilinear resize to the full size, clamped to ``[0, 1]``.

    Args:
        out: the :class:`ndd.models.specdiffnet.SpecDiffNetOutput` of ``model`` on the image
            resized to ``working_size`` (batch item 0 is used).
        model: the model that produced ``out`` (its FAI is used).
        points: ``(x, y)`` pixel positions in the full-size image.
        image_size: ``(H, W)`` of the full-size image.
        working_size: ``(h, w)`` the model saw (e.g. :attr:`SegmentationResult.working_size`).

    Returns:
        ``(M, H, W)`` float32 maps in ``[0, 1]``.
    """
    full, size = tuple(image_size), tuple(working_size)
    pts = check_points(points, full)
    scale_pts = [(px * size[1] / full[1], py * size[0] / full[0]) for px, py in pts]
    nodes = points_to_nodes(scale_pts, size, out.grid_shape).to(out.similarity.device)
    h, w = out.grid_shape
    maps = out.similarity[0, nodes].reshape(1, -1, h, w)
    up = model.upsample(maps, [f[:1] for f in out.levels], size)
    if size != full:
        up = F.interpolate(up, size=full, mode="bilinear", align_corners=False)
    return up[0].clamp(0, 1).cpu().numpy()
