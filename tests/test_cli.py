import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ndd import io
from ndd.cli import main


pytestmark = pytest.mark.usefixtures("one_thread")


def write_photo(path: Path, size=(40, 56)) -> Path:
    rng = np.random.default_rng(0)
    img = np.zeros((*size, 3), np.uint8)
    img[:, : size[1] // 2] = (200, 40, 30)
    img[:, size[1] // 2 :] = (30, 60, 210)
    img = np.clip(img + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


def test_help_of_every_subcommand_imports_no_torch():
    """``ndd --help``, ``--version`` and every ``SUB --help`` print without importing torch (instant start)."""
    from ndd.cli._commands import SUBCOMMANDS

    script = (
        "import contextlib, io, sys\n"
        "from ndd.cli import main\n"
        "out = io.StringIO()\n"
        f"for argv in [['--help'], ['--version']] + [[c, '--help'] for c in {[c.name for c in SUBCOMMANDS]!r}]:\n"
        "    try:\n"
        "        with contextlib.redirect_stdout(out):\n"
        "            main(argv)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, (argv, exc.code)\n"
        "print(out.getvalue().count('usage: ndd'), 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == [str(1 + len(SUBCOMMANDS)), "False"]


def test_the_command_exits_with_mains_status_and_only_the_command_freezes_objects(tmp_path, capsys):
    """``python -m ndd`` (the ``ndd`` script's :func:`console_main`) exits with :func:`main`'s status
    after freezing every object (its shutdown then skips taking them apart); :func:`main` called
    from Python freezes nothing: a frozen object is never collected, so a notebook or this test
    process calling it would keep every cycle it made from then on."""
    import gc

    missing = tmp_path / "missing.jpg"
    for argv, status in ((["--version"], 0), (["segment", str(missing), "--out", str(tmp_path / "o")], 2)):
        done = subprocess.run([sys.executable, "-m", "ndd", *argv], capture_output=True, text=True, timeout=120)
        assert done.returncode == status, done.stderr
    script = ("import atexit, gc, sys\nfrom ndd.cli import console_main\n"
              f"sys.argv = ['ndd', 'segment', {str(missing)!r}, '--out', {str(tmp_path / 'o')!r}]\n"
              "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0))\nconsole_main()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout.split()[-2:] == ["frozen", "True"], done.stdout + done.stderr
    before = gc.get_freeze_count()
    assert main(["segment", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert gc.get_freeze_count() == before == 0
    capsys.readouterr()


def test_segment_end_to_end_and_bad_inputs(tmp_path, capsys):
    good = write_photo(tmp_path / "photo.png")
    grey = tmp_path / "grey.png"
    Image.fromarray(np.tile(np.linspace(0, 255, 56, dtype=np.uint8), (40, 1))).save(grey)
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("hello")
    truncated = tmp_path / "trunc.jpg"
    Image.open(good).convert("RGB").save(truncated, "JPEG")
    truncated.write_bytes(truncated.read_bytes()[:200])
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1)).save(tiny)
    missing = tmp_path / "missing.png"
    out = tmp_path / "out"
    code = main(["segment", str(good), str(not_image), str(truncated), str(tiny), str(missing), str(grey),
                 "--out", str(out), "--model", "handcrafted", "--levels", "1,2"])
    err = capsys.readouterr().err
    assert code == 1
    for bad in (not_image, truncated, tiny, missing):
        assert sum(str(bad) in line for line in err.splitlines()) >= 1, bad
    for stem in ("photo", "grey"):  # good files are still processed
        ucm2 = io.read_ucm2(out / f"{stem}.mat")
        assert ucm2.shape == (81, 113)
        levels = [io.read_labels(out / f"{stem}_labels_{k:03d}.png") for k in (1, 2)]
        assert [len(np.unique(l)) for l in levels] == [1, 2]
        assert all(l.shape == (40, 56) for l in levels)
        assert (out / f"{stem}_overlay_002.png").exists() and (out / f"{stem}_hierarchy.png").exists()


def test_segment_without_shipped_model_or_bad_checkpoint(tmp_path, capsys):
    photo = write_photo(tmp_path / "p.png")
    bogus = tmp_path / "model.pt"
    bogus.write_bytes(b"not a checkpoint")
    assert main(["segment", str(photo), "--out", str(tmp_path / "o"), "--model", str(bogus)]) == 2
    assert "model.pt" in capsys.readouterr().err


def test_a_misspelt_model_name_or_a_folder_is_named(tmp_path, capsys):
    from ndd.inference import load_segmentation_model

    with pytest.raises(FileNotFoundError, match="model 'bsds5000': no such file, nor a model name .*bsds500,"):
        load_segmentation_model("bsds5000")
    with pytest.raises(ValueError, match="is a folder: give a checkpoint file"):
        load_segmentation_model(str(tmp_path))


def test_usage_mistakes_are_one_line_naming_the_command(tmp_path, capsys):
    """A malformed option gets one stderr line (not argparse's usage block), exit code 2, no output folder."""
    out = tmp_path / "o"
    cases = [(["segment", "x.jpg", "--out", str(out), "--format", "png"], "ndd segment: error: argument --format"),
             (["segment", "x.jpg", "--out", str(out), "--levels", "2,x"], "ndd segment: error: argument --levels"),
             (["similarity", "x.jpg", "--points", "300"], "ndd similarity: error: argument --points"),
             (["evaluate", "--results"], "ndd evaluate: error: argument --results"),
             (["wsss", "predict", "--bogus"], "ndd wsss predict: error: the following arguments are required"),
             (["bogus"], "ndd: error: argument COMMAND: invalid choice")]
    for argv, start in cases:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.startswith(start), (argv, err)
        assert len(err.strip().splitlines()) == 1 and err.strip().endswith("--help)"), (argv, err)
    assert not out.exists()


def test_device_names_are_checked_without_torch():
    from ndd.device import check_device_name

    assert [check_device_name(n) for n in ("cpu", " CUDA:1", "auto", "mps")] == ["cpu", "cuda:1", "auto", "mps"]
    for bad in ("gpu", "cuda:", "cuda:x", "cpu0"):
        with pytest.raises(ValueError, match="unknown device"):
            check_device_name(bad)


def test_usable_cores_are_this_process_affinity(monkeypatch):
    """One owner for the cores ndd may use (worker processes, writing threads): the affinity
    mask where the system has one, else the CPU count."""
    import os

    from ndd.device import usable_cores

    assert 1 <= usable_cores() <= (os.cpu_count() or 1)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert usable_cores() == 1
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert usable_cores() == 6


def test_segment_checks_inputs_device_and_model_before_any_work(tmp_path, capsys):
    """Each mistake: exit 2, one line on stderr naming it, no traceback, no --out folder left behind."""
    photo = write_photo(tmp_path / "p.png")
    notes = write_photo(tmp_path / "notes.png")  # an image, not a model
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ([str(empty), str(tmp_path / "missing.png"), str(tmp_path / "*.tif")], [], "no image to segment"),
        ([str(photo)], ["--device", "gpu"], "unknown device 'gpu'"),
        ([str(photo)], ["--model", str(notes)], "not an ndd checkpoint or weights file"),
        ([str(photo)], ["--diffusion-weight", "1.5"], "--diffusion-weight must be in [0, 1]"),
        ([str(photo)], ["--diffusion-tau", "0"], "--diffusion-tau > 0"),
        ([str(photo)], ["--small-edge-weight", "1.5"], "--small-edge-weight and --diffusion-weight must be in [0, 1]"),
        ([str(photo)], ["--small-region", "0"], "--small-region in (0, 1)"),
    ]
    if not torch.cuda.is_available():
        cases.append(([str(photo)], ["--device", "cuda"], "CUDA is not available"))
    for inputs, flags, message in cases:
        assert main(["segment", *inputs, "--out", str(out), *flags]) == 2, flags
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
        assert not out.exists()
    main(["segment", str(empty), str(photo), "--out", str(out), "--model", "handcrafted", "--levels", "2"])
    err = capsys.readouterr().err
    assert "empty: folder holds no image" in err and "1 image(s) segmented, 1 failed" in err


def test_segment_overlay_is_the_photo_and_lists_what_it_wrote(tmp_path, capsys):
    photo = write_photo(tmp_path / "p.png", size=(48, 64))
    out = tmp_path / "out"
    code = main(["segment", str(photo), "--out", str(out), "--model", "handcrafted", "--levels", "2,1000",
                 "--format", "overlay,mean,labels", "-v"])
    assert code == 0
    captured = capsys.readouterr()
    written = sorted(Path(line).name for line in captured.out.split())
    assert written == ["p_labels_002.png", "p_mean_002.png", "p_overlay_002.png"]
    assert sorted(f.name for f in out.iterdir() if not f.name.startswith(".")) == written
    assert "level 1000 skipped in 1 of 1 image(s)" in captured.err and "1 image(s) segmented, 0 failed" in captured.err
    original = np.asarray(Image.open(photo))
    overlay = np.asarray(Image.open(out / "p_overlay_002.png"))
    labels = io.read_labels(out / "p_labels_002.png")
    inside = np.ones_like(labels, bool)  # pixels whose 3x3 neighbourhood is one segment
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            inside &= np.roll(labels, (dy, dx), (0, 1)) == labels
    inside[[0, -1]] = inside[:, [0, -1]] = False
    assert inside.sum() > 0.5 * labels.size
    assert np.array_equal(overlay[inside], original[inside])  # the photo itself away from boundaries
    assert not np.array_equal(np.asarray(Image.open(out / "p_mean_002.png"))[inside], original[inside])


def test_similarity_point_outside_is_reported_in_the_users_pixels(tmp_path, capsys):
    photo = write_photo(tmp_path / "p.png", size=(400, 600))  # processed at 321x481
    assert main(["similarity", str(photo), "--points", "9999,10", "--model", "handcrafted",
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "point (9999, 10) lies outside the 600x400 image" in err and len(err.strip().splitlines()) == 1


def test_similarity_outputs(tmp_path):
    photo = write_photo(tmp_path / "p.png")
    assert main(["similarity", str(photo), "--points", "5,5", "50,30", "--model", "handcrafted",
                 "--out", str(tmp_path)]) == 0
    tile = np.asarray(Image.open(tmp_path / "p_similarity_5_5.png"))
    assert tile.shape == (40, 56, 3) and tile.dtype == np.uint8
    assert main(["similarity", str(photo), "--all-grid", "2", "--model", "handcrafted", "--out", str(tmp_path)]) == 0
    sheet = np.asarray(Image.open(tmp_path / "p_similarity_grid.png"))
    assert sheet.shape == (2 * 40 + 4, 2 * 56 + 4, 3)


def test_segment_resumes_only_what_was_made_with_the_same_settings(tmp_path, capsys, monkeypatch):
    import ndd.inference

    photo = write_photo(tmp_path / "p.png")
    out = tmp_path / "out"
    argv = ["segment", str(photo), "--out", str(out), "--model", "handcrafted", "--levels", "2"]
    assert main(argv + ["--format", "labels"]) == 0
    with monkeypatch.context() as patch:  # nothing left to do: the model is not even loaded
        patch.setattr(ndd.inference, "load_segmentation_model", lambda *a, **k: pytest.fail("model loaded"))
        assert main(argv + ["--format", "labels"]) == 0
    assert "0 image(s) segmented, 1 skipped" in capsys.readouterr().err
    assert main(argv + ["--format", "labels,ucm2"]) == 0  # asked for more than was made
    err = capsys.readouterr().err
    assert "1 input(s) completed earlier in" in err and "(formats) are segmented again" in err
    assert "1 image(s) segmented" in err and (out / "p.mat").is_file()


def test_segment_says_it_runs_an_input_that_a_killed_run_was_segmenting_alone(tmp_path, capsys):
    import json

    photo = write_photo(tmp_path / "p.png")
    out = tmp_path / "out"
    out.mkdir()
    started = {"input": str(photo.resolve()), "event": "started"}  # what a run killed on it leaves
    (out / ".ndd-segment.rank0.jsonl").write_text(json.dumps(started) + "\n")
    argv = ["segment", str(photo), "--out", str(out), "--model", "handcrafted", "--levels", "2", "--format", "labels"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"1 input(s) were being segmented when an earlier run into {out} was killed" in err, err
    assert "1 image(s) segmented, 0 failed" in err and (out / "p_labels_002.png").is_file()
    assert main(argv) == 0 and "0 image(s) segmented, 1 skipped" in capsys.readouterr().err


def test_segment_with_shipped_model(tmp_path, capsys):
    import json

    photo = write_photo(tmp_path / "p.png")
    assert main(["segment", str(photo), "--out", str(tmp_path / "o"), "--levels", "1,2",
                 "--format", "labels,overlay,strip,ucm2,edges"]) == 0
    assert io.read_ucm2(tmp_path / "o" / "p.mat").shape == (81, 113)
    edges = np.asarray(Image.open(tmp_path / "o" / "p_edges.png"))  # the model's soft edge map, 16-bit
    assert edges.dtype == np.uint16 and edges.shape == (40, 56) and edges.max() > 0
    # on an x86 CPU the default model runs HED's trunk in int8 unless told --no-int8-edges, and the
    # run records what it did (a float32 run into the same folder redoes the image)
    from ndd.models.vgg16_hed import int8_supported

    x86 = int8_supported()
    (recorded,) = [json.loads(f.read_text()) for f in (tmp_path / "o").glob(".ndd-segment.settings-*.json")]
    assert recorded["int8_edges"] is x86 and ("HED trunk in int8" in capsys.readouterr().err) is x86
    assert main(["segment", str(photo), "--out", str(tmp_path / "o"), "--levels", "1,2", "--no-int8-edges"]) == 0
    err = capsys.readouterr().err
    assert "HED trunk in int8" not in err and ("(int8_edges) are segmented again" in err) is x86


def test_segment_superpixels_needs_an_edge_model(tmp_path, capsys):
    photo = write_photo(tmp_path / "p.png")
    code = main(["segment", str(photo), "--out", str(tmp_path / "out"), "--model", "handcrafted",
                 "--method", "superpixels"])
    assert code == 2
    assert "needs a model with an edge map" in capsys.readouterr().err
    code = main(["segment", str(photo), "--out", str(tmp_path / "out"), "--model", "handcrafted", "--format", "edges"])
    err = capsys.readouterr().err
    assert code == 2 and "--format edges needs a model with an edge map" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def _tiny_bsds(root: Path, n: int = 2) -> Path:
    """A BSDS500 layout with ``n`` 20x26 train images, each with two annotations."""
    import scipy.io

    rng = np.random.default_rng(7)
    images, gts = root / "images" / "train", root / "groundTruth" / "train"
    images.mkdir(parents=True)
    gts.mkdir(parents=True)
    for k in range(n):
        Image.fromarray(rng.integers(0, 256, (20, 26, 3), dtype=np.uint8)).save(images / f"{k + 1}.jpg")
        cell = np.empty((1, 2), object)
        for a, split in enumerate((10, 14)):
            seg = np.ones((20, 26), np.uint16)
            seg[:, split:] = 2
            bdry = np.zeros((20, 26), bool)
            bdry[:, split] = True
            cell[0, a] = {"Segmentation": seg, "Boundaries": bdry}
        scipy.io.savemat(gts / f"{k + 1}.mat", {"groundTruth": cell})
    return root


def test_train_edge_fusion_writes_a_head_for_the_models_scales_and_checks_inputs_first(tmp_path, capsys):
    from ndd.models import SpecDiffNetConfig, save_model
    from ndd.models.edge_fusion import read_edge_fusion
    from ndd.models.specdiffnet import SpecDiffNet

    torch.manual_seed(0)
    config = SpecDiffNetConfig(backbone="small_cnn", embed_dim=8, window=5, n_eigs=4, edge_detector="vgg16_hed",
                               edge_scales=(1.0, 0.5))
    model_file = save_model(SpecDiffNet(config), tmp_path / "model.pt")
    data = _tiny_bsds(tmp_path / "bsds")
    out = tmp_path / "head.pt"
    args = ["train-edge-fusion", "--model", str(model_file), "--data", str(data), "--cache", str(tmp_path / "cache"),
            "--out", str(out), "--steps", "3", "--width", "2", "--crop", "8", "--batch", "2", "--no-progress"]
    assert main(args) == 0
    head = read_edge_fusion(out)
    assert head["scales"] == (1.0, 0.5) and head["width"] == 2 and head["meta"]["splits"] == ["train"]
    assert head["model"]["linear.weight"].shape == (1, 10, 1, 1)  # 5 side outputs x 2 scales
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["1.npy", "2.npy"]
    capsys.readouterr()
    # bad inputs: one line, exit 2, nothing written
    for bad, expected in (([*args[:4], str(tmp_path / "nowhere"), *args[5:]], "BSDS500 root folder not found"),
                          ([*args, "--width", "0"], "invalid edge fusion training settings"),
                          ([*args[:2], str(tmp_path / "none.pt"), *args[3:]], "no such file, nor a model name")):
        out.unlink(missing_ok=True)
        assert main(bad) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("ndd train-edge-fusion: error:") and expected in err and "\n" not in err
        assert not out.exists()
