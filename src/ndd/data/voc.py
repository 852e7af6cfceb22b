"""Semantic segmentation data with image-level labels: PASCAL VOC 2012 (+ SBD) and a generic layout.

Both datasets serve weakly supervised training (image-level labels only) and evaluation
(pixel masks where they exist). An item is a :class:`~ndd.data.Sample`-like dict::

    {"image": (3, H, W) float32 RGB in [0, 1],
     "labels": (H, W) int64 class ids 0..C-1, -1 = ignore (255 in the files) or no mask,
     "classes": (C,) float32 multi-hot image-level labels (the background, when the
                class list has one, is 1: it is present in every image),
     "id": str}

so the joint transforms of :mod:`ndd.data.transforms` apply unchanged.

**PASCAL VOC 2012** (:class:`VOCSegmentation`), the standard ``VOCdevkit/VOC2012`` layout::

    VOC2012/JPEGImages/<id>.jpg
    VOC2012/SegmentationClass/<id>.png        palette PNG, values 0..20 and 255 (void)
    VOC2012/SegmentationClassAug/<id>.png     SBD-augmented masks (grey PNG), optional
    VOC2012/Annotations/<id>.xml              objects -> image-level labels
    VOC2012/ImageSets/Segmentation/{train,val,trainval,test}.txt
    VOC2012/ImageSets/SegmentationAug/train_aug.txt   (or VOC2012/train_aug.txt), 10,582 ids

A split list holds one id per line, or DeepLab's two-column form
``/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png``.

**Generic layout** (:class:`ImageLabelFolder`) for one's own data::

    ROOT/images/<name>.<jpg|png|...>
    ROOT/labels.csv        "image,labels" rows, labels separated by ';' or spaces (names or ids)
      or ROOT/labels.json  {"<name>": ["cat", "dog"], ...} or {"classes": [...], "labels": {...}}
    ROOT/classes.txt       optional: one class name per line, line i = id i
    ROOT/masks/<stem>.png  optional: class-id masks (0..C-1, 255 = ignore) for evaluation
    ROOT/<split>.txt       optional: the stems of a split (e.g. train.txt, val.txt)

Every problem (missing folder or file, an unknown class name, a mask value outside the
classes + 255) raises an error whose one-line message names the file, at construction
where that is cheap (files exist, labels parse) and at access otherwise (mask values).
"""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ._io import StrPath, read_image, read_label_png
from .folder import IMAGE_EXTENSIONS
from .labels import IGNORE_INDEX

__all__ = [
    "VOC_CLASSES",
    "VOC_IGNORE",
    "voc_palette",
    "write_mask_png",
    "read_mask_png",
    "resolve_voc_root",
    "voc_image_labels_from_xml",
    "VOCSegmentation",
    "ImageLabelFolder",
    "read_class_list",
    "read_image_labels",
]

#: The 21 classes of PASCAL VOC 2012 segmentation, background first.
VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
#: Mask value of void / unlabelled pixels in VOC files.
VOC_IGNORE = 255

SegmentationItem = dict[str, Any]


# --------------------------------------------------------------------------- mask files
def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: ``(n, 3)`` uint8, entry ``i`` the colour of class ``i``.

    The bits of ``i`` are spread over R, G, B from the most significant bit down (VOC devkit
    ``labelcolormap``), so 0 is black, 1 dark red, 15 (person) pink, 255 (void) cream.
    """
    palette = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


def write_mask_png(path: StrPath, mask: np.ndarray) -> Path:
    """Write a class-id mask ``(H, W)`` (0..254, 255 = ignore) as a palette PNG with the VOC colours.

    The file is written under a temporary name and renamed, so a killed run leaves no half file.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"mask must be a 2-D integer array, got {mask.dtype} {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"mask values must be in 0..255 to fit a palette PNG, got {mask.min()}..{mask.max()}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    im.putpalette(voc_palette().reshape(-1).tolist())
    tmp = path.with_name(f".{path.name}.tmp")
    im.save(tmp, format="PNG")
    tmp.replace(path)
    return path


def read_mask_png(path: StrPath, num_classes: int, ignore: int = VOC_IGNORE) -> np.ndarray:
    """Read a class-id mask and check its values: ``(H, W)`` int64 with ``ignore`` mapped to ``-1``.

    Palette PNGs give their indices, grey PNGs their values (VOC's ``SegmentationClass`` and
    SBD's ``SegmentationClassAug`` both work).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, RGB (colours, not ids), or values outside ``0..num_classes-1`` and ``ignore``.
    """
    raw = read_label_png(path, colours=False)
    bad = np.unique(raw[((raw < 0) | (raw >= num_classes)) & (raw != ignore)])
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:6]) + (" ..." if bad.size > 6 else "")
        raise ValueError(f"mask {path} has values {shown} outside the classes 0..{num_classes - 1} and {ignore}")
    raw[raw == ignore] = IGNORE_INDEX
    return raw


def _multi_hot(ids: Sequence[int], num_classes: int, background: int | None) -> torch.Tensor:
    y = torch.zeros(num_classes, dtype=torch.float32)
    y[list(ids)] = 1.0
    if background is not None:
        y[background] = 1.0  # the background is in every image (see ndd.wsss: background handling)
    return y


def _item(image: np.ndarray, mask: np.ndarray | None, classes: torch.Tensor, sample_id: str) -> SegmentationItem:
    img = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).to(torch.float32).div_(255.0)
    if mask is None:
        labels = torch.full(img.shape[-2:], IGNORE_INDEX, dtype=torch.int64)
    else:
        if mask.shape != image.shape[:2]:
            raise ValueError(f"{sample_id}: mask is {mask.shape[0]}x{mask.shape[1]}, image {image.shape[0]}x{image.shape[1]}")
        labels = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))
    return {"image": img, "labels": labels, "classes": classes, "id": sample_id}


class _ImageLabelDataset(Dataset[SegmentationItem]):
    """What both layouts share once their constructor has listed the images: items, masks, length.

    A subclass sets ``root``, ``split``, ``transform``, ``classes``, ``background``, ``ids``,
    ``image_paths``, ``mask_paths`` (``None``: no mask) and ``image_labels`` (class ids per image).
    """

    root: Path
    split: str | None
    transform: Callable[[SegmentationItem], SegmentationItem] | None
    classes: tuple[str, ...]
    background: int | None
    ids: list[str]
    image_paths: list[Path]
    mask_paths: list[Path | None]
    image_labels: list[list[int]]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def has_masks(self) -> bool:
        """Whether every image has a mask."""
        return all(p is not None for p in self.mask_paths)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> SegmentationItem:
        index = range(len(self))[index]
        image = read_image(self.image_paths[index])
        mask = self.read_mask(index)
        item = _item(image, mask, _multi_hot(self.image_labels[index], self.num_classes, self.background), self.ids[index])
        return self.transform(item) if self.transform is not None else item

    def read_mask(self, index: int) -> np.ndarray | None:
        """The checked mask of item ``index`` (``-1`` = ignore), or ``None`` without one."""
        mp = self.mask_paths[index]
        return None if mp is None else read_mask_png(mp, self.num_classes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"


# --------------------------------------------------------------------------- VOC
def resolve_voc_root(root: StrPath) -> Path:
    """The ``VOC2012`` folder given it, ``VOCdevkit`` or the folder holding ``VOCdevkit``.

    Raises:
        FileNotFoundError: none of them holds ``JPEGImages/``.
    """
    root = Path(root).expanduser()
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    if not root.exists():
        raise FileNotFoundError(f"VOC folder not found: {root}")
    raise FileNotFoundError(
        f"{root} is not a PASCAL VOC 2012 folder: no JPEGImages/ in it, in VOC2012/ or in VOCdevkit/VOC2012/"
    )


def voc_image_labels_from_xml(path: StrPath, classes: Sequence[str] = VOC_CLASSES) -> list[int]:
    """Sorted class ids of the objects in a VOC ``Annotations/<id>.xml`` (every object counts).

    Raises:
        FileNotFoundError / ValueError naming the file (unreadable XML, unknown class name).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation not found: {path}")
    try:
        tree = ET.parse(path)
    except ET.ParseError as exc:
        raise ValueError(f"cannot read annotation {path}: {exc}") from None
    index = {name: i for i, name in enumerate(classes)}
    ids = set()
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip().lower()
        if name not in index:
            raise ValueError(f"annotation {path}: unknown class {name!r} (not one of the {len(classes)} classes)")
        ids.add(index[name])
    return sorted(ids)


def _read_split_list(path: Path) -> list[str]:
    ids = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        ids.append(Path(line.split()[0]).stem)  # "<id>" or "/JPEGImages/<id>.jpg /Segm.../<id>.png"
    if not ids:
        raise ValueError(f"split list {path} is empty")
    return ids


class VOCSegmentation(_ImageLabelDataset):
    """PASCAL VOC 2012 segmentation (and the SBD-augmented ``train_aug`` set) with image-level labels.

    Args:
        root: ``VOC2012``, ``VOCdevkit`` or the folder holding ``VOCdevkit`` (:func:`resolve_voc_root`).
        split: a list name: ``train``, ``val``, ``trainval``, ``test`` (``ImageSets/Segmentation``)
            or ``train_aug`` (``ImageSets/SegmentationAug``, ``ImageSets/Segmentation`` or the root).
        image_labels: where image-level labels come from: ``"xml"`` (``Annotations``), ``"mask"``
            (classes present in the mask) or ``"auto"``: the XML when it exists, else the mask.
        masks: mask folder: ``"auto"`` (``SegmentationClassAug`` for ``*_aug`` splits when it
            exists, else ``SegmentationClass``), a folder name inside the root, or ``None`` (no masks).
        require_masks: fail at construction if an image has no mask (evaluation needs them).
        transform: applied to the item dict (e.g. :func:`ndd.data.train_transform`).

    Raises:
        FileNotFoundError: wrong layout, missing split list, image, annotation or (if required) mask.
        ValueError: an empty list, an unknown class in an XML file; at access, a bad mask.
    """

    classes: tuple[str, ...] = VOC_CLASSES
    background: int | None = 0

    def __init__(
        self,
        root: StrPath,
        split: str = "train_aug",
        *,
        image_labels: Literal["auto", "xml", "mask"] = "auto",
        masks: str | None = "auto",
        require_masks: bool = False,
        transform: Callable[[SegmentationItem], SegmentationItem] | None = None,
    ) -> None:
        if image_labels not in ("auto", "xml", "mask"):
            raise ValueError(f"image_labels must be 'auto', 'xml' or 'mask', got {image_labels!r}")
        self.root = resolve_voc_root(root)
        self.split = split
        self.transform = transform
        candidates = [self.root / "ImageSets" / "Segmentation" / f"{split}.txt"]
        if split.endswith("_aug"):
            candidates = [self.root / "ImageSets" / "SegmentationAug" / f"{split}.txt", *candidates,
                          self.root / f"{split}.txt"]
        list_path = next((p for p in candidates if p.is_file()), None)
        if list_path is None:
            raise FileNotFoundError(f"split {split!r}: no list file in {self.root} (looked for "
                                    + ", ".join(str(p.relative_to(self.root)) for p in candidates) + ")")
        self.ids: list[str] = _read_split_list(list_path)
        self.image_paths = [self.root / "JPEGImages" / f"{i}.jpg" for i in self.ids]
        _check_all_exist(self.image_paths, "image", self.root / "JPEGImages")

        self.mask_dir: Path | None = None
        if masks == "auto":
            aug = self.root / "SegmentationClassAug"
            self.mask_dir = aug if split.endswith("_aug") and aug.is_dir() else self.root / "SegmentationClass"
        elif masks is not None:
            self.mask_dir = self.root / masks
            if not self.mask_dir.is_dir():
                raise FileNotFoundError(f"mask folder not found: {self.mask_dir}")
        self.mask_paths: list[Path | None] = [
            (self.mask_dir / f"{i}.png") if self.mask_dir is not None and (self.mask_dir / f"{i}.png").is_file() else None
            for i in self.ids
        ]
        if require_masks:
            if self.mask_dir is None:
                raise ValueError("masks are required but masks=None was given")
            missing = [self.mask_dir / f"{i}.png" for i, p in zip(self.ids, self.mask_paths) if p is None]
            _check_all_exist(missing, "mask", self.mask_dir, already_missing=True)

        # Image-level labels are parsed now: a bad annotation stops the run before any training.
        self.image_labels: list[list[int]] = []
        for i, mask_path in zip(self.ids, self.mask_paths):
            xml = self.root / "Annotations" / f"{i}.xml"
            if image_labels == "xml" or (image_labels == "auto" and xml.is_file()):
                self.image_labels.append(voc_image_labels_from_xml(xml, self.classes))
            elif mask_path is not None:
                self.image_labels.append(_mask_classes(read_mask_png(mask_path, len(self.classes)), self.background))
            else:
                raise FileNotFoundError(f"{i}: no image-level labels: neither {xml} nor a mask in {self.mask_dir} exists")


def _mask_classes(mask: np.ndarray, background: int | None) -> list[int]:
    return sorted(int(v) for v in np.unique(mask) if v >= 0 and v != background)


def _check_all_exist(paths: Sequence[Path], what: str, folder: Path, already_missing: bool = False) -> None:
    missing = list(paths) if already_missing else [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(p.name for p in missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise FileNotFoundError(f"{len(missing)} {what} file(s) missing in {folder}: {shown}")


# --------------------------------------------------------------------------- generic layout
def read_class_list(path: StrPath) -> list[str]:
    """Class names, one per line (line ``i`` is class ``i``); blank lines and ``#`` comments skipped."""
    path = Path(path)
    names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not names:
        raise ValueError(f"class list {path} is empty")
    if len(set(names)) != len(names):
        raise ValueError(f"class list {path} names a class twice")
    return names


def _split_names(text: str) -> list[str]:
    return [t for t in text.replace(";", " ").replace(",", " ").split() if t]


def read_image_labels(path: StrPath) -> tuple[dict[str, list[str]], list[str] | None]:
    """Image-level labels of a CSV or JSON file: ``({image stem: [class names or ids]}, classes or None)``.

    CSV: a header with columns ``image`` and ``labels`` (labels separated by ``;`` or spaces; an
    image without objects has an empty cell). JSON: ``{"<image>": [...]}`` or
    ``{"classes": [...], "labels": {"<image>": [...]}}``. Image keys may carry an extension.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file not found: {path}")
    classes: list[str] | None = None
    table: dict[str, list[str]] = {}
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"cannot read labels file {path}: {exc}") from None
        if isinstance(data, dict) and "labels" in data and isinstance(data["labels"], dict):
            classes = [str(c) for c in data.get("classes") or []] or None
            data = data["labels"]
        if not isinstance(data, dict):
            raise ValueError(f"labels file {path}: expected a JSON object of image -> list of classes")
        for key, value in data.items():
            if isinstance(value, str):
                value = _split_names(value)
            if not isinstance(value, list):
                raise ValueError(f"labels file {path}: labels of {key!r} must be a list, got {type(value).__name__}")
            table[Path(str(key)).stem] = [str(v) for v in value]
    else:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"image", "labels"} <= set(reader.fieldnames):
                raise ValueError(f"labels file {path}: needs a header with columns 'image' and 'labels', got {reader.fieldnames}")
            for row in reader:
                table[Path(row["image"].strip()).stem] = _split_names(row["labels"] or "")
    if not table:
        raise ValueError(f"labels file {path} lists no image")
    return table, classes


class ImageLabelFolder(_ImageLabelDataset):
    """The generic layout (module docstring): a folder of images, a CSV/JSON of image-level labels,
    an optional class list, optional masks and optional split lists.

    The class list comes from ``classes.txt``, else the labels file's ``"classes"``, else it is
    ``background`` followed by the sorted names used in the labels file. A class named
    ``background`` is the background: present in every image (its label is always 1).

    Args:
        root: the folder.
        split: ``None`` (every image of the labels file) or the name of ``ROOT/<split>.txt``.
        labels_file: default ``ROOT/labels.csv`` or ``ROOT/labels.json`` (whichever exists).
        require_masks: fail at construction if an image has no mask.
        transform: applied to the item dict.
    """

    def __init__(
        self,
        root: StrPath,
        split: str | None = None,
        *,
        labels_file: StrPath | None = None,
        require_masks: bool = False,
        transform: Callable[[SegmentationItem], SegmentationItem] | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        self.root = Path(root).expanduser()
        self.split = split
        self.transform = transform
        images_dir = self.root / "images"
        if not images_dir.is_dir():
            if not self.root.exists():
                raise FileNotFoundError(f"data folder not found: {self.root}")
            raise FileNotFoundError(f"{self.root} is not an image-label folder: no images/ in it")
        if labels_file is None:
            found = [p for p in (self.root / "labels.csv", self.root / "labels.json") if p.is_file()]
            if not found:
                raise FileNotFoundError(f"{self.root}: no labels.csv or labels.json (image-level labels)")
            labels_file = found[0]
        table, file_classes = read_image_labels(labels_file)
        class_file = self.root / "classes.txt"
        if class_file.is_file():
            self.classes: tuple[str, ...] = tuple(read_class_list(class_file))
        elif file_classes:
            self.classes = tuple(file_classes)
        else:
            used = sorted({n for names in table.values() for n in names if not n.isdigit()} - {"background"})
            self.classes = ("background", *used)
        self.background: int | None = self.classes.index("background") if "background" in self.classes else None

        if split is None:
            stems = sorted(table)
        else:
            split_file = self.root / f"{split}.txt"
            if not split_file.is_file():
                raise FileNotFoundError(f"split {split!r}: no list file {split_file}")
            stems = _read_split_list(split_file)
            unlabelled = [s for s in stems if s not in table]
            if unlabelled:
                raise ValueError(f"{len(unlabelled)} image(s) of {split_file.name} have no labels in "
                                 f"{Path(labels_file).name}: {', '.join(unlabelled[:3])}")
        exts = {e.lower() for e in extensions}
        by_stem = {p.stem: p for p in sorted(images_dir.iterdir()) if p.is_file() and p.suffix.lower() in exts}
        missing = [s for s in stems if s not in by_stem]
        if missing:
            raise FileNotFoundError(f"{len(missing)} labelled image(s) missing in {images_dir}: {', '.join(missing[:3])}")
        self.ids = stems
        self.image_paths = [by_stem[s] for s in stems]
        index = {name: i for i, name in enumerate(self.classes)}
        self.image_labels: list[list[int]] = []
        for s in stems:
            ids = []
            for name in table[s]:
                if name in index:
                    ids.append(index[name])
                elif name.isdigit() and int(name) < len(self.classes):
                    ids.append(int(name))
                else:
                    raise ValueError(f"labels of image {s!r} in {Path(labels_file).name}: unknown class {name!r} "
                                     f"(classes: {', '.join(self.classes[:8])}{' ...' if len(self.classes) > 8 else ''})")
            self.image_labels.append(sorted(set(ids) - ({self.background} if self.background is not None else set())))
        mask_dir = self.root / "masks"
        self.mask_paths: list[Path | None] = [
            (mask_dir / f"{s}.png") if (mask_dir / f"{s}.png").is_file() else None for s in stems
        ]
        if require_masks:
            _check_all_exist([mask_dir / f"{s}.png" for s, p in zip(stems, self.mask_paths) if p is None],
                             "mask", mask_dir, already_missing=True)
