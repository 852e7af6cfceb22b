"""A synthetic multi-class segmentation data set with image-level labels and hidden pixel truth.

What weakly supervised segmentation needs when PASCAL VOC is not at hand: images holding
several objects of a few classes on cluttered, textured backgrounds, the set of classes of
each image (the only supervision), and the exact class mask (for scoring only).

Every class is a **shape with its own texture**: ``disc`` (concentric rings), ``square``
(checkerboard), ``triangle`` (stripes), ``star`` (dots) and ``cross`` (wavy stripes). Colours
are drawn per object, so colour says nothing about the class. The background is a textured
fill covered by many small clutter shapes (ellipses and irregular polygons) painted with
textures drawn from the **same** texture set (plus flat, gradient and noise fills), so a
texture patch alone does not identify a class: a classifier must see shape and texture
together, and class evidence is strongest at an object's corners and outline. That is the
case where class activation maps (GAP) cover only parts of objects and bleed into the
background, and where pooling over regions of similar pixels helps.

Rendering depends only on ``(seed, index)``. :func:`write_multiclass_dataset` writes the
generic layout of :class:`ndd.data.ImageLabelFolder` (``images/``, ``masks/``, ``labels.csv``,
``classes.txt``, ``train.txt``, ``val.txt``).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torch.utils.data import Dataset

from .labels import IGNORE_INDEX
from .voc import write_mask_png

__all__ = ["SHAPE_CLASSES", "MultiClassShapes", "write_multiclass_dataset"]

#: name -> (shape, texture) of each object class; class ids are 1.. in this order (0 = background).
SHAPE_CLASSES: dict[str, tuple[str, str]] = {
    "disc": ("disc", "rings"),
    "square": ("square", "checker"),
    "triangle": ("triangle", "stripes"),
    "star": ("star", "dots"),
    "cross": ("cross", "waves"),
}
_PATTERNS = ("rings", "checker", "stripes", "dots", "waves")
_FILLS = (*_PATTERNS, "flat", "gradient", "noise")
# style="flat": the colour of each class
_FLAT_COLOURS = ((0.95, 0.1, 0.1), (0.1, 0.85, 0.1), (0.15, 0.25, 0.95), (0.95, 0.85, 0.1), (0.85, 0.1, 0.85))


class MultiClassShapes(Dataset[dict[str, Any]]):
    """Synthetic images of textured objects of several classes on cluttered textured backgrounds.

    Args:
        num_images: length of the data set.
        size: ``(H, W)``.
        seed: data-set seed; image ``i`` depends only on ``(seed, i)``.
        num_objects: inclusive range of objects per image (classes drawn with replacement).
        radius: object radius range as fractions of ``min(H, W)``.
        clutter: inclusive range of background clutter shapes.
        noise: standard deviation of the pixel noise; ``blur``: Gaussian sigma of the image (px).
        min_area: a class is in an image's labels when its visible area is at least this
            fraction of the image (smaller remnants are marked ignore, 255, in the mask).
        offset: index of the first image (so train and val sets are disjoint draws).
        style: ``"textured"`` (above) or ``"flat"``, an easy variant for quick tests: each object
            one uniform region in its class's saturated colour, background and clutter flat and
            nearly grey; colour alone then tells the class, and an object is one region for any
            colour-based similarity.
        transform: applied to the item dict.

    Items are the dicts of :mod:`ndd.data.voc` (``image``, ``labels`` = class mask with -1 =
    ignore, ``classes`` multi-hot with the background set, ``id``).
    """

    background: int = 0

    def __init__(
        self,
        num_images: int,
        size: tuple[int, int] = (128, 128),
        seed: int = 0,
        *,
        num_objects: tuple[int, int] = (1, 3),
        radius: tuple[float, float] = (0.17, 0.3),
        clutter: tuple[int, int] = (4, 10),
        noise: float = 0.02,
        blur: float = 0.5,
        min_area: float = 0.01,
        offset: int = 0,
        style: str = "textured",
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        if len(size) != 2 or min(size) < 16:
            raise ValueError(f"size must be (H, W) with both at least 16, got {size}")
        if not 1 <= num_objects[0] <= num_objects[1]:
            raise ValueError(f"num_objects must be a range (lo, hi) with 1 <= lo <= hi, got {num_objects}")
        if not 0 < radius[0] <= radius[1] < 0.5:
            raise ValueError(f"radius must be a range (lo, hi) with 0 < lo <= hi < 0.5, got {radius}")
        self.num_images = int(num_images)
        self.size = (int(size[0]), int(size[1]))
        self.seed = int(seed)
        self.num_objects = num_objects
        self.radius = radius
        self.clutter = clutter
        self.noise = noise
        self.blur = blur
        self.min_area = min_area
        self.offset = int(offset)
        if style not in ("textured", "flat"):
            raise ValueError(f"style must be 'textured' or 'flat', got {style!r}")
        self.style = style
        self.transform = transform
        self.classes: tuple[str, ...] = ("background", *SHAPE_CLASSES)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = range(self.num_images)[index]
        image, mask, ids = self.render(index)
        classes = torch.zeros(self.num_classes)
        classes[[0, *ids]] = 1.0
        labels = torch.from_numpy(mask.astype(np.int64))
        labels[labels == 255] = IGNORE_INDEX
        item = {
            "image": torch.from_numpy(image.transpose(2, 0, 1).copy()).float().div_(255.0),
            "labels": labels,
            "classes": classes,
            "id": f"shapes-{self.seed}-{index + self.offset}",
        }
        return self.transform(item) if self.transform is not None else item

    # ------------------------------------------------------------------ rendering
    def render(self, index: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Image ``index``: ``(H, W, 3)`` uint8, mask ``(H, W)`` uint8 (0..5, 255 ignore), sorted class ids."""
        rng = np.random.default_rng((self.seed, index + self.offset, 7))
        H, W = self.size
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32) + 0.5
        s = float(min(H, W))
        fill = str(rng.choice(_FILLS[len(_PATTERNS):])) if rng.random() < 0.75 else str(rng.choice(_PATTERNS))
        image = _grey(rng, yy) if self.style == "flat" else _paint_fill(rng, fill, yy, xx, s)
        # background clutter: small shapes that are none of the classes
        for _ in range(int(rng.integers(self.clutter[0], self.clutter[1] + 1))):
            r = s * rng.uniform(0.03, 0.11)
            cy, cx = rng.uniform(0, H), rng.uniform(0, W)
            kind = "ellipse" if rng.random() < 0.5 else "blob"
            inside = _shape_mask(kind, rng, yy - cy, xx - cx, r)
            tex = _grey(rng, yy) if self.style == "flat" else _paint_fill(rng, str(rng.choice(_FILLS)), yy, xx, s)
            image[inside] = tex[inside]

        mask = np.zeros((H, W), dtype=np.uint8)
        names = list(SHAPE_CLASSES)
        n_obj = int(rng.integers(self.num_objects[0], self.num_objects[1] + 1))
        placed: list[tuple[float, float, float]] = []
        for _ in range(n_obj):
            r = s * rng.uniform(*self.radius)
            for _attempt in range(20):  # objects may touch and overlap a little, not hide each other
                cy = rng.uniform(0.55 * r, H - 0.55 * r)
                cx = rng.uniform(0.55 * r, W - 0.55 * r)
                if all(math.hypot(cy - py, cx - px) > 0.8 * (r + pr) for py, px, pr in placed):
                    break
            else:
                continue
            placed.append((cy, cx, r))
            cls = int(rng.integers(len(names)))
            shape, texture = SHAPE_CLASSES[names[cls]]
            inside = _shape_mask(shape, rng, yy - cy, xx - cx, r)
            if self.style == "flat":
                colour = np.asarray(_FLAT_COLOURS[cls], dtype=np.float32) * rng.uniform(0.75, 1.0)
                image[inside] = colour
            else:
                tex = _paint_pattern(rng, texture, yy, xx, s, centre=(cy, cx))
                image[inside] = tex[inside]
            mask[inside] = cls + 1
        if self.blur > 0:
            image = ndimage.gaussian_filter(image, sigma=(self.blur, self.blur, 0), mode="nearest")
        if self.noise > 0:
            image = image + self.noise * rng.standard_normal(image.shape).astype(np.float32)
        image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
        ids = []
        for c in range(1, len(names) + 1):
            area = float((mask == c).mean())
            if area >= self.min_area:
                ids.append(c)
            elif area > 0:
                mask[mask == c] = 255  # a sliver: neither labelled nor counted against anyone
        return image, mask, ids


def _grey(rng: np.random.Generator, yy: np.ndarray) -> np.ndarray:
    """A flat, nearly grey fill ``(H, W, 3)`` (the background of the flat style)."""
    colour = rng.uniform(0.05, 0.95) + rng.uniform(-0.06, 0.06, size=3)
    return np.broadcast_to(np.clip(colour, 0, 1).astype(np.float32), (*yy.shape, 3)).copy()


def _colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two colours far enough apart for the pattern to show."""
    while True:
        a, b = rng.uniform(0.05, 0.95, size=(2, 3)).astype(np.float32)
        if np.abs(a - b).sum() > 0.6:
            return a, b


def _paint_pattern(rng: np.random.Generator, kind: str, yy: np.ndarray, xx: np.ndarray, s: float,
                   centre: tuple[float, float] | None = None) -> np.ndarray:
    """A two-colour pattern over the whole image ``(H, W, 3)`` float32."""
    a, b = _colour_pair(rng)
    theta = rng.uniform(0, math.pi)
    period = s * rng.uniform(0.045, 0.075)
    u = yy * math.sin(theta) + xx * math.cos(theta)
    v = -yy * math.cos(theta) + xx * math.sin(theta)
    phase = rng.uniform(0, 2 * math.pi)
    if kind == "stripes":
        t = np.sin(2 * math.pi * u / period + phase) > 0
    elif kind == "checker":
        t = np.sin(2 * math.pi * u / period + phase) * np.sin(2 * math.pi * v / period) > 0
    elif kind == "dots":
        fu, fv = np.mod(u / period + phase, 1.0) - 0.5, np.mod(v / period, 1.0) - 0.5
        t = fu**2 + fv**2 < 0.09
    elif kind == "rings":
        cy, cx = centre if centre is not None else (rng.uniform(0, yy.shape[0]), rng.uniform(0, xx.shape[1]))
        t = np.sin(2 * math.pi * np.hypot(yy - cy, xx - cx) / period + phase) > 0
    elif kind == "waves":
        t = np.sin(2 * math.pi * (u + 0.35 * period * np.sin(2 * math.pi * v / (2.5 * period))) / period + phase) > 0
    else:
        raise ValueError(f"unknown pattern {kind!r}")
    return np.where(t[..., None], a, b).astype(np.float32)


def _paint_fill(rng: np.random.Generator, kind: str, yy: np.ndarray, xx: np.ndarray, s: float) -> np.ndarray:
    """A background fill: one of the class patterns, or flat, gradient or smooth noise."""
    if kind in _PATTERNS:
        return _paint_pattern(rng, kind, yy, xx, s)
    H, W = yy.shape
    base = rng.uniform(0.1, 0.9, size=3).astype(np.float32)
    if kind == "flat":
        return np.broadcast_to(base, (H, W, 3)).copy()
    if kind == "gradient":
        theta = rng.uniform(0, 2 * math.pi)
        g = ((yy * math.sin(theta) + xx * math.cos(theta)) / s - 0.5)[..., None]
        return np.clip(base + rng.uniform(0.2, 0.5) * g * rng.choice([-1.0, 1.0], size=3), 0, 1).astype(np.float32)
    noise = ndimage.gaussian_filter(rng.standard_normal((H, W)), sigma=s * 0.02)
    noise = noise / (noise.std() + 1e-6)
    return np.clip(base + 0.12 * noise[..., None].astype(np.float32), 0, 1).astype(np.float32)


def _shape_mask(kind: str, rng: np.random.Generator, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of a randomly rotated shape of radius ``r`` centred at offset 0."""
    theta = rng.uniform(0, 2 * math.pi)
    c, s_ = math.cos(theta), math.sin(theta)
    u, v = dx * c + dy * s_, -dx * s_ + dy * c
    if kind == "disc":
        return u**2 + v**2 <= r**2
    if kind == "square":
        half = r / math.sqrt(2) * 1.1
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if kind == "triangle":
        angle = np.arctan2(v, u)
        rho = np.hypot(u, v)
        # distance to the edge of an equilateral triangle of circumradius r along angle
        sector = np.mod(angle, 2 * math.pi / 3) - math.pi / 3
        return rho * np.cos(sector) <= r * 0.5
    if kind == "star":
        angle = np.arctan2(v, u)
        rho = np.hypot(u, v)
        k = np.abs(np.mod(angle, 2 * math.pi / 5) - math.pi / 5) / (math.pi / 5)  # 0 at a tip... 1 between
        return rho <= r * (0.45 + 0.55 * (1 - k) ** 1.5)
    if kind == "cross":
        arm = r * 0.36
        return ((np.abs(u) <= arm) & (np.abs(v) <= r)) | ((np.abs(v) <= arm) & (np.abs(u) <= r))
    if kind == "ellipse":
        b = r * rng.uniform(0.4, 1.0)
        return (u / r) ** 2 + (v / b) ** 2 <= 1
    if kind == "blob":
        angle = np.arctan2(v, u)
        rho = np.hypot(u, v)
        wobble = sum(rng.uniform(0, 0.25) * np.cos(k * angle + rng.uniform(0, 2 * math.pi)) for k in (2, 3, 5))
        return rho <= r * (0.8 + wobble)
    raise ValueError(f"unknown shape {kind!r}")


def write_multiclass_dataset(
    out: str | Path,
    num_train: int = 400,
    num_val: int = 100,
    size: tuple[int, int] = (128, 128),
    seed: int = 0,
    *,
    overwrite: bool = False,
    progress: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Write :class:`MultiClassShapes` in the generic layout of :class:`ndd.data.ImageLabelFolder`.

    ``out/images/<split>_<i>.png``, ``out/masks/<split>_<i>.png`` (VOC palette, hidden truth),
    ``out/labels.csv`` (image-level labels), ``out/classes.txt``, ``out/train.txt``, ``out/val.txt``.
    ``options``: further :class:`MultiClassShapes` arguments.

    Returns:
        ``{"root", "classes", "train", "val", "class_frequency"}`` (images per class in train).

    Raises:
        FileExistsError: ``out`` already holds a data set and ``overwrite`` is false.
    """
    out = Path(out)
    if (out / "labels.csv").exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a data set (labels.csv); pass overwrite=True to replace it")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str]] = []
    classes: tuple[str, ...] = ()
    frequency = np.zeros(len(SHAPE_CLASSES) + 1, dtype=np.int64)
    todo = [("train", num_train, 0), ("val", num_val, num_train)]
    total = num_train + num_val
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="img", desc="synthetic")
    for split, n, offset in todo:
        data = MultiClassShapes(n, size, seed, offset=offset, **options)
        classes = data.classes
        names = []
        for i in range(n):
            image, mask, ids = data.render(i)
            name = f"{split}_{i:05d}"
            Image.fromarray(image).save(out / "images" / f"{name}.png")
            write_mask_png(out / "masks" / f"{name}.png", mask)
            rows.append((name, ";".join(classes[c] for c in ids)))
            names.append(name)
            if split == "train":
                frequency[ids] += 1
            if bar is not None:
                bar.update(1)
        (out / f"{split}.txt").write_text("".join(f"{n_}\n" for n_ in names))
    if bar is not None:
        bar.close()
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    with open(out / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "labels"])
        writer.writerows(rows)
    return {
        "root": str(out),
        "classes": list(classes),
        "train": num_train,
        "val": num_val,
        "class_frequency": {c: int(frequency[i]) for i, c in enumerate(classes) if i > 0},
    }
