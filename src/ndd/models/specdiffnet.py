"""spec-diff-net (paper §4, Fig. 1): backbone -> embedding -> diffusion distance -> ``K_D``."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ndd import spectral
from ndd.interpolate import FeatureAttentionalInterpolation

from .backbone_base import multiscale_edges, multiscale_side_logits
from .backbones import build_backbone
from .config import SpecDiffNetConfig
from .edge_fusion import EdgeFusionHead

__all__ = ["SpecDiffNetConfig", "SpecDiffNetOutput", "SpecDiffNet"]

_SPECTRAL_DTYPES = {"float64": torch.float64, "float32": torch.float32}


class SpecDiffNetOutput(NamedTuple):
    """What :meth:`SpecDiffNet.forward` returns.

    Attributes:
        distance: ``(B, N, N)`` diffusion distance on the ``h x w`` feature grid (``None`` when
            ``forward(..., diffusion=False)``).
        similarity: ``(B, N, N)`` ``K_D = exp(-tau D)`` (``None`` likewise).
        eigenvalues: ``(B, Ne)`` eigenvalues of ``P`` (no gradient).
        eigenvectors: ``(B, N, Ne)`` diffusion-map eigenvectors (no gradient).
        embedding: ``(B, C, h, w)`` the features defining the affinity.
        affinity: :class:`ndd.spectral.BandedAffinity` ``W`` (e.g. for merging).
        levels: backbone features at strides 2, 4, 8 (fine to coarse), for FAI.
        grid_shape: ``(h, w)``.
        edges: ``(B, 1, H, W)`` the backbone's edge map, for backbones with an edge head.
    """

    distance: Tensor | None
    similarity: Tensor | None
    eigenvalues: Tensor | None
    eigenvectors: Tensor | None
    embedding: Tensor
    affinity: spectral.BandedAffinity
    levels: list[Tensor]
    grid_shape: tuple[int, int]
    edges: Tensor | None = None


def _log_param(value: float, learn: bool) -> nn.Parameter:
    return nn.Parameter(torch.tensor(math.log(value)), requires_grad=learn)


class SpecDiffNet(nn.Module):
    """spec-diff-net: neural diffusion distance of an image on its stride-8 grid.

    The affinity features are a learned projection of a hypercolumn (the three
    backbone levels pooled to stride 8 plus the deep features), as in the
    authors' code; ``mu``, ``t``, ``tau`` and the FAI gammas are learnable and
    stored as logarithms so they stay positive.

    Args:
        config: :class:`SpecDiffNetConfig`.
        backbone_weights: passed to :func:`ndd.models.build_backbone` (a torchvision
            weights enum or name, ``"imagenet"`` for EfficientNet-Lite, a local path,
            or ``None`` for random initialisation).

    Shape:
        ``forward(images (B, 3, H, W) float RGB in [0, 1]) -> SpecDiffNetOutput``
        with ``N = h * w``, ``h = ceil(H / 8)``, ``w = ceil(W / 8)``.
    """

    def __init__(self, config: SpecDiffNetConfig | None = None, backbone_weights: object = None,
                 edge_weights: object = None) -> None:
        super().__init__()
        self.config = config = config or SpecDiffNetConfig()
        backbone_kwargs = {} if config.backbone == "handcrafted" else {"freeze_bn": config.freeze_bn}
        self.backbone = build_backbone(config.backbone, weights=backbone_weights, **backbone_kwargs)
        if config.freeze_backbone:
            self.backbone.requires_grad_(False)
        # a separate edge network, frozen: it is a fixed, pretrained cue, not trained with Eq. 7/8
        self.edge_detector = None
        if config.edge_detector is not None:
            self.edge_detector = build_backbone(config.edge_detector, weights=edge_weights).requires_grad_(False)
        # a learned fusion of the detector's side outputs over the scales, trained on its own
        # (ndd.train.edge_fusion) and frozen here like the detector
        self.edge_fusion = None
        if config.edge_fusion_width is not None:
            detector = self.edge_network
            n_sides = getattr(detector, "n_side_outputs", None)
            if n_sides is None:
                raise ValueError(f"edge_fusion_width needs an edge detector with side outputs (vgg16_hed); "
                                 f"{config.edge_detector or config.backbone} has none")
            self.edge_fusion = EdgeFusionHead(n_sides * len(config.edge_scales), config.edge_fusion_width)
            self.edge_fusion.init_from_fuse(detector.fuse.weight, detector.fuse.bias, len(config.edge_scales))
            self.edge_fusion.requires_grad_(False)
        c2, c4, c8 = self.backbone.level_channels
        self._deep_is_level = self.backbone.deep_is_last_level  # avoid feeding one tensor twice
        hyper = c2 + c4 + c8 + (0 if self._deep_is_level else self.backbone.deep_channels)
        if config.embed_dim is None:
            self.projection = None
        else:
            width = max(2 * config.embed_dim, 128)
            self.projection = nn.Sequential(
                nn.Conv2d(hyper, width, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(width, config.embed_dim, 1),
            )
        learn = config.learn_diffusion
        self.log_mu = _log_param(config.mu_init, learn)
        self.log_t = _log_param(config.t_init, learn)
        self.log_tau = _log_param(config.tau_init, learn)
        if "contour" in config.affinity:
            self.log_alpha = _log_param(config.alpha_init, learn)
        self.fai = FeatureAttentionalInterpolation(  # the authors' preset: their clamped-border window too
            config.fai_gammas, config.fai_neighbourhood, freeze_gamma=not config.learn_gamma,
            geometry="authors" if config.legacy else None,
        )

    # -- learnable scalars ------------------------------------------------- #
    @property
    def mu(self) -> Tensor:
        return self.log_mu.exp()

    @property
    def t(self) -> Tensor:
        return self.log_t.exp()

    @property
    def tau(self) -> Tensor:
        return self.log_tau.exp()

    @property
    def edge_network(self) -> nn.Module | None:
        """The network whose edge map ``edges`` comes from: the backbone when it has an edge
        head, else the separate edge detector; ``None`` without either."""
        return self.backbone if self.backbone.has_edges else self.edge_detector

    @property
    def has_edge_map(self) -> bool:
        """Whether :meth:`forward` gives ``edges`` (from the backbone or the edge detector)."""
        return self.edge_network is not None

    @property
    def alpha(self) -> Tensor:
        """Strength of the contour affinity (only with ``affinity`` using ``"contour"``)."""
        return self.log_alpha.exp()

    def diffusion_parameters(self) -> list[nn.Parameter]:
        """``mu, t, tau`` (``alpha``) and the FAI gammas (trained with their own learning rate)."""
        extra = [self.log_alpha] if hasattr(self, "log_alpha") else []
        return [self.log_mu, self.log_t, self.log_tau, *extra, self.fai.log_gamma]

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Everything else: backbone and projection."""
        special = {id(p) for p in self.diffusion_parameters()}
        return [p for p in self.parameters() if id(p) not in special]

    # -- forward ----------------------------------------------------------- #
    def embed(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Affinity features ``(B, C, h, w)`` and the backbone levels (fine to coarse)."""
        emb, levels, _ = self._embed(images, edges=False)  # no edge map: it would be thrown away
        return emb, levels

    def train(self, mode: bool = True) -> SpecDiffNet:
        super().train(mode)
        if self.config.freeze_backbone:
            self.backbone.eval()  # a frozen backbone behaves as at inference (batch norm, dropout)
        for frozen in (self.edge_detector, self.edge_fusion):
            if frozen is not None:
                frozen.eval()
        return self

    def _embed(self, images: Tensor, edges: bool = True) -> tuple[Tensor, list[Tensor], Tensor | None]:
        if self.config.freeze_backbone:
            with torch.no_grad():  # no graph through the frozen backbone: its activations are freed at once
                out = self.backbone(images)
        else:
            out = self.backbone(images)
        levels = list(out.levels)
        if self.projection is None:
            emb = out.deep
        else:
            size = levels[-1].shape[-2:]
            parts = [F.adaptive_avg_pool2d(f, size) for f in levels[:2]] + [levels[2]]
            if not self._deep_is_level:
                parts.append(out.deep)
            emb = self.projection(torch.cat(parts, 1))
        if self.config.normalize_embedding:
            emb = F.normalize(emb, dim=1)
        if self.config.legacy:
            emb = F.interpolate(emb, size=self.config.legacy_grid, mode="bilinear", align_corners=True)
        if not edges:
            return emb, levels, None
        edge_map = out.edges
        detector = self.edge_network
        if detector is not None and self.edge_fusion is not None:
            with torch.no_grad():
                sides = multiscale_side_logits(detector.side_logits, images, self.config.edge_scales)
                edge_map = self.edge_fusion.edge_map(sides)
        elif detector is not None and (edge_map is None or tuple(self.config.edge_scales) != (1.0,)):
            with torch.no_grad():  # a fixed cue: no gradient through the edge maps
                edge_map = multiscale_edges(detector.edge_map, images, self.config.edge_scales, at_scale_one=edge_map)
        return emb, levels, edge_map

    def forward(self, images: Tensor, *, eigenpairs: bool = True, diffusion: bool = True,
                edges: bool = True, spectral_dtype: str | None = None) -> SpecDiffNetOutput:
        """``eigenpairs=False`` drops the eigenpairs from the output; ``diffusion=False`` skips the
        spectral block (no ``D``, ``K_D`` or eigenpairs: what needs only the embedding, the
        affinity and the edges, such as the default hierarchy, saves its time and memory);
        ``edges=False`` skips the edge map where the affinity does not read it (``K_D`` alone:
        similarity maps, kernel accuracy; with VGG16-HED at three scales, most of the work);
        ``spectral_dtype`` (``"float32"`` or ``"float64"``) overrides the config's precision of
        the spectral block for this call (see :meth:`diffuse`)."""
        emb, levels, edges = self._embed(images, edges=edges or "contour" in self.config.affinity)
        W = self.affinity(emb, edges)
        grid = W.grid_shape
        if not diffusion:
            return SpecDiffNetOutput(None, None, None, None, emb, W, levels, grid, edges)
        D, K, lam, psi = self.diffuse(W, spectral_dtype)
        if not eigenpairs:
            lam = psi = None
        return SpecDiffNetOutput(D, K, lam, psi, emb, W, levels, grid, edges)

    def diffuse(self, W: spectral.BandedAffinity, spectral_dtype: str | None = None,
                ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """The spectral block on an affinity: ``(D, K_D, eigenvalues, eigenvectors)`` with the
        configured solver, ``t``, ``tau`` and precision (the eigenpairs are ``None`` for the
        legacy solver). Shapes as in :class:`SpecDiffNetOutput`.

        ``spectral_dtype``: ``None`` for the config's (float64 by default, which gradients need);
        ``"float32"`` is about twice as fast where no gradient is taken (inference)."""
        cfg = self.config
        dtype = cfg.spectral_dtype if spectral_dtype is None else spectral_dtype
        if dtype not in _SPECTRAL_DTYPES:
            raise ValueError(f"spectral_dtype must be one of {sorted(_SPECTRAL_DTYPES)}, got {dtype!r}")
        if cfg.legacy:
            D = spectral.legacy_diffusion_distance(W, self.t, n_iter=cfg.n_iter, n_power=cfg.n_power or 40)
            lam = psi = None
        else:
            D, lam, psi = spectral.diffusion(W, self.t, min(cfg.n_eigs, W.num_nodes), cfg.n_iter, n_power=cfg.n_power,
                                             spectral_dtype=_SPECTRAL_DTYPES[dtype])
        return D, spectral.diffusion_similarity(D, self.tau), lam, psi

    def affinity(self, embedding: Tensor, edges: Tensor | None) -> spectral.BandedAffinity:
        """The banded affinity ``W`` that the configured ``affinity`` defines on the grid."""
        cfg = self.config
        if "contour" in cfg.affinity and edges is None:
            raise ValueError(f"affinity {cfg.affinity!r} needs a backbone with an edge head; {cfg.backbone} has none")
        grid = tuple(embedding.shape[-2:])
        if cfg.affinity == "contour":
            return spectral.contour_affinity(edges, grid, self.alpha, window=cfg.window)
        W = spectral.local_affinity(embedding, self.mu, window=cfg.window)
        if cfg.affinity == "features+contour":
            C = spectral.contour_affinity(edges, grid, self.alpha, window=cfg.window)
            W = spectral.BandedAffinity(W.weights * C.weights, W.grid_shape, W.window)
        return W

    def upsample(self, maps: Tensor, levels: list[Tensor], output_size: tuple[int, int] | None = None) -> Tensor:
        """FAI of grid maps ``(B, M, h, w)`` to the stride-2 level or ``output_size``."""
        return self.fai(maps, levels, output_size=output_size)

    @torch.no_grad()
    def similarity_maps(self, images: Tensor, nodes: Tensor, output_size: tuple[int, int] | None = None) -> Tensor:
        """Up-sampled similarity maps (rows of ``K_D``) of grid ``nodes`` ``(M,)`` for one image: ``(M, H, W)``."""
        out = self(images[:1], eigenpairs=False, edges=False)
        h, w = out.grid_shape
        maps = out.similarity[0, nodes].reshape(1, -1, h, w)
        size = output_size or tuple(images.shape[-2:])
        return self.upsample(maps, [f[:1] for f in out.levels], size)[0].clamp(0, 1)
