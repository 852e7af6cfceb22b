"""``python batch_kill_driver.py [--no-resume] OUT INPUT...``: ``segment_files`` over INPUTs into
OUT in one process (the hand-crafted model, resumed unless ``--no-resume``), printing ``status
name`` per outcome; for the kill-and-resume test of ``test_batch.py``.

An input named ``bomb*`` ends the process that segments it at once (``os._exit(9)``), as the
system's out-of-memory killer would. The patch is made at the top level on purpose: spawned
processes import this file as their main module, so a separate process segmenting the bomb
dies on it too.
"""
import os
import sys
from pathlib import Path

import ndd.batch

_segment_file = ndd.batch.segment.segment_file


def _segment_file_or_die(path, *args, **kwargs):
    if path.name.startswith("bomb"):
        os._exit(9)
    return _segment_file(path, *args, **kwargs)


ndd.batch.segment.segment_file = _segment_file_or_die

if __name__ == "__main__":
    args = sys.argv[1:]
    resume = args[0] != "--no-resume"
    args = args if resume else args[1:]
    job = ndd.batch.SegmentJob(Path(args[0]), ("labels",), (2,))
    for outcome in ndd.batch.segment_files([Path(p) for p in args[1:]], job, model_spec="handcrafted",
                                           device="cpu", int8_edges=False, resume=resume):
        print(outcome.status, outcome.path.name, flush=True)
