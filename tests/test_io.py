"""Tests of ndd.io: the result writers (overlays, strips, segmentation outputs).

The file formats io re-exports (images, label PNGs, ucm2 / segs files) are tested in
test_formats.py, with their owner :mod:`ndd.formats`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

import ndd.formats
from ndd import io
from ndd.io import (
    colour_overlay,
    hierarchy_strip,
    write_hierarchy_strip,
    write_overlay,
)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(12, 17, 3), dtype=np.uint8)


def test_format_names_stay_importable_from_io() -> None:
    """The readers and writers moved to ndd.formats are the same objects under their old names."""
    for name in ("ImageReadError", "check_image", "read_image", "read_labels", "write_labels", "read_ucm2",
                 "write_ucm2", "write_segs"):
        assert getattr(io, name) is getattr(ndd.formats, name), name


def test_overlay_and_strip(tmp_path: Path) -> None:
    img = RGB / 255.0
    labels = np.zeros((12, 17), dtype=np.int64)
    labels[:, 9:] = 1
    ov = colour_overlay(img, labels)
    assert ov.shape == (12, 17, 3) and ov.dtype == np.uint8
    # mean colour inside a segment, away from the boundary
    assert np.allclose(ov[5, 2], img[:, :9].reshape(-1, 3).mean(0) * 255, atol=1.0)
    lowres = labels[::3, ::3]  # smaller label maps are resized to the image
    assert colour_overlay(img, lowres).shape == (12, 17, 3)
    write_overlay(tmp_path / "o.png", img, labels)
    assert np.asarray(Image.open(tmp_path / "o.png")).shape == (12, 17, 3)

    strip = hierarchy_strip(img, [labels, np.zeros_like(labels)], gap=3)
    assert strip.shape == (12, 3 * 17 + 2 * 3, 3) and strip.dtype == np.uint8
    write_hierarchy_strip(tmp_path / "strip.png", RGB, [labels], include_image=False)
    assert np.asarray(Image.open(tmp_path / "strip.png")).shape == (12, 17, 3)
    tall = hierarchy_strip(np.zeros((400, 100, 3)), [np.zeros((400, 100), int)], max_height=200)
    assert tall.shape == (200, 2 * 50 + 4, 3)


def test_inner_boundaries_equal_skimage_find_boundaries():
    from skimage.segmentation import find_boundaries

    from ndd.io import inner_boundaries

    rng = np.random.default_rng(0)
    for shape in [(1, 1), (1, 6), (7, 1), (30, 41)]:
        labels = rng.integers(0, 4, size=shape)
        np.testing.assert_array_equal(inner_boundaries(labels), find_boundaries(labels, mode="inner", background=0))
