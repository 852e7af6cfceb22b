"""The command line as a user runs it (issue 15): each row of the issue's table in a fresh process.

Every mistake gives its exit code and one line on stderr, never a traceback, and comes before any
expensive work: where the check needs no torch, the process is run with ``-X importtime`` and
must not have imported torch at all. The inputs are small synthetic images and the hand-crafted
model, so no test loads a network; the 24-megapixel case is
``tests/test_batch.py::test_a_large_photo_segments_under_a_memory_cap`` (a minute, not here).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from ndd import io
from ndd.batch import auto_levels, default_workers
from ndd.cli._commands import SUBCOMMANDS

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ENV.pop("PYTHONWARNINGS", None)


def ndd(*args: str | Path, code: str | None = None, importtime: bool = True,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -X importtime -m ndd ARGS`` (or ``python -c CODE ARGS``): stdout, stderr, exit code."""
    launch = ["-c", code] if code is not None else ["-m", "ndd"]
    flags = ["-X", "importtime"] if importtime else []
    done = subprocess.run([sys.executable, *flags, *launch, *map(str, args)], env=ENV, capture_output=True,
                          timeout=timeout)  # bytes: text mode would turn a progress bar's \r into \n
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def messages(done: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr without ``-X importtime``'s lines."""
    return [line for line in done.stderr.splitlines() if not line.startswith("import time:")]


def imported(done: subprocess.CompletedProcess[str]) -> set[str]:
    """Every module the process imported (from ``-X importtime``)."""
    return {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}


def one_line_error(done: subprocess.CompletedProcess[str], exit_code: int, *fragments: str) -> str:
    """Assert: exit code, exactly one line on stderr holding every fragment, no traceback; return it."""
    lines = messages(done)
    assert done.returncode == exit_code, (done.returncode, lines)
    assert "Traceback" not in done.stderr + done.stdout
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def write_photo(path: Path, size: tuple[int, int] = (48, 64), seed: int = 0) -> Path:
    """Two flat halves with a little noise: (H, W) ``size``."""
    rng = np.random.default_rng(seed)
    img = np.zeros((*size, 3), np.uint8)
    img[:, : size[1] // 2] = (200, 40, 30)
    img[:, size[1] // 2 :] = (30, 60, 210)
    img = np.clip(img.astype(int) + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    write_photo(folder / "a.png", seed=0)
    write_photo(folder / "b.png", seed=1)
    return folder


# -- row 1: ndd --help, ndd --version, ndd evaluate --help ------------------------------------------ #
@pytest.mark.parametrize("argv", [["--help"], ["--version"]] + [[c.name, "--help"] for c in SUBCOMMANDS],
                         ids=lambda argv: " ".join(argv))
def test_help_and_version_print_at_once_without_torch(argv):
    start = time.perf_counter()
    done = ndd(*argv)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, messages(done)
    assert done.stdout.startswith("usage: ndd") or done.stdout.startswith("ndd ")
    modules = imported(done)
    assert "ndd.cli" in modules  # -X importtime did list the imports
    assert not {"torch", "timm", "gradio", "matplotlib"} & modules, sorted({"torch", "timm", "gradio"} & modules)
    assert seconds < 5, seconds  # about 0.3 s; a generous bound for a loaded machine


# -- row 2: --device cuda without a GPU, --device gpu ------------------------------------------------ #
@pytest.mark.parametrize("command", ["segment", "similarity", "evaluate-kernel", "demo"])
def test_an_unknown_device_is_one_line_before_torch_is_imported(command, photos, tmp_path):
    args = {
        "segment": ["segment", photos / "a.png", "--out", tmp_path / "out"],
        "similarity": ["similarity", photos / "a.png", "--points", "5,5", "--out", tmp_path / "out"],
        "evaluate-kernel": ["evaluate-kernel", "--data", tmp_path],
        "demo": ["demo"],
    }[command]
    done = ndd(*args, "--device", "gpu")
    if command == "demo" and "pip install" in done.stderr:
        pytest.skip("the demo extra (gradio) is not installed")
    one_line_error(done, 2, "unknown device 'gpu'", "auto, cpu, cuda, cuda:N or mps")
    assert "torch" not in imported(done)
    assert not (tmp_path / "out").exists()


def test_cuda_without_a_gpu_is_one_line_before_the_model_loads(photos, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    done = ndd("segment", photos / "a.png", "--out", tmp_path / "out", "--device", "cuda")
    one_line_error(done, 2, "device 'cuda': CUDA is not available", "use --device cpu")
    assert not any(m.startswith("ndd.models.efficientnet") for m in imported(done))  # no model was built
    assert not (tmp_path / "out").exists()


# -- rows 3, 5, 6, 8 and "which files": one run over two images and a file that is not one ---------- #
@pytest.fixture(scope="module")
def segment_run(photos, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seg")
    notes = tmp / "notes.jpg"
    notes.write_text("hello")
    out = tmp / "out"
    done = ndd("segment", notes, photos, "--out", out, "--model", "handcrafted", "--levels", "2,1000",
               "--format", "labels,overlay,mean", "-v", "--threads", "1")
    return done, out, notes


def test_levels_beyond_the_finest_are_reported_once_per_run(segment_run):
    done, _, _ = segment_run
    assert done.returncode == 1 and "Traceback" not in done.stderr, messages(done)  # 1: notes.jpg failed
    skipped = [line for line in messages(done) if "skipped" in line]
    assert len(skipped) == 1 and "level 1000 skipped in 2 of 2 image(s)" in skipped[0], skipped


def test_no_progress_bar_in_a_log_and_a_summary_line(segment_run):
    done, out, notes = segment_run
    lines = messages(done)
    assert "\r" not in done.stderr and "%|" not in done.stderr  # stderr is a pipe: no bar
    # a bad input among good ones: named in one line before the model loads, the others are done
    assert lines[0] == f"ndd segment: {notes}: not an image file (or a format Pillow cannot read)"
    # two images on a CPU of two or more cores: ndd.batch.default_workers spreads them over processes
    workers = "; 2 worker processes" if default_workers(2, "cpu", threads=1) == 2 else ""
    assert lines[1] == "model: hand-crafted features (classical diffusion distance)" + workers
    assert re.fullmatch(rf"ndd segment: 2 image\(s\) segmented, 1 failed, in [\d.]+ s, [\d.]+ images/s; "
                        rf"outputs in {re.escape(str(out))}", lines[-1]), lines[-1]


def test_segment_lists_the_files_it_wrote(segment_run):
    done, out, _ = segment_run
    listed = sorted(Path(line) for line in done.stdout.splitlines())
    assert listed == sorted(p for p in out.iterdir() if not p.name.startswith("."))
    assert sorted(p.name for p in listed) == [f"{s}_{f}_002.png" for s in "ab" for f in ("labels", "mean", "overlay")]


def test_the_overlay_is_the_photo_with_boundaries(segment_run, photos):
    _, out, _ = segment_run
    original = np.asarray(Image.open(photos / "a.png"))
    overlay = np.asarray(Image.open(out / "a_overlay_002.png"))
    labels = io.read_labels(out / "a_labels_002.png")
    assert overlay.shape == original.shape and len(np.unique(labels)) == 2
    inside = np.ones_like(labels, bool)  # pixels whose 3x3 neighbourhood is one segment
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            inside &= np.roll(labels, (dy, dx), (0, 1)) == labels
    inside[[0, -1]] = inside[:, [0, -1]] = False
    assert inside.sum() > 0.5 * labels.size
    assert np.array_equal(overlay[inside], original[inside])  # the photo's own pixels
    assert not np.array_equal(overlay[~inside], original[~inside])  # boundaries drawn
    mean = np.asarray(Image.open(out / "a_mean_002.png"))  # the mean-colour rendering, by its own name
    assert not np.array_equal(mean[inside], original[inside])


# -- rows 3, 4, 5: default levels, one long image shows progress, warnings beside the bar ------------ #
WARN_AND_RUN = """
import sys, warnings
import ndd.batch.segment as batch
from ndd.cli import main

segment_file = batch.segment_file
def warn_then_segment(*args, **kwargs):
    warnings.warn("a library warning", UserWarning)
    return segment_file(*args, **kwargs)
batch.segment_file = warn_then_segment
sys.exit(main(sys.argv[1:]))
"""


def test_default_levels_fit_and_one_image_shows_its_progress(photos, tmp_path):
    out = tmp_path / "out"
    done = ndd("segment", photos / "a.png", "--out", out, "--model", "handcrafted", "--format", "labels",
               "--progress", "--threads", "1", code=WARN_AND_RUN, importtime=False)
    assert done.returncode == 0 and "Traceback" not in done.stderr, messages(done)
    err = "\n".join(messages(done))
    assert "skipped" not in err  # the default levels are those the hierarchy has
    written = sorted(int(p.stem.rsplit("_", 1)[1]) for p in out.glob("a_labels_*.png"))
    finest = int(np.unique(io.read_labels(out / f"a_labels_{written[-1]:03d}.png")).size)
    assert written == list(auto_levels(finest))
    # --progress: a bar even for one image, naming what that image is doing
    assert "0/1" in err and "1/1" in err and "a.png: segmenting" in err and "a.png: writing" in err
    # the warning is a line of its own: the bar is cleared first (\r) and redrawn after it
    assert re.search(r"\r *\rndd segment: warning: a library warning\n", done.stderr), done.stderr[-600:]
    assert "UserWarning" not in err and "warnings.warn" not in err


# -- row 6: similarity points in the user's pixels ---------------------------------------------------- #
def test_similarity_point_outside_is_one_line_in_the_users_pixels(tmp_path):
    photo = write_photo(tmp_path / "p.png", size=(400, 600))  # processed at 321x481
    done = ndd("similarity", photo, "--points", "9999,10", "--out", tmp_path / "out")
    one_line_error(done, 2, "point (9999, 10) lies outside the 600x400 image", "x in 0..599")
    assert "torch" not in imported(done)  # before torch is even imported, let alone the model
    assert not (tmp_path / "out").exists()


def test_similarity_lists_the_files_it_wrote(photos, tmp_path):
    done = ndd("similarity", photos / "a.png", "--points", "5,5", "60,40", "--model", "handcrafted",
               "--out", tmp_path / "out")
    assert done.returncode == 0, messages(done)
    listed = [Path(line) for line in done.stdout.splitlines()]
    assert [p.name for p in listed] == ["a_similarity_5_5.png", "a_similarity_60_40.png"]
    assert all(np.asarray(Image.open(p)).shape == (48, 64, 3) for p in listed)


# -- row 7: --model notes.png ------------------------------------------------------------------------- #
def test_a_model_that_is_no_checkpoint_says_so(photos, tmp_path):
    notes = write_photo(tmp_path / "notes.png")
    done = ndd("segment", photos / "a.png", "--out", tmp_path / "out", "--model", notes)
    one_line_error(done, 2, "not an ndd checkpoint or weights file", "notes.png")
    assert not (tmp_path / "out").exists()


# -- row 8: a directory (or anything else unusable) as input: before the model, no --out left behind -- #
@pytest.mark.parametrize("case", ["empty folder", "missing file", "not an image", "output is a file"])
def test_unusable_inputs_are_one_line_before_torch(case, photos, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    notes = tmp_path / "notes.jpg"
    notes.write_text("hello")
    out = tmp_path / "out"
    given, expected = {
        "empty folder": ([empty, "--out", out], f"{empty}: folder holds no image"),
        "missing file": ([tmp_path / "missing.png", "--out", out], "missing.png: no such file"),
        "not an image": ([notes, "--out", out], "notes.jpg: not an image file"),
        "output is a file": ([photos / "a.png", "--out", notes], "notes.jpg: exists and is not a folder"),
    }[case]
    done = ndd("segment", *given)
    one_line_error(done, 2, expected)
    assert "torch" not in imported(done)
    assert not out.exists()


# -- row 9: ndd evaluate with a corrupt x.mat that matches no ground truth ---------------------------- #
def test_evaluate_names_a_stray_corrupt_result_as_both(tmp_path):
    seg = np.ones((6, 8), np.uint16)
    seg[:, 4:] = 2
    gt, res = tmp_path / "gt", tmp_path / "res"
    gt.mkdir()
    res.mkdir()
    cell = np.empty((1, 1), object)
    cell[0, 0] = {"Segmentation": seg, "Boundaries": np.zeros_like(seg, bool)}
    scipy.io.savemat(gt / "1.mat", {"groundTruth": cell})
    scipy.io.savemat(res / "1.mat", {"segs": np.array([seg], object)})
    (res / "x.mat").write_bytes(b"not a mat file")
    done = ndd("evaluate", "--results", res, "--groundtruth", gt)
    one_line_error(done, 1, "x.mat", "no ground truth", "unreadable", "cannot read .mat file")
    assert "torch" not in imported(done)


# -- row 10: ndd train --help shows defaults; --print-config needs no data ---------------------------- #
def test_train_help_shows_defaults_and_print_config_needs_no_data():
    done = ndd("train", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for flag, default in (("--lr", "(default 0.0001)"), ("--crop-size", "(default 321)"),
                          ("--stage1-steps", "(default 120000)")):
        at = text.index(f"{flag} {flag.lstrip('-').replace('-', '_').upper()} ")
        assert default in text[at: at + 200], (flag, text[at: at + 200])
    done = ndd("train", "--print-config")
    assert done.returncode == 0 and "Traceback" not in done.stderr, messages(done)
    assert "crop_size: 321" in done.stdout and "data_root: null" in done.stdout
