"""Data for the WSSS steps: which data set, the training crops, pseudo labels as targets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ndd.data.labels import IGNORE_INDEX
from ndd.data.transforms import resize_sample
from ndd.data.voc import ImageLabelFolder, VOCSegmentation, read_mask_png

__all__ = ["build_dataset", "CropTransform", "PseudoLabelDataset", "geometry_key"]


def geometry_key(scale: float, top: int, left: int, flip: bool, height: int, width: int) -> str:
    """How a training crop (or a whole image: scale 1, offsets 0, no flip) was cut from its image."""
    return f"s{scale:.6f}_t{top}_l{left}_f{int(flip)}_{height}x{width}"


def build_dataset(
    dataset: str,
    data_root: str | Path | None,
    split: str | None,
    *,
    image_labels: str = "auto",
    require_masks: bool = False,
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> VOCSegmentation | ImageLabelFolder:
    """``dataset`` ``"voc"`` (:class:`~ndd.data.VOCSegmentation`) or ``"folder"`` (:class:`~ndd.data.ImageLabelFolder`)."""
    if data_root is None:
        raise ValueError("no data folder given (--data)")
    if dataset == "voc":
        return VOCSegmentation(data_root, split or "train_aug", image_labels=image_labels,  # type: ignore[arg-type]
                               require_masks=require_masks, transform=transform)
    if dataset == "folder":
        return ImageLabelFolder(data_root, split, require_masks=require_masks, transform=transform)
    raise ValueError(f"dataset must be 'voc' or 'folder', got {dataset!r}")


class CropTransform:
    """Random scale, crop (padded where the image is smaller) and flip, recorded in the item.

    Adds ``"valid"`` ``(h, w)`` bool (pixels of the image, not padding) and ``"geometry"``, a
    string naming the scale, offsets and flip (the key of :class:`~ndd.wsss.guidance.KernelCache`).
    Randomness comes from the global torch RNG, which :class:`ndd.train.data.SeededDataset`
    seeds per sample. Padding: image 0, labels ``-1`` (ignored).
    """

    def __init__(self, crop_size: int, scale_range: tuple[float, float] = (1.0, 1.0), flip: bool = True) -> None:
        self.crop_size = int(crop_size)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.flip = flip

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        lo, hi = self.scale_range
        s = lo if lo == hi else lo + (hi - lo) * float(torch.rand(()))
        H, W = item["image"].shape[-2:]
        if s != 1.0:
            item = resize_sample(item, (max(1, round(H * s)), max(1, round(W * s))))  # type: ignore[arg-type]
        image, labels = item["image"], item["labels"]
        H, W = image.shape[-2:]
        c = self.crop_size
        valid = torch.ones(H, W, dtype=torch.bool)
        if H < c or W < c:
            ph, pw = max(0, c - H), max(0, c - W)
            image = F.pad(image, (0, pw, 0, ph), value=0.0)
            labels = F.pad(labels, (0, pw, 0, ph), value=IGNORE_INDEX)
            valid = F.pad(valid, (0, pw, 0, ph), value=False)
            H, W = H + ph, W + pw
        top = int(torch.randint(H - c + 1, ()))
        left = int(torch.randint(W - c + 1, ()))
        flip = self.flip and float(torch.rand(())) < 0.5
        image, labels, valid = (x[..., top : top + c, left : left + c] for x in (image, labels, valid))
        if flip:
            image, labels, valid = image.flip(-1), labels.flip(-1), valid.flip(-1)
        geometry = geometry_key(s, top, left, flip, c, c)
        return {**item, "image": image.contiguous(), "labels": labels.contiguous(), "valid": valid.contiguous(),
                "geometry": geometry}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(crop_size={self.crop_size}, scale_range={self.scale_range}, flip={self.flip})"


class PseudoLabelDataset(Dataset[dict[str, Any]]):
    """A data set whose ``labels`` are replaced by pseudo-label PNGs ``<folder>/<id>.png``.

    Raises:
        FileNotFoundError: the folder is missing or an image has no pseudo label (listed).
        ValueError: at access, a pseudo label with values outside the classes and 255, or of the wrong size.
    """

    def __init__(self, base: VOCSegmentation | ImageLabelFolder, folder: str | Path,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self.base, self.folder, self.transform = base, Path(folder), transform
        if not self.folder.is_dir():
            raise FileNotFoundError(f"pseudo-label folder not found: {self.folder}")
        self.paths = [self.folder / f"{i}.png" for i in base.ids]
        missing = [p.name for p in self.paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} training image(s) have no pseudo label in {self.folder}: "
                                    + ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else ""))

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.base.classes)

    @property
    def background(self) -> int | None:
        return self.base.background

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.base[index]
        mask = read_mask_png(self.paths[index], self.base.num_classes)
        if mask.shape != tuple(item["image"].shape[-2:]):
            raise ValueError(f"pseudo label {self.paths[index]} is {mask.shape[0]}x{mask.shape[1]}, "
                             f"its image {tuple(item['image'].shape[-2:])}")
        item = {**item, "labels": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))}
        return self.transform(item) if self.transform is not None else item
