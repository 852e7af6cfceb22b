"""A dataset of the user's own images and label maps."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from torch.utils.data import Dataset

from ._io import StrPath, read_image, read_label_png
from ._sample import Sample, make_sample
from .labels import relabel_consecutive

__all__ = ["SegmentationFolder", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class SegmentationFolder(Dataset[Sample]):
    """Images with integer label maps, paired by file stem.

    ``images_dir/<stem>.<jpg|png|...>`` is paired with ``labels_dir/<stem><label_suffix>.png``.
    Label maps are single-channel PNGs (8 or 16 bit, or palette indices) holding
    one integer per segment; RGB label PNGs are read as colour codes, one
    segment per colour. Only the grouping matters (labels are relabelled
    ``0..n-1``), so instance ids, semantic classes or superpixel ids all work.

    Args:
        images_dir: folder of images (``IMAGE_EXTENSIONS``).
        labels_dir: folder of label maps.
        ignore_value: raw label value meaning "no ground truth" (e.g. 255 for
            void in VOC-style maps, 0 for unlabelled); mapped to ``-1``. For
            RGB label maps give the colour code ``R*65536 + G*256 + B``.
        label_suffix: text between the stem and ``.png`` in label names, e.g.
            ``"_mask"`` for ``img1.jpg`` + ``img1_mask.png``.
        transform: callable applied to the sample dict.
        extensions: accepted image extensions (lower case, with dot).

    Items are dicts like :class:`ndd.data.BSDS500`'s: ``"image"`` ``(3, H, W)``
    float32 in ``[0, 1]``, ``"labels"`` ``(H, W)`` int64 (``-1`` = ignore),
    ``"id"`` the stem.

    Raises:
        FileNotFoundError: at construction, if a folder is missing, holds no
            images, or an image has no label map.
        ValueError: at access, if a file is unreadable or the label map's size
            differs from the image's.
    """

    def __init__(
        self,
        images_dir: StrPath,
        labels_dir: StrPath,
        ignore_value: int | None = None,
        label_suffix: str = "",
        transform: Callable[[Sample], Sample] | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        self.images_dir = Path(images_dir).expanduser()
        self.labels_dir = Path(labels_dir).expanduser()
        for folder, what in ((self.images_dir, "images"), (self.labels_dir, "labels")):
            if not folder.is_dir():
                raise FileNotFoundError(f"{what} folder not found: {folder}")
        self.ignore_value = ignore_value
        self.transform = transform
        exts = {e.lower() for e in extensions}
        images = sorted(p for p in self.images_dir.iterdir() if p.is_file() and p.suffix.lower() in exts)
        if not images:
            raise FileNotFoundError(f"no images ({', '.join(sorted(exts))}) in {self.images_dir}")
        stems = [p.stem for p in images]
        duplicates = sorted({s for s in stems if stems.count(s) > 1})
        if duplicates:
            raise ValueError(f"several images share a stem in {self.images_dir}: {duplicates[:5]}")
        self.image_paths: list[Path] = images
        self.label_paths: list[Path] = [self.labels_dir / f"{p.stem}{label_suffix}.png" for p in images]
        missing = [lp for lp in self.label_paths if not lp.is_file()]
        if missing:
            shown = ", ".join(str(p) for p in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise FileNotFoundError(f"{len(missing)} image(s) in {self.images_dir} have no label map: {shown}")
        self.ids: list[str] = stems

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample:
        index = range(len(self))[index]
        image = read_image(self.image_paths[index])
        raw = read_label_png(self.label_paths[index])
        if raw.shape != image.shape[:2]:
            raise ValueError(
                f"label map {self.label_paths[index]} has shape {raw.shape}, "
                f"image {self.image_paths[index]} has {image.shape[:2]}"
            )
        labels = relabel_consecutive(raw, ignore_index=self.ignore_value)
        sample = make_sample(image, labels, self.ids[index])
        return self.transform(sample) if self.transform is not None else sample

    def __repr__(self) -> str:
        return f"{type(self).__name__}(images_dir={str(self.images_dir)!r}, n={len(self)})"
