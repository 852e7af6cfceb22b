"""Worker of ``test_wsss_pipeline.py::test_ddp_of_both_training_steps``, run under torchrun.

``python wsss_ddp_worker.py OUT <ndd wsss train flags> -- <ndd wsss train-seg flags>``: runs both
training steps through the CLI (``ndd.cli.main``) in one process group and records, per rank,
which run-directory writers the process called (``OUT/writes_rank<r>.json``) and its parameters
and buffers after training (``OUT/<kind>_rank<r>.pt``).
"""
import json
import os
import sys
from pathlib import Path

import torch

import ndd.train.distributed as distributed
import ndd.train.loop as loop
import ndd.wsss.training as training
from ndd.cli import main

out = Path(sys.argv[1])
rank = int(os.environ["RANK"])
writes = []
for name in ("save_run_checkpoint", "open_run_dir"):
    original = getattr(training, name)

    def spy(*args, _original=original, _name=name, **kwargs):
        writes.append(_name)
        return _original(*args, **kwargs)

    setattr(training, name, spy)  # the names wsss.training calls
fit = training._Trainer.fit


def fit_and_keep(self):
    path = fit(self)
    torch.save({"parameters": {k: v.detach() for k, v in self.model.named_parameters()},
                "buffers": dict(self.model.named_buffers())},
               out / f"{self.KIND}_rank{rank}.pt")
    return path


training._Trainer.fit = fit_and_keep
argv = sys.argv[2:]
split = argv.index("--")
shutdown = distributed.shutdown_distributed
# one process group for both steps: leaving it and joining a new one in the same torchrun worker
# hung or failed on rank 1 in trials (each `ndd wsss` command is its own process in real use)
distributed.shutdown_distributed = lambda: None
loop.shutdown_distributed = lambda: None  # what the CLI's fit_and_leave calls
try:
    assert main(argv[:split]) == 0
    assert main(argv[split + 1:]) == 0
finally:
    shutdown()
(out / f"writes_rank{rank}.json").write_text(json.dumps(writes))
