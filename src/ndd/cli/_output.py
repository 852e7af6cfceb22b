"""Output helpers shared by the subcommands."""

from __future__ import annotations

import json
import sys
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
