"""ndd.batch: inputs from files, folders, globs and lists; resumable, atomic, multi-process runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ndd.batch import SegmentJob, collect_inputs, completed_inputs, segment_files
from ndd.models import SpecDiffNet, SpecDiffNetConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def photos(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        img = np.zeros((24, 32, 3), np.uint8)
        img[:, : 8 + 4 * i] = (200, 40, 30)
        img[:, 8 + 4 * i :] = (30, 60, 210)
        Image.fromarray(np.clip(img + rng.integers(-8, 8, img.shape), 0, 255).astype(np.uint8)).save(
            folder / f"img{i}.png")
        paths.append(folder / f"img{i}.png")
    return paths


def test_collect_inputs_from_folders_globs_and_lists(tmp_path):
    paths = photos(tmp_path / "a", 3)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    other = photos(tmp_path / "b", 1)[0]  # b/img0.png: same name as a/img0.png
    listing = tmp_path / "list.txt"
    listing.write_text(f"# inputs\n{paths[2]}\n\n{tmp_path / 'gone.png'}\n")
    got, problems = collect_inputs([tmp_path / "a", str(tmp_path / "a" / "img1.*"), f"@{listing}", other,
                                    str(tmp_path / "*.tif")])
    assert got == paths  # folder order, repeats dropped, the .txt ignored
    assert len(problems) == 3
    assert any("gone.png: no such file" in p for p in problems)
    assert any("matches no file" in p for p in problems)
    assert any(p.startswith(str(other)) and "same name" in p for p in problems)


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def test_killed_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    paths = photos(tmp_path / "in", 3)
    model = SpecDiffNet(SpecDiffNetConfig.handcrafted()).eval()
    formats = ("labels", "overlay", "strip", "ucm2")
    whole = SegmentJob(tmp_path / "whole", formats, (1, 2))
    assert [o.status for o in segment_files(paths, whole, model=model)] == ["done"] * 3

    job = SegmentJob(tmp_path / "killed", formats, (1, 2))
    run = segment_files(paths, job, model=model)
    next(run)  # the first image completes ...
    run.close()  # ... then the run is killed
    # what a kill in the middle of the second image leaves behind
    (job.out_dir / ".partial-img1_labels_001.png").write_bytes(b"half a png")
    (job.out_dir / "img1_labels_001.png").write_bytes(b"stale")
    with open(job.out_dir / ".ndd-segment.rank0.jsonl", "a") as f:
        f.write('{"input": "cut in the mid')
    assert list(completed_inputs(job.out_dir)) == [str(paths[0].resolve())]
    statuses = [o.status for o in segment_files(paths, job, model=model)]
    assert statuses == ["skipped", "done", "done"]
    assert _outputs(job.out_dir) == _outputs(whole.out_dir)  # the stale file was rewritten
    for out in (job.out_dir, whole.out_dir):  # the redone image replaced the half-written file
        assert not list(out.glob(".partial-*"))


def test_two_worker_processes_write_each_output_once(tmp_path):
    paths = photos(tmp_path / "in", 4)
    job = SegmentJob(tmp_path / "out", ("labels",), (2,))
    outcomes = list(segment_files(paths, job, model_spec="handcrafted", workers=2))
    assert sorted(o.path for o in outcomes) == sorted(paths) and {o.status for o in outcomes} == {"done"}
    assert sorted(p.name for p in job.out_dir.glob("*.png")) == [f"img{i}_labels_002.png" for i in range(4)]
    rows = (job.out_dir / ".ndd-segment.rank0.jsonl").read_text().splitlines()
    assert len(rows) == 4  # one record per input


def test_ranks_take_disjoint_shares(tmp_path):
    paths = photos(tmp_path / "in", 5)
    model = SpecDiffNet(SpecDiffNetConfig.handcrafted()).eval()
    job = SegmentJob(tmp_path / "out", ("labels",), (2,))
    shares = [[o.path for o in segment_files(paths, job, model=model, rank=r, world_size=2)] for r in (0, 1)]
    assert shares == [paths[0::2], paths[1::2]]
    assert len(completed_inputs(job.out_dir)) == 5  # both ranks' records are read back
