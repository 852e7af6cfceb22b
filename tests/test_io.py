"""Tests of ndd.io: robust image reading and result writers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from ndd.io import (
    ImageReadError,
    check_image,
    colour_overlay,
    hierarchy_strip,
    read_image,
    read_labels,
    read_ucm2,
    write_hierarchy_strip,
    write_labels,
    write_overlay,
    write_segs,
    write_ucm2,
)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(12, 17, 3), dtype=np.uint8)


def _check(img: np.ndarray, shape: tuple[int, int] = (12, 17)) -> None:
    assert img.shape == (*shape, 3) and img.dtype == np.float32
    assert img.min() >= 0.0 and img.max() <= 1.0


def test_read_rgb_png(tmp_path: Path) -> None:
    Image.fromarray(RGB).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    _check(img)
    assert np.allclose(img, RGB / 255.0)


def test_read_grey_png(tmp_path: Path) -> None:
    grey = RGB[..., 0]
    Image.fromarray(grey).save(tmp_path / "g.png")
    img = read_image(str(tmp_path / "g.png"))
    _check(img)
    assert np.allclose(img[..., 0], grey / 255.0) and np.array_equal(img[..., 0], img[..., 2])


def test_read_rgba_png_composites_on_white(tmp_path: Path) -> None:
    rgba = np.dstack([RGB, np.full((12, 17), 255, np.uint8)])
    rgba[0, 0] = [10, 20, 30, 0]  # fully transparent pixel
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    img = read_image(tmp_path / "t.png")
    _check(img)
    assert np.allclose(img[0, 0], 1.0) and np.allclose(img[1:, 1:], RGB[1:, 1:] / 255.0)


def test_read_16bit_png_keeps_precision(tmp_path: Path) -> None:
    a = np.linspace(0, 65535, 12 * 17).astype(np.uint16).reshape(12, 17)
    Image.fromarray(a).save(tmp_path / "d.png")
    img = read_image(tmp_path / "d.png")
    _check(img)
    assert np.allclose(img[..., 1], a / 65535.0, atol=1e-6)


def test_read_jpeg_and_palette(tmp_path: Path) -> None:
    Image.fromarray(RGB).save(tmp_path / "a.jpg", quality=95)
    _check(read_image(tmp_path / "a.jpg"))
    Image.fromarray(RGB).convert("P").save(tmp_path / "p.png")
    _check(read_image(tmp_path / "p.png"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nope.png: no such file"):
        read_image(tmp_path / "nope.png")


def test_not_an_image(tmp_path: Path) -> None:
    p = tmp_path / "fake.jpg"
    p.write_bytes(b"this is not an image at all\n" * 10)
    with pytest.raises(ImageReadError, match="fake.jpg: not an image"):
        read_image(p)


def test_truncated_jpeg(tmp_path: Path) -> None:
    big = RNG.integers(0, 256, size=(200, 300, 3), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.jpg: unreadable or truncated"):
        read_image(tmp_path / "cut.jpg")


def test_one_pixel_image(tmp_path: Path) -> None:
    Image.fromarray(RGB[:1, :1]).save(tmp_path / "one.png")
    with pytest.raises(ValueError, match="one.png: image is 1x1"):
        read_image(tmp_path / "one.png")


def test_check_image_reads_the_header_only(tmp_path: Path) -> None:
    """The same one-line messages as read_image, from the header: truncated pixels pass."""
    Image.fromarray(RGB).save(tmp_path / "ok.png")
    assert check_image(tmp_path / "ok.png") == (12, 17)
    (tmp_path / "fake.jpg").write_bytes(b"this is not an image at all\n" * 10)
    Image.fromarray(RGB[:1, :1]).save(tmp_path / "one.png")
    for name, message in (("nope.png", "no such file"), ("fake.jpg", "not an image"), ("one.png", "image is 1x1"),
                          (".", "is a directory")):
        with pytest.raises(ImageReadError, match=message):
            check_image(tmp_path / name)
    big = RNG.integers(0, 256, size=(200, 300, 3), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert check_image(tmp_path / "cut.jpg") == (200, 300)  # found by read_image only


def test_label_png_round_trip(tmp_path: Path) -> None:
    small = RNG.integers(0, 200, size=(9, 11))
    write_labels(tmp_path / "s.png", small)
    with Image.open(tmp_path / "s.png") as im:
        assert im.mode == "L"
    assert np.array_equal(read_labels(tmp_path / "s.png"), small)
    large = RNG.integers(0, 3000, size=(9, 11))
    write_labels(tmp_path / "sub" / "l.png", large)
    back = read_labels(tmp_path / "sub" / "l.png")
    assert back.dtype == np.int64 and np.array_equal(back, large)
    with pytest.raises(ValueError):
        write_labels(tmp_path / "bad.png", -small - 1)


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


def test_ucm2_mat_round_trip(tmp_path: Path) -> None:
    u = np.zeros((2 * 12 + 1, 2 * 17 + 1))
    u[1::2, 2:-1:2] = RNG.uniform(0, 1, (12, 16))
    write_ucm2(tmp_path / "x.mat", u)
    m = scipy.io.loadmat(tmp_path / "x.mat")
    assert m["ucm2"].dtype == np.float64 and np.array_equal(m["ucm2"], u)
    assert np.array_equal(read_ucm2(tmp_path / "x.mat"), u)
    with pytest.raises(ValueError):
        write_ucm2(tmp_path / "bad.mat", np.zeros((4, 5)))
    with pytest.raises(ValueError):
        write_ucm2(tmp_path / "bad.mat", u + 2.0)


def test_segs_mat(tmp_path: Path) -> None:
    levels = [RNG.integers(0, 5, size=(6, 7)), np.zeros((6, 7), dtype=np.int64)]
    write_segs(tmp_path / "s.mat", levels)
    segs = scipy.io.loadmat(tmp_path / "s.mat")["segs"]
    assert segs.shape == (1, 2) and segs[0, 0].dtype == np.uint16
    assert np.array_equal(segs[0, 0], levels[0] + 1) and segs[0, 1].min() == 1


@pytest.mark.parametrize("shape", [(3, 3), (5, 11), (41, 7)])
@pytest.mark.parametrize("name", ["ucm2", "u", "a_longer_name"])
def test_streamed_mat_writer_is_read_back_by_scipy_exactly(tmp_path, shape, name):
    """The hand-written compressed MAT v5 writer: scipy.io.loadmat gives back the same doubles."""
    import scipy.io

    from ndd.io import _write_mat_double

    values = np.random.default_rng(len(name)).uniform(0, 1, shape)
    _write_mat_double(tmp_path / "m.mat", name, values, chunk_columns=2)  # several bands
    back = scipy.io.loadmat(tmp_path / "m.mat")[name]
    assert back.dtype == np.float64 and back.shape == shape
    np.testing.assert_array_equal(back, values)
    assert scipy.io.whosmat(tmp_path / "m.mat") == [(name, shape, "double")]


def test_inner_boundaries_equal_skimage_find_boundaries():
    from skimage.segmentation import find_boundaries

    from ndd.io import inner_boundaries

    rng = np.random.default_rng(0)
    for shape in [(1, 1), (1, 6), (7, 1), (30, 41)]:
        labels = rng.integers(0, 4, size=shape)
        np.testing.assert_array_equal(inner_boundaries(labels), find_boundaries(labels, mode="inner", background=0))
