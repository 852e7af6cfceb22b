"""Writing segmentation results (label PNGs, overlays, strips, ucm2 .mat) and pictures.

The file formats themselves (:func:`read_image`, label PNGs, ``ucm2`` / ``segs`` files) belong
to :mod:`ndd.formats`; their names are importable from here too. Only numpy and PIL are imported
with the module, so results can be written without torch; scipy.io (``.mat`` files) and
``skimage.color`` (a rare fallback of :func:`colour_overlay`) are imported by the functions that
need them. Label maps are written as they are (0-based ids) in 8-bit PNGs, or 16-bit when an id
exceeds 255; BSDS ``segs`` files (1-based) have their own writer.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import numpy as np
from PIL import Image

from ndd.device import usable_cores
# the file formats live in ndd.formats; their names stay importable from here
from ndd.formats.bsds import read_ucm2, write_segs, write_ucm2
from ndd.formats.edges import write_edge_map
from ndd.formats.images import ImageReadError, check_image, check_points, read_image
from ndd.formats.labels import read_labels, resize_labels, write_labels

__all__ = [
    "ImageReadError",
    "check_image",
    "check_points",
    "read_image",
    "write_labels",
    "write_edge_map",
    "read_labels",
    "colour_overlay",
    "write_overlay",
    "hierarchy_strip",
    "write_hierarchy_strip",
    "write_ucm2",
    "read_ucm2",
    "write_segs",
    "SEGMENTATION_FORMATS",
    "DEFAULT_SEGMENTATION_FORMATS",
    "MAX_WRITE_THREADS",
    "write_segmentation",
    "to_uint8_image",
    "inner_boundaries",
]

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------- pictures
def colour_overlay(
    image: np.ndarray,
    labels: np.ndarray,
    mean_colours: bool = True,
    boundary_colour: tuple[float, float, float] = (1.0, 1.0, 0.0),
) -> np.ndarray:
    """Picture of a segmentation: each segment in its mean colour (or the image itself) with
    segment boundaries drawn on top.

    Args:
        image: (H, W, 3) float in [0, 1] (or uint8).
        labels: (h, w) integer labels; resized by nearest neighbour to (H, W) if needed.
        mean_colours: paint segments with their mean colour rather than the image.
        boundary_colour: RGB in [0, 1] of the boundary lines.

    Returns:
        (H, W, 3) uint8.
    """
    img = to_uint8_image(image)
    return _paint(img, *_labels_and_boundaries(labels, img.shape[:2]), mean_colours, boundary_colour)


def _overlay_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``labels`` at ``size`` (nearest neighbour), as int32 when the ids fit."""
    # uint8 and int32 throughout (not float64 as skimage's label2rgb / mark_boundaries):
    # a 24-megapixel photo then needs a few hundred MB here, not several GB
    lab = resize_labels(np.asarray(labels), size)
    return lab.astype(np.int32, copy=False) if lab.size and 0 <= lab.min() and lab.max() < 2**31 else lab


def _labels_and_boundaries(labels: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_overlay_labels` and their :func:`inner_boundaries`."""
    lab = _overlay_labels(labels, size)
    return lab, inner_boundaries(lab)


def _paint(img: np.ndarray, lab: np.ndarray, boundaries: np.ndarray, mean_colours: bool = True,
           boundary_colour: tuple[float, float, float] = (1.0, 1.0, 0.0)) -> np.ndarray:
    """:func:`colour_overlay` of a uint8 image and labels of its size, with their boundary mask."""
    if mean_colours:
        flat = lab.ravel()
        if flat.size and flat.min() >= 0:
            counts = np.maximum(np.bincount(flat), 1)
            lut = np.stack([np.bincount(flat, weights=img[..., c].ravel(), minlength=len(counts)) / counts
                            for c in range(3)], axis=1)
            out = (lut + 0.5).astype(np.uint8)[lab]
        else:  # negative ids: fall back to skimage's general version
            from skimage.color import label2rgb

            out = (label2rgb(lab, img / 255.0, kind="avg", bg_label=-1) * 255.0 + 0.5).astype(np.uint8)
    else:
        out = img.copy()
    out[boundaries] = np.round(np.asarray(boundary_colour) * 255.0)
    return out


def inner_boundaries(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels of a non-zero segment with a 4-neighbour in another segment.

    The same mask as ``skimage.segmentation.find_boundaries(labels, mode="inner",
    background=0)`` (what ``mark_boundaries`` draws), from four neighbour comparisons instead
    of a grey dilation and erosion: about 7x faster on a 24-megapixel map, with bool
    temporaries only.
    """
    lab = np.asarray(labels)
    mask = np.zeros(lab.shape, dtype=bool)
    right = lab[:, 1:] != lab[:, :-1]
    mask[:, 1:] |= right
    mask[:, :-1] |= right
    del right
    down = lab[1:, :] != lab[:-1, :]
    mask[1:, :] |= down
    mask[:-1, :] |= down
    del down
    mask &= lab != 0
    return mask


def write_overlay(path: PathLike, image: np.ndarray, labels: np.ndarray, mean_colours: bool = True) -> None:
    """Save :func:`colour_overlay` as a PNG (or any format its suffix names)."""
    _save_picture(path, colour_overlay(image, labels, mean_colours))


_STRIP_MAX_HEIGHT = 240  # default height of the strip's panels
#: Most threads :func:`write_segmentation` compresses on by default: an image has a dozen files,
#: and each pending one holds a picture (a 16-core machine's threads would hold 32).
MAX_WRITE_THREADS = 4


def hierarchy_strip(
    image: np.ndarray,
    levels: Sequence[np.ndarray],
    include_image: bool = True,
    gap: int = 4,
    max_height: int | None = _STRIP_MAX_HEIGHT,
) -> np.ndarray:
    """Several levels of a hierarchy side by side (mean colours + boundaries), optionally
    after the input image, separated by white gaps.

    Args:
        image: (H, W, 3) float in [0, 1] (or uint8).
        levels: label maps, e.g. fine to coarse; each resized to (H, W) by nearest neighbour.
        include_image: put the image itself first.
        gap: white columns between panels.
        max_height: panels are shrunk to at most this height (None keeps the full size).

    Returns:
        (h, n_panels * w + (n_panels - 1) * gap, 3) uint8.
    """
    img = to_uint8_image(image)
    H, W = _strip_size(img.shape[:2], max_height)
    if (H, W) != img.shape[:2]:
        # shrink first, then draw: the panels of a 24-megapixel photo cost what small ones do
        img = np.asarray(Image.fromarray(img).resize((W, H), Image.Resampling.LANCZOS))
    panels = ([img] if include_image else []) + [colour_overlay(img, resize_labels(np.asarray(lab), (H, W)))
                                                 for lab in levels]
    if not panels:
        raise ValueError("nothing to draw: no levels and include_image=False")
    strip = np.full((H, len(panels) * W + (len(panels) - 1) * gap, 3), 255, dtype=np.uint8)
    for k, p in enumerate(panels):
        strip[:, k * (W + gap): k * (W + gap) + W] = p
    return strip


def _strip_size(size: tuple[int, int], max_height: int | None) -> tuple[int, int]:
    """``(H, W)`` of the panels of :func:`hierarchy_strip` for an image of ``size``."""
    H, W = size
    if max_height is not None and H > max_height:
        return max_height, max(1, round(W * max_height / H))
    return H, W


def write_hierarchy_strip(path: PathLike, image: np.ndarray, levels: Sequence[np.ndarray], **kwargs) -> None:
    """Save :func:`hierarchy_strip` (same keyword arguments) as a PNG."""
    _save_picture(path, hierarchy_strip(image, levels, **kwargs))


#: What :func:`write_segmentation` can write: label PNGs, the photo with the segment
#: boundaries drawn on it, the mean-colour rendering, the strip of all levels, BSDS ``ucm2``,
#: the model's soft edge map (16-bit PNG).
SEGMENTATION_FORMATS: tuple[str, ...] = ("labels", "overlay", "mean", "strip", "ucm2", "edges")
DEFAULT_SEGMENTATION_FORMATS: tuple[str, ...] = ("labels", "overlay", "strip", "ucm2")


def write_segmentation(
    out_dir: PathLike,
    stem: str,
    image: np.ndarray,
    levels: Mapping[int, np.ndarray],
    ucm2: np.ndarray | Callable[[], np.ndarray] | None = None,
    formats: Sequence[str] = DEFAULT_SEGMENTATION_FORMATS,
    edges: np.ndarray | Callable[[], np.ndarray] | None = None,
    threads: int | None = None,
) -> list[Path]:
    """Write the outputs of one segmented image, as ``ndd segment`` does; returns the paths written.

    Files, for each level with ``k`` segments: ``<stem>_labels_<k:03d>.png`` (16-bit ids),
    ``<stem>_overlay_<k:03d>.png`` (the photo with the boundaries drawn on it),
    ``<stem>_mean_<k:03d>.png`` (segments filled with their mean colour); once per image:
    ``<stem>_hierarchy.png`` (the photo and every level, fine to coarse), ``<stem>.mat``
    (the ``ucm2``) and ``<stem>_edges.png`` (the model's soft edge map, 16-bit,
    :func:`write_edge_map`: what ``ndd evaluate --no-region`` scores).

    Args:
        out_dir: folder (created if needed).
        stem: file-name prefix, usually the image's stem.
        image: (H, W, 3) float in [0, 1] (or uint8).
        levels: number of segments -> (H, W) label map (a lazy mapping is read once per level).
        ucm2: (2H+1, 2W+1) map, or a function giving it (called once the pictures are written
            and freed: at 24 megapixels it is the high point of memory); needed when
            ``formats`` has ``"ucm2"``.
        formats: a subset of :data:`SEGMENTATION_FORMATS`.
        edges: (H, W) soft edge map in [0, 1], or a function giving it; needed when ``formats``
            has ``"edges"``.
        threads: files compressed at once on background threads while the next picture is
            drawn (PNG and ``.mat`` compression, most of the writing time, runs outside
            Python's lock); at most twice that many pictures wait in memory. ``1``: one file
            after the other in this thread. Default: the cores this process may use, at most
            :data:`MAX_WRITE_THREADS`.

    Example:
        >>> import numpy as np, tempfile
        >>> labels = np.zeros((4, 6), np.int64); labels[:, 3:] = 1
        >>> paths = write_segmentation(tempfile.mkdtemp(), "x", np.zeros((4, 6, 3)), {2: labels}, formats=["labels"])
        >>> [p.name for p in paths]
        ['x_labels_002.png']
    """
    unknown = sorted(set(formats) - set(SEGMENTATION_FORMATS))
    if unknown:
        raise ValueError(f"unknown output format(s) {unknown}; choose from {', '.join(SEGMENTATION_FORMATS)}")
    if "ucm2" in formats and ucm2 is None:
        raise ValueError("format 'ucm2' needs the ucm2 map")
    if "edges" in formats and edges is None:
        raise ValueError("format 'edges' needs the edge map (a model with an edge detector)")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    image = to_uint8_image(image)  # once, for every picture
    per_level = [f for f in ("labels", "overlay", "mean") if f in formats]
    # each level is read once (a lazy mapping computes it on access): the strip keeps its small copy
    strip_size = _strip_size(image.shape[:2], _STRIP_MAX_HEIGHT) if "strip" in formats else None
    strip_levels: dict[int, np.ndarray] = {}
    with _FileWriters(min(MAX_WRITE_THREADS, usable_cores()) if threads is None else threads) as files:
        for k in sorted(levels) if per_level or strip_size is not None else []:
            labels = levels[k]
            painted = None  # labels at the image size and their boundaries, shared by overlay and mean
            for fmt in per_level:
                path = out / f"{stem}_{fmt}_{k:03d}.png"
                if fmt == "labels":
                    files.write(path, write_labels, labels)
                else:
                    if painted is None:
                        painted = _labels_and_boundaries(labels, image.shape[:2])
                    files.write(path, _save_picture, _paint(image, *painted, mean_colours=fmt == "mean"))
                written.append(path)
            if strip_size is not None:
                strip_levels[k] = resize_labels(np.asarray(labels), strip_size)
            del labels, painted
        if strip_levels:
            path = out / f"{stem}_hierarchy.png"
            files.write(path, write_hierarchy_strip, image,
                        [strip_levels[k] for k in sorted(strip_levels, reverse=True)], max_height=_STRIP_MAX_HEIGHT)
            written.append(path)
            del strip_levels
        if "ucm2" in formats:
            path = out / f"{stem}.mat"
            if callable(ucm2):  # computing it is the high point of memory: the pictures go first
                files.wait()
                ucm2 = ucm2()
            files.write(path, write_ucm2, ucm2)
            written.append(path)
        if "edges" in formats:
            path = out / f"{stem}_edges.png"
            edge_map = edges() if callable(edges) else edges
            if np.shape(edge_map) != image.shape[:2]:
                raise ValueError(f"the edge map is {np.shape(edge_map)}, the image {image.shape[:2]}")
            files.write(path, write_edge_map, edge_map)
            written.append(path)
    return written


# --------------------------------------------------------------------------- helpers
class _FileWriters:
    """Writes files, each under a temporary name renamed when whole (:func:`_atomically`), on
    up to ``threads`` background threads.

    Pillow's PNG encoder and zlib release Python's lock while they compress, which is where
    writing a picture spends its time (a 12-megapixel overlay: about 1 s at zlib level 1), so
    files compress side by side while the caller draws the next picture. At most ``2 threads``
    writes are pending (a new one waits for the oldest), so at most that many pictures wait in
    memory; with only ``threads`` the small label files took the slots and two threads wrote a
    12-megapixel image's default outputs 1.3x as fast as one, with twice that many 1.8x
    (6.44 / 4.35 s against 8.2 s). With ``threads=1`` each write runs at once in the calling
    thread. Leaving the ``with`` block waits for every write and raises the first error; an
    error in the block itself drops the writes not yet started and waits for the running ones.
    """

    def __init__(self, threads: int) -> None:
        threads = max(1, threads)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="ndd-write") if threads > 1 else None
        self._limit = 2 * threads
        self._pending: deque[Future[None]] = deque()

    def write(self, path: Path, writer: Callable[..., object], *args: object, **kwargs: object) -> None:
        """``writer(temporary_path, *args, **kwargs)``, then the rename to ``path``."""
        if self._pool is None:
            _write_atomically(path, writer, args, kwargs)
            return
        while len(self._pending) >= self._limit:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(_write_atomically, path, writer, args, kwargs))

    def wait(self) -> None:
        """Returns when every pending write is done; raises the first error."""
        while self._pending:
            self._pending.popleft().result()

    def __enter__(self) -> _FileWriters:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        try:
            if kind is None:
                self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)


def _write_atomically(path: Path, writer: Callable[..., object], args: tuple, kwargs: dict) -> None:
    with _atomically(path) as tmp:
        writer(tmp, *args, **kwargs)


@contextmanager
def _atomically(path: Path) -> Iterator[Path]:
    """A temporary name beside ``path`` (same suffix, so writers pick the same format), renamed
    to ``path`` once written: a killed run leaves a whole file or none, never a half one."""
    tmp = path.with_name(f".partial-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _save_picture(path: PathLike, rgb: np.ndarray) -> None:
    """Save a uint8 picture (format from the suffix); PNGs with zlib level 1.

    Photos compress little losslessly: level 1 encodes a 321x481 overlay 2.6x faster than
    Pillow's default 6 for a file 3% larger, a 24-megapixel one 3.3x faster for a file 27%
    larger (the pixels are the same).
    """
    Image.fromarray(rgb).save(_out(path), compress_level=1)


def _out(path: PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def to_uint8_image(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 of a float [0, 1], uint8 (returned as is) or uint16 image; grey is repeated.

    Pictures need no more: a 24-megapixel photo is 72 MB in uint8, 288 MB as float32.
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got {img.shape}")
    if img.dtype == np.uint8:
        return img
    if np.issubdtype(img.dtype, np.integer):
        return (img // 257).astype(np.uint8) if img.max() > 255 else img.astype(np.uint8)
    out = np.empty(img.shape, np.uint8)
    for c in range(3):  # one channel at a time keeps the float temporaries small
        out[..., c] = (np.clip(img[..., c], 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return out


def _as_float_image(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got {img.shape}")
    if np.issubdtype(img.dtype, np.integer):
        return img.astype(np.float64) / (65535.0 if img.max() > 255 else 255.0)
    return np.clip(img.astype(np.float64), 0.0, 1.0)


# --------------------------------------------------------------------------- similarity maps
def heatmap_overlay(
    image: np.ndarray,
    similarity: np.ndarray,
    point: tuple[float, float] | None = None,
    alpha: float = 0.6,
) -> np.ndarray:
    """A similarity map in ``[0, 1]`` drawn over the image as a heat map (paper Fig. 2).

    Args:
        image: (H, W, 3) float RGB in [0, 1].
        similarity: (H, W) values in [0, 1].
        point: optional ``(x, y)`` marked with a red dot.

    Returns:
        (H, W, 3) uint8.
    """
    img = _as_float_image(image)
    sim = np.clip(np.asarray(similarity, dtype=np.float64), 0.0, 1.0)
    if sim.shape != img.shape[:2]:
        raise ValueError(f"similarity {sim.shape} and image {img.shape[:2]} differ in size")
    heat = _heat_colours(sim)
    out = (1 - alpha) * img.mean(axis=2, keepdims=True) + alpha * heat
    if point is not None:
        x, y = point
        radius = max(2, round(0.012 * max(img.shape[:2])))
        yy, xx = np.ogrid[: img.shape[0], : img.shape[1]]
        out[(yy - y) ** 2 + (xx - x) ** 2 <= radius**2] = (1.0, 0.0, 0.0)
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


# Blue -> cyan -> green -> yellow -> red, the usual "jet"-like ramp (no plotting dependency).
_HEAT_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_HEAT_RGB = np.array([[0, 0, 0.6], [0, 0.8, 1], [0.1, 0.9, 0.1], [1, 0.9, 0], [0.85, 0, 0]])


def _heat_colours(values: np.ndarray) -> np.ndarray:
    return np.stack([np.interp(values, _HEAT_STOPS, _HEAT_RGB[:, c]) for c in range(3)], axis=-1)


def contact_sheet(tiles: Sequence[np.ndarray], columns: int, gap: int = 4) -> np.ndarray:
    """Equal-size (H, W, 3) uint8 tiles in a grid with ``columns`` columns, white gaps."""
    if not tiles:
        raise ValueError("no tiles")
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // columns)
    sheet = np.full((rows * h + (rows - 1) * gap, columns * w + (columns - 1) * gap, 3), 255, np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        sheet[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tile
    return sheet


def write_image(path: PathLike, rgb: np.ndarray) -> None:
    """Save an (H, W, 3) uint8 or float [0, 1] image (format from the suffix)."""
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)
    Image.fromarray(arr).save(_out(path))
