"""Batching of sample dicts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ._sample import Sample

__all__ = ["collate"]


def collate(samples: Sequence[Sample]) -> dict[str, Any]:
    """Stack fixed-size samples into a batch (``collate_fn`` for ``DataLoader``).

    Returns a dict with ``"image"`` ``(B, 3, H, W)``, ``"labels"`` ``(B, H, W)``
    (or ``(B, K, H, W)``) and ``"id"`` a list of ``B`` strings. Other tensor
    keys are stacked, other values listed.

    Raises:
        ValueError: if the images or labels differ in shape; crop them to one
            size (:class:`ndd.data.transforms.RandomCrop`) or use batch size 1.
    """
    if len(samples) == 0:
        raise ValueError("cannot collate an empty list of samples")
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]  # type: ignore[literal-required]
        if isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                ids = [s.get("id") for s in samples]
                raise ValueError(
                    f"cannot stack '{key}' of different shapes {sorted(shapes)} (ids {ids}); "
                    "crop samples to a fixed size or use batch_size=1"
                )
            batch[key] = torch.stack(values)
        else:
            batch[key] = list(values)
    return batch
