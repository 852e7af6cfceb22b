"""File formats and label-map conventions, torch-free: the base layer under ``io``, ``data``,
``evaluation`` and ``segment``.

NumPy and Pillow are imported with the package; ``scipy.io`` (``.mat`` files) and
``skimage.measure`` (:func:`labels_from_ucm2`) by the functions that need them. One module per job:

* :mod:`~ndd.formats.images` - :func:`read_image` (the one image reader: dtype and EXIF
  orientation are arguments), :func:`check_image`;
* :mod:`~ndd.formats.labels` - :func:`relabel_consecutive`, :func:`resize_labels` (:func:`nearest_indices`)
  (nearest neighbour), label PNGs (:func:`read_labels`, :func:`write_labels`);
* :mod:`~ndd.formats.bsds` - the benchmark's thresholds (:func:`bsds_thresholds`,
  :data:`BSDS_THRESHOLDS`), ground truth (:func:`read_groundtruth`), ``ucm2`` and ``segs`` files;
* :mod:`~ndd.formats.ucm` - ``ucm2`` <-> label maps and label stacks;
* :mod:`~ndd.formats.edges` - soft edge maps: their stored conventions (:func:`edge_map_from_array`,
  :func:`read_edge_map`) and 16-bit PNGs (:func:`write_edge_map`);
* :mod:`~ndd.formats.errors` - :class:`FormatError` (a ``ValueError``), :class:`MissingFileError`
  (also a ``FileNotFoundError``): one-line messages that start with the file name.

Example::

    from ndd.formats import label_stack_from_ucm2, read_groundtruth, read_ucm2
    levels = label_stack_from_ucm2(read_ucm2("ucm2/test/2018.mat"))  # 99 label maps
    humans = read_groundtruth("groundTruth/test/2018.mat")           # K annotations
"""

from .bsds import (
    BSDS_THRESHOLDS,
    HumanSegmentation,
    bsds_thresholds,
    check_ucm2,
    label_maps,
    read_groundtruth,
    read_mat,
    read_segs,
    read_ucm2,
    write_segs,
    write_ucm2,
)
from .edges import edge_map_from_array, read_edge_map, write_edge_map
from .errors import FormatError, MissingFileError
from .images import ImageDtype, ImageNotFoundError, ImageReadError, check_image, read_image
from .labels import nearest_indices, read_labels, relabel_consecutive, resize_labels, write_labels
from .ucm import label_stack_from_ucm2, labels_from_ucm2, ucm2_from_edges, ucm2_from_label_stack, ucm2_from_labels

__all__ = [
    "FormatError",
    "MissingFileError",
    # images
    "ImageDtype",
    "ImageReadError",
    "ImageNotFoundError",
    "read_image",
    "check_image",
    # label maps
    "relabel_consecutive",
    "nearest_indices",
    "resize_labels",
    "read_labels",
    "write_labels",
    # soft edge maps
    "edge_map_from_array",
    "read_edge_map",
    "write_edge_map",
    # BSDS files
    "BSDS_THRESHOLDS",
    "bsds_thresholds",
    "HumanSegmentation",
    "read_mat",
    "read_groundtruth",
    "read_ucm2",
    "check_ucm2",
    "write_ucm2",
    "read_segs",
    "write_segs",
    "label_maps",
    # ucm2 <-> labels
    "ucm2_from_edges",
    "ucm2_from_labels",
    "ucm2_from_label_stack",
    "labels_from_ucm2",
    "label_stack_from_ucm2",
]
