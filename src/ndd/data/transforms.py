"""Joint image/label transforms on sample dicts.

Every transform takes and returns a sample dict (``"image"`` ``(3, H, W)``
float, ``"labels"`` ``(H, W)`` or ``(K, H, W)`` int64) and keeps any other key.
Images are resampled bilinearly (antialiased when shrinking) and labels by
nearest neighbour on the same half-pixel grid, so the two stay aligned.

Randomness comes from the ``generator`` given to a transform or, when it is
``None`` (the default), from the global torch RNG. Keep ``None`` inside a
multi-worker ``DataLoader``: it seeds each worker's global RNG from its own
``generator``, which makes a run reproducible, whereas a generator stored in a
transform is copied into every worker with the same state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ._sample import Sample
from .labels import IGNORE_INDEX, resize_labels_nearest

__all__ = [
    "Compose",
    "RandomScale",
    "RandomCrop",
    "RandomHorizontalFlip",
    "Resize",
    "resize_sample",
    "train_transform",
]

Transform = Callable[[Sample], Sample]


def _as_size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if len(size) != 2:
        raise ValueError(f"size must be an int or (h, w), got {size}")
    return int(size[0]), int(size[1])


def resize_sample(sample: Sample, size: tuple[int, int]) -> Sample:
    """Resize image (bilinear, antialiased) and labels (nearest) to ``size = (h, w)``."""
    image, labels = sample["image"], sample["labels"]
    if tuple(image.shape[-2:]) == tuple(size):
        return dict(sample)  # type: ignore[return-value]
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return {**sample, "image": image, "labels": resize_labels_nearest(labels, size)}


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"{type(self).__name__}([{inner}])"


class RandomScale:
    """Rescale by a random factor (scale jitter).

    Args:
        scale_range: ``(lo, hi)``; the factor is uniform in it.
        choices: a finite set of factors to pick from uniformly instead, e.g.
            ``(0.8, 0.9, 1.0, 1.1, 1.2)`` as in the authors' code.
        generator: RNG (see module docstring).

    The output size is ``round(H * s) x round(W * s)`` (at least 1).
    """

    def __init__(
        self,
        scale_range: tuple[float, float] = (0.8, 1.2),
        choices: Sequence[float] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if choices is not None and (len(choices) == 0 or min(choices) <= 0):
            raise ValueError(f"choices must be a non-empty list of positive factors, got {choices}")
        if choices is None and not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be (lo, hi) with 0 < lo <= hi, got {scale_range}")
        self.scale_range = scale_range
        self.choices = tuple(choices) if choices is not None else None
        self.generator = generator

    def sample_scale(self) -> float:
        if self.choices is not None:
            return self.choices[int(torch.randint(len(self.choices), (1,), generator=self.generator))]
        lo, hi = self.scale_range
        return lo + (hi - lo) * float(torch.rand((), generator=self.generator))

    def __call__(self, sample: Sample) -> Sample:
        s = self.sample_scale()
        H, W = sample["image"].shape[-2:]
        return resize_sample(sample, (max(1, round(H * s)), max(1, round(W * s))))

    def __repr__(self) -> str:
        what = f"choices={self.choices}" if self.choices is not None else f"scale_range={self.scale_range}"
        return f"{type(self).__name__}({what})"


class RandomCrop:
    """Random ``size`` crop; smaller inputs are first padded at the bottom/right.

    Padding fills the image with ``image_fill`` and the labels with
    ``label_fill`` (``-1`` = ignore), so losses can mask it out.

    Args:
        size: ``(h, w)`` or an int for a square crop.
        image_fill: value of padded image pixels.
        label_fill: value of padded labels.
        generator: RNG (see module docstring).
    """

    def __init__(
        self,
        size: int | Sequence[int],
        image_fill: float = 0.0,
        label_fill: int = IGNORE_INDEX,
        generator: torch.Generator | None = None,
    ) -> None:
        self.size = _as_size(size)
        self.image_fill = image_fill
        self.label_fill = label_fill
        self.generator = generator

    def __call__(self, sample: Sample) -> Sample:
        image, labels = sample["image"], sample["labels"]
        h, w = self.size
        H, W = image.shape[-2:]
        pad_h, pad_w = max(0, h - H), max(0, w - W)
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h), value=self.image_fill)
            labels = F.pad(labels, (0, pad_w, 0, pad_h), value=self.label_fill)
            H, W = H + pad_h, W + pad_w
        top = int(torch.randint(H - h + 1, (1,), generator=self.generator))
        left = int(torch.randint(W - w + 1, (1,), generator=self.generator))
        return {
            **sample,
            "image": image[..., top : top + h, left : left + w],
            "labels": labels[..., top : top + h, left : left + w],
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


class RandomHorizontalFlip:
    """Flip image and labels left-right with probability ``p``."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        self.p = p
        self.generator = generator

    def __call__(self, sample: Sample) -> Sample:
        if float(torch.rand((), generator=self.generator)) >= self.p:
            return sample
        return {**sample, "image": sample["image"].flip(-1), "labels": sample["labels"].flip(-1)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


class Resize:
    """Deterministic resize to ``size = (h, w)`` (or an int for a square); ``None`` is a no-op.

    For evaluation, where images are used at their own size, use ``Resize(None)``.
    """

    def __init__(self, size: int | Sequence[int] | None) -> None:
        self.size = None if size is None else _as_size(size)

    def __call__(self, sample: Sample) -> Sample:
        return sample if self.size is None else resize_sample(sample, self.size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


def train_transform(
    crop_size: int | Sequence[int] = 321,
    scale_range: tuple[float, float] = (0.8, 1.2),
    scale_choices: Sequence[float] | None = None,
    flip: bool = True,
    generator: torch.Generator | None = None,
) -> Compose:
    """Stage-1 training augmentation: scale jitter, random (padded) crop, horizontal flip.

    The defaults follow the paper's setting (321x321 crops of BSDS500 with
    0.8-1.2 scale jitter); pass ``scale_choices=(0.8, 0.9, 1.0, 1.1, 1.2)`` for
    the authors' discrete scales.
    """
    steps: list[Transform] = [
        RandomScale(scale_range, choices=scale_choices, generator=generator),
        RandomCrop(crop_size, generator=generator),
    ]
    if flip:
        steps.append(RandomHorizontalFlip(generator=generator))
    return Compose(steps)
