"""Hierarchical image segmentation from a (neural diffusion) similarity matrix (paper §6).

Plain functions in the style of ``skimage.segmentation``. The modules follow the data path,
each importing only those above it:

* :mod:`~ndd.segment.regions` - the region graph of a label map: :func:`region_adjacency`,
  :func:`boundary_sums`, :func:`segment_similarity_sums`, :func:`pixel_grid_nodes`,
  :func:`grid_similarity_sums`;
* :mod:`~ndd.segment.merge` - :func:`agglomerate`: greedy merging of clusters from those pair
  sums (average linkage plus further :class:`LinkageTerm` s), numbers in, merges out;
* :mod:`~ndd.segment.centers`, :mod:`~ndd.segment.kernel_kmeans` - :func:`coverage_centers`
  (Eq. 9) and :func:`kernel_kmeans` with the similarity as kernel;
* :mod:`~ndd.segment.cleanup` - :func:`split_components`, :func:`absorb_small_segments`,
  :func:`keep_largest_component`, :func:`reattach_pieces`: spatially connected segments;
* :mod:`~ndd.segment.superpixels` - :func:`watershed_superpixels`, :func:`absorb_small_regions`:
  pixel-accurate regions of an edge map;
* :mod:`~ndd.segment.ucm` - BSDS ``ucm2`` maps and label stacks;
* :mod:`~ndd.segment.hierarchy` - :class:`Hierarchy`, a value type: finest labels, merges and
  their values; levels, ``ucm2``, resizing;
* :mod:`~ndd.segment.pipeline` - :func:`segment_from_similarity` (all of the grid steps above,
  a :class:`Hierarchy` on the feature grid, "Ours-LR"), :func:`segment_from_edges`
  (pixel-accurate: watershed regions merged by contour strength and grid similarity), and
  their merge steps :func:`hierarchy_from_segments` and :func:`hierarchy_from_superpixels`;
* :mod:`~ndd.segment.upsample` - :func:`upsample_hierarchy` (the full-resolution "Ours-HR"
  hierarchy of a grid one) and :func:`upsample_labels`.

Example::

    hier = segment_from_similarity(K_D, (h, w))
    coarse = hier.labels_at(5)                        # (h, w) labels 0..4
    hr = upsample_hierarchy(hier, (H, W), upsample=fai)  # fai: (1, M, h, w) -> (1, M, H, W)
    ucm2 = hr.to_ucm2()                               # (2H+1, 2W+1), BSDS doubleSize
"""

from .centers import coverage_centers
from .cleanup import absorb_small_segments, keep_largest_component, reattach_pieces, relabel_consecutive, split_components
from .hierarchy import Hierarchy
from .kernel_kmeans import kernel_kmeans, kernel_kmeans_distances
from .merge import LinkageTerm, agglomerate
from .pipeline import GridClustering, hierarchy_from_segments, hierarchy_from_superpixels, segment_from_edges, segment_from_similarity
from .regions import boundary_sums, grid_similarity_sums, pixel_grid_nodes, region_adjacency, segment_similarity_sums
from .superpixels import absorb_small_regions, watershed_superpixels
from .ucm import BSDS_THRESHOLDS, label_stack_from_ucm2, labels_from_ucm2, ucm2_from_edges, ucm2_from_label_stack, ucm2_from_labels
from .upsample import upsample_hierarchy, upsample_labels

__all__ = [
    "BSDS_THRESHOLDS",
    "GridClustering",
    "Hierarchy",
    "LinkageTerm",
    "absorb_small_regions",
    "absorb_small_segments",
    "agglomerate",
    "boundary_sums",
    "coverage_centers",
    "grid_similarity_sums",
    "hierarchy_from_segments",
    "hierarchy_from_superpixels",
    "keep_largest_component",
    "kernel_kmeans",
    "kernel_kmeans_distances",
    "label_stack_from_ucm2",
    "labels_from_ucm2",
    "pixel_grid_nodes",
    "reattach_pieces",
    "region_adjacency",
    "relabel_consecutive",
    "segment_from_edges",
    "segment_from_similarity",
    "segment_similarity_sums",
    "split_components",
    "ucm2_from_edges",
    "ucm2_from_label_stack",
    "ucm2_from_labels",
    "upsample_hierarchy",
    "upsample_labels",
    "watershed_superpixels",
]
