"""Segmenting many images: inputs, resumable runs, worker processes and torchrun ranks.

What ``ndd segment`` does over a collection, as plain functions:

* :func:`collect_inputs` turns files, folders, glob patterns and ``@list.txt`` files
  into image paths (checked to exist, output names checked not to collide);
* :func:`check_out_dir` says at once (without creating it) when the output folder cannot be;
* :func:`segment_file` segments one image and writes its outputs
  (:func:`ndd.io.write_segmentation`; every file is written under a temporary name and
  renamed, so a killed run never leaves a half-written file);
* :func:`segment_files` runs over many, in this process, in ``workers`` processes
  (:class:`concurrent.futures.ProcessPoolExecutor`, one model per process, a few inputs queued
  at a time; an input whose process dies fails alone, the others go on) or as one rank
  of ``torchrun`` (rank ``r`` of ``R`` takes inputs ``r, r + R, ...``), and skips inputs
  that a previous run completed with the same settings (:func:`run_settings`). Completion is
  recorded after the last output file of an image is in place, as one JSON line in
  ``<out>/.ndd-segment.rank<r>.jsonl`` that also names the run's settings (a short key; the
  settings themselves are written once, to ``<out>/.ndd-segment.settings-<key>.json``), so a
  run resumed with another model, other options or more formats redoes those inputs instead
  of keeping outputs made another way. A run in one process also records each input as it
  starts it: an input that was being segmented when a run was killed outright (the system's
  out-of-memory killer on a huge photo, a crash in native code) is segmented alone in a
  separate process when the run is resumed, so that it cannot take the run down a second time.
"""

from __future__ import annotations

import functools
import glob
import itertools
import json
import os
import time
from collections.abc import Callable, Container, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ndd.models.config import DEFAULT_MAX_SIDE

if TYPE_CHECKING:  # ndd.inference imports torch; this module is read before torch is needed
    from ndd.inference import HierarchyOptions

__all__ = [
    "IMAGE_SUFFIXES",
    "SegmentJob",
    "WorkerStartError",
    "auto_levels",
    "default_workers",
    "ImageOutcome",
    "ResumeState",
    "changed_settings",
    "check_out_dir",
    "collect_inputs",
    "completed_inputs",
    "recorded_inputs",
    "resume_state",
    "run_settings",
    "settings_key",
    "segment_file",
    "segment_files",
]

#: Suffixes a folder given as input is searched for (case-insensitive).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"})
_MANIFEST_GLOB = ".ndd-segment.rank*.jsonl"
_SETTINGS_FILE = ".ndd-segment.settings-{key}.json"


@dataclass(frozen=True)
class SegmentJob:
    """What to do with every image: where outputs go and how the hierarchy is built.

    Attributes:
        out_dir: output folder.
        formats: subset of :data:`ndd.io.SEGMENTATION_FORMATS`.
        levels: numbers of segments of the levels to write (those a hierarchy has), or ``None``
            for :func:`auto_levels` of each image's hierarchy.
        max_side: as for :func:`ndd.inference.segment_image`.
        options: how the hierarchy is built (:class:`ndd.inference.HierarchyOptions`, e.g.
            ``HierarchyOptions.authors()``); ``None``: the defaults.
    """

    out_dir: Path
    formats: tuple[str, ...]
    levels: tuple[int, ...] | None = None
    max_side: int | None = DEFAULT_MAX_SIDE
    options: HierarchyOptions | None = None


@dataclass
class ImageOutcome:
    """What happened to one input.

    ``status`` is ``"done"``, ``"skipped"`` (completed by an earlier run) or ``"failed"``
    (``error`` says why, in one line); ``missing_levels`` are the requested levels finer
    than this image's hierarchy (``finest`` segments).
    """

    path: Path
    status: str
    written: list[Path] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    missing_levels: list[int] = field(default_factory=list)
    finest: int = 0
    #: the process segmenting it died (killed by the system, a crash in native code)
    process_died: bool = False


def collect_inputs(specs: Sequence[str | os.PathLike[str]], check: bool = False,
                   checked_before: Container[str] = ()) -> tuple[list[Path], list[str]]:
    """Image paths from files, folders (their images, sorted, not recursive), glob patterns and
    ``@FILE`` lists (one path per line, ``#`` comments), in the order given, without repeats.

    Args:
        specs: what a user gave as inputs.
        check: also read each image's header (:func:`ndd.io.check_image`, 0.2-0.4 ms each
            here): files that are not images, cannot be read or are too small become
            problems and are left out, before any model is loaded.
        checked_before: resolved paths whose header ``check`` skips: inputs an earlier run
            segmented (:func:`recorded_inputs`), so a resumed run of a million images does not
            read a million headers again (minutes) before going on. One that is redone and no
            longer readable fails when it is read, in one line, as a truncated image does.

    Returns:
        ``(paths, problems)``: ``problems`` are one-line messages (a missing file, a folder
        without images, a pattern that matches nothing, two inputs whose outputs would share a
        name; with ``check``, an unusable image).

    Example:
        >>> collect_inputs(["no/such.jpg"])[1]
        ['no/such.jpg: no such file']
    """
    paths: list[Path] = []
    problems: list[str] = []

    def add(spec: str) -> None:
        path = Path(spec)
        if spec.startswith("@"):
            listing = Path(spec[1:])
            try:
                lines = listing.read_text().splitlines()
            except OSError as err:
                problems.append(f"{listing}: cannot read the list of inputs ({err.strerror or err})")
                return
            for line in lines:
                line = line.strip()
                if line and not line.startswith("#"):
                    add(line)
        elif path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                problems.append(f"{path}: folder holds no image ({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        elif glob.has_magic(spec):
            found = sorted(Path(p) for p in glob.glob(spec) if Path(p).is_file())
            if not found:
                problems.append(f"{spec}: pattern matches no file")
            paths.extend(found)
        else:
            problems.append(f"{path}: no such file")

    for spec in specs:
        add(os.fspath(spec))
    unique = list(dict.fromkeys(paths))
    by_stem: dict[str, Path] = {}
    for path in unique:
        if path.stem in by_stem:  # outputs are named by stem: the second would overwrite the first
            problems.append(f"{path}: its outputs would overwrite those of {by_stem[path.stem]} (same name)")
        else:
            by_stem[path.stem] = path
    kept = [p for p in unique if by_stem.get(p.stem) == p]
    if check:
        from ndd import io

        usable = []
        for path in kept:
            if checked_before and _manifest_key(path) in checked_before:
                usable.append(path)
                continue
            try:
                io.check_image(path)
            except io.ImageReadError as err:
                problems.append(str(err))
            else:
                usable.append(path)
        kept = usable
    return kept, problems


def check_out_dir(out_dir: str | os.PathLike[str]) -> None:
    """Check, without creating anything, that ``out_dir`` is or can become a writable folder.

    Raises:
        ValueError: one line naming the problem: ``out_dir`` is a file, a parent of it is a
            file, or the folder it would be made in (or it itself) is not writable.

    Example:
        >>> check_out_dir("/dev/null/out")
        Traceback (most recent call last):
        ...
        ValueError: output folder /dev/null/out: /dev/null is not a folder
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {out}: exists and is not a folder")
    existing = next((p for p in (out, *out.absolute().parents) if p.exists()), None)
    if existing is None:  # pragma: no cover - the root always exists
        return
    if not existing.is_dir():
        raise ValueError(f"output folder {out}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == out else f" (in {existing})"
        raise ValueError(f"output folder {out}: no permission to write{where}")


def _make_out_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create the output folder {out}: {err.strerror or err}") from None


def _manifest_key(path: Path) -> str:
    """What ``str(path.resolve())`` gives, at half its cost (43 against 79 us here), and resolved
    once per input: a run looks each input up four times or more (the header check, the resume
    state, its share, its record). Cached with the working directory, so a change of it is seen;
    a link changed during the run is not (the record then names the input as it was)."""
    return _resolved(os.getcwd(), os.fspath(path))


@functools.lru_cache(maxsize=1 << 20)
def _resolved(cwd: str, path: str) -> str:
    return os.path.realpath(os.path.join(cwd, path))


def run_settings(job: SegmentJob, model_spec: str | None = None, int8_edges: bool = False) -> dict[str, Any]:
    """What decides an image's outputs in a run, as recorded for resuming (JSON values).

    The model (``model_spec`` as ``ndd segment --model`` takes it; a shipped model by its
    member name, file hash, calibration, config (its hierarchy settings among them) and edge
    fusion head, so ``default`` after an upgrade that changed it counts as another model; a checkpoint file
    also by its size and modification time, so a retrained file at the same path counts as
    another model), ``int8_edges``, and the formats, levels, ``max_side`` and hierarchy options
    of ``job``.
    The device is not part of it: the same model gives the same segmentation on every device.

    Example:
        >>> from pathlib import Path
        >>> s = run_settings(SegmentJob(Path("out"), ("ucm2",)), "handcrafted")
        >>> s["model"], s["formats"], s["options"]["method"]
        ('handcrafted', ['ucm2'], 'auto')
    """
    import dataclasses

    from ndd.inference import HierarchyOptions  # torch: only once a run is about to start
    from ndd.models import get_weights

    model: Any = model_spec or "default"
    path = Path(model) if model_spec else None
    if path is not None and path.is_file():
        stat = path.stat()
        model = {"file": str(path.resolve()), "bytes": stat.st_size, "modified_ns": stat.st_mtime_ns}
    elif (member := get_weights(model)) is not None:  # by what it is: a new default (or calibration) is another model
        entry = member.value
        model = {"shipped": member.name, "sha256": entry.sha256, "calibration": entry.calibration,
                 "config": entry.config, "edge_fusion": entry.edge_fusion}
    settings = {
        "model": model,
        "int8_edges": bool(int8_edges),
        "formats": sorted(job.formats),
        "levels": None if job.levels is None else list(job.levels),
        "max_side": job.max_side,
        "options": dataclasses.asdict(job.options if job.options is not None else HierarchyOptions()),
    }
    return json.loads(json.dumps(settings))  # tuples as lists: compares equal to what is read back


def _settings_differ(recorded: dict[str, Any] | None, settings: dict[str, Any]) -> list[str]:
    """Names of the settings that make a recorded completion unusable now (empty: usable)."""
    if recorded is None:  # a record without settings: how it was made is unknown
        return ["settings not recorded"]
    changed = [k for k in settings if k != "formats" and recorded.get(k) != settings[k]]
    if not set(settings["formats"]) <= set(recorded.get("formats", [])):  # fewer formats: still complete
        changed.append("formats")
    return changed


def settings_key(settings: dict[str, Any]) -> str:
    """A short name for :func:`run_settings` (16 hex digits of the SHA-256 of their JSON), what
    each manifest row records instead of the settings themselves (a row stays short, a
    collection of millions keeps a small manifest)."""
    import hashlib

    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _write_settings(out: Path, settings: dict[str, Any]) -> str:
    key = settings_key(settings)
    path = out / _SETTINGS_FILE.format(key=key)
    # written by every run (a damaged copy is mended); ranks write the same bytes, each to a
    # name of its own, then rename
    tmp = path.with_name(f".partial-{os.getpid()}-{path.name}")
    tmp.write_text(json.dumps(settings, sort_keys=True, indent=1))
    os.replace(tmp, path)
    return key


def _recorded_settings(out: Path, key: str | None, cache: dict[str, dict[str, Any] | None]) -> dict[str, Any] | None:
    if key is None:
        return None
    if key not in cache:
        try:
            cache[key] = json.loads((out / _SETTINGS_FILE.format(key=key)).read_text())
        except (OSError, json.JSONDecodeError):  # removed or damaged: how those inputs were made is unknown
            cache[key] = None
    return cache[key]


#: Events a manifest row may record instead of a completion (``{"input": ..., "event": ...}``):
#: an input was started in this process (written before it is segmented), the process segmenting
#: it died (a worker, or the separate process of a suspect), or it failed or was interrupted
#: (Ctrl-C) without taking its process down. An input whose latest row is one of
#: :data:`_SUSPECT_EVENTS` is a suspect (:attr:`ResumeState.suspects`).
_EVENTS = ("started", "crashed", "failed", "interrupted")
_SUSPECT_EVENTS = ("started", "crashed")


def _manifest_records(out: Path) -> Iterator[dict[str, Any]]:
    """Every readable row of every manifest in ``out`` that names an input, completions and
    events alike, in the order recorded (manifest by manifest)."""
    for manifest in sorted(out.glob(_MANIFEST_GLOB)):
        try:
            lines = manifest.read_text().splitlines()
        except OSError:  # unreadable: its inputs count as not done (they are redone)
            continue
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill: that image is redone
                continue
            if isinstance(row, dict) and isinstance(row.get("input"), str):
                yield row


def _is_completion(row: dict[str, Any]) -> bool:
    return isinstance(row.get("files"), list)


def _manifest_lines(out: Path) -> Iterator[dict[str, Any]]:
    """Every readable completion row of every manifest in ``out``, as recorded."""
    return filter(_is_completion, _manifest_records(out))


def _manifest_rows(out: Path, events: dict[str, str] | None = None
                   ) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Complete rows of every manifest in ``out``, each with the settings it was made with.

    ``events``, when given, is filled on the way (the same read) with each input's latest
    event row (:data:`_EVENTS`), or ``"done"`` where a completion row came after it.
    """
    cache: dict[str, dict[str, Any] | None] = {}
    # file names joined as strings: pathlib objects were 2/3 of the time (20,000 rows of 12 files: 2.6 s)
    prefix = os.path.join(os.fspath(out), "")
    for row in _manifest_records(out):
        if not _is_completion(row):
            if events is not None and row.get("event") in _EVENTS:
                events[row["input"]] = row["event"]
            continue
        if events is not None:
            events[row["input"]] = "done"
        if all(os.path.isfile(prefix + str(name)) for name in row["files"]):
            yield row, _recorded_settings(out, row.get("settings"), cache)


def recorded_inputs(out_dir: str | os.PathLike[str]) -> set[str]:
    """Inputs (resolved paths) that runs into ``out_dir`` recorded as segmented, with whatever
    settings and whether or not their files are still there: the records alone, no file
    checked and no torch (:func:`collect_inputs` takes them as ``checked_before``)."""
    return {row["input"] for row in _manifest_lines(Path(out_dir))}


def completed_inputs(out_dir: str | os.PathLike[str], settings: dict[str, Any] | None = None) -> dict[str, list[str]]:
    """Inputs (resolved paths) that earlier runs into ``out_dir`` completed, with their files.

    An input counts as completed only if every file recorded for it still exists and, when
    ``settings`` (:func:`run_settings`) are given, it was made with those settings (at least
    the formats asked for). The latest record of an input wins.
    """
    if settings is not None:
        return resume_state([], out_dir, settings).completed
    return {row["input"]: row["files"] for row, _ in _manifest_rows(Path(out_dir))}


class ResumeState(NamedTuple):
    """What earlier runs into an output folder left for a run with ``settings``
    (:func:`resume_state`): read once, used to plan the run and then by :func:`segment_files`."""

    settings: dict[str, Any]
    #: inputs (resolved paths) completed with ``settings``, with their files
    completed: dict[str, list[str]]
    #: how many of the inputs asked about were completed with other settings (they are redone)
    redone: int
    #: which settings differ for those
    changed: list[str]
    #: inputs (resolved paths) not completed that were being segmented when a run's process was
    #: killed outright, or whose own process died (:func:`segment_files` runs them alone)
    suspects: frozenset[str] = frozenset()

    def pending(self, paths: Sequence[Path]) -> list[Path]:
        """``paths`` that still have to be segmented (not completed with these settings)."""
        return [p for p in paths if _manifest_key(p) not in self.completed]

    def suspected(self, paths: Sequence[Path]) -> list[Path]:
        """``paths`` that are :attr:`suspects` (segmented alone in a separate process)."""
        return [p for p in paths if _manifest_key(p) in self.suspects] if self.suspects else []


def resume_state(paths: Sequence[Path], out_dir: str | os.PathLike[str], settings: dict[str, Any]) -> ResumeState:
    """One read of ``out_dir``'s records: :func:`completed_inputs` with ``settings`` and
    :func:`changed_settings` for ``paths`` together (a collection of millions has long ones)."""
    done: dict[str, list[str]] = {}
    latest: dict[str, dict[str, Any] | None] = {}
    events: dict[str, str] = {}
    for row, recorded in _manifest_rows(Path(out_dir), events):
        latest[row["input"]] = recorded
        if not _settings_differ(recorded, settings):
            done[row["input"]] = row["files"]
        else:
            done.pop(row["input"], None)
    count, names = 0, set()
    for path in paths:
        key = _manifest_key(path)
        if key in latest:
            differ = _settings_differ(latest[key], settings)
            count += bool(differ)
            names.update(differ)
    suspects = frozenset(key for key, event in events.items() if event in _SUSPECT_EVENTS and key not in done)
    return ResumeState(settings, done, count, sorted(names), suspects)


def changed_settings(paths: Sequence[Path], out_dir: str | os.PathLike[str],
                     settings: dict[str, Any]) -> tuple[int, list[str]]:
    """How many of ``paths`` earlier runs into ``out_dir`` completed with other ``settings``
    (a resumed run redoes them), and which settings differ.
    """
    state = resume_state(paths, out_dir, settings)
    return state.redone, state.changed


def segment_file(path: Path, model: Any, job: SegmentJob,
                 on_stage: Callable[[str], None] | None = None) -> ImageOutcome:
    """Segment one image and write its outputs; unreadable images and write errors become a
    ``"failed"`` outcome.

    ``on_stage`` is called with ``"reading"``, ``"segmenting"`` and ``"writing"`` as each
    begins (a progress display for a long image).
    """
    from ndd import io
    from ndd.inference import segment_image

    start = time.perf_counter()
    if on_stage is not None:
        on_stage("reading")
    try:
        image = io.read_image(path)
    except (ValueError, OSError) as err:
        return ImageOutcome(path, "failed", error=str(err))
    if on_stage is not None:
        on_stage("segmenting")
    result = segment_image(image, model, max_side=job.max_side, options=job.options)
    wanted = job.levels if job.levels is not None else auto_levels(result.hierarchy.n_segments)
    counts = result.available_levels(wanted)
    picture = io.to_uint8_image(image)
    del image  # the float copy is 4x the size of the picture and no longer needed
    if on_stage is not None:
        on_stage("writing")
    try:
        written = io.write_segmentation(job.out_dir, path.stem, picture, result.level_maps(counts), result.to_ucm2,
                                        job.formats, edges=result.edge_map if result.edges is not None else None)
    except OSError as err:  # a full disk, a folder removed meanwhile: this image fails, the run goes on
        return ImageOutcome(path, "failed", error=f"{path}: cannot write its outputs to {job.out_dir} "
                                                  f"({err.strerror or err})")
    missing = sorted(set(wanted) - set(counts)) if set(job.formats) - {"ucm2", "edges"} else []
    return ImageOutcome(path, "done", written, seconds=time.perf_counter() - start, missing_levels=missing,
                        finest=result.hierarchy.n_segments)


def default_workers(n_images: int, device: str = "cpu", threads: int | None = None,
                    cores: int | None = None, most: int = 4) -> int:
    """Worker processes ``ndd segment`` runs when ``--workers`` is not given.

    On the CPU, several images go to ``min(n_images, cores // threads, most)`` processes
    (``threads`` per process, default 1): much of the pipeline (the hierarchy, depthwise
    convolutions, small spectral steps) uses one core, so processes beat threads: on the 2-core
    machine of the README, 2 processes x 1 thread segmented 1.43x and 1.08x as many images per
    second as 1 x 2 in two sessions (``benchmarks/bench_segment_many.py``). ``most`` bounds the
    memory (about 1 GB per process with the default model). One image, or a GPU: 1.

    Example:
        >>> default_workers(200, "cpu", cores=2), default_workers(1, "cpu", cores=8), default_workers(9, "cuda:0")
        (2, 1, 1)
    """
    if n_images < 2 or not str(device).startswith("cpu"):
        return 1
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(n_images, cores // max(1, threads or 1), most))


def auto_levels(finest: int, coarsest: int = 2, most: int = 32) -> tuple[int, ...]:
    """The levels written by default: 2, 4, 8, ... up to ``most`` segments, capped by the hierarchy.

    A hierarchy finer than ``most`` gives ``2, 4, 8, 16, 32``; one with 20 segments at its
    finest gives ``2, 4, 8, 16, 20``, so no default level is ever missing.

    Example:
        >>> auto_levels(20)
        (2, 4, 8, 16, 20)
    """
    levels = []
    k = coarsest
    while k < min(finest, most):
        levels.append(k)
        k *= 2
    levels.append(min(finest, most))
    return tuple(sorted(set(max(1, v) for v in levels)))


# -- worker processes ------------------------------------------------------------ #
_WORKER: dict[str, Any] = {}


def _init_worker(model_spec: str | None, device: str, threads: int, job: SegmentJob, int8_edges: bool) -> None:
    import torch

    from ndd.inference import load_segmentation_model

    torch.set_num_threads(threads)
    _WORKER["model"], _ = load_segmentation_model(model_spec, device, int8_edges)
    _WORKER["job"] = job


def _work(path: Path) -> ImageOutcome:
    return _segment_or_fail(path, _WORKER["model"], _WORKER["job"])


def _segment_or_fail(path: Path, model: Any, job: SegmentJob,
                     on_stage: Callable[[str], None] | None = None) -> ImageOutcome:
    """:func:`segment_file`, with any error of this one image (out of memory on a huge photo,
    CUDA's included; a failure inside the model) as its ``"failed"`` outcome, in one line: one
    bad input must not stop the others, in this process or in a worker."""
    try:
        return segment_file(path, model, job, on_stage)
    except Exception as err:
        if type(err).__name__ == "OutOfMemoryError":  # torch's, on a GPU: give its cache back for the next image
            import torch

            torch.cuda.empty_cache()
        first = str(err).strip().splitlines()[:1]
        return ImageOutcome(path, "failed", error=f"{path}: {type(err).__name__}" + (f": {first[0]}" if first else ""))


def segment_files(
    paths: Sequence[Path],
    job: SegmentJob,
    *,
    model: Any = None,
    model_spec: str | None = None,
    device: str = "cpu",
    workers: int = 1,
    resume: bool = True,
    rank: int = 0,
    world_size: int = 1,
    on_stage: Callable[[Path, str], None] | None = None,
    int8_edges: bool | None = None,
    state: ResumeState | None = None,
) -> Iterator[ImageOutcome]:
    """Segment ``paths`` into ``job.out_dir``, yielding one outcome per input as it finishes.

    Args:
        paths: images (e.g. from :func:`collect_inputs`).
        job: outputs and hierarchy settings.
        model: a loaded :class:`~ndd.models.SpecDiffNet` for ``workers == 1``.
        model_spec, device, int8_edges: what each worker process loads (as ``ndd segment
            --model``, ``--device``, ``--int8-edges``), for ``workers > 1`` (or when ``model``
            is ``None``); ``int8_edges=None``: :func:`ndd.inference.resolve_int8_edges` (int8
            for the default model on an x86 CPU). Recorded for resuming: pass the value that
            a ``model`` given here was loaded with.
        workers: processes; each loads the model once and uses ``torch threads / workers``.
            Outcomes then come in the order the images finish; an image whose process dies
            (e.g. killed for memory) is a ``"failed"`` outcome, the others are still segmented.
        resume: skip inputs that an earlier run into the same folder completed with the same
            :func:`run_settings` (``model_spec`` names the model there, also when ``model`` is
            given); and segment first, each alone in a separate process that loads
            ``model_spec`` (as a worker does), the inputs an earlier run was segmenting in
            this process when it was killed outright, or whose worker process died
            (:attr:`ResumeState.suspects`): one that kills its process again is a ``"failed"``
            outcome, and the run goes on.
        rank, world_size: this process's share of ``paths`` (``torchrun``: ``RANK``,
            ``WORLD_SIZE``): inputs ``rank, rank + world_size, ...``.
        on_stage: with ``workers == 1``, called as ``on_stage(path, stage)`` when each stage
            of each image begins (:func:`segment_file`).
        state: :func:`resume_state` already read for this run (its settings must be
            :func:`run_settings` of this job and model): the records are not read again.

    Raises:
        ValueError: the output folder cannot be created (on the first ``next``).
        WorkerStartError: with ``workers > 1``, worker processes stop while loading the model;
            what was done before stays recorded.
    """
    _make_out_dir(job.out_dir)
    if int8_edges is None:
        from ndd.inference import resolve_int8_edges

        int8_edges = resolve_int8_edges(model_spec, device)
    share = list(paths)[rank::world_size]
    settings = run_settings(job, model_spec, int8_edges) if state is None else state.settings
    if not resume:
        state = ResumeState(settings, {}, 0, [])
    elif state is None:
        state = resume_state([], job.out_dir, settings)
    done = state.completed
    todo, suspects = [], []
    for path in share:
        key = _manifest_key(path)
        if key in done:
            yield ImageOutcome(path, "skipped", [job.out_dir / f for f in done[key]])
        else:
            (suspects if key in state.suspects else todo).append(path)
    manifest = job.out_dir / f".ndd-segment.rank{rank}.jsonl"
    settings_id = _write_settings(job.out_dir, settings)

    def note(path: Path, event: str) -> None:
        with open(manifest, "a") as f:
            f.write(json.dumps({"input": _manifest_key(path), "event": event}) + "\n")

    def record(outcome: ImageOutcome) -> ImageOutcome:
        if outcome.status == "done":  # after every file is in place: a kill before this redoes the image
            row = {"input": _manifest_key(outcome.path), "files": [p.name for p in outcome.written],
                   "settings": settings_id}
            with open(manifest, "a") as f:
                f.write(json.dumps(row) + "\n")
        elif outcome.status == "failed":  # "crashed" keeps it a suspect for the next run
            note(outcome.path, "crashed" if outcome.process_died else "failed")
        return outcome

    if suspects:  # each alone in a separate process, first: here it could take the whole run down again
        import torch

        threads = torch.get_num_threads()
        for outcome in _one_at_a_time(suspects, _spawn_pools((model_spec, device, threads, job, int8_edges)), _work):
            yield record(outcome)
    if not todo:  # nothing left: no model to load, no worker to start
        return
    workers = min(workers, len(todo))  # a process more than inputs would only load a model
    if workers <= 1:
        if model is None:
            from ndd.inference import load_segmentation_model

            model, _ = load_segmentation_model(model_spec, device, int8_edges)
        for path in todo:
            stage = None if on_stage is None else (lambda name, path=path: on_stage(path, name))
            # recorded before it starts: if this process is killed outright on this input (the
            # out-of-memory killer), the next run knows it and segments it in a separate process
            note(path, "started")
            try:
                outcome = _segment_or_fail(path, model, job, stage)
            except BaseException:  # Ctrl-C (KeyboardInterrupt), SystemExit: this input did nothing wrong
                note(path, "interrupted")
                raise
            yield record(outcome)
        return
    import torch

    threads = max(1, torch.get_num_threads() // workers)
    for outcome in _in_processes(todo, workers, (model_spec, device, threads, job, int8_edges)):
        yield record(outcome)


class WorkerStartError(RuntimeError):
    """Worker processes of :func:`segment_files` stop before they are ready (while loading the model)."""


#: Inputs handed to each worker process beyond the one it is working on: enough that none waits
#: for its next input, few enough that a collection of millions costs nothing to queue
#: (``Executor.map`` creates a future per input at once: about 2 KB each, 2 GB for a million).
_QUEUED_PER_WORKER = 2


def _in_processes(paths: Iterable[Path], workers: int, initargs: tuple, *,
                  work: Callable[[Path], ImageOutcome] = _work,
                  initializer: Callable[..., None] = _init_worker) -> Iterator[ImageOutcome]:
    """``work(path)`` for every path in ``workers`` spawned processes, each set up once by
    ``initializer(*initargs)``; outcomes in the order they finish.

    At most ``workers * (1 + _QUEUED_PER_WORKER)`` inputs are handed out at a time, so each
    outcome can be recorded as soon as it is done (a killed run redoes only what was in flight).
    A worker process that dies (killed by the system for memory, a crash in native code) takes
    the whole pool and every input in it down with it; those inputs are then run again one at a
    time in a pool of one process: the one that kills its process again becomes a ``"failed"``
    outcome that says so, every other is done, and a fresh pool goes on with the rest.

    Raises:
        WorkerStartError: a worker process stops before it is ready (while ``initializer`` runs).
    """
    pool = _spawn_pools(initargs, initializer)
    queue = iter(paths)
    while True:
        suspects = yield from _pool_run(pool(workers), queue, workers * (1 + _QUEUED_PER_WORKER), work)
        if not suspects:
            return
        yield from _one_at_a_time(suspects, pool, work)


def _spawn_pools(initargs: tuple, initializer: Callable[..., None] = _init_worker) -> Callable[[int], Any]:
    """A maker of process pools of a given size whose processes are spawned and set up by
    ``initializer(*initargs)``."""
    # imported here: a run in this process needs neither (multiprocessing is tens of ms of start-up)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: forking a process whose torch thread pools are running can hang
    context = multiprocessing.get_context("spawn")

    def pool(size: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(size, mp_context=context, initializer=initializer, initargs=initargs)

    return pool


def _pool_run(pool: Any, queue: Iterator[Path], limit: int,
              work: Callable[[Path], ImageOutcome]) -> Generator[ImageOutcome, None, list[Path]]:
    """Runs ``queue`` through ``pool`` with at most ``limit`` inputs in it, yielding outcomes as
    they finish; returns the inputs that were in the pool when a worker process died (empty when
    the queue ran out)."""
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    running: dict[Any, Path] = {}
    suspects: list[Path] = []
    try:
        while True:
            for path in itertools.islice(queue, limit - len(running)):
                try:
                    running[pool.submit(work, path)] = path
                except BrokenProcessPool:  # broken meanwhile: this one never ran, but must not be lost
                    suspects.append(path)
                    break
            if suspects or not running:
                return suspects + list(running.values())
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                path = running.pop(future)
                try:
                    outcome = future.result()
                except BrokenProcessPool:
                    suspects.append(path)
                else:
                    yield outcome
            if suspects:  # every input still in the pool went down with it
                return suspects + list(running.values())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _ready() -> bool:
    return True


def _one_at_a_time(paths: list[Path], pool: Callable[[int], Any],
                   work: Callable[[Path], ImageOutcome]) -> Iterator[ImageOutcome]:
    """Each of ``paths`` alone in a pool of one process (a fresh one after each that dies)."""
    from concurrent.futures.process import BrokenProcessPool

    current = None
    try:
        for path in paths:
            if current is None:
                current = pool(1)
                try:  # a pool that dies before it is ready is not the input's doing
                    current.submit(_ready).result()
                except BrokenProcessPool:
                    raise WorkerStartError("a worker process stopped while starting (loading the model); "
                                           "its message is above") from None
            try:
                outcome = current.submit(work, path).result()
            except BrokenProcessPool:
                current.shutdown(wait=True)
                current = None
                outcome = ImageOutcome(path, "failed", error=f"{path}: the worker process segmenting it ended "
                                       "abruptly (killed for lack of memory, or crashed); the other inputs went on",
                                       process_died=True)
            yield outcome
    finally:
        if current is not None:
            current.shutdown(wait=True, cancel_futures=True)
