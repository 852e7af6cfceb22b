"""Datasets, joint transforms and label helpers for training and evaluating spec-diff-net.

Every dataset yields a dict ``{"image": (3, H, W) float32 in [0, 1],
"labels": (H, W) int64 (0..n-1, -1 = ignore), "id": str}``:

- :class:`BSDS500`: the Berkeley segmentation data set (original layout), one
  human annotation drawn at random per access by default;
- :class:`SegmentationFolder`: the user's images + PNG label maps;
- :class:`DeadLeaves`: synthetic occluding textured shapes with exact labels.

:mod:`ndd.data.transforms` holds the joint augmentations, :func:`collate`
batches samples and :mod:`ndd.data.labels` builds ground truth on the feature
grid (:func:`downsample_labels`, :func:`label_kernel`).
"""

from ._io import read_bsds_segmentations, read_image, read_label_png
from ._sample import Sample
from .bsds import BSDS500, resolve_bsds_root
from .collate import collate
from .folder import IMAGE_EXTENSIONS, SegmentationFolder
from .labels import IGNORE_INDEX, downsample_labels, label_kernel, relabel_consecutive, resize_labels_nearest
from .synthetic import DeadLeaves
from .transforms import Compose, RandomCrop, RandomHorizontalFlip, RandomScale, Resize, resize_sample, train_transform

__all__ = [
    "BSDS500",
    "SegmentationFolder",
    "DeadLeaves",
    "Sample",
    "collate",
    "Compose",
    "RandomScale",
    "RandomCrop",
    "RandomHorizontalFlip",
    "Resize",
    "resize_sample",
    "train_transform",
    "IGNORE_INDEX",
    "relabel_consecutive",
    "downsample_labels",
    "resize_labels_nearest",
    "label_kernel",
    "read_image",
    "read_label_png",
    "read_bsds_segmentations",
    "resolve_bsds_root",
    "IMAGE_EXTENSIONS",
]

# Semantic segmentation with image-level labels (ndd.wsss): PASCAL VOC 2012 (+ SBD), the generic
# layout, and the synthetic multi-class data set.
from .multiclass import SHAPE_CLASSES, MultiClassShapes, write_multiclass_dataset  # noqa: E402
from .voc import (  # noqa: E402
    VOC_CLASSES,
    ImageLabelFolder,
    VOCSegmentation,
    read_mask_png,
    voc_palette,
    write_mask_png,
)

__all__ += [
    "VOCSegmentation",
    "ImageLabelFolder",
    "VOC_CLASSES",
    "voc_palette",
    "read_mask_png",
    "write_mask_png",
    "MultiClassShapes",
    "SHAPE_CLASSES",
    "write_multiclass_dataset",
]
