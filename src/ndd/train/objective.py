"""The training objective of spec-diff-net as one module (so DDP sees every parameter use)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ndd.data import downsample_labels, label_kernel
from ndd.losses import SegmentMatching, kernel_matching_loss, segment_matching_loss
from ndd.models import SpecDiffNet

__all__ = ["TrainingObjective", "hr_label_size"]


def hr_label_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """Label size of the HR loss: ``ceil(H * scale) x ceil(W * scale)``.

    For ``scale = 0.5`` this is the size of ``labels[::2, ::2]`` (the authors' choice).
    """
    return max(1, math.ceil(size[0] * scale - 1e-9)), max(1, math.ceil(size[1] * scale - 1e-9))


class TrainingObjective(nn.Module):
    """LR kernel matching loss (Eq. 7) plus, in stage 2, the HR segment matching loss (Eq. 8).

    Args:
        model: the :class:`SpecDiffNet` being trained.
        hr_weight: weight of the HR term.
        hr_scale: label resolution of the HR term relative to the input.
        matching: the HR loss's points and distance (:class:`ndd.losses.SegmentMatching`;
            ``SegmentMatching.authors()`` for the authors' 20 points and L1).

    ``forward(images (B, 3, H, W), labels (B, H, W), hr=False, generator=None)``
    returns a dict with ``"loss"`` and ``"loss_lr"`` (and ``"loss_hr"``).
    """

    def __init__(self, model: SpecDiffNet, *, hr_weight: float = 1.0, hr_scale: float = 1.0,
                 matching: SegmentMatching = SegmentMatching()):
        super().__init__()
        self.model = model
        self.hr_weight = hr_weight
        self.hr_scale = hr_scale
        self.matching = matching

    def forward(
        self, images: Tensor, labels: Tensor, hr: bool = False, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        out = self.model(images, eigenpairs=False, edges=False)  # the losses read K_D, never an edge map
        grid_labels = downsample_labels(labels, out.grid_shape)
        K_gt, valid = label_kernel(grid_labels)
        loss_lr = kernel_matching_loss(out.similarity, K_gt, valid)
        losses = {"loss_lr": loss_lr, "loss": loss_lr}
        if hr:
            size = hr_label_size(tuple(labels.shape[-2:]), self.hr_scale)  # type: ignore[arg-type]
            hr_labels = labels if size == tuple(labels.shape[-2:]) else downsample_labels(labels, size, "nearest")

            def upsample(maps: Tensor, b: int) -> Tensor:
                return self.model.upsample(maps, [f[b : b + 1] for f in out.levels], output_size=size)

            loss_hr = segment_matching_loss(
                out.similarity, grid_labels, hr_labels, upsample, generator, matching=self.matching
            )
            # A batch without any labelled segment leaves the FAI gammas without a
            # gradient, which DDP (find_unused_parameters=False) would reject.
            loss_hr = loss_hr + 0.0 * self.model.fai.log_gamma.sum()
            losses["loss_hr"] = loss_hr
            losses["loss"] = loss_lr + self.hr_weight * loss_hr
        return losses
