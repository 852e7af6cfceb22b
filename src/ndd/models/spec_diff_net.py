"""spec-diff-net (paper §4, Fig. 1): backbone -> embedding -> diffusion distance -> ``K_D``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ndd import spectral
from ndd.interpolate import FeatureAttentionalInterpolation

from .backbones import build_backbone

__all__ = ["SpecDiffNetConfig", "SpecDiffNetOutput", "SpecDiffNet"]


@dataclass
class SpecDiffNetConfig:
    """Everything needed to rebuild a :class:`SpecDiffNet` (saved in checkpoints).

    Attributes:
        backbone: a name of :func:`ndd.models.available_backbones`.
        embed_dim: channels of the learned projection whose features define the
            affinity (Eq. 1); ``None`` uses the backbone's deep features as they
            are (the hand-crafted baseline).
        normalize_embedding: L2-normalise the embedding, so ``mu`` is scale free.
        window: affinity window on the feature grid (paper: 17).
        n_eigs, n_iter, n_power: ``Ne``, ``T`` and multiplications per QR step
            (``None``: ``round(2t)``) of the accelerated simultaneous iteration.
        mu_init, t_init, tau_init: initial ``mu`` (Eq. 1), ``t`` (Eq. 4, paper 10)
            and ``tau`` (``K_D = exp(-tau D)``).
        learn_diffusion: learn ``mu, t, tau`` (paper) or keep them fixed.
        fai_gammas: FAI gammas, fine to coarse (strides 2, 4, 8).
        fai_neighbourhood: FAI window ``S_at`` in coarse cells.
        learn_gamma: learn the FAI gammas (paper) or freeze them (authors' code).
        freeze_bn: keep the backbone's batch norm in eval mode.
        legacy: the authors' released procedure: features resized to a fixed
            41x41 grid and :func:`ndd.spectral.legacy_diffusion_distance`
            (``P^40`` per QR step, ``|diag R|`` as eigenvalues, no density weight).
    """

    backbone: str = "efficientnet_lite0"
    embed_dim: int | None = 64
    normalize_embedding: bool = True
    window: int = 17
    n_eigs: int = 50
    n_iter: int = 2
    n_power: int | None = None
    mu_init: float = 5.0
    t_init: float = 10.0
    tau_init: float = 1.0
    learn_diffusion: bool = True
    fai_gammas: tuple[float, ...] = (1.0, 4.0, 8.0)
    fai_neighbourhood: int = 5
    learn_gamma: bool = True
    freeze_bn: bool = True
    legacy: bool = False
    legacy_grid: tuple[int, int] = (41, 41)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpecDiffNetConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown SpecDiffNet config keys: {sorted(unknown)}")
        data = dict(data)
        for key in ("fai_gammas", "legacy_grid"):
            if key in data and data[key] is not None:
                data[key] = tuple(data[key])
        return cls(**data)

    @classmethod
    def handcrafted(cls, **overrides: Any) -> SpecDiffNetConfig:
        """The classical diffusion distance: fixed Lab/position/filter features, no learning."""
        base = dict(backbone="handcrafted", embed_dim=None, normalize_embedding=False, mu_init=20.0,
                    learn_diffusion=False, learn_gamma=False, fai_gammas=(50.0, 50.0, 50.0))
        base.update(overrides)
        return cls(**base)


class SpecDiffNetOutput(NamedTuple):
    """What :meth:`SpecDiffNet.forward` returns.

    Attributes:
        distance: ``(B, N, N)`` diffusion distance on the ``h x w`` feature grid.
        similarity: ``(B, N, N)`` ``K_D = exp(-tau D)``.
        eigenvalues: ``(B, Ne)`` eigenvalues of ``P`` (no gradient).
        eigenvectors: ``(B, N, Ne)`` diffusion-map eigenvectors (no gradient).
        embedding: ``(B, C, h, w)`` the features defining the affinity.
        affinity: :class:`ndd.spectral.BandedAffinity` ``W`` (e.g. for merging).
        levels: backbone features at strides 2, 4, 8 (fine to coarse), for FAI.
        grid_shape: ``(h, w)``.
    """

    distance: Tensor
    similarity: Tensor
    eigenvalues: Tensor | None
    eigenvectors: Tensor | None
    embedding: Tensor
    affinity: spectral.BandedAffinity
    levels: list[Tensor]
    grid_shape: tuple[int, int]


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

    def __init__(self, config: SpecDiffNetConfig | None = None, backbone_weights: object = None) -> None:
        super().__init__()
        self.config = config = config or SpecDiffNetConfig()
        backbone_kwargs = {} if config.backbone == "handcrafted" else {"freeze_bn": config.freeze_bn}
        self.backbone = build_backbone(config.backbone, weights=backbone_weights, **backbone_kwargs)
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
        t_init = 0.5 if config.legacy and config.t_init == 10.0 else config.t_init
        tau_init = 1e3 if config.legacy and config.tau_init == 1.0 else config.tau_init
        self.log_mu = _log_param(config.mu_init, learn)
        self.log_t = _log_param(t_init, learn)
        self.log_tau = _log_param(tau_init, learn)
        self.fai = FeatureAttentionalInterpolation(
            config.fai_gammas, config.fai_neighbourhood, freeze_gamma=not config.learn_gamma
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

    def diffusion_parameters(self) -> list[nn.Parameter]:
        """``mu, t, tau`` and the FAI gammas (trained with their own learning rate)."""
        return [self.log_mu, self.log_t, self.log_tau, self.fai.log_gamma]

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Everything else: backbone and projection."""
        special = {id(p) for p in self.diffusion_parameters()}
        return [p for p in self.parameters() if id(p) not in special]

    # -- forward ----------------------------------------------------------- #
    def embed(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Affinity features ``(B, C, h, w)`` and the backbone levels (fine to coarse)."""
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
        return emb, levels

    def forward(self, images: Tensor, *, eigenpairs: bool = True) -> SpecDiffNetOutput:
        emb, levels = self.embed(images)
        cfg = self.config
        W = spectral.local_affinity(emb, self.mu, window=cfg.window)
        grid = W.grid_shape
        n_eigs = min(cfg.n_eigs, W.num_nodes)
        if cfg.legacy:
            D = spectral.legacy_diffusion_distance(W, self.t, n_iter=cfg.n_iter, n_power=cfg.n_power or 40)
            lam = psi = None
        else:
            result = spectral.diffusion(W, self.t, n_eigs, cfg.n_iter, n_power=cfg.n_power)
            D, lam, psi = result
            if not eigenpairs:
                lam = psi = None
        K = spectral.diffusion_similarity(D, self.tau)
        return SpecDiffNetOutput(D, K, lam, psi, emb, W, levels, grid)

    def upsample(self, maps: Tensor, levels: list[Tensor], output_size: tuple[int, int] | None = None) -> Tensor:
        """FAI of grid maps ``(B, M, h, w)`` to the stride-2 level or ``output_size``."""
        return self.fai(maps, levels, output_size=output_size)

    @torch.no_grad()
    def similarity_maps(self, images: Tensor, nodes: Tensor, output_size: tuple[int, int] | None = None) -> Tensor:
        """Up-sampled similarity maps (rows of ``K_D``) of grid ``nodes`` ``(M,)`` for one image: ``(M, H, W)``."""
        out = self(images[:1], eigenpairs=False)
        h, w = out.grid_shape
        maps = out.similarity[0, nodes].reshape(1, -1, h, w)
        size = output_size or tuple(images.shape[-2:])
        return self.upsample(maps, [f[:1] for f in out.levels], size)[0].clamp(0, 1)
