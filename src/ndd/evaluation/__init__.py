"""The BSDS500 benchmark, re-implemented in NumPy/SciPy (no torch).

Region benchmark (Segmentation Covering ODS/OIS/Best, PRI, VOI, as
``collect_eval_reg``), the paper's AVG/MAX covering protocol, and the boundary
benchmark (P/R/F at ODS and OIS, Area_PR, tolerance 0.0075 of the diagonal,
one-to-one pixel correspondence), for ``ucm2`` files, label-map stacks and
soft boundary maps.  ``shared/notes/bsds-benchmark.md`` describes what the
official MATLAB/C++ code computes; the modules follow it step by step, one
job each:

* :mod:`~ndd.evaluation.inputs` - reading results and ground truth, pairing them;
* :mod:`~ndd.evaluation.scales` - the thresholds / levels a result is scored at;
* :mod:`~ndd.evaluation.region` - segmentations per scale, covering, PRI, VOI;
* :mod:`~ndd.evaluation.boundary` - boundary maps, thinning, match counts;
* :mod:`~ndd.evaluation.matching` - the pixel correspondence;
* :mod:`~ndd.evaluation.image` - one image: its region and boundary counts;
* :mod:`~ndd.evaluation.dataset` - a data set over a process pool, then pooled;
* :mod:`~ndd.evaluation.aggregate` - the data-set figures;
* :mod:`~ndd.evaluation.report` - the JSON schema, per-image CSV, printed tables;
* :mod:`~ndd.evaluation.compare` - several methods in one run;
* :mod:`~ndd.evaluation.human` - human agreement (annotators against each other);
* :mod:`~ndd.evaluation.nms` - the edge papers' non-maximum suppression of soft maps;
* :mod:`~ndd.evaluation.plot` - precision-recall plots (matplotlib, imported lazily);
* :mod:`~ndd.evaluation.kernel` - deprecated: the kernel accuracy (paper Table 1) is
  :mod:`ndd.train.kernel_eval`'s.

Example::

    from ndd.evaluation import evaluate_dataset
    ev = evaluate_dataset("ucm2/test", "groundTruth/test", workers=2)
    print(ev.region.covering_ods, ev.boundary.ods_f)
"""

import warnings
from typing import Any

from ndd.evaluation.aggregate import (
    BoundarySummary,
    PaperCovering,
    RegionSummary,
    area_pr,
    collect_eval_bdry,
    collect_eval_reg,
    fmeasure,
    max_f,
    paper_covering,
    round_g10,
)
from ndd.evaluation.boundary import (
    BoundaryCounts,
    boundary_counts,
    seg2bdry,
    segs_boundary_maps,
    soft_boundary_maps,
    thin_boundary,
    ucm2_boundary_maps,
)
from ndd.evaluation.compare import MethodComparison, compare_methods, name_methods
from ndd.evaluation.dataset import DatasetEvaluation, evaluate_dataset
from ndd.evaluation.human import HumanAgreement, human_agreement
from ndd.evaluation.image import ImageEvaluation, evaluate_image
from ndd.evaluation.inputs import (
    SOFT_MAP_KEYS,
    Annotation,
    EvaluationError,
    InputPairs,
    MachineResult,
    check_pairing,
    find_groundtruth,
    find_results,
    load_groundtruth,
    load_result,
    pair_inputs,
)
from ndd.evaluation.matching import correspond_pixels, match_radius_graph, max_distance_px
from ndd.evaluation.nms import conv_tri, edge_orientation, edges_nms, nms_edge_map
from ndd.evaluation.plot import PlotUnavailable, plot_pr, require_matplotlib
from ndd.evaluation.region import (
    RegionCounts,
    SegmentationStack,
    region_counts,
    segs_hierarchy,
    ucm2_hierarchy,
)
from ndd.evaluation.report import (
    CSV_COLUMNS,
    comparison_json,
    evaluation_json,
    format_comparison,
    format_summary,
    per_image_rows,
    write_csv,
)
from ndd.evaluation.scales import level_scales, thresholds_linspace

__all__ = [
    "CSV_COLUMNS",
    "SOFT_MAP_KEYS",
    "Annotation",
    "BoundaryCounts",
    "BoundarySummary",
    "DatasetEvaluation",
    "EvaluationError",
    "HumanAgreement",
    "ImageEvaluation",
    "InputPairs",
    "MachineResult",
    "MethodComparison",
    "PaperCovering",
    "PlotUnavailable",
    "RegionCounts",
    "RegionSummary",
    "SegmentationStack",
    "area_pr",
    "boundary_counts",
    "check_pairing",
    "collect_eval_bdry",
    "collect_eval_reg",
    "compare_methods",
    "comparison_json",
    "conv_tri",
    "correspond_pixels",
    "edge_orientation",
    "edges_nms",
    "evaluate_dataset",
    "evaluate_image",
    "evaluation_json",
    "find_groundtruth",
    "find_results",
    "fmeasure",
    "format_comparison",
    "format_summary",
    "human_agreement",
    "level_scales",
    "load_groundtruth",
    "load_result",
    "match_radius_graph",
    "max_distance_px",
    "max_f",
    "name_methods",
    "nms_edge_map",
    "pair_inputs",
    "paper_covering",
    "per_image_rows",
    "plot_pr",
    "region_counts",
    "require_matplotlib",
    "round_g10",
    "seg2bdry",
    "segs_boundary_maps",
    "segs_hierarchy",
    "soft_boundary_maps",
    "thin_boundary",
    "thresholds_linspace",
    "ucm2_boundary_maps",
    "ucm2_hierarchy",
    "write_csv",
]


def __getattr__(name: str) -> Any:
    """Deprecated names: ``Hierarchy`` (the old name of :class:`SegmentationStack`) and
    ``kernel_cosine`` (now :func:`ndd.train.kernel_eval.kernel_cosine`).

    ``Hierarchy`` was renamed because ``ndd.segment.Hierarchy`` is a different class. Both old
    names still import and warn, so existing scripts keep working.
    """
    if name == "Hierarchy":
        warnings.warn(
            "ndd.evaluation.Hierarchy is renamed ndd.evaluation.SegmentationStack "
            "(ndd.segment.Hierarchy is a different class)",
            DeprecationWarning,
            stacklevel=2,
        )
        return SegmentationStack
    if name == "kernel_cosine":  # deprecated; the function warns when called
        from ndd.evaluation.kernel import kernel_cosine

        return kernel_cosine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
