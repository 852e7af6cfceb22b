"""Every ``ndd`` command the README and the docs pages show names options its parser has.

A renamed or removed flag would otherwise leave users copying commands that stop with "unrecognized
arguments". Commands are read from code blocks (with ``\\`` continuations) and from inline code
spans, as ``ndd COMMAND ...``, ``python -m ndd COMMAND ...`` or ``torchrun ... -m ndd COMMAND ...``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from ndd.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", REPO / "MODEL_CARD.md", *sorted((REPO / "docs").glob("*.md"))]
_COMMAND = re.compile(r"(?:^|[\s`(])(?:-m )?ndd ([a-z][a-z-]*)((?: [a-z][a-z-]*)?)(.*)")
_OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def _commands(text: str) -> list[str]:
    """Command lines of ``text``: lines of code blocks (fenced, or indented by 4 spaces) joined
    over trailing backslashes, and the inline code spans of the prose (which may wrap a line)."""
    lines, joined, prose, fenced = text.splitlines(), [], [], False
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced or line.startswith("    "):
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i].strip()
            joined.append(line)
        else:
            prose.append(line)
        i += 1
    spans = [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", "\n".join(prose))]
    return [c for c in joined + spans if "ndd " in c]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    return {} if action is None else dict(action.choices)


def _options(path: tuple[str, ...]) -> set[str] | None:
    """Option strings of ``ndd PATH...`` (``None`` if there is no such command)."""
    parser = build_parser(path[0])
    for name in path:
        parser = _subparsers(parser).get(name)
        if parser is None:
            return None
    return set(parser._option_string_actions)


def _uses() -> list[tuple[str, tuple[str, ...], str]]:
    """(page, command path, option) for every option a shown command passes."""
    uses = []
    for page in PAGES:
        for command in _commands(page.read_text()):
            for match in _COMMAND.finditer(command):
                sub, step, rest = match.group(1), match.group(2).strip(), match.group(3)
                path = (sub, step) if sub == "wsss" and step else (sub,)
                rest = rest.split(" | ")[0].split(" && ")[0].split(";")[0]  # this command only
                uses += [(page.name, path, option) for option in _OPTION.findall(rest)]
    return uses


def test_the_pages_show_commands_with_options():
    """The scan finds what it checks (a broken scan would pass the test below vacuously)."""
    uses = _uses()
    commands = {path for _, path, _ in uses}
    assert len(uses) > 150 and {("segment",), ("evaluate",), ("train",), ("wsss", "train")} <= commands


def test_every_option_shown_exists():
    known: dict[tuple[str, ...], set[str] | None] = {}
    missing = []
    for page, path, option in _uses():
        if path not in known:
            known[path] = _options(path)
        if known[path] is None:
            missing.append(f"{page}: no command 'ndd {' '.join(path)}'")
        elif option not in known[path]:
            missing.append(f"{page}: 'ndd {' '.join(path)}' has no option {option}")
    assert not missing, "\n".join(sorted(set(missing)))


@pytest.mark.parametrize("text, expected", [
    ("    ndd segment a.jpg --out o \\\n      --levels 2,3", [(("segment",), "--out"), (("segment",), "--levels")]),
    ("run `ndd wsss predict --checkpoint c.pt` then", [(("wsss", "predict"), "--checkpoint")]),
    ("```bash\ntorchrun --nproc_per_node=2 -m ndd train --config x.yaml\n```", [(("train",), "--config")]),
])
def test_the_scan_reads_continuations_spans_and_torchrun(text, expected, tmp_path, monkeypatch):
    page = tmp_path / "page.md"
    page.write_text(text)
    monkeypatch.setitem(globals(), "PAGES", [page])
    assert sorted({(path, option) for _, path, option in _uses()}) == sorted(set(expected))
