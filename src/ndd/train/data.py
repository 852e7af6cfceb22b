"""Training data: dataset choice, per-sample seeding and a resumable sampler.

Exact resume needs the data stream to be a function of the step alone. Two
pieces give that, whatever the number of DataLoader workers:

- :class:`ResumableDistributedSampler` orders an epoch from ``(seed, epoch)``
  (it *is* a :class:`~torch.utils.data.DistributedSampler`, one shard per rank)
  and can start part-way through an epoch;
- :class:`SeededDataset` re-seeds torch/NumPy/Python RNGs from
  ``(seed, epoch, index)`` around each ``__getitem__``, so augmentation and the
  BSDS annotator draw do not depend on which worker read the sample or on what
  it read before.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ndd.data import BSDS500, Compose, DeadLeaves, RandomHorizontalFlip, SegmentationFolder, collate, train_transform

from .config import TrainConfig
from .distributed import DistInfo

__all__ = [
    "SeededDataset",
    "ResumableDistributedSampler",
    "sample_seed",
    "build_train_dataset",
    "StageData",
]


def sample_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integer keys (e.g. ``seed, stage, epoch, index``)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> 1)


class SeededDataset(Dataset[Any]):
    """Wraps a dataset so item ``(index, seed)`` is drawn with all RNGs seeded by ``seed``.

    The caller's RNG states are restored afterwards, so a single-process loader
    (``num_workers=0``) leaves the training process's RNGs untouched.
    """

    def __init__(self, dataset: Dataset[Any]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                np.random.seed(seed % 2**32)
                random.seed(seed)
                return self.dataset[index]
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` yielding ``(index, sample_seed)`` and able to skip ahead.

    Call :meth:`set_epoch` before each epoch (as for ``DistributedSampler``) and
    :meth:`set_start` to skip the first samples of this rank's shard when resuming.
    ``drop_last`` is always on, so every rank has the same number of samples.
    """

    def __init__(self, dataset: Dataset[Any], *, num_replicas: int, rank: int, seed: int, stream: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.stream = stream  # separates the stages' augmentation streams
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = int(start)

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())[self.start :]
        return iter([(i, sample_seed(self.seed, self.stream, self.epoch, i)) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start


def build_train_dataset(config: TrainConfig, stage: int) -> Dataset[Any]:
    """The training set with the stage's augmentation (crops, or whole images in stage 2 if asked)."""
    if stage == 2 and config.stage2_full_image:
        transform: Any = Compose([RandomHorizontalFlip()]) if config.flip else None
    else:
        crop = config.stage2_crop_size if stage == 2 and config.stage2_crop_size else config.crop_size
        transform = train_transform(
            crop, scale_range=tuple(config.scale_range), scale_choices=config.scale_choices, flip=config.flip
        )
    if config.dataset == "bsds":
        return BSDS500(config.data_root, config.split, annotation="random", transform=transform)  # type: ignore[arg-type]
    if config.dataset == "folder":
        root = Path(config.data_root) if config.data_root else None
        images = config.images_dir or (root / "images")  # type: ignore[operator]
        labels = config.labels_dir or (root / "labels")  # type: ignore[operator]
        return SegmentationFolder(
            images, labels, ignore_value=config.ignore_value, label_suffix=config.label_suffix, transform=transform
        )
    if config.dataset == "synthetic":
        return DeadLeaves(config.synthetic_images, tuple(config.synthetic_size), seed=config.seed, transform=transform)
    raise ValueError(f"unknown dataset {config.dataset!r}")


class StageData:
    """The loader of one training stage, positioned at any step of it."""

    def __init__(self, config: TrainConfig, stage: int, info: DistInfo) -> None:
        dataset = SeededDataset(build_train_dataset(config, stage))
        self.batch_size = (config.stage2_batch_size or config.batch_size) if stage == 2 else config.batch_size
        self.sampler = ResumableDistributedSampler(
            dataset, num_replicas=info.world_size, rank=info.rank, seed=config.seed, stream=stage
        )
        self.steps_per_epoch = self.sampler.num_samples // self.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"stage {stage}: {len(dataset)} training images give {self.sampler.num_samples} per process, "  # type: ignore[arg-type]
                f"fewer than one batch of {self.batch_size}"
            )
        self.loader = DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=self.sampler,
            drop_last=True,
            num_workers=config.num_workers,
            collate_fn=collate,
            pin_memory=info.device.type == "cuda",
            persistent_workers=config.num_workers > 0,
        )

    def batches(self, first_step: int) -> Iterator[dict[str, Any]]:
        """Batches of stage steps ``first_step, first_step + 1, ...`` (endless)."""
        epoch, offset = divmod(first_step, self.steps_per_epoch)
        while True:
            self.sampler.set_epoch(epoch)
            self.sampler.set_start(offset * self.batch_size)
            yield from self.loader
            epoch, offset = epoch + 1, 0
