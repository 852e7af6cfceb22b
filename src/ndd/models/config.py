"""The configuration of spec-diff-net: plain data, importable without torch.

It is what checkpoints store and what ``ndd train`` builds its flags from, so
``ndd train --help`` and YAML handling never need torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["SpecDiffNetConfig", "SPECTRAL_DTYPES", "AFFINITIES", "AUTHORS_PRESET", "DEFAULT_MAX_SIDE"]

#: Precisions of the spectral part (names of torch dtypes).
SPECTRAL_DTYPES: tuple[str, ...] = ("float64", "float32")
#: What the affinity ``W`` is built from.
AFFINITIES: tuple[str, ...] = ("features", "contour", "features+contour")


#: Longest image side the shipped models see by default: BSDS500's 481x321, the size they were
#: trained and scored at (larger images are scaled down and results mapped back).
DEFAULT_MAX_SIDE = 481

#: What :meth:`SpecDiffNetConfig.authors` sets: the authors' procedure and initial values.
AUTHORS_PRESET: dict[str, Any] = {"legacy": True, "t_init": 0.5, "tau_init": 1e3}


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
        n_eigs, n_iter, n_power: ``Ne``; ``n_power=None`` (default) computes the top ``Ne``
            eigenpairs by block Krylov + Rayleigh-Ritz (:func:`ndd.spectral.diffusion`); an
            integer ``n_power`` runs the paper's accelerated simultaneous iteration instead,
            ``n_iter`` (``T``) QR steps of ``n_power`` multiplications each.
        mu_init, t_init, tau_init: initial ``mu`` (Eq. 1), ``t`` (Eq. 4, paper 10)
            and ``tau`` (``K_D = exp(-tau D)``).
        learn_diffusion: learn ``mu, t, tau`` (paper) or keep them fixed.
        fai_gammas: FAI gammas, fine to coarse (strides 2, 4, 8).
        fai_neighbourhood: FAI window ``S_at`` in coarse cells.
        learn_gamma: learn the FAI gammas (paper) or freeze them (authors' code).
        freeze_bn: keep the backbone's batch norm in eval mode.
        freeze_backbone: train only what follows the backbone (projection, ``mu``,
            ``t``, ``tau``, ``alpha``, FAI gammas): the backbone's parameters get no
            gradient and it runs without building a graph, in eval mode. A step then
            costs little more than the spectral block, which is what makes
            training a large pretrained backbone (``vgg16_hed``) affordable on a CPU.
        legacy: the authors' released procedure: features resized to a fixed
            41x41 grid and :func:`ndd.spectral.legacy_diffusion_distance`
            (``P^40`` per QR step, ``|diag R|`` as eigenvalues, no density weight).
        affinity: ``"features"`` (paper Eq. 1 on the embedding), ``"contour"`` (the
            intervening-contour affinity ``exp(-alpha * max edge between i and j)`` of
            the backbone's edge map, :func:`ndd.spectral.contour_affinity`; needs a
            backbone with an edge head, e.g. ``vgg16_hed``) or ``"features+contour"``
            (their product).
        alpha_init: initial ``alpha`` of the contour affinity.
        edge_detector: optional name of a backbone with an edge head (``"vgg16_hed"``)
            run beside the main backbone to give ``edges`` (for the contour affinity and
            for pixel-accurate hierarchies) when the main backbone has no edge head.
        edge_scales: input scales whose edge maps are averaged into ``edges``
            (:func:`ndd.models.backbone_base.multiscale_edges`); ``(1.0,)`` is one pass.
        edge_fusion_width: when set, ``edges`` is the output of a learned
            :class:`ndd.models.edge_fusion.EdgeFusionHead` of that hidden width over the edge
            detector's side logits at every scale of ``edge_scales``
            (:func:`ndd.models.backbone_base.multiscale_side_logits`) instead of the mean of its
            fused maps; trained by :mod:`ndd.train.edge_fusion`, frozen in ``ndd train``.
        merge_mu_scale: the hierarchy's merging kernel (``segment_image``, ``merge_by="features"``)
            is ``exp(-merge_mu_scale * mu * ||f_i - f_j||^2)``. A hierarchy setting, but one that
            belongs to the embedding it was chosen for (on BSDS500 val), so it travels with the
            weights; :class:`ndd.inference.HierarchyOptions` can override it.
        merge_diffusion_weight: ``w`` in ``[0, 1]``: merging by features uses
            ``(1 - w) exp(-merge_mu_scale * mu * ||f_i - f_j||^2) + w K_D`` (the diffusion's global
            grouping as a small second cue; 0: features alone, and no spectral block runs for
            the default hierarchy). Chosen with the weights on val, like ``merge_mu_scale``.
        merge_diffusion_tau: ``tau`` of that ``K_D`` share, ``exp(-merge_diffusion_tau D)``;
            ``None``: the model's own ``tau`` (so the share is ``K_D`` itself). The ``tau`` that
            scores kernels best need not be the one that merges best; chosen on val likewise.
        spectral_dtype: ``"float64"`` (default) or ``"float32"``: the precision of
            the spectral part (subspace iteration, Rayleigh-Ritz, assembly of ``D``;
            see :func:`ndd.spectral.diffusion`); the affinity and the outputs stay in
            the network's dtype. Float32 loses most of the gradient once regions
            become nearly disconnected, which training tends towards. Configs saved
            without the key get the default. Not used by the legacy path (float32,
            as in the authors' code).
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
    freeze_backbone: bool = False
    legacy: bool = False
    legacy_grid: tuple[int, int] = (41, 41)
    spectral_dtype: str = "float64"
    affinity: str = "features"
    alpha_init: float = 10.0
    edge_detector: str | None = None
    edge_scales: tuple[float, ...] = (1.0,)
    edge_fusion_width: int | None = None
    merge_mu_scale: float = 1.0
    merge_diffusion_weight: float = 0.0
    merge_diffusion_tau: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.merge_mu_scale > 0:
            raise ValueError(f"merge_mu_scale must be > 0, got {self.merge_mu_scale!r}")
        if not 0.0 <= self.merge_diffusion_weight <= 1.0:
            raise ValueError(f"merge_diffusion_weight must be in [0, 1], got {self.merge_diffusion_weight!r}")
        if self.merge_diffusion_tau is not None and not self.merge_diffusion_tau > 0:
            raise ValueError(f"merge_diffusion_tau must be > 0 or None, got {self.merge_diffusion_tau!r}")
        if self.spectral_dtype not in SPECTRAL_DTYPES:
            raise ValueError(f"spectral_dtype must be one of {sorted(SPECTRAL_DTYPES)}, got {self.spectral_dtype!r}")
        if self.affinity not in AFFINITIES:
            raise ValueError(f"affinity must be one of {list(AFFINITIES)}, got {self.affinity!r}")
        if "contour" in self.affinity and self.legacy:
            raise ValueError("the contour affinity has no legacy (authors') variant")
        if not self.edge_scales or min(self.edge_scales) <= 0:
            raise ValueError(f"edge_scales must be positive scales, got {self.edge_scales!r}")
        if self.edge_fusion_width is not None and not (isinstance(self.edge_fusion_width, int) and self.edge_fusion_width >= 1):
            raise ValueError(f"edge_fusion_width must be a positive int or None, got {self.edge_fusion_width!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpecDiffNetConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown SpecDiffNet config keys: {sorted(unknown)}")
        data = dict(data)
        for key in ("fai_gammas", "legacy_grid", "edge_scales"):
            if key in data and data[key] is not None:
                data[key] = tuple(data[key])
        return cls(**data)

    @classmethod
    def authors(cls, **overrides: Any) -> SpecDiffNetConfig:
        """The authors' released procedure: ``legacy=True`` with their initial ``t = 0.5`` and
        ``tau = 1000`` (README, "Where the authors' code departs from the paper"); keywords
        override any of it."""
        return cls(**{**AUTHORS_PRESET, **overrides})

    @classmethod
    def handcrafted(cls, **overrides: Any) -> SpecDiffNetConfig:
        """The classical diffusion distance: fixed Lab/position/filter features, no learning."""
        base = dict(backbone="handcrafted", embed_dim=None, normalize_embedding=False, mu_init=20.0,
                    learn_diffusion=False, learn_gamma=False, fai_gammas=(50.0, 50.0, 50.0))
        base.update(overrides)
        return cls(**base)
