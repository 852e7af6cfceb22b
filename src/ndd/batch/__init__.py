"""Segmenting many images: inputs, resumable runs, worker processes and torchrun ranks.

What ``ndd segment`` does over a collection, as plain functions, one module per job:

* :mod:`~ndd.batch.inputs`: :func:`collect_inputs` turns files, folders, glob patterns and
  ``@list.txt`` files into image paths (checked to exist, output names checked not to collide);
  :func:`check_out_dir` says at once (without creating it) when the output folder cannot be;
* :mod:`~ndd.batch.segment`: :func:`segment_file` segments one image and writes its outputs
  (:func:`ndd.io.write_segmentation`; every file is written under a temporary name and renamed,
  so a killed run never leaves a half-written file); :func:`segment_files` runs over many, in
  this process, in ``workers`` processes (one model per process) or as one rank of ``torchrun``
  (rank ``r`` of ``R`` takes inputs ``r, r + R, ...``), and skips inputs that a previous run
  completed with the same settings;
* :mod:`~ndd.batch.records`: what runs record in their output folder (completions with their
  settings, :func:`run_settings`; inputs started and processes that died) and what a new run
  reads back (:func:`resume_state`): an input that was being segmented when a run was killed
  outright (the system's out-of-memory killer on a huge photo, a crash in native code) is
  segmented alone in a separate process when the run is resumed, so that it cannot take the
  run down a second time;
* :mod:`~ndd.batch.pools`: process pools that hand out a few inputs at a time, give each
  outcome as it finishes, and let an input whose process dies fail alone.

Nothing here imports torch until a run is about to start (``ndd evaluate`` and the checks of
``ndd segment`` use it before torch is loaded).
"""

from .inputs import IMAGE_SUFFIXES, check_out_dir, collect_inputs
from .pools import WorkerStartError
from .records import (
    ResumeState,
    changed_settings,
    completed_inputs,
    recorded_inputs,
    resume_state,
    run_settings,
    settings_key,
)
from .segment import ImageOutcome, SegmentJob, auto_levels, default_workers, segment_file, segment_files

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageOutcome",
    "ResumeState",
    "SegmentJob",
    "WorkerStartError",
    "auto_levels",
    "changed_settings",
    "check_out_dir",
    "collect_inputs",
    "completed_inputs",
    "default_workers",
    "recorded_inputs",
    "resume_state",
    "run_settings",
    "segment_file",
    "segment_files",
    "settings_key",
]
