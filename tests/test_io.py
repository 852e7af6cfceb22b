"""Tests of ndd.io: the result writers (overlays, strips, segmentation outputs).

The file formats io re-exports (images, label PNGs, ucm2 / segs files) are tested in
test_formats.py, with their owner :mod:`ndd.formats`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
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


def _segmentation_inputs() -> tuple[np.ndarray, dict[int, np.ndarray], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    image = rng.random((90, 130, 3))
    fine = (np.arange(90)[:, None] // 15) * 9 + np.arange(130)[None, :] // 15
    levels = {2: (fine >= 30).astype(np.int64), 7: fine % 7, 54: fine}
    return image, levels, rng.random((181, 261)), rng.random((90, 130)).astype(np.float32)


def test_write_segmentation_writes_the_same_files_on_background_threads(tmp_path: Path) -> None:
    """Files compressed on 3 threads are those written one after the other, to the byte, in
    the same order, and no temporary file is left."""
    image, levels, ucm2, edges = _segmentation_inputs()
    outputs = {}
    for threads in (1, 3):
        out = tmp_path / f"t{threads}"
        written = io.write_segmentation(out, "x", image, levels, lambda: ucm2, io.SEGMENTATION_FORMATS,
                                        edges=lambda: edges, threads=threads)
        assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)  # nothing else, no .partial-
        outputs[threads] = [(p.name, p.read_bytes()) for p in written]
    assert len(outputs[1]) == 3 * 3 + 3 and outputs[1] == outputs[3]
    with pytest.raises(ValueError, match="threads must be at least 1"):
        io.write_segmentation(tmp_path / "none", "x", image, levels, ucm2, ["labels"], threads=0)
    assert not (tmp_path / "none").exists()  # checked before anything is made


def test_file_writers_hold_at_most_twice_their_threads_pending(tmp_path: Path) -> None:
    """A write waits while 2 x threads are pending (that many pictures in memory at most)."""
    import threading

    release = threading.Event()

    def slow(path: Path, text: str) -> None:
        release.wait(30)
        path.write_text(text)

    with io._FileWriters(2) as files:
        for i in range(4):
            files.write(tmp_path / f"{i}.txt", slow, str(i))  # four pending: none waits
        fifth = threading.Thread(target=files.write, args=(tmp_path / "4.txt", slow, "4"))
        fifth.start()
        fifth.join(0.5)
        assert fifth.is_alive()  # waits for the oldest
        release.set()
        fifth.join(30)
        assert not fifth.is_alive()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{i}.txt" for i in range(5)]


def test_file_writers_raise_a_background_error_and_leave_no_partial_file(tmp_path: Path) -> None:
    def failing(path: Path) -> None:
        path.write_text("half")
        raise OSError(28, "No space left on device")

    for threads in (1, 2):
        out = tmp_path / str(threads)
        out.mkdir()
        with pytest.raises(OSError, match="No space left"):
            with io._FileWriters(threads) as files:
                files.write(out / "a.txt", lambda p: p.write_text("a"))
                files.write(out / "b.txt", failing)
        assert [p.name for p in out.iterdir()] == ["a.txt"]  # the whole file, not the half one
