"""ndd.evaluation against official BSDS500 outputs, file handling and ``ndd evaluate``."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from ndd.cli import main
from ndd.evaluation import (
    EvaluationError,
    evaluate_dataset,
    evaluate_image,
    load_groundtruth,
    region_counts,
    seg2bdry,
    thin_boundary,
    thresholds_linspace,
    ucm2_hierarchy,
)

from mini_data import MINI as MINI_ROOT
from mini_data import needs_mini
from test_evaluation_boundary import UCM2_DIGESTS, UCM2_SUMMARY, counts_digest

REPO = Path(__file__).resolve().parents[1]
MINI = MINI_ROOT / "BSDS500"
UCM_DIR = MINI / "ucm2/test"
GT_DIR = MINI / "data/groundTruth/test"
OFFICIAL_TSV = MINI / "ucm2/test_eval/official_per_image.tsv"
# bench/data of the BSDS500 release (5 images with official nthresh=5 outputs), if fetched into data/
BENCH = REPO / "data/bench/data"

@pytest.fixture(scope="module")
def mini_eval():
    return evaluate_dataset(UCM_DIR, GT_DIR, nthresh=99, workers=2)


@pytest.fixture(scope="module")
def official():
    with open(OFFICIAL_TSV) as f:
        return {row["id"]: row for row in csv.DictReader(f, delimiter="\t")}


@needs_mini
def test_mini_region_per_image_matches_official(mini_eval, official):
    assert sorted(mini_eval.image_ids) == sorted(official)
    rows = mini_eval.to_json_dict()["images"]
    for iid, ref in official.items():
        got = rows[iid]
        assert got["covering_ois"] == pytest.approx(float(ref["cover_ois"]), abs=1e-4), iid
        assert got["covering_ois_threshold"] == pytest.approx(float(ref["cover_ois_threshold"]), abs=1e-9), iid
        assert got["covering_ois_precision"] == pytest.approx(float(ref["cover_ois_precision"]), abs=1e-4), iid
        assert got["covering_best"] == pytest.approx(float(ref["cover_best"]), abs=1e-4), iid


@needs_mini
def test_mini_boundary_per_image_matches_official(mini_eval, official):
    rows = mini_eval.to_json_dict()["images"]
    for iid, ref in official.items():
        got = rows[iid]
        assert got["boundary_ois_f"] == pytest.approx(float(ref["bdry_f"]), abs=0.005), iid
        # R and P are read at the interpolated best-F point, which may slide along
        # a flat part of the curve: looser bounds
        assert got["boundary_ois_recall"] == pytest.approx(float(ref["bdry_recall"]), abs=0.02), iid
        assert got["boundary_ois_precision"] == pytest.approx(float(ref["bdry_precision"]), abs=0.02), iid


@needs_mini
def test_mini_boundary_counts_are_those_of_the_first_implementation(mini_eval):
    # every count at every threshold as before the boundary benchmark was sped up
    assert {im.image_id: counts_digest(im.boundary) for im in mini_eval.images} == UCM2_DIGESTS
    s = mini_eval.to_json_dict()["summary"]["boundary"]
    assert {k: s[k] for k in UCM2_SUMMARY} == UCM2_SUMMARY


@needs_mini
def test_mini_summary_is_consistent(mini_eval):
    s = mini_eval.to_json_dict()["summary"]
    c = s["covering"]
    assert 0 < c["ods"] <= c["ois"] <= c["best"] <= 1
    assert s["pri"]["ods"] <= s["pri"]["ois"] and s["vi"]["ods"] >= s["vi"]["ois"]
    assert 0 < s["boundary"]["ods"] <= s["boundary"]["ois"] <= 1
    pc = s["paper_covering"]
    # AVG is the plain image mean of per-image OIS covering; MAX readings are higher
    imgs = mini_eval.to_json_dict()["images"].values()
    assert pc["avg"] == pytest.approx(np.mean([r["covering_ois"] for r in imgs]), abs=1e-6)
    assert pc["avg"] <= pc["max"] <= pc["max_any_scale"]


@needs_mini
def test_gt_boundaries_are_thinned_seg2bdry():
    for ann in load_groundtruth(GT_DIR / "100007.mat"):
        assert np.array_equal(ann.boundaries, thin_boundary(seg2bdry(ann.segmentation)))


@needs_mini
def test_label_stack_equals_ucm2_levels(tmp_path):
    """A stack of label maps from thresholding a ucm2 scores as those ucm2 levels."""
    ucm2 = scipy.io.loadmat(UCM_DIR / "100007.mat")["ucm2"]
    t = thresholds_linspace(4)
    hier = ucm2_hierarchy(ucm2, t)
    segs = np.stack([hier.segmentation(i) for i in range(len(t))])
    np.savez(tmp_path / "100007.npz", segs=segs)
    ev = evaluate_image(tmp_path / "100007.npz", GT_DIR / "100007.mat", boundary=False)
    gts = [a.segmentation for a in load_groundtruth(GT_DIR / "100007.mat")]
    ref = region_counts(hier, gts)
    assert ev.kind == "segs" and np.allclose(ev.region.cnt_r, ref.cnt_r) and np.allclose(ev.region.voi, ref.voi)
    # the same stack as a .mat cell and as a folder of PNG label maps
    cell = np.empty((1, len(segs)), dtype=object)  # a MATLAB 1xS cell
    for i, s in enumerate(segs):
        cell[0, i] = s.astype(np.uint16)
    scipy.io.savemat(tmp_path / "m.mat", {"segs": cell})
    ev2 = evaluate_image(tmp_path / "m.mat", GT_DIR / "100007.mat", boundary=False)
    assert np.allclose(ev2.region.cnt_r, ref.cnt_r)
    from skimage.io import imsave

    (tmp_path / "pngs").mkdir()
    for i, s in enumerate(segs):
        imsave(tmp_path / "pngs" / f"level{i + 1}.png", s.astype(np.uint16), check_contrast=False)
    ev3 = evaluate_image(tmp_path / "pngs", GT_DIR / "100007.mat", boundary=False)
    assert np.allclose(ev3.region.cnt_r, ref.cnt_r)


# ----------------------------------------------------------------------------- errors


def _two_image_dirs(tmp_path):
    res, gt = tmp_path / "res", tmp_path / "gt"
    res.mkdir()
    gt.mkdir()
    for iid in ("100007", "279005"):
        shutil.copy(UCM_DIR / f"{iid}.mat", res)
        shutil.copy(GT_DIR / f"{iid}.mat", gt)
    return res, gt


@needs_mini
def test_errors_name_the_file(tmp_path):
    res, gt = _two_image_dirs(tmp_path)
    (res / "999999.mat").write_bytes(b"not a mat file")
    with pytest.raises(EvaluationError, match="999999"):  # result without ground truth
        evaluate_dataset(res, gt, nthresh=3)
    shutil.copy(GT_DIR / "100007.mat", gt / "999999.mat")
    with pytest.raises(EvaluationError, match="999999.mat: cannot read"):  # corrupt .mat
        evaluate_dataset(res, gt, nthresh=3, boundary=False)
    (res / "999999.mat").unlink()
    with pytest.raises(EvaluationError, match="no result"):  # ground truth without result
        evaluate_dataset(res, gt, nthresh=3, boundary=False)
    ev = evaluate_dataset(res, gt, nthresh=3, boundary=False, allow_missing=True)
    assert ev.missing_results == ["999999"] and len(ev.images) == 2
    (gt / "999999.mat").unlink()

    ucm2 = scipy.io.loadmat(res / "100007.mat")["ucm2"]
    (res / "100007.mat").unlink()
    np.savez(res / "100007.npz", ucm2=ucm2[:-2])
    with pytest.raises(EvaluationError, match="100007.npz: ucm2 has shape"):
        evaluate_dataset(res, gt, nthresh=3)
    bad = ucm2.copy()
    bad[5, 5] = np.nan
    np.savez(res / "100007.npz", ucm2=bad)
    with pytest.raises(EvaluationError, match="100007.npz: 'ucm2' contains NaN"):
        evaluate_dataset(res, gt, nthresh=3)
    np.savez(res / "100007.npz", other=ucm2)
    with pytest.raises(EvaluationError, match="no 'ucm2' or 'segs'"):
        evaluate_dataset(res, gt, nthresh=3)
    np.savez(res / "100007.npz", segs=np.ones((2,) + ucm2[1::2, 1::2].shape, dtype=np.int32))
    with pytest.raises(EvaluationError, match="same scales"):  # 2 segs vs 3 ucm2 scales
        evaluate_dataset(res, gt, nthresh=3, boundary=False)


@needs_mini
def test_png_files_beside_results_are_ignored(tmp_path):
    """``ndd segment`` writes overlays and label PNGs beside ``<id>.mat``: not results."""
    res, gt = _two_image_dirs(tmp_path)
    from skimage.io import imsave

    for name in ("100007_overlay_005.png", "100007.png"):
        imsave(res / name, np.zeros((4, 4), np.uint8), check_contrast=False)
    ev = evaluate_dataset(res, gt, nthresh=3, boundary=False)
    assert ev.image_ids == ["100007", "279005"] and ev.images[0].kind == "ucm2"
    assert sorted(ev.ignored_files) == ["100007.png", "100007_overlay_005.png"]


# ----------------------------------------------------------------------------- CLI


@needs_mini
def test_cli_evaluate_json(tmp_path, capsys):
    res, gt = _two_image_dirs(tmp_path)
    out = tmp_path / "scores.json"
    code = main(
        [
            "evaluate",
            "--results",
            str(res),
            "--groundtruth",
            str(gt),
            "--nthresh",
            "9",
            "--json",
            str(out),
            "--workers",
            "2",
        ]
    )
    assert code == 0
    assert "Covering" in capsys.readouterr().out
    report = json.loads(out.read_text())
    s = report["summary"]
    assert set(report) == {"summary", "images"}
    assert {"ods", "ois", "best"} <= set(s["covering"]) and {"ods", "ois"} <= set(s["pri"])
    assert {"ods", "ois"} <= set(s["vi"]) and {"ods", "ois", "ap"} <= set(s["boundary"])
    assert {"avg", "max"} <= set(s["paper_covering"])
    assert set(report["images"]) == {"100007", "279005"}
    for row in report["images"].values():
        assert {
            "covering_ois",
            "covering_best",
            "covering_ois_threshold",
            "boundary_ois_f",
            "boundary_ois_threshold",
        } <= set(row)
    code = main(["evaluate", "--results", str(res), "--groundtruth", str(tmp_path / "nowhere"), "--no-boundary"])
    assert code == 1 and "nowhere" in capsys.readouterr().err


@needs_mini
def test_cli_evaluate_never_imports_torch(tmp_path):
    """The benchmark is NumPy/SciPy only: ``ndd --help`` and ``ndd evaluate`` run without torch."""
    res, gt = _two_image_dirs(tmp_path)
    script = (
        "import sys\n"
        "from ndd.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"code = main(['evaluate', '--results', {str(res)!r}, '--groundtruth', {str(gt)!r}, '--nthresh', '3', "
        "'--no-boundary'])\n"
        "assert code == 0, code\n"
        "print('TORCH', 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "TORCH False" in done.stdout
    assert "evaluate-kernel" in done.stdout and "train" in done.stdout  # every command is listed


# ----------------------------------------------------------------------------- official fixtures


def _read_row(path):
    return [float(v) for v in path.read_text().split()]


@pytest.mark.skipif(not BENCH.is_dir(), reason="BSDS500 bench/data not fetched into data/")
@pytest.mark.parametrize("inputs,official_dir", [("ucm2", "test_1"), ("segs", "test_4")])
def test_bench_fixture_digit_exact(inputs, official_dir):
    """The release's own fixtures (nthresh=5): region figures to all printed digits."""
    ev = evaluate_dataset(BENCH / inputs, BENCH / "groundTruth", nthresh=5, workers=2)
    r, b = ev.region, ev.boundary
    cover = _read_row(BENCH / official_dir / "eval_cover.txt")
    got = [r.covering_ods_threshold, r.covering_ods, r.covering_ois, r.covering_best]
    assert [f"{v:g}" for v in got] == [f"{v:g}" for v in cover]
    rivoi = _read_row(BENCH / official_dir / "eval_RI_VOI.txt")
    got = [r.pri_ods_threshold, r.pri_ods, r.pri_ois, r.voi_ods_threshold, r.voi_ods, r.voi_ois]
    assert [f"{v:g}" for v in got] == [f"{v:g}" for v in rivoi]
    bdry = _read_row(BENCH / official_dir / "eval_bdry.txt")
    got = [b.ods_threshold, b.ods_recall, b.ods_precision, b.ods_f, b.ois_recall, b.ois_precision, b.ois_f, b.ap]
    assert np.allclose(got, bdry, atol=1e-3)


@needs_mini
def test_cli_evaluate_runs_a_process_per_core_by_default_with_the_same_figures(tmp_path, capsys):
    from ndd.batch import default_workers

    res, gt = _two_image_dirs(tmp_path)
    args = ["evaluate", "--results", str(res), "--groundtruth", str(gt), "--nthresh", "9", "--json"]
    assert main([*args, str(tmp_path / "one.json"), "--workers", "1"]) == 0
    assert "1 worker(s)" in capsys.readouterr().out
    assert main([*args, str(tmp_path / "auto.json")]) == 0
    assert f"{default_workers(2, 'cpu')} worker(s)" in capsys.readouterr().out
    one, auto = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("one", "auto"))
    assert one == auto
