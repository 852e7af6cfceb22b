"""ndd.batch: inputs from files, folders, globs and lists; resumable, atomic, multi-process runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ndd.batch import SegmentJob, check_out_dir, collect_inputs, completed_inputs, segment_files
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


def test_collect_inputs_can_check_each_image_before_any_model(tmp_path):
    paths = photos(tmp_path / "a", 2)
    fake = tmp_path / "a" / "fake.jpg"
    fake.write_text("not an image")
    got, problems = collect_inputs([tmp_path / "a"])
    assert fake in got and problems == []  # without check: found when it is read
    got, problems = collect_inputs([tmp_path / "a"], check=True)
    assert got == paths and problems == [f"{fake}: not an image file (or a format Pillow cannot read)"]


def test_check_out_dir_creates_nothing(tmp_path):
    check_out_dir(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()
    check_out_dir(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="file: exists and is not a folder"):
        check_out_dir(tmp_path / "file")
    with pytest.raises(ValueError, match="file is not a folder"):
        check_out_dir(tmp_path / "file" / "out")


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


def test_a_resumed_run_redoes_inputs_made_with_other_settings(tmp_path):
    from ndd.batch import changed_settings, run_settings
    from ndd.inference import HierarchyOptions

    paths = photos(tmp_path / "in", 2)
    model = SpecDiffNet(SpecDiffNetConfig.handcrafted()).eval()
    out = tmp_path / "out"

    def statuses(job: SegmentJob, **kw) -> list[str]:
        return [o.status for o in segment_files(paths, job, model=model, model_spec="handcrafted", **kw)]

    first = SegmentJob(out, ("labels", "ucm2"), (2,))
    assert statuses(first) == ["done", "done"]
    assert statuses(SegmentJob(out, ("ucm2",), (2,))) == ["skipped", "skipped"]  # fewer formats: complete
    more = SegmentJob(out, ("labels", "overlay", "ucm2"), (2,))
    assert changed_settings(paths, out, run_settings(more, "handcrafted")) == (2, ["formats"])
    assert statuses(more) == ["done", "done"]  # the overlays did not exist: made now
    assert sorted(p.name for p in out.glob("*overlay*")) == ["img0_overlay_002.png", "img1_overlay_002.png"]
    assert statuses(more) == ["skipped", "skipped"]
    other = SegmentJob(out, more.formats, (2,), options=HierarchyOptions(edge_weight=0.5))
    assert changed_settings(paths, out, run_settings(other, "handcrafted")) == (2, ["options"])
    assert statuses(other) == ["done", "done"]
    assert statuses(more) == ["done", "done"]  # the files are now other's: the first settings redo them
    assert changed_settings(paths, out, run_settings(more, "handcrafted", int8_edges=True)) == (2, ["int8_edges"])
    assert changed_settings(paths, out, run_settings(more, "default")) == (2, ["model"])
    assert list(completed_inputs(out)) == [str(p.resolve()) for p in paths]  # without settings: any record


def test_resume_state_is_one_read_that_segment_files_reuses(tmp_path, monkeypatch):
    import ndd.inference
    from ndd.batch import resume_state, run_settings

    paths = photos(tmp_path / "in", 3)
    model = SpecDiffNet(SpecDiffNetConfig.handcrafted()).eval()
    job = SegmentJob(tmp_path / "out", ("labels",), (2,))
    list(segment_files(paths[:2], job, model=model, model_spec="handcrafted"))
    settings = run_settings(job, "handcrafted")
    state = resume_state(paths, job.out_dir, settings)
    assert state.completed == completed_inputs(job.out_dir, settings) and len(state.completed) == 2
    assert state.pending(paths) == [paths[2]] and (state.redone, state.changed) == (0, [])
    other = resume_state(paths, job.out_dir, run_settings(job, "default"))
    assert (other.completed, other.redone, other.changed) == ({}, 2, ["model"])
    # the state is what decides: records left out of it are not read again
    fake = state._replace(completed={str(paths[0].resolve()): state.completed[str(paths[0].resolve())]})
    statuses = [o.status for o in segment_files(paths, job, model=model, model_spec="handcrafted", state=fake)]
    assert statuses == ["skipped", "done", "done"]
    # nothing pending: no model is loaded
    monkeypatch.setattr(ndd.inference, "load_segmentation_model", lambda *a, **k: pytest.fail("model loaded"))
    assert [o.status for o in segment_files(paths, job, model_spec="handcrafted")] == ["skipped"] * 3


def test_manifest_rows_name_their_settings_by_a_short_key(tmp_path):
    import json

    from ndd.batch import run_settings, settings_key

    paths = photos(tmp_path / "in", 2)
    model = SpecDiffNet(SpecDiffNetConfig.handcrafted()).eval()
    job = SegmentJob(tmp_path / "out", ("labels",), (2,))
    list(segment_files(paths, job, model=model, model_spec="handcrafted"))
    settings = run_settings(job, "handcrafted")
    key = settings_key(settings)
    rows = [json.loads(line) for line in (job.out_dir / ".ndd-segment.rank0.jsonl").read_text().splitlines()]
    inputs = [str(p.resolve()) for p in paths]
    # each input's start is recorded before it is segmented, its completion after
    assert [(row["input"], row.get("event")) for row in rows] == [
        (inputs[0], "started"), (inputs[0], None), (inputs[1], "started"), (inputs[1], None)]
    assert [row["settings"] for row in rows if "files" in row] == [key, key] and len(key) == 16
    stored = job.out_dir / f".ndd-segment.settings-{key}.json"
    assert json.loads(stored.read_text()) == settings
    assert len(completed_inputs(job.out_dir, settings)) == 2
    stored.write_text("{damaged")  # how those inputs were made is no longer known: they are redone
    assert completed_inputs(job.out_dir, settings) == {}
    statuses = [o.status for o in segment_files(paths, job, model=model, model_spec="handcrafted")]
    assert statuses == ["done", "done"]
    assert json.loads(stored.read_text()) == settings  # mended by the run


def test_a_retrained_checkpoint_at_the_same_path_is_another_model(tmp_path):
    import os

    from ndd.batch import run_settings

    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights v1")
    job = SegmentJob(tmp_path / "out", ("ucm2",))
    before = run_settings(job, str(ckpt))
    assert before["model"]["file"] == str(ckpt.resolve())
    os.utime(ckpt, ns=(1, 1))  # rewritten (same size, another time)
    assert run_settings(job, str(ckpt))["model"] != before["model"]
    assert run_settings(job, "handcrafted")["model"] == "handcrafted"


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


def test_default_levels_fit_every_hierarchy(tmp_path):
    from ndd.batch import auto_levels, segment_file

    assert auto_levels(500) == (2, 4, 8, 16, 32) and auto_levels(20) == (2, 4, 8, 16, 20)
    assert auto_levels(1) == (1,) and auto_levels(3) == (2, 3)
    model = SpecDiffNet(SpecDiffNetConfig.handcrafted()).eval()
    outcome = segment_file(photos(tmp_path / "in", 1)[0], model, SegmentJob(tmp_path / "out", ("labels",)))
    assert outcome.missing_levels == []
    written = sorted(int(p.stem.rsplit("_", 1)[1]) for p in outcome.written)
    assert written == list(auto_levels(outcome.finest))


def test_a_large_photo_segments_under_a_memory_cap(tmp_path):
    """4000x3000 through ndd segment in a fresh process: peak RSS (getrusage) under 2 GB."""
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (15, 20, 3), dtype=np.uint8)
    Image.fromarray(small).resize((4000, 3000), Image.Resampling.NEAREST).save(tmp_path / "big.jpg", quality=85)
    script = (
        "import resource, sys\n"
        "from ndd.cli import main\n"
        f"code = main(['segment', {str(tmp_path / 'big.jpg')!r}, '--out', {str(tmp_path / 'out')!r}, "
        "'--model', 'handcrafted', '--format', 'labels,overlay,strip,ucm2', '--levels', '2,8'])\n"
        "print(code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    code, peak_kib = done.stdout.split()[-2:]
    assert code == "0"
    labels = np.asarray(Image.open(tmp_path / "out" / "big_labels_008.png"))
    assert labels.shape == (3000, 4000)  # written at the input's size
    assert int(peak_kib) / 1024**2 < 2.0, f"peak {int(peak_kib) / 1024**2:.2f} GB"


class _CountingLevels(dict):
    """A levels mapping that counts how often each level is read (as the lazy one computes it)."""

    def __init__(self, levels: dict[int, np.ndarray]) -> None:
        super().__init__(levels)
        self.reads: dict[int, int] = {k: 0 for k in levels}

    def __getitem__(self, k: int) -> np.ndarray:
        self.reads[k] += 1
        return super().__getitem__(k)


def test_write_segmentation_reads_each_level_once_and_draws_as_the_picture_functions(tmp_path):
    from ndd import io

    rng = np.random.default_rng(1)
    image = rng.random((300, 170, 3))  # taller than the strip's panels: the strip shrinks it
    fine = (np.arange(300)[:, None] // 40) * 5 + np.arange(170)[None, :] // 40
    levels = _CountingLevels({2: (fine >= 20).astype(np.int64), 9: fine % 9, 35: fine})
    ucm2 = np.zeros((601, 341))
    edges = rng.random((300, 170)).astype(np.float32)
    for missing, message in ((None, "format 'edges' needs the edge map"), (edges[:-1], "the edge map is")):
        with pytest.raises(ValueError, match=message):
            io.write_segmentation(tmp_path / "bad", "x", image, {}, ucm2, ["edges"], edges=missing)
    assert not list((tmp_path / "bad").glob("*.png"))  # no half-written or partial file left
    written = io.write_segmentation(tmp_path, "x", image, levels, lambda: ucm2, io.SEGMENTATION_FORMATS,
                                    edges=lambda: edges)
    assert levels.reads == {2: 1, 9: 1, 35: 1}  # shared by labels, overlay, mean and the strip
    assert len(written) == 3 * 3 + 3
    # the edge map as ndd evaluate reads a soft boundary PNG
    from ndd.evaluation import load_result

    soft = load_result(tmp_path / "x_edges.png")
    assert soft.kind == "pb" and np.abs(soft.data - edges).max() <= 0.5 / 65535 + 1e-7
    picture = io.to_uint8_image(image)
    for k, labels in dict(levels).items():
        for fmt, mean in (("overlay", False), ("mean", True)):
            drawn = np.asarray(Image.open(tmp_path / f"x_{fmt}_{k:03d}.png"))
            assert np.array_equal(drawn, io.colour_overlay(picture, labels, mean_colours=mean))
    strip = np.asarray(Image.open(tmp_path / "x_hierarchy.png"))
    assert strip.shape[0] == 240
    assert np.array_equal(strip, io.hierarchy_strip(picture, [dict(levels)[k] for k in (35, 9, 2)]))


def test_default_workers_processes_on_the_cpu_only_for_several_images():
    from ndd.batch import default_workers

    assert default_workers(200, "cpu", cores=2) == 2
    assert default_workers(200, "cpu", threads=2, cores=2) == 1  # the cores are taken by threads
    assert default_workers(200, "cpu", cores=64) == 4  # bounded: one model per process in memory
    assert default_workers(3, "cpu", cores=64) == 3  # never more processes than images
    assert default_workers(1, "cpu", cores=8) == 1 and default_workers(50, "cuda:0", cores=8) == 1


def test_run_settings_name_a_shipped_model_by_what_it_is():
    from ndd.batch import run_settings
    from ndd.models import SpecDiffNetWeights

    job = SegmentJob(Path("out"), ("ucm2",))
    default = run_settings(job)["model"]
    assert default == run_settings(job, "default")["model"] == run_settings(job, SpecDiffNetWeights.DEFAULT.name.lower())["model"]
    assert default["shipped"] == SpecDiffNetWeights.DEFAULT.name and default["sha256"] == SpecDiffNetWeights.DEFAULT.value.sha256
    assert run_settings(job, "bsds500")["model"]["shipped"] == "BSDS500"
    # members sharing a file differ by calibration or hierarchy config: each is its own record
    records = [json.dumps(run_settings(job, m.name)["model"], sort_keys=True) for m in SpecDiffNetWeights]
    assert len(set(records)) == len(records)
    assert default["config"] == json.loads(json.dumps(SpecDiffNetWeights.DEFAULT.value.config))


def test_a_worker_process_that_dies_fails_its_input_alone(tmp_path):
    from batch_workers import die_on_bomb, no_setup

    from ndd.batch.pools import in_processes
    from ndd.batch.segment import _died

    paths = [tmp_path / f"img{i}.png" for i in range(7)]
    paths.insert(3, tmp_path / "bomb.png")
    outcomes = list(in_processes(paths, 2, (), work=die_on_bomb, initializer=no_setup, died=_died))
    assert sorted(o.path for o in outcomes) == sorted(paths)  # each input once, none lost with the pool
    failed = [o for o in outcomes if o.status == "failed"]
    assert [o.path.name for o in failed] == ["bomb.png"]
    assert "ended abruptly" in failed[0].error and "\n" not in failed[0].error and failed[0].process_died
    assert {o.status for o in outcomes if o.path.name != "bomb.png"} == {"done"}


def test_a_worker_freezes_what_its_set_up_made(tmp_path):
    """The model and modules of a worker process are frozen once it is set up (``gc.freeze``):
    its exit at the end of a run does not take them apart one by one (about 0.4 s the run waited)."""
    from batch_workers import report_frozen

    from ndd.batch import SegmentJob
    from ndd.batch.pools import in_processes
    from ndd.batch.segment import _died, _init_worker

    job = SegmentJob(tmp_path, ("ucm2",), None)
    outcomes = list(in_processes([tmp_path / "a.png"], 1, ("handcrafted", "cpu", 1, job, False), work=report_frozen,
                                 initializer=_init_worker, died=_died))
    assert [o.finest for o in outcomes] == [1]


def test_worker_processes_that_cannot_start_stop_the_run_with_one_message(tmp_path):
    from batch_workers import die_on_bomb, failing_setup

    from ndd.batch import WorkerStartError
    from ndd.batch.pools import in_processes

    with pytest.raises(WorkerStartError, match="worker process stopped while starting"):
        list(in_processes([tmp_path / "a.png", tmp_path / "b.png"], 2, (), work=die_on_bomb,
                          initializer=failing_setup,
                          died=lambda path: pytest.fail(f"{path}: no input gets this far")))


def test_a_pool_is_handed_a_bounded_number_of_inputs():
    """A collection of millions is queued a few inputs at a time, not all at once."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from ndd.batch import ImageOutcome
    from ndd.batch.pools import _pool_run

    release, pulled = threading.Event(), []

    def inputs():
        for i in range(1000):
            pulled.append(i)
            yield Path(f"{i}.png")

    def work(path):
        release.wait()
        return ImageOutcome(path, "done")

    run = _pool_run(ThreadPoolExecutor(2), inputs(), 6, work)
    timer = threading.Timer(0.2, release.set)
    timer.start()
    first = next(run)  # the first outcome comes only once the work is released
    assert first.status == "done" and len(pulled) <= 6
    rest = list(run)  # returns [] (no suspects) at the end
    assert len(rest) + 1 == 1000 and len(pulled) == 1000


def test_an_error_inside_one_image_fails_it_alone_in_one_process(tmp_path, monkeypatch):
    """As in worker processes: out of memory on one huge photo must not end a run of thousands."""
    import ndd.inference

    paths = photos(tmp_path / "in", 3)
    segment = ndd.inference.segment_image

    def fails_on_the_second(image, *args, **kwargs):
        if image[0, 10, 0] > 0.5 > image[0, 14, 0]:  # img1: red up to column 12, then blue
            raise MemoryError("cannot allocate 80 GB\nfor the affinity")
        return segment(image, *args, **kwargs)

    monkeypatch.setattr(ndd.inference, "segment_image", fails_on_the_second)
    model = SpecDiffNet(SpecDiffNetConfig.handcrafted()).eval()
    job = SegmentJob(tmp_path / "out", ("labels",), (2,))
    outcomes = list(segment_files(paths, job, model=model, model_spec="handcrafted"))
    assert [o.status for o in outcomes] == ["done", "failed", "done"]
    assert outcomes[1].error == f"{paths[1]}: MemoryError: cannot allocate 80 GB"


def test_a_resumed_run_reads_the_headers_of_new_inputs_only(tmp_path, monkeypatch):
    """A million completed inputs are not opened again before a resumed run goes on."""
    from ndd import io
    from ndd.batch import recorded_inputs

    paths = photos(tmp_path / "in", 3)
    model = SpecDiffNet(SpecDiffNetConfig.handcrafted()).eval()
    job = SegmentJob(tmp_path / "out", ("labels",), (2,))
    list(segment_files(paths[:2], job, model=model, model_spec="handcrafted"))
    damaged = '{"input": 3}\n["a list"]\n{"input": "x"}\n{"cut'  # rows of other shapes, a cut line
    (job.out_dir / ".ndd-segment.rank1.jsonl").write_text(damaged)
    assert recorded_inputs(job.out_dir) == {str(p.resolve()) for p in paths[:2]}
    assert recorded_inputs(tmp_path / "nothing here") == set()
    opened = []
    check = io.check_image
    monkeypatch.setattr(io, "check_image", lambda path, *a: opened.append(path) or check(path, *a))
    got, problems = collect_inputs([tmp_path / "in"], check=True, checked_before=recorded_inputs(job.out_dir))
    assert got == paths and not problems and opened == [paths[2]]


def test_torchrun_ranks_write_each_output_once_and_a_bad_input_is_said_once(tmp_path):
    """Two torchrun ranks on the CPU: disjoint shares, one line for an unreadable input (read
    by the rank that segments it, not by every rank up front), the totals from rank 0."""
    import os
    import subprocess
    import sys

    photos(tmp_path / "in", 3)
    (tmp_path / "in" / "img9.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ndd",
           "segment", str(tmp_path / "in"), "--out", str(out), "--model", "handcrafted", "--format", "labels",
           "--levels", "2", "--device", "cpu", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    said = [line for line in proc.stderr.splitlines() if line.startswith("ndd segment:")]
    assert proc.returncode == 1  # an input failed, as in one process
    assert [line for line in said if "img9.png" in line] == [f"ndd segment: {tmp_path / 'in' / 'img9.png'}: "
                                                             "not an image file (or a format Pillow cannot read)"], said
    assert [line for line in said if "image(s) segmented" in line][0].startswith(
        "ndd segment: 3 image(s) segmented, 1 failed"), said
    assert sorted(p.name for p in out.glob("*.png")) == [f"img{i}_labels_002.png" for i in range(3)]
    rows = [json.loads(line) for f in out.glob(".ndd-segment.rank*.jsonl") for line in f.read_text().splitlines()]
    assert sorted(Path(r["input"]).name for r in rows if "files" in r) == ["img0.png", "img1.png", "img2.png"]
    assert sorted(Path(r["input"]).name for r in rows if r.get("event") == "started") == [
        "img0.png", "img1.png", "img2.png", "img9.png"]


def test_torchrun_over_two_nodes_shares_the_inputs_by_global_rank(tmp_path):
    """Two torchrun launchers as two nodes of one process each (LOCAL_RANK 0 on both, RANK 0 and
    1): each input is segmented once, by the rank whose share it is, and node 0 reports."""
    import os
    import socket
    import subprocess
    import sys

    photos(tmp_path / "in", 4)
    out = tmp_path / "out"
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launchers = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}", "--nproc_per_node=1",
         "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "ndd", "segment", str(tmp_path / "in"),
         "--out", str(out), "--model", "handcrafted", "--format", "labels", "--levels", "2", "--device", "cpu",
         "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for node in (0, 1)]
    try:
        logs = [launcher.communicate(timeout=240)[1] for launcher in launchers]
    finally:  # a rendezvous that never completes must not leave launchers behind
        for launcher in launchers:
            if launcher.poll() is None:
                launcher.kill()
    assert [launcher.returncode for launcher in launchers] == [0, 0], logs
    assert "ndd segment: 4 image(s) segmented, 0 failed" in logs[0] and "image(s) segmented" not in logs[1], logs
    shares = {}
    for rank in (0, 1):
        rows = [json.loads(line) for line in (out / f".ndd-segment.rank{rank}.jsonl").read_text().splitlines()]
        shares[rank] = sorted(Path(r["input"]).name for r in rows if "files" in r)
    assert shares == {0: ["img0.png", "img2.png"], 1: ["img1.png", "img3.png"]}
    assert sorted(p.name for p in out.glob("*.png")) == [f"img{i}_labels_002.png" for i in range(4)]


def test_no_more_worker_processes_than_inputs_left(tmp_path, monkeypatch):
    import ndd.batch.pools

    paths = photos(tmp_path / "in", 2)
    job = SegmentJob(tmp_path / "out", ("labels",), (2,))
    model = SpecDiffNet(SpecDiffNetConfig.handcrafted()).eval()
    list(segment_files(paths[:1], job, model=model, model_spec="handcrafted"))
    started = []
    monkeypatch.setattr(ndd.batch.pools, "in_processes",
                        lambda todo, workers, *a, **k: started.append(workers) or iter(()))
    # one input left of two: done in this process, no pool of 4 processes for it
    statuses = [o.status for o in segment_files(paths, job, model=model, model_spec="handcrafted", workers=4)]
    assert sorted(statuses) == ["done", "skipped"] and started == []


def test_an_input_that_killed_its_process_is_segmented_alone_when_resumed(tmp_path):
    """One process killed outright on an input (the out-of-memory killer, as ``os._exit``): the
    resumed run segments that input alone in a separate process, which it kills again, and the
    run itself goes on and finishes; it stays a suspect for the runs after, ``--no-resume``
    ones included."""
    import os
    import shutil
    import subprocess
    import sys

    paths = photos(tmp_path / "in", 2)
    bomb = tmp_path / "in" / "bomb.png"
    shutil.copy(paths[0], bomb)
    out = tmp_path / "out"
    driver = [sys.executable, str(Path(__file__).with_name("batch_kill_driver.py")), str(out),
              str(paths[0]), str(bomb), str(paths[1])]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(*options):
        return subprocess.run(driver[:2] + list(options) + driver[2:], capture_output=True, text=True,
                              timeout=240, env=env)

    first = run()
    assert first.returncode == 9 and first.stdout.split() == ["done", "img0.png"], first.stderr
    second = run()  # before: killed on the bomb again, img1 never segmented
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == ["skipped img0.png", "failed bomb.png", "done img1.png"]
    assert (out / "img1_labels_002.png").is_file() and not list(out.glob("bomb*"))
    third = run()
    assert third.stdout.splitlines() == ["skipped img0.png", "skipped img1.png", "failed bomb.png"]
    fourth = run("--no-resume")  # every input again, but the bomb still alone: it cannot kill this run
    assert fourth.returncode == 0, fourth.stderr
    assert fourth.stdout.splitlines() == ["failed bomb.png", "done img0.png", "done img1.png"]
    rows = [json.loads(line) for line in (out / ".ndd-segment.rank0.jsonl").read_text().splitlines()]
    assert [r["event"] for r in rows if Path(r["input"]).name == "bomb.png"] == ["started", "crashed", "crashed",
                                                                                 "crashed"]


def test_suspects_are_the_inputs_whose_last_record_is_a_start_or_a_crash(tmp_path, monkeypatch):
    """Ctrl-C on an input or an error inside it does not make it a suspect; a start with no end,
    a crash do, until the input is completed."""
    import ndd.batch
    from ndd.batch import resume_state, run_settings

    paths = photos(tmp_path / "in", 3)
    model = SpecDiffNet(SpecDiffNetConfig.handcrafted()).eval()
    job = SegmentJob(tmp_path / "out", ("labels",), (2,))
    settings = run_settings(job, "handcrafted")
    real = ndd.batch.segment.segment_file

    def segment_file(path, *args, **kwargs):
        if path == paths[1]:
            raise KeyboardInterrupt
        if path == paths[2]:
            raise RuntimeError("a bug of ours, on this image only")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ndd.batch.segment, "segment_file", segment_file)
    with pytest.raises(KeyboardInterrupt):
        list(segment_files(paths, job, model=model, model_spec="handcrafted"))
    keys = [str(p.resolve()) for p in paths]
    assert resume_state(paths, job.out_dir, settings).suspects == frozenset()  # paths[1]: "interrupted"
    statuses = [o.status for o in segment_files(paths[::2], job, model=model, model_spec="handcrafted")]
    assert statuses == ["skipped", "failed"] and resume_state(paths, job.out_dir, settings).suspects == frozenset()
    manifest = job.out_dir / ".ndd-segment.rank0.jsonl"
    with open(manifest, "a") as f:  # as a run killed while segmenting paths[1], then a crashed worker on paths[2]
        f.write(json.dumps({"input": keys[1], "event": "started"}) + "\n")
        f.write(json.dumps({"input": keys[2], "event": "crashed"}) + "\n")
    state = resume_state(paths, job.out_dir, settings)
    assert state.suspects == frozenset(keys[1:]) and state.suspected(paths) == paths[1:]
    assert state.pending(paths) == paths[1:]
    monkeypatch.setattr(ndd.batch.segment, "segment_file", real)
    with open(manifest, "a") as f:  # completed after all (e.g. by a run with more memory): no suspect any more
        row = {"input": keys[1], "files": ["img0_labels_002.png"], "settings": ndd.batch.settings_key(settings)}
        f.write(json.dumps(row) + "\n")
    assert resume_state(paths, job.out_dir, settings).suspects == frozenset([keys[2]])


def test_an_input_is_recorded_by_its_resolved_path_and_a_new_working_directory_is_seen(tmp_path, monkeypatch):
    """Inputs are keyed as ``str(Path.resolve())`` (through links, relative to the working
    directory), resolved once per input but again after a change of directory."""
    import os

    from ndd.batch.inputs import input_key

    tmp_path = tmp_path.resolve()
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "p.png").write_bytes(b"")
    os.symlink(tmp_path / "b", tmp_path / "link")
    monkeypatch.chdir(tmp_path / "a")
    assert input_key(Path("p.png")) == str(Path("p.png").resolve()) == str(tmp_path / "a" / "p.png")
    assert input_key(Path("../link/p.png")) == str(tmp_path / "b" / "p.png")
    monkeypatch.chdir(tmp_path / "b")
    assert input_key(Path("p.png")) == str(tmp_path / "b" / "p.png")


@pytest.mark.parametrize("module", ["inputs", "records", "segment"])
def test_docstring_examples(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"ndd.batch.{module}"), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
