"""Reports of ``ndd evaluate``: per-image CSV, several methods, human agreement,
precision-recall plots, and the pairing error.  Small inputs, a few seconds."""

from __future__ import annotations

import csv
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from ndd.cli import main
from ndd.evaluation import (
    CSV_COLUMNS,
    EvaluationError,
    PlotUnavailable,
    compare_methods,
    evaluate_dataset,
    format_comparison,
    human_agreement,
    name_methods,
    per_image_rows,
    plot_pr,
    require_matplotlib,
    seg2bdry,
    write_csv,
)

from mini_data import MINI as MINI_ROOT
from mini_data import needs_mini

UCM_DIR = MINI_ROOT / "BSDS500/ucm2/test"
GT_DIR = MINI_ROOT / "BSDS500/data/groundTruth/test"
IDS = ("100007", "279005")
@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """Two mini images: ground truth, their gPb ucm2, and a second copy of the ucm2."""
    root = tmp_path_factory.mktemp("report")
    gt, a, b = root / "gt", root / "a", root / "b"
    for d in (gt, a, b):
        d.mkdir()
    for iid in IDS:
        shutil.copy(GT_DIR / f"{iid}.mat", gt)
        shutil.copy(UCM_DIR / f"{iid}.mat", a)
        shutil.copy(UCM_DIR / f"{iid}.mat", b)
    return root


@pytest.fixture(scope="module")
def two_methods(dirs):
    return compare_methods({"A": dirs / "a", "B": dirs / "b"}, dirs / "gt", nthresh=9, human=True)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# ----------------------------------------------------------------------------- several methods


@needs_mini
def test_two_copies_of_the_same_results_give_identical_rows(two_methods):
    evs = two_methods.methods
    assert list(evs) == ["A", "B"]
    table = format_comparison(two_methods).splitlines()
    assert table[0].split()[:4] == ["Method", "N", "Cov-ODS", "Cov-OIS"]
    row_a, row_b = table[1].split(), table[2].split()
    assert row_a[0] == "A" and row_b[0] == "B"
    assert row_a[1:] == row_b[1:] and row_a[1] == "2" and "-" not in row_a
    ra, rb = per_image_rows(evs["A"], "A"), per_image_rows(evs["B"], "B")
    assert [dict(r, method="") for r in ra] == [dict(r, method="") for r in rb]
    assert table[3].startswith("Human agreement")


@needs_mini
def test_human_agreement(two_methods, tmp_path):
    h = two_methods.human
    assert h.n_images == 2 and h.n_pairs == 10  # 5 annotators on each image
    assert 0.6 < h.f < 0.95 and 0.6 < h.mean_f < 0.95
    assert h.f == pytest.approx(2 * h.recall * h.precision / (h.recall + h.precision))
    # identical annotators agree perfectly; a single annotation gives no pair
    seg = np.ones((30, 40), dtype=np.int64)
    seg[:, 20:] = 2
    cell = np.empty((1, 3), dtype=object)
    for k in range(3):
        cell[0, k] = {"Segmentation": seg, "Boundaries": seg2bdry(seg).astype(np.uint8)}
    scipy.io.savemat(tmp_path / "1.mat", {"groundTruth": cell})
    cell1 = np.empty((1, 1), dtype=object)
    cell1[0, 0] = cell[0, 0]
    scipy.io.savemat(tmp_path / "2.mat", {"groundTruth": cell1})
    same = human_agreement(tmp_path)
    assert same.n_images == 1 and same.n_pairs == 3 and same.f == 1.0 and same.mean_f == 1.0


def test_name_methods(tmp_path):
    (tmp_path / "x" / "res").mkdir(parents=True)
    (tmp_path / "y" / "res").mkdir(parents=True)
    (tmp_path / "a=b").mkdir()
    got = name_methods(["HED=/data/hed", str(tmp_path / "x" / "res"), str(tmp_path / "a=b")])
    assert got == {"HED": Path("/data/hed"), "res": tmp_path / "x" / "res", "a=b": tmp_path / "a=b"}
    got = name_methods([str(tmp_path / "x" / "res"), str(tmp_path / "y" / "res")])  # same basename: full paths
    assert list(got) == [str(tmp_path / "x" / "res"), str(tmp_path / "y" / "res")]
    with pytest.raises(EvaluationError, match="'A' given twice"):
        name_methods(["A=/p", "A=/q"])


# ----------------------------------------------------------------------------- per-image CSV


@needs_mini
def test_csv_one_row_per_image_and_means_equal_the_summary(two_methods, tmp_path):
    ev = two_methods.methods["A"]
    path = write_csv(ev, tmp_path / "t.csv")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = list(reader)
    assert [r["image_id"] for r in rows] == list(IDS)
    s = ev.to_json_dict()["summary"]

    def mean(col):
        return float(np.mean([float(r[col]) for r in rows]))

    # the averaged figures of the summary are the means of the per-image columns
    assert mean("pri_ods") == pytest.approx(s["pri"]["ods"], abs=1e-12)
    assert mean("pri_ois") == pytest.approx(s["pri"]["ois"], abs=1e-12)
    assert mean("vi_ods") == pytest.approx(s["vi"]["ods"], abs=1e-12)
    assert mean("vi_ois") == pytest.approx(s["vi"]["ois"], abs=1e-12)
    assert mean("paper_avg") == pytest.approx(s["paper_covering"]["avg"], abs=1e-12)
    assert mean("covering_ois") == pytest.approx(s["paper_covering"]["avg"], abs=1e-6)
    assert mean("paper_max") == pytest.approx(s["paper_covering"]["max"], abs=1e-12)
    assert mean("paper_max_any_scale") == pytest.approx(s["paper_covering"]["max_any_scale"], abs=1e-12)
    # chosen thresholds: the data-set ones on every row, each image's own OIS
    for r in rows:
        assert float(r["covering_ods_threshold"]) == pytest.approx(s["covering"]["ods_threshold"])
        assert float(r["boundary_ods_threshold"]) == pytest.approx(s["boundary"]["ods_threshold"])
        img = ev.to_json_dict()["images"][r["image_id"]]
        assert float(r["covering_ois_threshold"]) == img["covering_ois_threshold"]
        assert float(r["boundary_ois_f"]) == img["boundary_ois_f"]
        assert float(r["boundary_ois_f"]) >= float(r["boundary_ods_f"]) - 1e-12  # OIS is the image's best


@needs_mini
def test_per_image_boundary_ods_of_a_single_image_is_the_summary(dirs, tmp_path):
    """Pooling one image is that image: its F at the ODS threshold is the ODS F."""
    one, gt = tmp_path / "one", tmp_path / "gt"
    one.mkdir()
    gt.mkdir()
    shutil.copy(dirs / "a" / "100007.mat", one)
    shutil.copy(dirs / "gt" / "100007.mat", gt)
    ev = evaluate_dataset(one, gt, nthresh=9, region=False)
    (row,) = per_image_rows(ev)
    assert row["boundary_ods_f"] == pytest.approx(ev.boundary.ods_f, abs=1e-12)
    assert row["boundary_ods_recall"] == pytest.approx(ev.boundary.ods_recall, abs=1e-12)
    assert row["covering_ois"] is None  # no region benchmark: empty cells


# ----------------------------------------------------------------------------- plot


@needs_mini
def test_plot_is_a_png_of_the_requested_size(two_methods, tmp_path):
    pytest.importorskip("matplotlib")
    out = plot_pr(two_methods.methods, tmp_path / "sub" / "pr.png", size=(640, 480), human=two_methods.human)
    assert out.is_file() and _png_size(out) == (640, 480)
    from PIL import Image

    with Image.open(out) as im:  # decodes: a valid image, not just a header
        im.load()
        assert im.size == (640, 480)
        rgb = np.asarray(im.convert("RGB")).reshape(-1, 3)
        assert len(np.unique(rgb, axis=0)) > 10  # something drawn
    with pytest.raises(ValueError, match="no boundary"):
        plot_pr({"X": _region_only(two_methods)}, tmp_path / "x.png")


def _region_only(cmp):
    """Method A as if evaluated with boundary=False."""
    ev = cmp.methods["A"]
    return type(ev)(ev.images, ev.region, None, ev.paper)


def test_plot_without_matplotlib_says_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(PlotUnavailable, match="pip install"):
        require_matplotlib()
    code = main(
        ["evaluate", "--results", str(tmp_path), "--groundtruth", str(tmp_path), "--plot", str(tmp_path / "p.png")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "matplotlib" in err and "pip install" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p.png").exists()


# ----------------------------------------------------------------------------- pairing error


def test_mismatched_names_give_one_error_listing_them(tmp_path):
    res, gt = tmp_path / "res", tmp_path / "gt"
    res.mkdir()
    gt.mkdir()
    # the pairing is checked before any file is read: empty files will do
    for iid in ("11", "12", "13"):
        (res / f"{iid}.mat").write_bytes(b"")
    for iid in ("12", "13", "14", "15"):
        (gt / f"{iid}.mat").write_bytes(b"")
    with pytest.raises(EvaluationError) as exc:
        evaluate_dataset(res, gt)
    msg = str(exc.value)
    assert "do not pair up (2 image(s) in common)" in msg
    assert "1 result(s)" in msg and "11.mat" in msg
    assert "2 ground-truth image(s)" in msg and "14, 15" in msg
    # with allow_missing, only the result without ground truth is an error
    with pytest.raises(EvaluationError) as exc:
        evaluate_dataset(res, gt, allow_missing=True)
    assert "11.mat" in str(exc.value) and "ground-truth image" not in str(exc.value)
    # PNGs named otherwise than the ground truth: say so
    for iid in ("11", "12", "13"):
        (res / f"{iid}.mat").unlink()
        (res / f"{iid}_edges.png").write_bytes(b"")
    with pytest.raises(EvaluationError, match=r"not named after a ground-truth image \(e.g. 11_edges.png"):
        evaluate_dataset(res, gt)


def test_cli_mismatch_is_one_line(tmp_path, capsys):
    res, gt = tmp_path / "res", tmp_path / "gt"
    res.mkdir()
    gt.mkdir()
    (res / "1.mat").write_bytes(b"")
    (gt / "2.mat").write_bytes(b"")
    assert main(["evaluate", "--results", str(res), "--groundtruth", str(gt)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1.mat" in err[0] and ": 2 (pass" in err[0]


# ----------------------------------------------------------------------------- CLI


@needs_mini
def test_cli_several_methods(dirs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    args = ["evaluate", "--results", f"gPb={dirs / 'a'}", "--results", f"copy={dirs / 'b'}"]
    args += ["--groundtruth", str(dirs / "gt"), "--nthresh", "5", "--json", str(tmp_path / "r.json")]
    args += ["--csv", str(tmp_path / "r.csv"), "--plot", str(tmp_path / "r.png"), "--plot-size", "300x200"]
    assert main(args) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith(("gPb ", "copy "))]
    assert len(lines) == 2 and lines[0].split()[1:] == lines[1].split()[1:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["methods"]) == {"gPb", "copy"} and report["human"] is None
    assert report["methods"]["gPb"] == report["methods"]["copy"]
    with open(tmp_path / "r.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["image_id"]) for r in rows] == [(m, i) for m in ("gPb", "copy") for i in IDS]
    assert _png_size(tmp_path / "r.png") == (300, 200)
    assert main(args[:3] + ["--groundtruth", str(dirs / "gt"), "--plot-size", "big"]) == 2


@needs_mini
def test_cli_plain_results_and_no_matplotlib_import(dirs, tmp_path):
    """A plain ``--results DIR`` keeps the one-method table; without --plot
    matplotlib is never imported (nor torch)."""
    script = (
        "import sys\n"
        "from ndd.cli import main\n"
        f"code = main(['evaluate', '--results', {str(dirs / 'a')!r}, '--groundtruth', {str(dirs / 'gt')!r}, "
        f"'--nthresh', '3', '--csv', {str(tmp_path / 'p.csv')!r}])\n"
        "assert code == 0, code\n"
        "print('MPL', 'matplotlib' in sys.modules, 'TORCH', 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "MPL False TORCH False" in done.stdout
    assert "Covering" in done.stdout and "Paper covering" in done.stdout and "Method" not in done.stdout
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["a", "a"]
