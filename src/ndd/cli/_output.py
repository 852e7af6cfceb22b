"""Output helpers shared by the subcommands."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def write_json_report(path: Path, report: dict[str, Any], prog: str) -> bool:
    """Write ``report`` as indented JSON (creating folders); on failure print why and return False."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1) + "\n")
    except OSError as exc:
        print(f"{prog}: cannot write {path}: {exc}", file=sys.stderr)
        return False
    print(f"wrote {path}")
    return True


@contextmanager
def messages_beside(bar: Any, prog: str) -> Iterator[None]:
    """While ``bar`` (a tqdm bar) is drawn, print Python warnings as one line ``PROG: warning: ...``
    and logging records through ``tqdm.write``, which clears the bar, prints, and redraws it."""
    import warnings

    from tqdm.contrib.logging import logging_redirect_tqdm

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        kind = "" if category is UserWarning else f" ({category.__name__})"
        text = " ".join(str(message).split())  # one line
        bar.write(f"{prog}: warning: {text}{kind}", file=sys.stderr)

    shown = warnings.showwarning
    warnings.showwarning = show
    try:
        with logging_redirect_tqdm(tqdm_class=type(bar)):
            yield
    finally:
        warnings.showwarning = shown
