"""Tests of ndd.formats, the torch-free base layer: images, label maps, BSDS files, ucm2 <-> labels.

Public API only, small synthetic files.
"""

from __future__ import annotations

import doctest
import importlib
import math
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

import ndd.formats as formats
from ndd.formats import (
    ImageReadError,
    check_image,
    read_image,
    read_labels,
    read_ucm2,
    write_labels,
    write_segs,
    write_ucm2,
)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(12, 17, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- the layer itself
def test_formats_imports_no_torch() -> None:
    """ndd.formats is the torch-free base layer: importing and using it loads no torch."""
    code = textwrap.dedent("""
        import sys, tempfile
        import numpy as np
        import ndd.formats as f

        d = tempfile.mkdtemp()
        f.write_labels(d + "/l.png", np.array([[0, 1], [1, 1]]))
        u = f.ucm2_from_label_stack([f.read_labels(d + "/l.png"), np.zeros((2, 2), int)], [0.0, 0.5])
        f.write_ucm2(d + "/u.mat", u)
        f.label_stack_from_ucm2(f.read_ucm2(d + "/u.mat"))
        f.read_image(d + "/l.png")
        print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_docstring_examples() -> None:
    for module in ("images", "labels", "bsds", "ucm", "edges"):
        result = doctest.testmod(importlib.import_module(f"ndd.formats.{module}"), optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, module


def test_old_names_are_the_formats_objects() -> None:
    """io, data, evaluation and segment re-export the one implementation under their old names."""
    import ndd.data
    import ndd.evaluation
    import ndd.io
    import ndd.segment

    assert ndd.io.read_image is formats.read_image and ndd.io.write_ucm2 is formats.write_ucm2
    assert ndd.data.read_label_png is formats.read_labels
    assert ndd.evaluation.thresholds_linspace is formats.bsds_thresholds
    assert ndd.segment.BSDS_THRESHOLDS is formats.BSDS_THRESHOLDS
    assert ndd.segment.relabel_consecutive is formats.relabel_consecutive
    for name in ("ucm2_from_edges", "ucm2_from_labels", "ucm2_from_label_stack", "labels_from_ucm2",
                 "label_stack_from_ucm2"):
        assert getattr(ndd.segment, name) is getattr(formats, name), name


# --------------------------------------------------------------------------- images: dtype and EXIF
def _exif_png(path: Path, pixels: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation  # the EXIF Orientation tag
    Image.fromarray(pixels).save(path, exif=exif)


def test_exif_orientation_is_explicit(tmp_path: Path) -> None:
    stored = RGB[:4, :6]
    _exif_png(tmp_path / "r.png", stored, 6)  # 6: the camera was turned, show it rotated 90 degrees clockwise
    upright = formats.read_image(tmp_path / "r.png", "uint8")
    assert np.array_equal(upright, np.rot90(stored, -1))
    assert np.array_equal(formats.read_image(tmp_path / "r.png", "uint8", exif_orientation=False), stored)
    assert np.allclose(formats.read_image(tmp_path / "r.png"), np.rot90(stored, -1) / 255.0)
    assert formats.check_image(tmp_path / "r.png") == (4, 6)  # the header: as stored
    _exif_png(tmp_path / "f.png", stored, 2)  # 2: mirrored left-right
    assert np.array_equal(formats.read_image(tmp_path / "f.png", "uint8"), stored[:, ::-1])


def test_uint8_and_stored_dtypes(tmp_path: Path) -> None:
    rgba = np.dstack([RGB, np.zeros((12, 17), np.uint8)])  # fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    assert np.array_equal(formats.read_image(tmp_path / "t.png", "uint8"), RGB)  # alpha dropped
    assert np.allclose(formats.read_image(tmp_path / "t.png"), 1.0)  # float32: composited onto white
    deep = np.arange(12 * 17, dtype=np.uint16).reshape(12, 17) * 300
    Image.fromarray(deep).save(tmp_path / "d.png")
    stored = formats.read_image(tmp_path / "d.png", None)
    assert stored.dtype == np.uint16 and np.array_equal(stored, deep)
    with pytest.raises(formats.ImageReadError, match=r"d\.png: image mode .* does not fit uint8"):
        formats.read_image(tmp_path / "d.png", "uint8")
    assert formats.read_image(tmp_path / "d.png").dtype == np.float32
    with pytest.raises(ValueError, match="dtype"):
        formats.read_image(tmp_path / "d.png", "float64")  # type: ignore[arg-type]


def test_a_missing_image_is_both_a_value_and_a_file_not_found_error(tmp_path: Path) -> None:
    for kind in (FileNotFoundError, ValueError, formats.ImageReadError, formats.MissingFileError):
        with pytest.raises(kind, match=r"nope\.png: no such file"):
            formats.read_image(tmp_path / "nope.png", "uint8")


# --------------------------------------------------------------------------- label maps
def test_relabel_consecutive() -> None:
    x = np.array([[5, 5, 9], [-1, 2, 9]])
    assert formats.relabel_consecutive(x).tolist() == [[2, 2, 3], [0, 1, 3]]
    assert formats.relabel_consecutive(x, ignore_index=-1).tolist() == [[1, 1, 2], [-1, 0, 2]]
    wide = np.array([10**9, 3, 10**9, -(10**9)])  # sort path
    assert formats.relabel_consecutive(wide).tolist() == [2, 1, 2, 0]
    rng = np.random.default_rng(1)
    for labels in (rng.integers(-3, 40, size=(7, 9)), rng.integers(0, 2**40, size=(5, 5))):
        _, expected = np.unique(labels, return_inverse=True)
        got = formats.relabel_consecutive(labels)
        assert got.dtype == np.int64 and np.array_equal(got, expected.reshape(labels.shape))
    assert formats.relabel_consecutive(np.zeros((0, 3), int)).shape == (0, 3)


def test_resize_labels_nearest_pixel_centre() -> None:
    labels = np.array([[0, 1, 2], [3, 4, 5]])
    assert formats.resize_labels(labels, (2, 3)) is labels
    big = formats.resize_labels(labels, (4, 6))
    assert np.array_equal(big, np.kron(labels, np.ones((2, 2), int)))  # each pixel a block
    assert np.array_equal(formats.resize_labels(big, (2, 3)), labels)  # and back
    assert formats.resize_labels(labels, (1, 1)).tolist() == [[4]]  # the pixel at the centre


def test_nearest_indices_exact_for_every_size() -> None:
    for n_in in (1, 2, 3, 7, 41, 321, 4097):
        for n_out in (1, 2, 5, 41, 61, 481, 1000003 // 997):
            want = [math.floor((i + Fraction(1, 2)) * n_in / n_out) for i in range(n_out)]
            assert formats.nearest_indices(n_in, n_out).tolist() == want
    with pytest.raises(ValueError, match="sizes"):
        formats.nearest_indices(0, 3)


def test_read_labels_codes_colours_and_names_missing_files(tmp_path: Path) -> None:
    colours = np.zeros((2, 3, 3), np.uint8)
    colours[0, 1] = (1, 2, 3)
    Image.fromarray(colours).save(tmp_path / "c.png")
    assert formats.read_labels(tmp_path / "c.png").tolist() == [[0, 65536 + 2 * 256 + 3, 0], [0, 0, 0]]
    with pytest.raises(formats.FormatError, match=r"c\.png is an RGB image"):
        formats.read_labels(tmp_path / "c.png", colours=False)  # class-id masks: colours are a mistake
    with pytest.raises(FileNotFoundError, match=r"x\.png"):
        formats.read_labels(tmp_path / "x.png")
    (tmp_path / "bad.png").write_bytes(b"no png")
    with pytest.raises(formats.FormatError, match=r"bad\.png"):
        formats.read_labels(tmp_path / "bad.png")


# --------------------------------------------------------------------------- BSDS files
def test_thresholds_are_the_bsds_definition() -> None:
    """MATLAB's linspace(1/(n+1), 1 - 1/(n+1), n): [d1 + (0:n-2) * (d2 - d1) / (n - 1), d2]."""
    for n in (1, 2, 5, 99):
        d1, d2 = 1 / (n + 1), 1 - 1 / (n + 1)
        matlab = [d1 + k * (d2 - d1) / (n - 1) for k in range(n - 1)] + [d2]
        assert formats.bsds_thresholds(n).tolist() == matlab
    assert np.array_equal(formats.BSDS_THRESHOLDS, formats.bsds_thresholds(99))
    assert np.allclose(formats.BSDS_THRESHOLDS, np.arange(1, 100) / 100, rtol=0, atol=1e-15)
    with pytest.raises(ValueError):
        formats.bsds_thresholds(0)


def _groundtruth_mat(path: Path, segmentations: list[np.ndarray], boundaries: bool = True) -> None:
    cell = np.empty((1, len(segmentations)), dtype=object)
    for k, seg in enumerate(segmentations):
        entry = {"Segmentation": seg.astype(np.uint16)}
        if boundaries:
            entry["Boundaries"] = (seg != np.roll(seg, 1, axis=1)).astype(np.uint8)
        cell[0, k] = entry
    scipy.io.savemat(path, {"groundTruth": cell})


def test_edge_maps_are_16_bit_pngs_of_round_65535_p(tmp_path: Path) -> None:
    edges = np.array([[0.0, 1.0, 0.5], [1 / 65535, 0.49999 / 65535, 0.25]], dtype=np.float32)
    formats.write_edge_map(tmp_path / "e.png", edges)
    stored = np.asarray(Image.open(tmp_path / "e.png"))
    assert stored.dtype == np.uint16 and stored.tolist() == [[0, 65535, 32768], [1, 0, 16384]]
    assert np.abs(formats.read_edge_map(tmp_path / "e.png") - edges).max() <= 0.5 / 65535 + 1e-7
    Image.fromarray(np.array([[0, 51, 255]], np.uint8)).save(tmp_path / "e8.png")  # 8-bit: value / 255
    assert formats.read_edge_map(tmp_path / "e8.png").tolist() == [[0.0, 0.2, 1.0]]
    with pytest.raises(formats.FormatError, match=r"x.npy: soft boundary map must be 2-D"):
        formats.edge_map_from_array(np.zeros((2, 2, 2)), "x.npy")
    for bad, message in ((np.full((2, 2), np.nan), "NaN"), (np.full((2, 2), 1.5), r"in \[0, 1\]"),
                         (np.zeros((2, 2, 1)), r"\(H, W\)"), (np.zeros((2, 2), np.uint8), "float")):
        with pytest.raises(ValueError, match=message):
            formats.write_edge_map(tmp_path / "bad.png", bad)
    assert not (tmp_path / "bad.png").exists()


def test_read_groundtruth(tmp_path: Path) -> None:
    a = np.ones((4, 5), int)
    a[:, 3:] = 2
    b = np.arange(1, 21).reshape(4, 5)
    _groundtruth_mat(tmp_path / "g.mat", [a, b])
    humans = formats.read_groundtruth(tmp_path / "g.mat")
    assert [h.segmentation.tolist() for h in humans] == [a.tolist(), b.tolist()]
    assert humans[0].segmentation.dtype == np.int64 and humans[0].boundaries.dtype == bool
    _groundtruth_mat(tmp_path / "one.mat", [a], boundaries=False)  # a 1x1 cell, no Boundaries
    (only,) = formats.read_groundtruth(tmp_path / "one.mat")
    assert only.boundaries is None and np.array_equal(only.segmentation, a)


def test_groundtruth_errors_are_one_line_and_name_the_file(tmp_path: Path) -> None:
    _groundtruth_mat(tmp_path / "shapes.mat", [np.ones((4, 5)), np.ones((5, 4))])
    scipy.io.savemat(tmp_path / "other.mat", {"something": np.zeros(3)})
    (tmp_path / "junk.mat").write_bytes(b"not a MATLAB file\n" * 20)
    for name, message in (("shapes.mat", "different shapes"), ("other.mat", "no 'groundTruth' variable"),
                          ("junk.mat", "cannot read .mat file"), ("none.mat", "file not found")):
        with pytest.raises(formats.FormatError, match=message) as info:
            formats.read_groundtruth(tmp_path / name)
        assert str(info.value).startswith(str(tmp_path / name)) and "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError):
        formats.read_groundtruth(tmp_path / "none.mat")


def test_ucm2_and_segs_files_round_trip(tmp_path: Path) -> None:
    u = formats.ucm2_from_label_stack([np.array([[0, 1, 1], [2, 2, 1]]), np.zeros((2, 3), int)], [0.0, 0.5])
    formats.write_ucm2(tmp_path / "u.mat", u)
    assert np.array_equal(formats.read_ucm2(tmp_path / "u.mat"), u)
    levels = [np.array([[0, 1, 1], [2, 2, 1]]), np.zeros((2, 3), int)]
    formats.write_segs(tmp_path / "s.mat", levels)
    back = formats.read_segs(tmp_path / "s.mat")
    assert [s.tolist() for s in back] == [(lv + 1).tolist() for lv in levels]  # stored from 1
    with pytest.raises(formats.FormatError, match="no 'ucm2' variable"):
        formats.read_ucm2(tmp_path / "s.mat")


# --------------------------------------------------------------------------- ucm2 <-> label stacks
def test_ucm2_to_labels_by_the_bsds_procedure() -> None:
    """Thresholding a ucm2 gives back each level of the nested stack it was built from."""
    fine = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 4, 4, 3]])
    middle = np.array([0, 0, 1, 1, 1])[fine]
    coarse = np.zeros_like(fine)
    u = formats.ucm2_from_label_stack([fine, middle, coarse], [0.0, 0.305, 0.705])  # between thresholds
    assert u.shape == (9, 9) and u.min() == 0.0 and u.max() == 0.705
    assert np.all(u[1::2, 1::2] == 0)  # pixels
    for t, expected in ((0.1, fine), (0.5, middle), (0.9, coarse)):
        got = formats.labels_from_ucm2(u, t)
        assert np.array_equal(got, formats.relabel_consecutive(expected))
    stack = formats.label_stack_from_ucm2(u)  # the 99 BSDS thresholds
    counts = [int(s.max()) + 1 for s in stack]
    assert len(stack) == 99 and counts == [5] * 30 + [2] * 40 + [1] * 29


def test_ucm2_from_labels_equals_ucm2_from_edges() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, size=(7, 5))
    V = rng.uniform(0, 1, (4, 4))
    V = (V + V.T) / 2
    np.fill_diagonal(V, 0)
    expected = formats.ucm2_from_edges(V[labels[:, :-1], labels[:, 1:]], V[labels[:-1], labels[1:]])
    assert np.array_equal(formats.ucm2_from_labels(labels, V, chunk_rows=2), expected)


# --------------------------------------------------------------------------- moved from test_io.py (float32 reading, PNG / .mat writers)
def _check(img: np.ndarray, shape: tuple[int, int] = (12, 17)) -> None:
    assert img.shape == (*shape, 3) and img.dtype == np.float32
    assert img.min() >= 0.0 and img.max() <= 1.0


def test_read_rgb_png(tmp_path: Path) -> None:
    Image.fromarray(RGB).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    _check(img)
    assert np.allclose(img, RGB / 255.0)
    # exactly the float32 quotient, every byte value (the network's input, and so every output,
    # depends on these bits; multiplying by 1/255 would move some by one unit)
    every = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    Image.fromarray(every).save(tmp_path / "all.png")
    assert np.array_equal(read_image(tmp_path / "all.png"), every.astype(np.float32) / np.float32(255))


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


@pytest.mark.parametrize("shape", [(3, 3), (5, 11), (41, 7), (3, 601)])
def test_streamed_ucm2_writer_is_read_back_by_scipy_exactly(tmp_path: Path, shape: tuple[int, int]) -> None:
    """The hand-written compressed MAT v5 writer (columns in bands of 256): loadmat gives back the same doubles."""
    values = np.random.default_rng(shape[1]).uniform(0, 1, shape)
    write_ucm2(tmp_path / "m.mat", values)
    back = scipy.io.loadmat(tmp_path / "m.mat")["ucm2"]
    assert back.dtype == np.float64 and back.shape == shape
    np.testing.assert_array_equal(back, values)
    assert scipy.io.whosmat(tmp_path / "m.mat") == [("ucm2", shape, "double")]

