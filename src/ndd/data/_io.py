"""The readers of the data sets: :mod:`ndd.formats` with the data sets' settings.

Images are read as the stored 8-bit RGB pixels without EXIF rotation, so that they stay aligned
with label maps saved from the raw data. Every failure raises :class:`FileNotFoundError` (missing
file) or :class:`ValueError` (unreadable / malformed file) whose message names the file, so that
a bad file in a 500-image split is found at once.
"""

from __future__ import annotations

from os import PathLike

import numpy as np

from ndd.formats import read_groundtruth
from ndd.formats import read_image as _read_image
from ndd.formats import read_labels as read_label_png

__all__ = ["read_image", "read_label_png", "read_bsds_segmentations"]

StrPath = str | PathLike[str]


def read_image(path: StrPath) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB, as stored.

    :func:`ndd.formats.read_image` with ``dtype="uint8", exif_orientation=False, min_size=1``:
    grey and palette images are converted to RGB, alpha is dropped, 16-bit images raise; EXIF
    orientation is *not* applied, so the pixels stay aligned with label maps saved from the raw data.
    """
    return _read_image(path, "uint8", exif_orientation=False, min_size=1)


def read_bsds_segmentations(path: StrPath) -> list[np.ndarray]:
    """The K human segmentations ``(H, W)`` int64 of one BSDS ground-truth ``.mat`` file, raw
    labels (from 1, not relabelled): the ``segmentation`` of :func:`ndd.formats.read_groundtruth`."""
    return [human.segmentation for human in read_groundtruth(path)]
