"""The records runs of ``ndd segment`` leave in their output folder, and what a new run reads
from them to resume.

An image is recorded as complete after the last of its output files is in place, as one JSON
line in ``<out>/.ndd-segment.rank<r>.jsonl`` that also names the run's settings
(:func:`run_settings`) by a short key (:func:`settings_key`; the settings themselves are written
once, to ``<out>/.ndd-segment.settings-<key>.json``), so a run resumed with another model, other
options or more formats redoes those inputs instead of keeping outputs made another way. A run
in one process also records each input as it starts it, and any run records an input whose
process died (:data:`EVENTS`): :func:`resume_state` names the inputs that were being segmented
when a process was killed outright as suspects.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .inputs import input_key

if TYPE_CHECKING:
    from .segment import SegmentJob

__all__ = ["EVENTS", "Manifest", "ResumeState", "changed_settings", "completed_inputs", "recorded_inputs",
           "resume_state", "run_settings", "settings_key"]


_MANIFEST_GLOB = ".ndd-segment.rank*.jsonl"
_MANIFEST_NAME = ".ndd-segment.rank{rank}.jsonl"
_SETTINGS_FILE = ".ndd-segment.settings-{key}.json"


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
        >>> from ndd.batch import SegmentJob
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
EVENTS = ("started", "crashed", "failed", "interrupted")
_SUSPECT_EVENTS = ("started", "crashed")


class Manifest:
    """What one process (one rank) of a run appends to its manifest: completions and events.

    Every row is appended and flushed at once (a line cut by a kill is skipped when read); the
    run's settings are written once, when the manifest is opened.
    """

    def __init__(self, out_dir: Path, rank: int, settings: dict[str, Any]) -> None:
        self.path = out_dir / _MANIFEST_NAME.format(rank=rank)
        self.settings_id = _write_settings(out_dir, settings)

    def complete(self, path: Path, files: Sequence[str]) -> None:
        """``path`` is complete: its ``files`` (names in the output folder) are all in place."""
        self._append({"input": input_key(path), "files": list(files), "settings": self.settings_id})

    def note(self, path: Path, event: str) -> None:
        """An event of :data:`EVENTS` for ``path``."""
        if event not in EVENTS:
            raise ValueError(f"unknown manifest event {event!r}, not one of {EVENTS}")
        self._append({"input": input_key(path), "event": event})

    def _append(self, row: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


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
    event row (:data:`EVENTS`), or ``"done"`` where a completion row came after it.
    """
    cache: dict[str, dict[str, Any] | None] = {}
    # file names joined as strings: pathlib objects were 2/3 of the time (20,000 rows of 12 files: 2.6 s)
    prefix = os.path.join(os.fspath(out), "")
    for row in _manifest_records(out):
        if not _is_completion(row):
            if events is not None and row.get("event") in EVENTS:
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
        return [p for p in paths if input_key(p) not in self.completed]

    def suspected(self, paths: Sequence[Path]) -> list[Path]:
        """``paths`` that are :attr:`suspects` (segmented alone in a separate process)."""
        return [p for p in paths if input_key(p) in self.suspects] if self.suspects else []

    def redo_all(self) -> ResumeState:
        """This state for a run that redoes every input (``--no-resume``): nothing counts as
        completed, but the :attr:`suspects` are kept, so an input that killed a process is still
        segmented alone and cannot kill the new run too."""
        return self._replace(completed={}, redone=0, changed=[])


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
        key = input_key(path)
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

