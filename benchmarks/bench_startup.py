"""Whole-process time of ``ndd segment`` on one image against ``python -c "import torch"``, side by side.

Each round runs, one after the other, ``python -c "import torch"`` and ``python -m ndd segment IMAGE
--out <fresh folder>`` with the default model (on an x86 CPU its HED trunk runs in int8), with it
and ``--no-int8-edges`` (float32), and with ``--model bsds500`` (interpreter start-up, imports, model load, segmentation and every default output file included). The best of
``--runs`` rounds is printed for each, with its difference to ``import torch``: that difference
is what the latency target is about (issue 13: at most + 3 s with the default model, + 2 s with
the small one). The commands alternate within each round, so a change in the load of a shared
machine affects them alike; the load average is printed before and after, and the CPU seconds
(user + system) of each process beside its wall time.

One untimed round comes first (files in the page cache, bytecode written). Bytecode: by
default the children get ``PYTHONPYCACHEPREFIX=<temporary folder>`` and no
``PYTHONDONTWRITEBYTECODE``, so that every module, ndd's and torch's alike, is compiled once and
then read from its cache, as after ``pip install`` (which compiles) or any second run;
``--as-is`` keeps the environment, e.g. ``PYTHONDONTWRITEBYTECODE=1``, under which ndd's own
modules (not installed, so without cached bytecode) are compiled at every start.
``--baseline DIR`` adds the same two commands run from another source tree (``PYTHONPATH=DIR``,
e.g. ``git archive <commit> src | tar -x -C /tmp/old`` then ``--baseline /tmp/old/src``)::

    python benchmarks/bench_startup.py [--image examples/coffee.jpg] [--runs 3] [--threads N] [--as-is]
                                       [--baseline DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TORCH = 'python -c "import torch"'


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of ``command``, which must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} CPUs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=REPO / "examples/coffee.jpg")
    parser.add_argument("--runs", type=int, default=3, help="timed rounds; the best of them is reported")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS of the children (default: as in this environment)")
    parser.add_argument("--as-is", action="store_true",
                        help="keep the bytecode settings of this environment (default: a bytecode cache)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="also run ndd segment from this source folder (the one holding ndd/)")
    args = parser.parse_args()
    python = sys.executable
    segment = [python, "-m", "ndd", "segment", str(args.image), "--model"]
    commands: dict[str, tuple[list[str], dict[str, str]]] = {
        TORCH: ([python, "-c", "import torch"], {}),
        "ndd segment (default model)": ([*segment, "default"], {}),
        "ndd segment --no-int8-edges": ([*segment, "default", "--no-int8-edges"], {}),
        "ndd segment --model bsds500": ([*segment, "bsds500"], {}),
    }
    if args.baseline is not None:
        if not (args.baseline / "ndd" / "__init__.py").is_file():
            raise SystemExit(f"--baseline {args.baseline}: no ndd package there")
        where = {"PYTHONPATH": str(args.baseline.resolve())}
        commands["baseline: default model"] = ([*segment, "default"], where)
        commands["baseline: --model bsds500"] = ([*segment, "bsds500"], where)
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        if args.threads is not None:
            env["OMP_NUM_THREADS"] = str(args.threads)
        if not args.as_is:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        bytecode = ("as in this environment (PYTHONDONTWRITEBYTECODE="
                    f"{os.environ.get('PYTHONDONTWRITEBYTECODE', 'unset')})") if args.as_is else "cached"
        print(f"{args.image.name}, best of {args.runs} rounds after a warm-up round; "
              f"{platform.machine()}, Python {platform.python_version()}, "
              f"OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', 'unset')}, bytecode {bytecode}")
        print(f"before: {_load()}")
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for run in range(args.runs + 1):
            for k, (name, (command, extra_env)) in enumerate(commands.items()):
                if "segment" in command:  # a fresh folder: an earlier run's outputs would be skipped
                    command = [*command, "--out", str(Path(tmp) / f"out_{run}_{k}")]
                measured = _timed(command, {**env, **extra_env})
                if run > 0:
                    times[name].append(measured)
        print(f"after:  {_load()}")
    base = min(wall for wall, _ in times[TORCH])
    for name, measured in times.items():
        best = min(wall for wall, _ in measured)
        runs = ", ".join(f"{wall:.2f}" for wall, _ in measured)
        cpu = min(c for _, c in measured)
        extra = "" if name == TORCH else f"  = import torch + {best - base:.2f} s"
        print(f"{name:28s} best {best:6.2f} s wall{extra}   (runs {runs}; CPU best {cpu:.2f} s)")


if __name__ == "__main__":
    main()
