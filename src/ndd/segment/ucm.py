"""Ultrametric contour maps in the BSDS "doubleSize" layout (``ucm2``) and label stacks.

The conversions and the BSDS thresholds live in :mod:`ndd.formats.ucm` and
:mod:`ndd.formats.bsds` (torch-free, shared with :mod:`ndd.evaluation` and :mod:`ndd.io`); this
module keeps their names importable from ``ndd.segment``.
"""

from __future__ import annotations

from ndd.formats.bsds import BSDS_THRESHOLDS
from ndd.formats.ucm import (
    label_stack_from_ucm2,
    labels_from_ucm2,
    ucm2_from_edges,
    ucm2_from_label_stack,
    ucm2_from_labels,
)

__all__ = [
    "ucm2_from_edges",
    "ucm2_from_labels",
    "ucm2_from_label_stack",
    "labels_from_ucm2",
    "label_stack_from_ucm2",
    "BSDS_THRESHOLDS",
]
