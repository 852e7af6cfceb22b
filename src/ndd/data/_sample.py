"""The sample dictionary shared by every dataset and transform of :mod:`ndd.data`."""

from __future__ import annotations

from typing import TypedDict

import numpy as np
import torch

__all__ = ["Sample", "make_sample"]


class Sample(TypedDict):
    """One segmentation sample.

    Keys:
        image: ``(3, H, W)`` float32 RGB in ``[0, 1]``.
        labels: ``(H, W)`` int64 (one annotation) or ``(K, H, W)`` (K
            annotations), segments ``0..n-1`` and ``-1`` = ignore.
        id: the image identifier (file stem, or ``"deadleaves-<seed>-<index>"``).
    """

    image: torch.Tensor
    labels: torch.Tensor
    id: str


def make_sample(image: np.ndarray, labels: np.ndarray, sample_id: str) -> Sample:
    """Build a :class:`Sample` from an ``(H, W, 3)`` uint8 or float image and int labels."""
    # Transpose while still uint8 (4x fewer bytes to move than float32).
    img = torch.from_numpy(np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1)))
    img = img.to(torch.float32).div_(255.0) if img.dtype == torch.uint8 else img.to(torch.float32)
    return {"image": img, "labels": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)), "id": sample_id}
