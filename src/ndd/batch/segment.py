"""Segmenting many images: one image and its files (:func:`segment_file`), and a whole
collection (:func:`segment_files`) in this process, in worker processes or as one rank of
``torchrun``, resumable.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ndd.models.config import DEFAULT_MAX_SIDE

from . import pools
from .inputs import input_key, make_out_dir
from .records import Manifest, ResumeState, resume_state, run_settings

if TYPE_CHECKING:  # ndd.inference imports torch; this module is read before torch is needed
    from ndd.inference import HierarchyOptions

__all__ = ["ImageOutcome", "SegmentJob", "auto_levels", "default_workers", "segment_file", "segment_files"]


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



def segment_file(path: Path, model: Any, job: SegmentJob,
                 on_stage: Callable[[str], None] | None = None) -> ImageOutcome:
    """Segment one image and write its outputs; unreadable images and write errors become a
    ``"failed"`` outcome.

    ``on_stage`` is called with ``"reading"``, ``"segmenting"`` and ``"writing"`` as each
    begins (a progress display for a long image).
    """
    import torch

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
        # the files compress on as many threads as the network ran on (--threads): one per worker
        # process, both cores for one process on a 2-core machine; at most io.MAX_WRITE_THREADS
        written = io.write_segmentation(job.out_dir, path.stem, picture, result.level_maps(counts), result.to_ucm2,
                                        job.formats, edges=result.edge_map if result.edges is not None else None,
                                        threads=min(io.MAX_WRITE_THREADS, torch.get_num_threads()))
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
        from ndd.device import usable_cores

        cores = usable_cores()
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
    # the modules and the model live as long as the worker: frozen (gc.freeze), the collections
    # during the run skip them and the worker's exit does not take them apart one by one (about
    # 0.4 s, which the run's last line waited for), as in the ndd command itself
    gc.freeze()


def _work(path: Path) -> ImageOutcome:
    return _segment_or_fail(path, _WORKER["model"], _WORKER["job"])


def _died(path: Path) -> ImageOutcome:
    return ImageOutcome(path, "failed", error=f"{path}: the worker process segmenting it ended abruptly (killed "
                        "for lack of memory, or crashed); the other inputs went on", process_died=True)


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
            given); ``False`` redoes them. Either way the inputs an earlier run was segmenting
            in this process when it was killed outright, or whose worker process died
            (:attr:`ResumeState.suspects`), are segmented first, each alone in a separate
            process that loads ``model_spec`` (as a worker does): one that kills its process
            again is a ``"failed"`` outcome, and the run goes on.
        rank, world_size: this process's share of ``paths`` (``torchrun``: ``RANK``,
            ``WORLD_SIZE``): inputs ``rank, rank + world_size, ...``.
        on_stage: with ``workers == 1``, called as ``on_stage(path, stage)`` when each stage
            of each image begins (:func:`segment_file`).
        state: :func:`resume_state` already read for this run (its settings must be
            :func:`run_settings` of this job and model): the records are not read again.

    Raises:
        ValueError: the output folder cannot be created (on the first ``next``).
        WorkerStartError: worker processes (``workers > 1``, or the separate process of a
            suspect) stop while loading the model; what was done before stays recorded.
    """
    make_out_dir(job.out_dir)
    if int8_edges is None:
        from ndd.inference import resolve_int8_edges

        int8_edges = resolve_int8_edges(model_spec, device)
    share = list(paths)[rank::world_size]
    settings = run_settings(job, model_spec, int8_edges) if state is None else state.settings
    if state is None:
        state = resume_state([], job.out_dir, settings)
    if not resume:
        state = state.redo_all()
    done = state.completed
    todo, suspects = [], []
    for path in share:
        key = input_key(path)
        if key in done:
            yield ImageOutcome(path, "skipped", [job.out_dir / f for f in done[key]])
        else:
            (suspects if key in state.suspects else todo).append(path)
    manifest = Manifest(job.out_dir, rank, settings)

    def record(outcome: ImageOutcome) -> ImageOutcome:
        if outcome.status == "done":  # after every file is in place: a kill before this redoes the image
            manifest.complete(outcome.path, [p.name for p in outcome.written])
        elif outcome.status == "failed":  # "crashed" keeps it a suspect for the next run
            manifest.note(outcome.path, "crashed" if outcome.process_died else "failed")
        return outcome

    if suspects:  # each alone in a separate process, first: here it could take the whole run down again
        import torch

        threads = torch.get_num_threads()
        pool = pools.spawn_pools((model_spec, device, threads, job, int8_edges), _init_worker)
        for outcome in pools.one_at_a_time(suspects, pool, _work, _died):
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
            manifest.note(path, "started")
            try:
                outcome = _segment_or_fail(path, model, job, stage)
            except BaseException:  # Ctrl-C (KeyboardInterrupt), SystemExit: this input did nothing wrong
                manifest.note(path, "interrupted")
                raise
            yield record(outcome)
        return
    import torch

    threads = max(1, torch.get_num_threads() // workers)
    initargs = (model_spec, device, threads, job, int8_edges)
    for outcome in pools.in_processes(todo, workers, initargs, work=_work, initializer=_init_worker, died=_died):
        yield record(outcome)

