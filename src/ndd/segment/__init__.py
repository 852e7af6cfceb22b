"""Hierarchical image segmentation from a (neural diffusion) similarity matrix (paper §6).

Plain functions in the style of ``skimage.segmentation``:

* :func:`coverage_centers` - cluster centres by greedy coverage (Eq. 9);
* :func:`kernel_kmeans` - kernel k-means with the similarity as kernel;
* :func:`split_components`, :func:`absorb_small_segments`, :func:`keep_largest_component` -
  spatially connected segments;
* :func:`merge_hierarchy` - greedy average-linkage merging down to one segment;
* :func:`segment_from_similarity` - all of the above, returning a :class:`Hierarchy` on the
  feature grid ("Ours-LR"); :meth:`Hierarchy.upsample` / :func:`upsample_hierarchy` give the
  full-resolution one ("Ours-HR");
* :func:`segment_from_edges` - pixel-accurate: watershed regions of an edge map
  (:func:`watershed_superpixels`, :func:`absorb_small_regions`) merged by contour strength and
  grid similarity (:func:`hierarchy_from_superpixels`);
* :mod:`ucm` helpers - BSDS ``ucm2`` maps and label stacks.

Example::

    hier = segment_from_similarity(K_D, (h, w))
    coarse = hier.labels_at(5)                  # (h, w) labels 0..4
    hr = hier.upsample((H, W), upsample=fai)    # fai: (1, M, h, w) -> (1, M, H, W)
    ucm2 = hr.to_ucm2()                         # (2H+1, 2W+1), BSDS doubleSize
"""

from .centers import coverage_centers
from .cleanup import absorb_small_segments, keep_largest_component, reattach_pieces, relabel_consecutive, split_components
from .hierarchy import Hierarchy, hierarchy_from_segments, hierarchy_from_superpixels, segment_from_edges, segment_from_similarity
from .kernel_kmeans import kernel_kmeans, kernel_kmeans_distances
from .merge import LinkageTerm, agglomerate, merge_hierarchy, region_adjacency, segment_similarity_sums
from .ucm import BSDS_THRESHOLDS, label_stack_from_ucm2, labels_from_ucm2, ucm2_from_edges, ucm2_from_label_stack, ucm2_from_labels
from .superpixels import absorb_small_regions, boundary_sums, grid_similarity_sums, pixel_grid_nodes, watershed_superpixels
from .upsample import upsample_hierarchy, upsample_labels

__all__ = [
    "BSDS_THRESHOLDS",
    "Hierarchy",
    "LinkageTerm",
    "boundary_sums",
    "grid_similarity_sums",
    "hierarchy_from_superpixels",
    "pixel_grid_nodes",
    "watershed_superpixels",
    "absorb_small_regions",
    "absorb_small_segments",
    "agglomerate",
    "coverage_centers",
    "hierarchy_from_segments",
    "keep_largest_component",
    "kernel_kmeans",
    "kernel_kmeans_distances",
    "label_stack_from_ucm2",
    "labels_from_ucm2",
    "merge_hierarchy",
    "reattach_pieces",
    "region_adjacency",
    "relabel_consecutive",
    "segment_from_edges",
    "segment_from_similarity",
    "segment_similarity_sums",
    "split_components",
    "ucm2_from_edges",
    "ucm2_from_labels",
    "ucm2_from_label_stack",
    "upsample_hierarchy",
    "upsample_labels",
]
