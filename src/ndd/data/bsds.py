"""The Berkeley Segmentation Data Set (BSDS500) in its original release layout."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from ndd.formats import check_image

from ._io import StrPath, read_bsds_segmentations, read_image
from ._sample import Sample, make_sample
from .labels import relabel_consecutive

__all__ = ["BSDS500", "resolve_bsds_root"]

Split = Literal["train", "val", "test", "trainval"]
Annotation = Literal["random", "all"] | int
_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "val": ("val",),
    "test": ("test",),
    "trainval": ("train", "val"),
}


def resolve_bsds_root(root: StrPath) -> Path:
    """Find the ``BSDS500/data`` folder (holding ``images/`` and ``groundTruth/``).

    ``root`` may be the folder containing ``BSDS500/``, ``BSDS500/`` itself, or
    ``BSDS500/data``.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"BSDS500 root folder not found: {root}")
    for candidate in (root / "BSDS500" / "data", root / "data", root):
        if (candidate / "images").is_dir() and (candidate / "groundTruth").is_dir():
            return candidate
    raise FileNotFoundError(
        f"no BSDS500 layout under {root}: expected 'images/' and 'groundTruth/' in "
        f"{root / 'BSDS500' / 'data'}, {root / 'data'} or {root}"
    )


class BSDS500(Dataset[Sample]):
    """BSDS500 images with their human segmentations.

    Reads ``<data>/images/<split>/<id>.jpg`` and ``<data>/groundTruth/<split>/<id>.mat``
    (see :func:`resolve_bsds_root` for what ``root`` may point at).

    Args:
        root: dataset folder.
        split: ``"train"`` (200), ``"val"`` (100), ``"test"`` (200) or
            ``"trainval"`` (300, the paper's training set).
        annotation: which of the K = 4..9 human segmentations to return.
            ``"random"`` (default): one drawn uniformly at every access, so each
            training step sees a different annotator, as in the authors' code
            (no union or consensus). The draw uses ``generator`` or, when it is
            ``None``, the global torch RNG, which ``DataLoader`` seeds per worker,
            so a seeded loader is reproducible. ``"all"``: all K, as ``(K, H, W)``
            (evaluation against every annotator). ``k`` (int): always the k-th
            (0-based; negative counts from the end).
        transform: callable applied to the sample dict (see :mod:`ndd.data.transforms`).
        generator: RNG for ``annotation="random"``. Leave ``None`` with a
            multi-worker ``DataLoader``: each worker would otherwise copy the same
            generator state and draw the same annotators.

    Each item is a dict: ``"image"`` ``(3, H, W)`` float32 RGB in ``[0, 1]``;
    ``"labels"`` ``(H, W)`` (or ``(K, H, W)``) int64 with segments relabelled
    ``0..n-1`` per annotation; ``"id"`` the image id (e.g. ``"100075"``).
    BSDS images are 481x321 or 321x481.

    Raises:
        FileNotFoundError: at construction, if the folders are missing, a split
            has no images, or an image has no ground-truth file (the split is
            never silently shortened).
        ValueError: at access, if an image or ``.mat`` file is corrupt, lacks
            ``groundTruth``/``Segmentation``, or its size differs from the image.
    """

    def __init__(
        self,
        root: StrPath,
        split: Split = "train",
        annotation: Annotation = "random",
        transform: Callable[[Sample], Sample] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if split not in _SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(_SPLITS)}")
        if not (annotation in ("random", "all") or (isinstance(annotation, int) and not isinstance(annotation, bool))):
            raise ValueError(f"annotation must be 'random', 'all' or an int, got {annotation!r}")
        self.root = resolve_bsds_root(root)
        self.split = split
        self.annotation = annotation
        self.transform = transform
        self.generator = generator
        self.ids: list[str] = []
        self.image_paths: list[Path] = []
        self.gt_paths: list[Path] = []
        for sub in _SPLITS[split]:
            self._index_split(sub)

    def _index_split(self, sub: str) -> None:
        image_dir = self.root / "images" / sub
        gt_dir = self.root / "groundTruth" / sub
        for folder in (image_dir, gt_dir):
            if not folder.is_dir():
                raise FileNotFoundError(f"BSDS500 split folder not found: {folder}")
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() == ".jpg" and p.is_file())
        if not images:
            raise FileNotFoundError(f"no .jpg images in BSDS500 split folder {image_dir}")
        missing = [p for p in images if not (gt_dir / f"{p.stem}.mat").is_file()]
        if missing:
            shown = ", ".join(str(p) for p in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise FileNotFoundError(f"{len(missing)} image(s) in {image_dir} have no ground truth in {gt_dir}: {shown}")
        for p in images:
            self.ids.append(p.stem)
            self.image_paths.append(p)
            self.gt_paths.append(gt_dir / f"{p.stem}.mat")

    def __len__(self) -> int:
        return len(self.ids)

    def read_annotations(self, index: int) -> np.ndarray:
        """All human segmentations of image ``index`` as ``(K, H, W)`` int64, each
        relabelled ``0..n_k-1``; checked against the image size."""
        segs = read_bsds_segmentations(self.gt_paths[index])
        image_size = _image_size(self.image_paths[index])
        if segs[0].shape != image_size:
            raise ValueError(
                f"{self.gt_paths[index]}: label map shape {segs[0].shape} differs from "
                f"image {self.image_paths[index]} shape {image_size}"
            )
        return np.stack([relabel_consecutive(s, ignore_index=None) for s in segs])

    def _choose(self, annotations: np.ndarray, index: int) -> np.ndarray:
        k = annotations.shape[0]
        if self.annotation == "all":
            return annotations
        if self.annotation == "random":
            return annotations[int(torch.randint(k, (1,), generator=self.generator))]
        a = int(self.annotation)
        if not -k <= a < k:
            raise ValueError(f"annotation {a} out of range: {self.gt_paths[index]} has {k} annotations")
        return annotations[a]

    def __getitem__(self, index: int) -> Sample:
        index = range(len(self))[index]  # negative indices; IndexError when out of range
        image = read_image(self.image_paths[index])
        annotations = self.read_annotations(index)  # checks the shape against the image
        sample = make_sample(image, self._choose(annotations, index), self.ids[index])
        return self.transform(sample) if self.transform is not None else sample

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
            f"annotation={self.annotation!r}, n={len(self)})"
        )


def _image_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` of an image from its header (no decoding)."""
    return check_image(path, min_size=1)
