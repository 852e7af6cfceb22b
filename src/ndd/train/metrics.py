"""Metric sinks of a training run: a CSV file and TensorBoard (rank 0 only)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from .config import save_yaml

__all__ = ["CSV_FIELDS", "MetricLogger", "read_metrics", "progress_bar", "close_all", "open_run_dir"]

#: Columns of ``metrics.csv``; a row leaves the ones it does not have empty.
CSV_FIELDS = (
    "step", "stage", "loss", "loss_lr", "loss_hr", "lr", "lr_diffusion",
    "mu", "t", "tau", "grad_norm", "steps_per_s", "elapsed_s", "kernel_acc",
)
_TB_TAGS = {
    "loss": "loss/total", "loss_lr": "loss/lr_kernel", "loss_hr": "loss/hr_segment",
    "lr": "lr/backbone", "lr_diffusion": "lr/diffusion", "mu": "diffusion/mu", "t": "diffusion/t",
    "tau": "diffusion/tau", "grad_norm": "grad_norm", "steps_per_s": "speed/steps_per_s",
    "kernel_acc": "eval/kernel_accuracy",
}


def progress_bar(enabled: bool, total: int, initial: int, desc: str | None = None) -> Any:
    """A tqdm bar counting training steps, or ``None`` when not ``enabled`` (rank 0 with ``progress``)."""
    if not enabled:
        return None
    from tqdm import tqdm  # only when a bar is shown

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, desc=desc)


def close_all(*sinks: Any) -> None:
    """Close each of ``sinks`` (progress bars, :class:`MetricLogger`) that is not ``None``."""
    for sink in sinks:
        if sink is not None:
            sink.close()


def read_metrics(path: str | Path) -> list[dict[str, str]]:
    """Rows of a ``metrics.csv`` as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class MetricLogger:
    """Appends metric rows to ``<run_dir>/metrics.csv`` and TensorBoard events to ``<run_dir>/tb``.

    Floats are written with ``repr`` (exact round trip), so runs can be compared
    bit for bit. When resuming at ``resume_step``, CSV rows after that step (from
    the interrupted run) are dropped and TensorBoard purges its later events.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        tensorboard: bool = True,
        resume_step: int | None = None,
        fields: tuple[str, ...] = CSV_FIELDS,
        tags: dict[str, str] | None = None,
    ) -> None:
        # fields / tags: the CSV columns and TensorBoard tags of another trainer (e.g. ndd.wsss)
        self.fields = tuple(fields)
        self.tags = _TB_TAGS if tags is None else dict(tags)
        self.csv_path = run_dir / "metrics.csv"
        if resume_step is not None and self.csv_path.exists():
            kept = [r for r in read_metrics(self.csv_path) if int(r["step"]) <= resume_step]
            self._rewrite(kept)
        elif not self.csv_path.exists() or resume_step is None:
            self._rewrite([])
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # deferred: slow import

            self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step)

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        with open(self.csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, restval="", extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    def log(self, step: int, metrics: dict[str, float | int]) -> None:
        """Write one row (and the same scalars to TensorBoard)."""
        row = {k: repr(v) if isinstance(v, float) else v for k, v in metrics.items()}
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields, restval="", extrasaction="ignore").writerow({"step": step, **row})
        if self.writer is not None:
            for key, value in metrics.items():
                if key in self.tags:
                    self.writer.add_scalar(self.tags[key], value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def open_run_dir(
    run_dir: Path,
    config: Any,
    *,
    tensorboard: bool,
    resume_step: int | None,
    fields: tuple[str, ...] = CSV_FIELDS,
    tags: dict[str, str] | None = None,
) -> MetricLogger:
    """Rank 0's start of a run: create ``run_dir``, write the resolved ``config.yaml`` (a
    configuration with ``to_dict``) and open the metric sinks (:class:`MetricLogger`)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    save_yaml(config, run_dir / "config.yaml")
    return MetricLogger(run_dir, tensorboard=tensorboard, resume_step=resume_step, fields=fields, tags=tags)
