"""numba compilation of the benchmark's loops (matching, thinning), cached on disk where possible."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numba

F = TypeVar("F", bound=Callable)


def compiled(fn: F) -> F:
    """``numba.njit(nogil=True)`` with numba's on-disk cache, so only the first run compiles.

    The cache lives beside the module, or in the user's cache folder when the install is
    read-only. Where neither folder can be written (a read-only install without a home
    folder), numba refuses caching at decoration time; the function is then compiled at
    every start (about 8 s) rather than failing the import.
    """
    try:
        return numba.njit(cache=True, nogil=True)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(nogil=True)(fn)
