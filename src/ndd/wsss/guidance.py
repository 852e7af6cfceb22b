"""The frozen spec-diff-net that guides RFP: ``K`` on the WSSS network's feature grid.

Paper §7: "spec-diff-net is fixed and pre-trained on 500 images of BSD500". :class:`Guidance`
wraps any ``ndd`` model (the shipped default, ``bsds500``, a checkpoint of ``ndd train``) and
returns, for a batch of images, ``K_D`` (``kind="diffusion"``) or the plain feature kernel
``exp(-mu ||f_i - f_j||^2)`` of the model's embedding (``kind="embedding"``, Table 4's
"Embedding" baseline), on the stride-8 grid of the images; when the model ran at another
scale (``scale``) or on its own grid (legacy 41x41) the kernel is resampled
(:func:`ndd.wsss.functional.resample_kernel`).

:class:`KernelCache` keeps computed kernels on disk, keyed by the model settings, the image
and the crop geometry, so repeated crops (whole images with flips, the pseudo-label pass)
run spec-diff-net once; the authors precomputed ``K_D`` offline too.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ndd import spectral

from .config import WSSSNetConfig
from .functional import resample_kernel

__all__ = ["Guidance", "TensorCache", "KernelCache", "module_fingerprint", "load_guidance_model"]


def load_guidance_model(spec: str, device: torch.device | str = "cpu") -> nn.Module:
    """A spec-diff-net from a name (``default``, ``bsds500``, ``bsds500_hed_v4``, ..., ``handcrafted``) or a file.

    Raises:
        FileNotFoundError / ValueError naming the problem (missing file, not a model).
    """
    from ndd.models import SpecDiffNet, SpecDiffNetConfig, spec_diff_net

    if spec.lower() == "handcrafted":
        return SpecDiffNet(SpecDiffNetConfig.handcrafted()).to(device).eval()
    return spec_diff_net(spec, device=device)  # an enum name (default, bsds500, ...) or a file


class Guidance(nn.Module):
    """``K`` for RFP from a frozen spec-diff-net.

    Args:
        model: a :class:`ndd.models.SpecDiffNet` (frozen here: eval mode, no gradients).
        kind: ``"diffusion"`` (``K_D``) or ``"embedding"`` (feature kernel).
        scale: input scale of the model.
        embedding_mu: ``mu`` of the feature kernel (default: the model's learned ``mu``).
        t: override of the model's diffusion time.
        window: override of the model's affinity window.
    """

    def __init__(self, model: nn.Module, kind: str = "diffusion", scale: float = 1.0,
                 embedding_mu: float | None = None, t: float | None = None, window: int | None = None) -> None:
        super().__init__()
        if kind not in ("diffusion", "embedding"):
            raise ValueError(f"kind must be 'diffusion' or 'embedding', got {kind!r}")
        self.model = model.eval().requires_grad_(False)
        self.kind, self.scale, self.embedding_mu = kind, float(scale), embedding_mu
        if t is not None:
            self.model.log_t.data.fill_(math.log(t))
        if window is not None:
            self.model.config.window = int(window)

    @classmethod
    def from_config(cls, config: WSSSNetConfig, device: torch.device | str = "cpu") -> Guidance | None:
        """The guidance a network configuration asks for (``None`` for variants without RFP)."""
        if config.kernel is None:
            return None
        model = load_guidance_model(config.spec_diff_net, device)
        return cls(model, config.kernel, config.guidance_scale, config.embedding_mu, config.guidance_t,
                   config.guidance_window)

    def train(self, mode: bool = True) -> Guidance:
        super().train(mode)
        self.model.eval()  # frozen: always as at inference
        return self

    def fingerprint(self, source: str) -> str:
        """A short hash of everything that changes ``K`` (for :class:`KernelCache`): the model's
        weights (``t``, ``mu``, ``tau`` included) and configuration, the kind, scale and ``mu``."""
        desc = {"source": source, "kind": self.kind, "scale": self.scale, "embedding_mu": self.embedding_mu,
                "config": repr(sorted(self.model.config.to_dict().items()))}
        return module_fingerprint(self.model, json.dumps(desc, sort_keys=True))

    @torch.no_grad()
    def forward(self, images: Tensor, grid: tuple[int, int]) -> Tensor:
        """``K`` ``(B, N, N)`` float32 on ``grid`` (the WSSS network's stride-8 grid of ``images``)."""
        x = images
        if self.scale != 1.0:
            size = (max(8, round(images.shape[-2] * self.scale)), max(8, round(images.shape[-1] * self.scale)))
            x = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=self.scale < 1)
        if self.kind == "embedding":
            emb, _ = self.model.embed(x)
            mu = self.model.mu if self.embedding_mu is None else self.embedding_mu
            K = spectral.feature_kernel(emb.float(), mu)
            src = tuple(emb.shape[-2:])
        else:
            out = self.model(x, eigenpairs=False, edges=False)
            K, src = out.similarity, tuple(out.grid_shape)
        return resample_kernel(K.float(), src, tuple(grid))  # type: ignore[arg-type]


class TensorCache:
    """Tensors on disk, one float16 file per (image, crop geometry), under ``root/<fingerprint>/``.

    What a frozen network computes for a crop depends only on the image and how the crop was cut,
    so a run that sees the same crops again (whole images with flips, the pseudo-label pass,
    several variants sharing one guidance) computes each once. Values come back as float32 of the
    stored float16, for fresh and cached items alike, so a resumed run sees the same numbers.
    Files are written under a temporary name and renamed (safe with several ranks).
    """

    def __init__(self, root: str | os.PathLike[str], fingerprint: str) -> None:
        self.dir = Path(root) / fingerprint
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0

    def _path(self, image_id: str, geometry: str) -> Path:
        key = hashlib.sha1(f"{image_id}|{geometry}".encode()).hexdigest()[:20]
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in image_id)[:60]
        return self.dir / f"{safe}-{key}.pt"

    def get(self, compute: Callable[[Tensor], Tensor], images: Tensor, ids: Sequence[str],
            geometries: Sequence[str]) -> Tensor:
        """``compute(images)`` for a batch, reading cached items and computing (then storing) the others."""
        out: list[Tensor | None] = []
        for image_id, geom in zip(ids, geometries, strict=True):
            path = self._path(image_id, geom)
            value = None
            if path.is_file():
                try:
                    value = torch.load(path, map_location="cpu", weights_only=True)
                except Exception:  # a damaged entry is recomputed
                    value = None
            out.append(value)
        missing = [i for i, v in enumerate(out) if v is None]
        self.hits += len(out) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = compute(images[missing]).half().cpu()
            for j, i in enumerate(missing):
                out[i] = fresh[j]
                path = self._path(ids[i], geometries[i])
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                torch.save(fresh[j].clone(), tmp)
                os.replace(tmp, path)
        return torch.stack([v.float() for v in out]).to(images.device)  # type: ignore[union-attr]


class KernelCache(TensorCache):
    """:class:`TensorCache` of ``K`` (paper: the authors precomputed ``K_D`` offline too)."""

    def get_kernel(self, guidance: Guidance, images: Tensor, grid: tuple[int, int], ids: Sequence[str],
                   geometries: Sequence[str]) -> Tensor:
        return self.get(lambda x: guidance(x, grid), images, ids, geometries)


def module_fingerprint(module: nn.Module, *extra: object) -> str:
    """A short hash of a module's parameters and buffers (and ``extra``), to key a :class:`TensorCache`."""
    digest = hashlib.sha256(repr(extra).encode())
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
