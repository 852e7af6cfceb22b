"""The BSDS500 benchmark, re-implemented in NumPy/SciPy (no torch).

Region benchmark (Segmentation Covering ODS/OIS/Best, PRI, VOI, as
``collect_eval_reg``), the paper's AVG/MAX covering protocol, and the boundary
benchmark (P/R/F at ODS and OIS, Area_PR, tolerance 0.0075 of the diagonal,
one-to-one pixel correspondence), for ``ucm2`` files, label-map stacks and
soft boundary maps.  ``shared/notes/bsds-benchmark.md`` describes what the
official MATLAB/C++ code computes; the modules follow it step by step:

* :mod:`~ndd.evaluation.region` - hierarchy thresholding, covering, PRI, VOI;
* :mod:`~ndd.evaluation.boundary` - boundary maps, thinning, match counts;
* :mod:`~ndd.evaluation.matching` - the pixel correspondence;
* :mod:`~ndd.evaluation.aggregate` - the data-set figures;
* :mod:`~ndd.evaluation.bsds` - files, per-image evaluation, parallel driver;
* :mod:`~ndd.evaluation.nms` - the edge papers' non-maximum suppression of soft maps;
* :mod:`~ndd.evaluation.report` - per-image CSV, several methods, human agreement;
* :mod:`~ndd.evaluation.plot` - precision-recall plots (matplotlib, imported lazily);
* :mod:`~ndd.evaluation.kernel` - kernel cosine accuracy (paper Table 1).

Example::

    from ndd.evaluation import evaluate_dataset
    ev = evaluate_dataset("ucm2/test", "groundTruth/test", workers=2)
    print(ev.region.covering_ods, ev.boundary.ods_f)
"""

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
    thin_boundary,
    ucm2_boundary_maps,
)
from ndd.evaluation.bsds import (
    SOFT_MAP_KEYS,
    Annotation,
    DatasetEvaluation,
    EvaluationError,
    ImageEvaluation,
    MachineResult,
    check_pairing,
    evaluate_dataset,
    evaluate_image,
    find_results,
    load_groundtruth,
    load_result,
)
from ndd.evaluation.kernel import kernel_cosine
from ndd.evaluation.matching import correspond_pixels, match_radius_graph, max_distance_px
from ndd.evaluation.nms import conv_tri, edge_orientation, edges_nms, nms_edge_map
from ndd.evaluation.plot import PlotUnavailable, plot_pr, require_matplotlib
from ndd.evaluation.region import (
    Hierarchy,
    RegionCounts,
    region_counts,
    segs_hierarchy,
    thresholds_linspace,
    ucm2_hierarchy,
)
from ndd.evaluation.report import (
    CSV_COLUMNS,
    HumanAgreement,
    MethodComparison,
    compare_methods,
    comparison_json,
    format_comparison,
    human_agreement,
    name_methods,
    per_image_rows,
    write_csv,
)

__all__ = [
    "CSV_COLUMNS",
    "SOFT_MAP_KEYS",
    "Annotation",
    "BoundaryCounts",
    "BoundarySummary",
    "DatasetEvaluation",
    "EvaluationError",
    "Hierarchy",
    "HumanAgreement",
    "ImageEvaluation",
    "MachineResult",
    "MethodComparison",
    "PaperCovering",
    "PlotUnavailable",
    "RegionCounts",
    "RegionSummary",
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
    "find_results",
    "fmeasure",
    "format_comparison",
    "human_agreement",
    "kernel_cosine",
    "load_groundtruth",
    "load_result",
    "match_radius_graph",
    "max_distance_px",
    "max_f",
    "name_methods",
    "nms_edge_map",
    "paper_covering",
    "per_image_rows",
    "plot_pr",
    "region_counts",
    "require_matplotlib",
    "round_g10",
    "seg2bdry",
    "segs_boundary_maps",
    "segs_hierarchy",
    "thin_boundary",
    "thresholds_linspace",
    "ucm2_boundary_maps",
    "ucm2_hierarchy",
    "write_csv",
]
