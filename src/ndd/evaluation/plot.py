"""Boundary precision-recall plots, as the BSDS ``plot_eval``.

matplotlib is an optional dependency (``pip install
'neural-diffusion-distance[plot]'``); it is imported only inside the functions
here, so ``ndd.evaluation`` and ``ndd evaluate`` without ``--plot`` never need
it.  The figure is drawn on a bare :class:`matplotlib.figure.Figure` (Agg
canvas), never through pyplot, so no global backend is touched.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ndd.evaluation.aggregate import BoundarySummary
from ndd.evaluation.dataset import DatasetEvaluation

__all__ = ["PlotUnavailable", "plot_pr", "require_matplotlib"]

INSTALL_HINT = "python -m pip install 'neural-diffusion-distance[plot]' (or matplotlib>=3.7)"


class PlotUnavailable(ImportError):
    """matplotlib is not installed; the message says what to install."""


def require_matplotlib() -> Any:
    """Import and return matplotlib, or raise :class:`PlotUnavailable` with a one-line hint."""
    try:
        import matplotlib
    except ImportError as exc:
        raise PlotUnavailable(f"plotting needs matplotlib, which is not installed: {INSTALL_HINT}") from exc
    return matplotlib


def _summary(item: DatasetEvaluation | BoundarySummary, name: str) -> BoundarySummary:
    bd = item.boundary if isinstance(item, DatasetEvaluation) else item
    if bd is None:
        raise ValueError(f"{name}: no boundary benchmark to plot (evaluated with boundary=False)")
    return bd


def plot_pr(
    methods: Mapping[str, DatasetEvaluation | BoundarySummary],
    path: str | os.PathLike[str],
    size: tuple[int, int] = (600, 600),
    dpi: int = 100,
    human: Any | None = None,
    title: str | None = None,
) -> Path:
    """Draw the boundary precision-recall curves of ``methods`` into a PNG.

    ``methods``: name → evaluation (or its :class:`BoundarySummary`), drawn
    in order; each curve is the pooled (R, P) over the thresholds with its
    ODS point marked, the legend gives ODS / OIS / AP.  Iso-F contours
    (F = 0.1 .. 0.9) are drawn as in ``plot_eval``.  ``human``: a
    :class:`~ndd.evaluation.report.HumanAgreement` (anything with ``recall``,
    ``precision``, ``f``) drawn as a point.  ``size``: (width, height) of the
    PNG in pixels, exactly.  Returns the path written.
    """
    require_matplotlib()
    from matplotlib.figure import Figure  # deferred: optional dependency

    if not methods:
        raise ValueError("no method to plot")
    width, height = int(size[0]), int(size[1])
    if width < 50 or height < 50:
        raise ValueError(f"plot size must be at least 50x50 pixels, got {width}x{height}")
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, layout="constrained")
    ax = fig.add_subplot()

    # iso-F contours: F = 2PR / (P + R) over the unit square
    grid = np.linspace(0.01, 1.0, 100)
    rr, pp = np.meshgrid(grid, grid)
    ff = 2 * pp * rr / (pp + rr)
    cs = ax.contour(rr, pp, ff, levels=np.arange(1, 10) / 10, colors=[(0.0, 0.5, 0.0)], linewidths=0.6, alpha=0.5)
    ax.clabel(cs, fmt="%.1f", fontsize=7, inline=True)

    for name, item in methods.items():
        bd = _summary(item, name)
        keep = (bd.recall + bd.precision) > 0  # thresholds above every value give (0, 0)
        (line,) = ax.plot(
            bd.recall[keep],
            bd.precision[keep],
            linewidth=1.8,
            label=f"{name}  ODS {bd.ods_f:.3f}  OIS {bd.ois_f:.3f}  AP {bd.ap:.3f}",
        )
        ax.plot([bd.ods_recall], [bd.ods_precision], "o", color=line.get_color(), markersize=6)
    if human is not None:
        ax.plot(
            [human.recall],
            [human.precision],
            "o",
            color=(0.0, 0.6, 0.0),
            markerfacecolor=(0.0, 0.8, 0.0),
            markersize=8,
            linestyle="none",
            label=f"Human  F {human.f:.3f}",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    ax.grid(True, linewidth=0.3, alpha=0.5)
    ax.legend(loc="lower left", fontsize=8)
    if title:
        ax.set_title(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # no bbox_inches="tight": the PNG keeps exactly the requested pixel size
    fig.savefig(path, dpi=dpi, format="png")
    return path
