"""Process pools that survive the death of a worker: each input's outcome as it finishes, a few
inputs handed out at a time, and an input whose process dies failing alone.

Generic over the work (a picklable ``work(path) -> outcome`` and ``initializer(*initargs)`` run
once per process); :func:`ndd.batch.segment_files` runs its images through them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["WorkerStartError", "in_processes", "one_at_a_time", "spawn_pools"]


#: what ``work`` returns for an input
Outcome = TypeVar("Outcome")


class WorkerStartError(RuntimeError):
    """Worker processes stop before they are ready (while their ``initializer`` runs: for
    :func:`ndd.batch.segment_files`, while loading the model)."""


#: Inputs handed to each worker process beyond the one it is working on: enough that none waits
#: for its next input, few enough that a collection of millions costs nothing to queue
#: (``Executor.map`` creates a future per input at once: about 2 KB each, 2 GB for a million).
_QUEUED_PER_WORKER = 2


def in_processes(paths: Iterable[Path], workers: int, initargs: tuple, *,
                 work: Callable[[Path], Outcome], initializer: Callable[..., None],
                 died: Callable[[Path], Outcome]) -> Iterator[Outcome]:
    """``work(path)`` for every path in ``workers`` spawned processes, each set up once by
    ``initializer(*initargs)``; outcomes in the order they finish (``work`` and ``initializer``
    must be picklable: functions of a module, not of ``__main__`` run as ``-c``).

    At most ``workers * (1 + _QUEUED_PER_WORKER)`` inputs are handed out at a time, so each
    outcome can be recorded as soon as it is done (a killed run redoes only what was in flight).
    A worker process that dies (killed by the system for memory, a crash in native code) takes
    the whole pool and every input in it down with it; those inputs are then run again one at a
    time in a pool of one process (:func:`one_at_a_time`): the one that kills its process again
    gets ``died(path)`` as its outcome, every other is done, and a fresh pool goes on with the rest.

    Raises:
        WorkerStartError: a worker process stops before it is ready (while ``initializer`` runs).
    """
    pool = spawn_pools(initargs, initializer)
    queue = iter(paths)
    while True:
        suspects = yield from _pool_run(pool(workers), queue, workers * (1 + _QUEUED_PER_WORKER), work)
        if not suspects:
            return
        yield from one_at_a_time(suspects, pool, work, died)


def spawn_pools(initargs: tuple, initializer: Callable[..., None]) -> Callable[[int], Any]:
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
              work: Callable[[Path], Outcome]) -> Generator[Outcome, None, list[Path]]:
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


def one_at_a_time(paths: list[Path], pool: Callable[[int], Any], work: Callable[[Path], Outcome],
                  died: Callable[[Path], Outcome]) -> Iterator[Outcome]:
    """Each of ``paths`` alone in a pool of one process from ``pool(1)`` (:func:`spawn_pools`; a
    fresh one after each that dies, and ``died(path)`` as the outcome of the input it died on).

    Raises:
        WorkerStartError: a pool's process stops before it is ready (not an input's doing).
    """
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
                outcome = died(path)
            yield outcome
    finally:
        if current is not None:
            current.shutdown(wait=True, cancel_futures=True)
