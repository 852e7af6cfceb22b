"""Work and set-up functions for the worker-process tests of ``test_batch.py``.

A module of their own, importing nothing heavy: spawned worker processes import it to unpickle
them, and it must not drag the test module's imports (torch, the models) into every process.
"""
import os
from pathlib import Path

from ndd.batch import ImageOutcome


def no_setup() -> None:
    pass


def failing_setup() -> None:
    raise OSError("no memory for the model (as a test)")


def die_on_bomb(path: Path) -> ImageOutcome:
    """Ends its process at once, as the system's out-of-memory killer would, on an input named
    ``bomb*``; any other input is done."""
    if path.name.startswith("bomb"):
        os._exit(9)
    return ImageOutcome(path, "done")


def report_frozen(path: Path) -> ImageOutcome:
    """Done, with ``finest`` 1 if this process has frozen objects (``gc.freeze``), else 0."""
    import gc

    return ImageOutcome(path, "done", finest=int(gc.get_freeze_count() > 0))
