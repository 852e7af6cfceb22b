"""The ``ndd wsss`` pipeline end to end: training with exact resume, pseudo labels, DeepLab on them,
prediction and evaluation, from Python and from the command line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ndd import wsss
from ndd.cli import main
from ndd.train.metrics import read_metrics
from ndd.wsss.checkpoints import load_wsss_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(dataset="folder", split="train", crop_size=32, scale_range=(0.8, 1.2), batch_size=2, num_workers=0,
            optimizer="adam", lr=1e-3, weight_decay=0.0, log_every=1, progress=False, tensorboard=False)
TINY_NET = {"backbone": "small_cnn", "feature_dim": 8, "spec_diff_net": "handcrafted", "freeze_bn": False}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    wsss.synthetic(root, num_train=6, num_val=3, size=(32, 40), seed=0, progress=False)
    return root


def test_wsss_training_resumes_exactly(shapes, tmp_path):
    full = wsss.train(data_root=str(shapes), steps=4, save_every=2, keep_checkpoints=0, run_dir=str(tmp_path / "a"),
                      model=TINY_NET, **TINY)
    resumed = wsss.train(data_root=str(shapes), steps=4, save_every=2, run_dir=str(tmp_path / "b"), model=TINY_NET,
                         resume=str(tmp_path / "a" / "checkpoints" / "step_0000002.pt"), **TINY)
    a, b = load_wsss_checkpoint(full, "wsss"), load_wsss_checkpoint(resumed, "wsss")
    assert a["step"] == b["step"] == 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    rows_a = read_metrics(tmp_path / "a" / "metrics.csv")
    rows_b = read_metrics(tmp_path / "b" / "metrics.csv")
    assert [r["loss"] for r in rows_a[2:]] == [r["loss"] for r in rows_b]  # steps 3 and 4, bit for bit
    assert a["classes"] == ["background", "disc", "square", "triangle", "star", "cross"] and a["background"] == 0
    with pytest.raises(ValueError, match="differs from the checkpoint .* in \\['feature_dim'\\]"):
        wsss.train(data_root=str(shapes), steps=6, run_dir=str(tmp_path / "c"), resume=str(full),
                   model={**TINY_NET, "feature_dim": 4}, **TINY)


def test_pipeline_from_the_command_line(shapes, tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--dataset", "folder", "--data", str(shapes), "--split", "train", "--crop-size", "32",
              "--batch-size", "2", "--num-workers", "0", "--no-progress", "--no-tensorboard", "--optimizer", "adam"]
    assert main(["wsss", "train", *common, "--steps", "2", "--run-dir", str(run / "wsss"), "--variant", "no_sharing",
                 "--preset", "authors", "--backbone", "small_cnn", "--feature-dim", "8", "--spec-diff-net", "handcrafted",
                 "--model", "freeze_bn=false", "--guidance-cache", str(tmp_path / "k")]) == 0
    ckpt = load_wsss_checkpoint(run / "wsss" / "last.pt", "wsss")
    assert ckpt["model_config"]["thresholds"] == [0.95, 0.75, 0.6, 0.4] and ckpt["model_config"]["variant"] == "no_sharing"
    assert main(["wsss", "pseudo-labels", "--checkpoint", str(run / "wsss" / "last.pt"), "--out", str(run / "pseudo"),
                 "--guidance-cache", str(tmp_path / "k"), "--device", "cpu"]) == 0
    assert "6 pseudo labels written, 0 already there" in capsys.readouterr().err
    assert main(["wsss", "pseudo-labels", "--checkpoint", str(run / "wsss" / "last.pt"), "--out", str(run / "pseudo")]) == 0
    assert "0 pseudo labels written, 6 already there" in capsys.readouterr().err  # a rerun resumes
    assert main(["wsss", "evaluate", str(run / "pseudo"), "--dataset", "folder", "--data", str(shapes), "--split", "train",
                 "--json", str(run / "pseudo.json")]) == 0
    assert "mIoU" in capsys.readouterr().out and json.loads((run / "pseudo.json").read_text())["n_images"] == 6
    assert main(["wsss", "train-seg", *common, "--steps", "2", "--run-dir", str(run / "seg"), "--pseudo-labels",
                 str(run / "pseudo"), "--arch", "deeplabv3_small_cnn", "--no-freeze-bn"]) == 0
    assert main(["wsss", "predict", "--checkpoint", str(run / "seg" / "last.pt"), "--out", str(run / "val"),
                 "--dataset", "folder", "--data", str(shapes), "--split", "val", "--crop-size", "24"]) == 0
    capsys.readouterr()
    scores = wsss.evaluate(run / "val", dataset="folder", data_root=shapes, split="val")
    assert scores["n_images"] == 3 and 0 <= scores["miou"] <= 1
    # predicting plain files gives the same mask as the data-set path
    assert main(["wsss", "predict", str(shapes / "images" / "val_00000.png"), "--checkpoint", str(run / "seg" / "last.pt"),
                 "--out", str(run / "files"), "--crop-size", "24"]) == 0
    from ndd.data import read_mask_png
    assert np.array_equal(read_mask_png(run / "files" / "val_00000.png", 6), read_mask_png(run / "val" / "val_00000.png", 6))


def test_cli_mistakes_get_one_line_before_any_work(shapes, tmp_path, capsys):
    out = tmp_path / "never"
    cases = [
        (["wsss", "train", "--dataset", "folder", "--run-dir", str(out)], "no data: give data_root"),
        (["wsss", "train", "--dataset", "folder", "--data", str(tmp_path / "nope"), "--run-dir", str(out)],
         "data folder not found"),
        (["wsss", "train", "--dataset", "folder", "--data", str(shapes), "--split", "train", "--device", "gpu",
          "--run-dir", str(out)], "unknown device 'gpu'"),
        (["wsss", "train", "--dataset", "folder", "--data", str(shapes), "--variant", "crf", "--run-dir", str(out)],
         "variant must be one of"),
        (["wsss", "train-seg", "--dataset", "folder", "--data", str(shapes), "--run-dir", str(out)], "no pseudo labels"),
        (["wsss", "train-seg", "--dataset", "folder", "--data", str(shapes), "--split", "train", "--pseudo-labels",
          str(tmp_path), "--run-dir", str(out)], "6 training image(s) have no pseudo label"),
        (["wsss", "pseudo-labels", "--checkpoint", str(shapes / "labels.csv"), "--out", str(out)],
         "is not a 'ndd-wsss' checkpoint"),
        (["wsss", "predict", "--checkpoint", str(tmp_path / "x.pt"), "--out", str(out)], "no images"),
        (["wsss", "evaluate", str(shapes / "masks")], "give the ground truth as a data set"),
        (["wsss", "evaluate", str(tmp_path), "--dataset", "folder", "--data", str(shapes), "--split", "val"],
         "3 of 3 image(s) have no prediction"),
        (["wsss", "synthetic", "--out", str(shapes)], "already holds a data set"),
    ]
    if not torch.cuda.is_available():
        cases.append((["wsss", "pseudo-labels", "--checkpoint", "x.pt", "--out", str(out), "--device", "cuda"],
                      "CUDA is not available"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)
        assert not out.exists()
    assert main(["wsss", "train", "--dataset", "folder", "--print-config", "--steps", "7"]) == 0
    printed = capsys.readouterr().out
    assert "steps: 7" in printed and "preset: paper" in printed
    # the network's keys as they would run (the preset's), and the YAML reads back to the same config
    shown = yaml.safe_load(printed)
    assert shown["model"]["backbone"] == "resnet101" and shown["model"]["spec_diff_net"] == "bsds500"
    assert "variant" not in shown["model"] and "num_classes" not in shown["model"]
    saved = tmp_path / "printed.yaml"
    saved.write_text(printed)
    assert main(["wsss", "train", "--config", str(saved), "--print-config"]) == 0
    assert capsys.readouterr().out == printed


def _chance_miou(data):
    """mIoU of labelling each pixel at random among its image's classes (background included)."""
    rng = np.random.default_rng(0)
    conf = np.zeros((6, 7), np.int64)
    for k in range(len(data)):
        gt = data.read_mask(k)
        allowed = np.flatnonzero(data[k]["classes"].numpy())
        conf += wsss.confusion_matrix(rng.choice(allowed, size=gt.shape), gt, 6)
    return wsss.scores_from_confusion(conf)["miou"]


def test_end_to_end_pseudo_labels_beat_chance_and_the_gap_baseline(tmp_path):
    """A short CPU run on the synthetic data's easy style (flat colours) with hand-crafted features
    and guidance: the full method's pseudo labels beat GAP (CAM) and chance by a wide margin in
    mIoU, and GAP in background IoU, where CAMs with a fixed background threshold spill over.

    Measured (32 images of 64x64, 120 Adam steps at lr 0.1, ~10 s on one thread), pseudo-label
    mIoU full / GAP / chance: data seed 0 (this test): 0.683 / 0.380 / 0.156; seed 1: 0.630 /
    0.410 / 0.148; seed 2: 0.607 / 0.345 / 0.144; seed 3: 0.614 / 0.406 / 0.153 (lowest class
    IoU of the full method 0.30-0.52; pixel accuracy 0.86-0.90 against GAP's 0.60-0.67).
    The settings matter: at lr 1e-2 for 80 steps (or 1e-2..3e-2 for up to 200 steps on 16
    images) the full method has not yet learned every class, one or two stay at ~0 IoU (their
    nodes are labelled background and the class fires on background nodes), and GAP can be
    ahead (seed 0, 80 steps: 0.30 against 0.37)."""
    from ndd.data import ImageLabelFolder, write_multiclass_dataset

    root = tmp_path / "flat"
    write_multiclass_dataset(root, 32, 0, (64, 64), seed=0, style="flat", clutter=(2, 5))
    scores = {}
    for variant in ("full", "gap"):
        ckpt = wsss.train(dataset="folder", data_root=str(root), split="train", variant=variant, crop_size=64,
                          scale_range=(1.0, 1.0), flip=False, batch_size=8, steps=120, optimizer="adam", lr=0.1,
                          head_lr_mult=1, weight_decay=0.0, num_workers=0, log_every=1000, save_every=0,
                          progress=False, tensorboard=False, run_dir=str(tmp_path / variant),
                          guidance_cache=str(tmp_path / "k"), feature_cache=str(tmp_path / "f"),
                          model={"backbone": "handcrafted", "freeze_backbone": True, "feature_dim": 16,
                                 "spec_diff_net": "handcrafted"})
        wsss.pseudo_labels(ckpt, tmp_path / variant / "pseudo", guidance_cache=tmp_path / "k", progress=False,
                           device="cpu")
        scores[variant] = wsss.evaluate(tmp_path / variant / "pseudo", dataset="folder", data_root=root, split="train")
    chance = _chance_miou(ImageLabelFolder(root, "train", require_masks=True))
    full, gap = scores["full"], scores["gap"]
    assert full["miou"] > chance + 0.3, (full["miou"], chance)
    assert full["miou"] > gap["miou"] + 0.15, (full["miou"], gap["miou"])
    assert min(full["per_class"].values()) > 0.2, full["per_class"]  # every class learned
    assert full["pixel_accuracy"] > gap["pixel_accuracy"] + 0.1, (full["pixel_accuracy"], gap["pixel_accuracy"])
    assert full["per_class"]["background"] > gap["per_class"]["background"] + 0.1


def test_ddp_of_both_training_steps(shapes, tmp_path):
    """``ndd wsss train`` and ``ndd wsss train-seg`` as 2-process gloo DDP jobs on the CPU (torchrun):
    both finish, only rank 0 writes the run directory (checkpoints, metrics), and after 3 steps the
    parameters are identical on both ranks and equal to the checkpoint. Buffers are not compared
    across ranks: with trainable batch norm (``freeze_bn=false`` here) DDP broadcasts rank 0's
    running statistics at the start of each forward, so after the last step each rank holds its own
    batch's; the checkpoint holds rank 0's."""
    common = ["--dataset", "folder", "--data", str(shapes), "--split", "train", "--crop-size", "32", "--batch-size",
              "2", "--num-workers", "0", "--no-progress", "--no-tensorboard", "--optimizer", "adam", "--device", "cpu",
              "--num-threads", "1", "--log-every", "1", "--steps", "3", "--save-every", "2"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).with_name("wsss_ddp_worker.py")), str(tmp_path),
           "wsss", "train", *common, "--run-dir", str(tmp_path / "wsss"), "--backbone", "small_cnn", "--feature-dim",
           "8", "--spec-diff-net", "handcrafted", "--model", "freeze_bn=false", "--",
           "wsss", "train-seg", *common, "--run-dir", str(tmp_path / "seg"), "--pseudo-labels", str(shapes / "masks"),
           "--arch", "deeplabv3_small_cnn", "--no-freeze-bn"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("final checkpoint:") == 2  # rank 0 only, once per step
    assert json.loads((tmp_path / "writes_rank1.json").read_text()) == []
    assert json.loads((tmp_path / "writes_rank0.json").read_text()) == ["open_run_dir", "save_run_checkpoint",
                                                                       "save_run_checkpoint"] * 2
    for kind in ("wsss", "seg"):
        ckpt = load_wsss_checkpoint(tmp_path / kind / "last.pt", kind)
        assert ckpt["step"] == 3 and ckpt["world_size"] == 2
        assert [int(r["step"]) for r in read_metrics(tmp_path / kind / "metrics.csv")] == [1, 2, 3]
        rank0, rank1 = (torch.load(tmp_path / f"{kind}_rank{r}.pt", weights_only=True) for r in (0, 1))
        step2 = load_wsss_checkpoint(tmp_path / kind / "checkpoints" / "step_0000002.pt", kind)
        assert any(not torch.equal(v, step2["model"][k]) for k, v in rank0["parameters"].items())  # it trained
        for name, value in rank0["parameters"].items():
            assert torch.equal(value, rank1["parameters"][name]), (kind, name)
            assert torch.equal(value, ckpt["model"][name]), (kind, name)
        for name, value in rank0["buffers"].items():
            if name in ckpt["model"]:
                assert torch.equal(value, ckpt["model"][name]), (kind, name)
