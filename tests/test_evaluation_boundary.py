"""ndd.evaluation.boundary / matching: the fast boundary benchmark gives the figures of the first implementation.

The digests below are the per-image counts (cnt_r, sum_r, cnt_p, sum_p at each
threshold) and the summary figures computed by the boundary
benchmark as it was before the speed-up (thinning of every pixel in every
subiteration, one neighbour table per annotation, sorting-based matching
steps), on the eight bsds500-mini test images.  The current code must
reproduce them exactly: same thinned maps, same matchings, same counts.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import scipy.io
import scipy.ndimage
from PIL import Image
from skimage.morphology import thin

from ndd.evaluation import (
    BoundaryCounts,
    boundary_counts,
    evaluate_dataset,
    load_groundtruth,
    thin_boundary,
    thresholds_linspace,
)

from mini_data import MINI as MINI_ROOT
from mini_data import needs_mini

MINI = MINI_ROOT / "BSDS500"
GT_DIR = MINI / "data/groundTruth/test"

# soft maps made by soft_maps() below, 33 thresholds (a third of the default,
# to keep the test quick); computed before the speed-up
SOFT_DIGESTS = {
    "100007": "7bbf13d0fdf71313",
    "118015": "ec491c308ad52446",
    "157032": "e5085578f5ff241c",
    "189029": "889ab4c7031928be",
    "226043": "369eb6444cee5608",
    "279005": "50333247bd090883",
    "35028": "e87f0b77da9a3927",
    "51084": "cc42d355947519c6",
}
SOFT_SUMMARY = {"ods": 0.7715404115415194, "ois": 0.7930370646246203, "ap": 0.801807892245906}
# the gPb ucm2 files of the mini set (checked on the region + boundary run of test_evaluation_bsds.py)
UCM2_DIGESTS = {
    "100007": "7359606a2abb6be6",
    "118015": "e483fd5d894d4764",
    "157032": "d4620ded9076176e",
    "189029": "997370cb8192b10e",
    "226043": "7aeedd9d5a0e965d",
    "279005": "f9978bd443b59ec3",
    "35028": "694b5088b482b3dd",
    "51084": "98f96d84baaf1ad5",
}
UCM2_SUMMARY = {"ods": 0.7997867074155355, "ois": 0.8142613966050799, "ap": 0.8091561328745887}


def counts_digest(c: BoundaryCounts) -> str:
    """First 16 hex digits of the sha256 of the (4, T) int64 counts of one image."""
    arr = np.stack([c.cnt_r, c.sum_r, c.cnt_p, c.sum_p]).astype(np.int64)
    return hashlib.sha256(arr.tobytes()).hexdigest()[:16]


def soft_maps(folder) -> None:
    """Thick soft boundary PNGs like an edge detector's (HED without NMS): the gPb
    boundary map ``ucm2[2::2, 2::2]`` blurred (sigma 1.5), scaled to a maximum of 255."""
    folder.mkdir()
    for p in sorted((MINI / "ucm2/test").glob("*.mat")):
        pb = scipy.io.loadmat(p)["ucm2"][2::2, 2::2]
        soft = scipy.ndimage.gaussian_filter(pb, 1.5)
        Image.fromarray(np.round(255 * soft / soft.max()).astype(np.uint8)).save(folder / f"{p.stem}.png")


@needs_mini
def test_soft_maps_give_the_figures_of_the_first_implementation(tmp_path):
    soft_maps(tmp_path / "soft")
    ev = evaluate_dataset(tmp_path / "soft", GT_DIR, nthresh=33, workers=2, region=False)
    assert {im.image_id: counts_digest(im.boundary) for im in ev.images} == SOFT_DIGESTS
    s = ev.to_json_dict()["summary"]["boundary"]
    assert {k: s[k] for k in SOFT_SUMMARY} == SOFT_SUMMARY


def test_thinning_thick_blobs_equals_skimage():
    # smooth noise thresholded low: blobs tens of pixels thick that take many
    # iterations, the case where only the neighbours of deleted pixels are revisited
    rng = np.random.default_rng(11)
    field = scipy.ndimage.gaussian_filter(rng.random((90, 120)), 6)
    field = (field - field.min()) / np.ptp(field)
    for t in (0.05, 0.2, 0.4, 0.5, 0.6, 0.8):
        img = field >= t
        assert np.array_equal(thin_boundary(img), thin(img)), t


def test_annotations_matched_together_equal_matched_alone():
    # the K annotations share one neighbour table and one matching problem:
    # each must get exactly the counts it gets alone
    rng = np.random.default_rng(5)
    field = scipy.ndimage.gaussian_filter(rng.random((60, 80)), 3)
    gts = [thin(scipy.ndimage.gaussian_filter(rng.random((60, 80)), 3) > 0.5) ^ thin(field > q) for q in (0.45, 0.5)]
    gts.append(np.zeros((60, 80), bool))  # an annotation without boundary pixels
    t = np.linspace(0.3, 0.7, 5)
    maps = [field >= x for x in t]
    together = boundary_counts(maps, gts, t, max_dist=0.05)
    alone = [boundary_counts(maps, [g], t, max_dist=0.05) for g in gts]
    assert np.array_equal(together.cnt_r, sum(a.cnt_r for a in alone))
    assert np.array_equal(together.sum_r, sum(a.sum_r for a in alone))
    assert np.array_equal(together.sum_p, alone[0].sum_p)
    each = np.stack([a.cnt_p for a in alone])  # machine pixels matched to at least one annotation:
    assert np.all(together.cnt_p >= each.max(axis=0)) and np.all(together.cnt_p <= each.sum(axis=0))


@needs_mini
def test_ground_truth_of_different_shapes_is_an_error():
    gts = [a.boundaries for a in load_groundtruth(GT_DIR / "100007.mat")]
    with pytest.raises(ValueError, match="different shapes"):
        boundary_counts([gts[0]], [gts[0], gts[1][:-1]], thresholds_linspace(1))
