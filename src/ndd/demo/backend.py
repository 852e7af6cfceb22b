"""What the demo page does, as plain Python (no Gradio): open an image, show a level, answer a click.

:class:`DemoBackend` holds the model and a small cache of :class:`ndd.demo.analysis.ImageAnalysis`
keyed by the image's content, so the network, ``K_D`` and the hierarchy run once per image;
moving the slider or clicking only reads them. Every method returns what the page shows,
including a message for the user instead of raising on bad input, so the server keeps serving.
Files (downloads) are written only under ``work_dir``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ndd import io
from ndd.demo.analysis import ImageAnalysis, analyse_image
from ndd.inference import DEFAULT_MAX_SIDE
from ndd.models import SpecDiffNet

__all__ = ["DemoSettings", "ImageView", "LevelView", "ClickView", "DemoBackend", "ucm_picture", "find_examples"]


@dataclass(frozen=True)
class DemoSettings:
    """Limits of the demo.

    Attributes:
        max_upload_bytes: largest file accepted.
        max_pixels: largest image (height x width) decoded.
        max_display_side: larger images are scaled down to this longest side before
            anything else (what is shown, segmented and downloaded).
        max_side: longest side the network sees (as ``ndd segment --max-side``).
        cache_size: images whose analysis is kept.
        default_segments: the slider's value for a new image.
        fast_clicks: precompute the FAI of each image (see :func:`ndd.demo.analysis.analyse_image`).
    """

    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = 50_000_000
    max_display_side: int = 1024
    max_side: int | None = DEFAULT_MAX_SIDE
    cache_size: int = 4
    default_segments: int = 8
    fast_clicks: bool = True


@dataclass
class ImageView:
    """The page after an image was opened; ``key is None`` when it could not be used.

    Attributes:
        key: cache key of the analysis (the session keeps it for the slider and clicks).
        message: Markdown for the status line (model, sizes, time; or what went wrong).
        segmentation: ``(H, W, 3)`` uint8, the image with the level's boundaries.
        ucm: ``(H, W, 3)`` uint8 picture of the ultrametric contour map.
        n_segments: the level shown; ``max_segments``: the finest level (slider range).
        labels_path, ucm2_path: the downloads (label PNG of the level, ``ucm2`` ``.mat``).
        seconds: time this call took.
    """

    key: str | None
    message: str
    segmentation: np.ndarray | None = None
    ucm: np.ndarray | None = None
    n_segments: int = 1
    max_segments: int = 1
    labels_path: Path | None = None
    ucm2_path: Path | None = None
    seconds: float = 0.0


@dataclass
class LevelView:
    """The page after the slider moved: the level's picture and label PNG (``None`` on error)."""

    message: str
    segmentation: np.ndarray | None = None
    labels_path: Path | None = None
    n_segments: int = 0
    seconds: float = 0.0


@dataclass
class ClickView:
    """The page after a click: the heat map ``(H, W, 3)`` uint8 with the point marked."""

    message: str
    heatmap: np.ndarray | None = None
    seconds: float = 0.0


def ucm_picture(ucm2: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 picture of a doubleSize ``ucm2``: contours dark on white, darker = stronger.

    Each pixel takes the ``ucm2`` entry at its lower-right corner (the BSDS
    ``ucm2(3:2:end, 3:2:end)``), scaled by the largest value so weak hierarchies stay visible.
    """
    u = np.asarray(ucm2, dtype=np.float64)[2::2, 2::2]
    top = float(u.max()) if u.size else 0.0
    # the square root lifts faint contours (late, low values) into view
    strength = np.sqrt(u / top) if top > 0 else np.zeros_like(u)
    grey = np.round(255.0 * (1.0 - strength)).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def find_examples(folder: Path | None) -> dict[str, Path]:
    """``{file name: path}`` of the ``*.jpg`` / ``*.png`` images in ``folder`` (sorted)."""
    if folder is None or not Path(folder).is_dir():
        return {}
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"} and p.is_file())
    return {p.name: p for p in files}


def _shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` scaled down (antialiased, aspect kept) so its longest side is ``max_side``."""
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    size = (max(2, round(h * scale)), max(2, round(w * scale)))
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x[0].permute(1, 2, 0).clamp(0, 1).numpy()


class DemoBackend:
    """The demo's state and callbacks, independent of Gradio.

    Args:
        model: the :class:`SpecDiffNet` that answers.
        model_name: how the page names it (e.g. from :func:`ndd.inference.load_segmentation_model`).
        work_dir: the only place files are written (downloads); the caller removes it.
        settings: :class:`DemoSettings`.
        examples: ``{name: path}`` images offered on the page.
    """

    def __init__(self, model: SpecDiffNet, model_name: str, work_dir: Path,
                 settings: DemoSettings | None = None, examples: dict[str, Path] | None = None) -> None:
        self.model, self.model_name = model.eval(), model_name
        self.work_dir = Path(work_dir)
        self.settings = settings or DemoSettings()
        self.examples = dict(examples or {})
        self._cache: OrderedDict[str, tuple[str, ImageAnalysis]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._model_lock = threading.Lock()  # torch work one at a time: two sessions share the model
        #: forwards run so far (tests check that the slider and clicks add none)
        self.analyses_run = 0

    # ------------------------------------------------------------------ opening an image
    def open_example(self, name: str | None, n_segments: int | None = None) -> ImageView:
        """:meth:`open_image` of the example called ``name``."""
        if not name or name not in self.examples:
            offered = ", ".join(self.examples) or "none"
            return ImageView(None, f"**No such example:** {name!r}; choose one of {offered}.")
        return self.open_image(self.examples[name], n_segments)

    def open_image(self, path: str | Path | None, n_segments: int | None = None) -> ImageView:
        """Read, check and analyse an uploaded file (or reuse the analysis of the same image).

        Args:
            path: the uploaded file (Gradio's temporary copy) or an example.
            n_segments: level to show (default :attr:`DemoSettings.default_segments`).
        """
        start = time.perf_counter()
        if path is None:
            return ImageView(None, "Upload an image or pick an example.")
        path = Path(path)
        name = path.name
        try:
            image, note = self._read(path)
        except ValueError as err:
            return ImageView(None, f"**Could not use `{name}`:** {err}", seconds=time.perf_counter() - start)
        key = hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest() + f"-{image.shape[0]}x{image.shape[1]}"
        cached = self._cached(key)
        if cached is None:
            try:
                with self._model_lock:
                    analysis = analyse_image(image, self.model, max_side=self.settings.max_side,
                                             fast_clicks=self.settings.fast_clicks)
                    self.analyses_run += 1
            except (ValueError, RuntimeError) as err:  # e.g. too little of an image for the hierarchy
                return ImageView(None, f"**Could not segment `{name}`:** {err}", seconds=time.perf_counter() - start)
            self._store(key, Path(name).stem, analysis)
            stem = Path(name).stem
        else:
            stem, analysis = cached
        folder = self.work_dir / key
        folder.mkdir(parents=True, exist_ok=True)
        ucm2_path = folder / f"{_safe(stem)}_ucm2.mat"
        if not ucm2_path.exists():
            io.write_ucm2(ucm2_path, analysis.ucm2())
        k = self._clamp(analysis, n_segments or self.settings.default_segments)
        level = self._level(key, stem, analysis, k)
        H, W = analysis.size
        h, w = analysis.result.working_size
        steps = ", ".join(f"{step} {s:.2f} s" for step, s in analysis.timings.items())
        how = f"computed in **{analysis.seconds:.2f} s** ({steps})"
        if cached is not None:
            how = f"reused: {how} when first opened"
        lines = [f"**{name}**: {W}x{H} px, network input {w}x{h} px, finest level {analysis.n_segments} segments.",
                 f"Model: {self.model_name}; {how}."]
        if note:
            lines.append(note)
        return ImageView(key, "  \n".join(lines), level.segmentation, ucm_picture(analysis.ucm2()), k,
                         analysis.n_segments, level.labels_path, ucm2_path, time.perf_counter() - start)

    def _read(self, path: Path) -> tuple[np.ndarray, str]:
        """The image of ``path`` (scaled to the display cap) and a note about scaling, or ValueError."""
        s = self.settings
        if not path.is_file():
            raise ValueError("no such file")
        size = path.stat().st_size
        if size > s.max_upload_bytes:
            raise ValueError(f"the file is {size / 2**20:.1f} MB; this demo takes at most "
                             f"{s.max_upload_bytes / 2**20:.1f} MB (ndd demo --max-upload-mb)")
        try:  # the header alone: refuse huge images before decoding them
            height, width = io.check_image(path, min_size=0)
        except ValueError:  # not an image: io.read_image says so below, in its words
            width = height = 0
        if width * height > s.max_pixels:
            raise ValueError(f"the image is {width}x{height} = {width * height / 1e6:.0f} megapixels; "
                             f"this demo takes at most {s.max_pixels / 1e6:.0f}")
        try:
            image = io.read_image(path)
        except ValueError as err:  # io.ImageReadError: "<path>: reason"; the page shows the name
            text = str(err)
            raise ValueError(text[len(str(path)) + 2:] if text.startswith(f"{path}: ") else text) from None
        note = ""
        H, W = image.shape[:2]
        if max(H, W) > s.max_display_side:
            image = _shrink(image, s.max_display_side)
            note = (f"Large image ({W}x{H} px): shown, segmented and downloadable at "
                    f"{image.shape[1]}x{image.shape[0]} px; the network sees at most {s.max_side} px a side.")
        elif s.max_side is not None and max(H, W) > s.max_side:
            note = f"The network saw the image scaled to at most {s.max_side} px a side; results are at full size."
        return image, note

    # ------------------------------------------------------------------ slider and clicks
    def show_level(self, key: str | None, n_segments: int | float) -> LevelView:
        """The level with ``n_segments`` segments of the image ``key`` (no recomputation)."""
        start = time.perf_counter()
        cached = self._cached(key)
        if cached is None:
            return LevelView(_not_cached_message(key))
        stem, analysis = cached
        k = self._clamp(analysis, n_segments)
        view = self._level(key, stem, analysis, k)
        view.seconds = time.perf_counter() - start
        view.message = f"{k} segments (of {analysis.n_segments} at the finest level), {1000 * view.seconds:.0f} ms."
        return view

    def click(self, key: str | None, x: float, y: float) -> ClickView:
        """Diffusion-similarity heat map of pixel ``(x, y)`` (column, row) of the image ``key``."""
        start = time.perf_counter()
        cached = self._cached(key)
        if cached is None:
            return ClickView(_not_cached_message(key))
        _, analysis = cached
        H, W = analysis.size
        try:
            x, y = float(x), float(y)
            with self._model_lock:
                sim = analysis.similarity(x, y)
        except (TypeError, ValueError) as err:
            return ClickView(f"**Cannot use that point:** {err}")
        heat = io.heatmap_overlay(analysis.image, sim, (x, y))
        seconds = time.perf_counter() - start
        return ClickView(f"Diffusion similarity of pixel ({x:.0f}, {y:.0f}) to every pixel "
                         f"(red dot; dark blue 0, red 1), {1000 * seconds:.0f} ms.", heat, seconds)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _clamp(analysis: ImageAnalysis, n_segments: int | float) -> int:
        return min(max(int(round(float(n_segments))), 1), analysis.n_segments)

    def _level(self, key: str, stem: str, analysis: ImageAnalysis, k: int) -> LevelView:
        labels = analysis.labels(k)
        picture = io.colour_overlay(analysis.image, labels, mean_colours=False)
        path = self.work_dir / key / f"{_safe(stem)}_labels_{k}.png"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            io.write_labels(path, labels)
        return LevelView("", picture, path, k)

    def _cached(self, key: str | None) -> tuple[str, ImageAnalysis] | None:
        if key is None:
            return None
        with self._cache_lock:
            item = self._cache.get(key)
            if item is not None:
                self._cache.move_to_end(key)
            return item

    def _store(self, key: str, stem: str, analysis: ImageAnalysis) -> None:
        with self._cache_lock:
            self._cache[key] = (stem, analysis)
            self._cache.move_to_end(key)
            while len(self._cache) > max(1, self.settings.cache_size):
                self._cache.popitem(last=False)


def _safe(stem: str) -> str:
    """A file-name stem made of letters, digits, ``-``, ``_`` and ``.`` only (an upload's name is not trusted)."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem).strip("._")
    return cleaned[:80] or "image"


def _not_cached_message(key: str | None) -> str:
    """What the page says when a slider move or click comes without an analysed image."""
    if key is None:
        return "Upload an image or pick an example first."
    return "This image is no longer in the cache; open it again."
