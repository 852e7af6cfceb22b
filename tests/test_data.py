"""Tests of ndd.data: BSDS500 reader, user folders, dead leaves, transforms, label helpers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from scipy import ndimage

from ndd.data import (
    BSDS500,
    Compose,
    DeadLeaves,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    Resize,
    SegmentationFolder,
    collate,
    downsample_labels,
    label_kernel,
    relabel_consecutive,
    resize_labels_nearest,
    train_transform,
)
from ndd.formats import resize_labels

from mini_data import MINI, needs_mini

SPLIT_SIZES = {"train": 16, "val": 4, "test": 8, "trainval": 20}


pytestmark = pytest.mark.usefixtures("one_thread")


def _is_consecutive(labels: torch.Tensor) -> bool:
    counts = torch.bincount(labels[labels >= 0].reshape(-1))  # torch.unique is slow on CPU
    return bool((counts > 0).all())


def _mini_layout(tmp_path: Path, n: int = 3) -> tuple[Path, list[str]]:
    """Copy ``n`` train images and their ground truth into ``tmp_path/BSDS500/data``."""
    src = MINI / "BSDS500" / "data"
    dst = tmp_path / "BSDS500" / "data"
    (dst / "images" / "train").mkdir(parents=True)
    (dst / "groundTruth" / "train").mkdir(parents=True)
    ids = sorted(p.stem for p in (src / "images" / "train").glob("*.jpg"))[:n]
    for i in ids:
        shutil.copy(src / "images" / "train" / f"{i}.jpg", dst / "images" / "train")
        shutil.copy(src / "groundTruth" / "train" / f"{i}.mat", dst / "groundTruth" / "train")
    return dst, ids


# --------------------------------------------------------------------------- BSDS500


@needs_mini
@pytest.mark.parametrize("split", ["train", "val", "test", "trainval"])
def test_bsds_split_sizes(split: str) -> None:
    ds = BSDS500(MINI, split=split)
    assert len(ds) == SPLIT_SIZES[split]
    assert len(set(ds.ids)) == len(ds)


@needs_mini
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_bsds_reads_every_image_with_all_annotations(split: str) -> None:
    ds = BSDS500(MINI, split=split, annotation="all")
    for i in range(len(ds)):
        s = ds[i]
        image, labels = s["image"], s["labels"]
        assert s["id"] == ds.image_paths[i].stem
        assert image.dtype == torch.float32 and labels.dtype == torch.int64
        assert tuple(image.shape) in {(3, 321, 481), (3, 481, 321)}
        assert image.min() >= 0.0 and image.max() <= 1.0 and image.max() > 0.5
        assert labels.ndim == 3 and 4 <= labels.shape[0] <= 9
        assert labels.shape[1:] == image.shape[1:]
        for k in range(labels.shape[0]):  # each annotation: 0..n-1, no ignored pixels
            assert labels[k].min() == 0 and _is_consecutive(labels[k])
            assert labels[k].max() >= 1


@needs_mini
def test_bsds_root_variants() -> None:
    ids = BSDS500(MINI, "val").ids
    assert BSDS500(MINI / "BSDS500", "val").ids == ids
    assert BSDS500(MINI / "BSDS500" / "data", "val").ids == ids


@needs_mini
def test_bsds_annotation_choice() -> None:
    ds_all = BSDS500(MINI, "val", annotation="all")
    every = ds_all[0]["labels"]
    k = every.shape[0]
    # int k: exactly that annotation; negative counts from the end
    assert torch.equal(BSDS500(MINI, "val", annotation=1)[0]["labels"], every[1])
    assert torch.equal(BSDS500(MINI, "val", annotation=-1)[0]["labels"], every[-1])
    with pytest.raises(ValueError, match=r"\.mat"):
        BSDS500(MINI, "val", annotation=k)[0]
    # random: one of the K per access, reproducible under the global seed
    ds = BSDS500(MINI, "val", annotation="random")

    def draws() -> list[int]:
        out = []
        for _ in range(10):
            lab = ds[0]["labels"]
            out.append(next(j for j in range(k) if torch.equal(lab, every[j])))
        return out

    torch.manual_seed(0)
    first = draws()
    torch.manual_seed(0)
    assert draws() == first
    assert len(set(first)) > 1
    # or under an explicit generator
    gen = torch.Generator().manual_seed(3)
    first_draw = BSDS500(MINI, "val", generator=gen)[0]["labels"]
    gen.manual_seed(3)
    assert torch.equal(BSDS500(MINI, "val", generator=gen)[0]["labels"], first_draw)


def test_bsds_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        BSDS500(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        BSDS500(tmp_path / "empty")


@needs_mini
def test_bsds_missing_split_folder(tmp_path: Path) -> None:
    _mini_layout(tmp_path, n=1)  # train only
    with pytest.raises(FileNotFoundError, match=r"images[/\\]val"):
        BSDS500(tmp_path, split="val")


@needs_mini
def test_bsds_image_without_ground_truth(tmp_path: Path) -> None:
    root, ids = _mini_layout(tmp_path)
    (root / "groundTruth" / "train" / f"{ids[1]}.mat").unlink()
    with pytest.raises(FileNotFoundError, match=f"{ids[1]}\\.jpg"):  # at construction, naming the image
        BSDS500(tmp_path, "train")


@needs_mini
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_bsds_corrupt_mat(tmp_path: Path, damage: str) -> None:
    root, ids = _mini_layout(tmp_path)
    bad = root / "groundTruth" / "train" / f"{ids[0]}.mat"
    data = bad.read_bytes()
    bad.write_bytes(b"not a MATLAB file at all" * 10 if damage == "garbage" else data[: len(data) // 2])
    ds = BSDS500(tmp_path, "train")
    assert ds[1]["labels"].ndim == 2  # other files still read
    with pytest.raises(ValueError, match=str(bad).replace("\\", "\\\\")):
        ds[0]


@needs_mini
def test_bsds_mat_without_ground_truth_fields(tmp_path: Path) -> None:
    root, ids = _mini_layout(tmp_path)
    gt = root / "groundTruth" / "train"
    scipy.io.savemat(gt / f"{ids[0]}.mat", {"something": np.zeros((3, 3))})
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = {"Boundaries": np.zeros((321, 481), dtype=np.uint8)}
    scipy.io.savemat(gt / f"{ids[1]}.mat", {"groundTruth": cell})
    cell[0, 0] = {"Segmentation": np.ones((10, 10), dtype=np.uint16)}
    scipy.io.savemat(gt / f"{ids[2]}.mat", {"groundTruth": cell})
    ds = BSDS500(tmp_path, "train")
    with pytest.raises(ValueError, match=f"{ids[0]}\\.mat.*groundTruth"):
        ds[0]
    with pytest.raises(ValueError, match=f"{ids[1]}\\.mat.*Segmentation"):
        ds[1]
    with pytest.raises(ValueError, match=f"{ids[2]}\\.mat.*shape.*{ids[2]}\\.jpg"):  # size mismatch names both
        ds[2]


@needs_mini
def test_bsds_corrupt_image(tmp_path: Path) -> None:
    root, ids = _mini_layout(tmp_path)
    bad = root / "images" / "train" / f"{ids[2]}.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(ValueError, match=f"{ids[2]}\\.jpg"):
        BSDS500(tmp_path, "train")[2]


# --------------------------------------------------------------------------- user folders


def test_segmentation_folder(tmp_path: Path) -> None:
    images, labels = tmp_path / "img", tmp_path / "lab"
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(0)
    lab_a = np.array([[7, 7, 3], [255, 3, 3]], dtype=np.uint8)
    Image.fromarray(rng.integers(0, 256, (2, 3, 3), dtype=np.uint8)).save(images / "a.png")
    Image.fromarray(lab_a).save(labels / "a.png")
    Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).save(images / "b.jpg")
    Image.fromarray(np.full((4, 5), 1000, dtype=np.uint16)).save(labels / "b.png")  # 16-bit PNG
    (images / "notes.txt").write_text("ignored")

    ds = SegmentationFolder(images, labels, ignore_value=255)
    assert ds.ids == ["a", "b"]
    a = ds[0]
    assert a["image"].shape == (3, 2, 3) and a["image"].dtype == torch.float32
    pixels = torch.from_numpy(np.array(Image.open(images / "a.png"))).permute(2, 0, 1).float()
    assert torch.allclose(a["image"] * 255, pixels)
    assert a["labels"].tolist() == [[1, 1, 0], [-1, 0, 0]]
    b = ds[1]
    assert b["labels"].shape == (4, 5) and b["labels"].unique().tolist() == [0]
    # without ignore value, 255 is an ordinary segment
    assert SegmentationFolder(images, labels)[0]["labels"].tolist() == [[1, 1, 0], [2, 0, 0]]

    Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(images / "c.png")
    with pytest.raises(FileNotFoundError, match=r"c\.png"):
        SegmentationFolder(images, labels)
    Image.fromarray(np.zeros((3, 3), dtype=np.uint8)).save(labels / "c.png")  # wrong size
    with pytest.raises(ValueError, match=r"c\.png"):
        SegmentationFolder(images, labels)[2]
    with pytest.raises(FileNotFoundError, match="missing"):
        SegmentationFolder(tmp_path / "missing", labels)


def test_segmentation_folder_suffix_and_rgb_labels(tmp_path: Path) -> None:
    (tmp_path / "i").mkdir()
    (tmp_path / "l").mkdir()
    Image.fromarray(np.zeros((2, 2, 3), dtype=np.uint8)).save(tmp_path / "i" / "x.jpg")
    rgb = np.array([[[255, 0, 0], [0, 0, 255]], [[255, 0, 0], [255, 0, 0]]], dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "l" / "x_mask.png")
    s = SegmentationFolder(tmp_path / "i", tmp_path / "l", label_suffix="_mask")[0]
    assert s["labels"].tolist() == [[1, 0], [1, 1]]  # colour code 0x0000FF < 0xFF0000


# --------------------------------------------------------------------------- dead leaves


def test_dead_leaves_deterministic() -> None:
    ds = DeadLeaves(4, size=(48, 64), seed=7)
    a = ds[2]
    torch.manual_seed(123)
    np.random.seed(123)  # global RNGs must not matter
    b = DeadLeaves(4, size=(48, 64), seed=7)[2]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["labels"], b["labels"])
    assert a["id"] == "deadleaves-7-2"
    assert not torch.equal(ds[1]["image"], a["image"])
    assert not torch.equal(DeadLeaves(4, size=(48, 64), seed=8)[2]["image"], a["image"])
    assert len(ds) == 4
    with pytest.raises(IndexError):
        ds[4]


def test_dead_leaves_labels_are_visible_shapes() -> None:
    ds = DeadLeaves(20, size=(64, 64), seed=0)
    n_labels = []
    for i in range(len(ds)):
        image, labels, shape_map = ds.render(i)
        sample = ds[i]
        assert sample["image"].shape == (3, 64, 64) and sample["labels"].shape == (64, 64)
        assert torch.equal(sample["labels"], torch.from_numpy(labels))
        assert image.dtype == np.float32 and image.min() >= 0 and image.max() <= 1
        assert _is_consecutive(sample["labels"]) and labels.min() == 0  # no ignored pixels
        for lab in range(labels.max() + 1):
            region = labels == lab
            assert len(np.unique(shape_map[region])) == 1  # inside one shape
            assert ndimage.label(region)[1] == 1  # one 4-connected piece
        n_labels.append(labels.max() + 1)
    assert max(n_labels) >= 4  # the shapes are actually visible

    merged = DeadLeaves(20, size=(64, 64), seed=0, split_disconnected=False)
    _, labels, shape_map = merged.render(3)
    assert np.array_equal(labels, relabel_consecutive(shape_map, ignore_index=None))


def test_dead_leaves_flat_colours_match_labels() -> None:
    # Without texture, noise or blur, each shape has one colour: a label never spans two colours.
    ds = DeadLeaves(5, size=(40, 40), seed=1, texture=False, noise=0.0)
    for i in range(len(ds)):
        s = ds[i]
        for lab in s["labels"].unique():
            colours = s["image"][:, s["labels"] == lab]
            assert torch.allclose(colours, colours[:, :1].expand_as(colours))


# --------------------------------------------------------------------------- transforms


def _colour_coded_sample(h: int = 40, w: int = 56, block: int = 12, seed: int = 0) -> tuple[dict, torch.Tensor]:
    """An image whose colour encodes its label (blocks of ``block`` px)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 6, (h // block + 1, w // block + 1), generator=g)
    labels = coarse.repeat_interleave(block, 0).repeat_interleave(block, 1)[:h, :w]
    palette = torch.tensor(
        [[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9], [0.9, 0.9, 0.1], [0.1, 0.9, 0.9], [0.5, 0.5, 0.5]]
    )
    image = palette[labels].permute(2, 0, 1).contiguous()
    return {"image": image, "labels": labels, "id": "coded"}, palette


def _check_aligned(sample: dict, palette: torch.Tensor) -> int:
    """Image matches label colour wherever the 5x5 label neighbourhood is uniform; returns #checked."""
    image, labels = sample["image"], sample["labels"]
    pad = torch.nn.functional.pad(labels[None, None].float(), (2, 2, 2, 2), mode="replicate")[0, 0]
    hi = torch.nn.functional.max_pool2d(pad[None, None], 5, stride=1)[0, 0]
    lo = -torch.nn.functional.max_pool2d(-pad[None, None], 5, stride=1)[0, 0]
    uniform = (hi == lo) & (labels >= 0)
    expected = palette[labels.clamp(min=0)].permute(2, 0, 1)
    assert torch.allclose(image[:, uniform], expected[:, uniform], atol=1e-5)
    assert torch.all(image[:, labels < 0] == 0)  # padding is black
    return int(uniform.sum())


def test_transforms_keep_image_and_labels_aligned() -> None:
    sample, palette = _colour_coded_sample()
    t = train_transform(crop_size=(48, 48), scale_range=(0.7, 1.3), generator=torch.Generator().manual_seed(0))
    padded = 0
    for _ in range(20):
        out = t(sample)
        assert out["image"].shape == (3, 48, 48) and out["labels"].shape == (48, 48)
        assert out["labels"].dtype == torch.int64 and out["id"] == "coded"
        assert _check_aligned(out, palette) > 100
        padded += int((out["labels"] < 0).any())
    assert padded > 0  # heights below 48 were padded with -1
    flipped = RandomHorizontalFlip(p=1.0)(sample)
    assert torch.equal(flipped["labels"], sample["labels"].flip(-1))
    assert torch.equal(flipped["image"], palette[flipped["labels"]].permute(2, 0, 1))
    resized = Resize((20, 28))(sample)
    assert resized["image"].shape == (3, 20, 28) and _check_aligned(resized, palette) > 0
    assert Resize(None)(sample) is sample


def test_transforms_reproducible_and_multi_annotation() -> None:
    sample, _ = _colour_coded_sample()
    sample["labels"] = torch.stack([sample["labels"], 5 - sample["labels"]])  # (K, H, W)
    t = Compose([RandomScale(choices=(0.8, 1.2)), RandomCrop(32), RandomHorizontalFlip()])
    torch.manual_seed(5)
    a = t(sample)
    torch.manual_seed(5)
    b = t(sample)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["labels"], b["labels"])
    assert a["labels"].shape == (2, 32, 32)
    assert torch.equal(a["labels"][1], 5 - a["labels"][0])  # annotations transformed identically


def test_random_crop_pads_small_inputs() -> None:
    sample = {"image": torch.ones(3, 5, 6), "labels": torch.zeros(5, 6, dtype=torch.int64), "id": "s"}
    out = RandomCrop((8, 7))(sample)
    assert out["labels"].shape == (8, 7)
    assert (out["labels"] == -1).sum() == 8 * 7 - 5 * 6
    assert out["image"][:, :5, :6].eq(1).all() and out["image"][:, 5:].eq(0).all()


def test_collate() -> None:
    ds = DeadLeaves(5, size=(40, 40), seed=0, transform=RandomCrop(32))
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["labels"].shape == (2, 32, 32)
    assert batch["id"] == ["deadleaves-0-0", "deadleaves-0-1"]
    with pytest.raises(ValueError, match="batch_size=1"):
        collate([DeadLeaves(1, size=(8, 8))[0], DeadLeaves(1, size=(8, 9))[0]])


# --------------------------------------------------------------------------- label helpers


def test_resize_labels_nearest_is_the_formats_rule_on_tensors() -> None:
    labels = np.random.default_rng(0).integers(-1, 9, (13, 21))
    for size in [(13, 21), (5, 8), (40, 61), (1, 1), (26, 7)]:
        got = resize_labels_nearest(torch.from_numpy(labels).expand(2, 13, 21), size)
        assert got.shape == (2, *size)
        assert np.array_equal(got[1].numpy(), resize_labels(labels, size))


def test_downsample_labels_majority() -> None:
    labels = torch.tensor(
        [
            [0, 0, 1, 1, 4, 4],
            [0, 2, 1, 1, 4, 5],
            [-1, -1, 3, 3, -1, 5],
            [-1, -1, 3, 2, -1, 4],
        ]
    )
    # 2x2 cells: majority; ignore unless the whole cell is ignored; ties -> smallest label
    expected = torch.tensor([[0, 1, 4], [-1, 3, 4]])
    batch = torch.stack([labels, labels.flip(-1)])
    out = downsample_labels(batch, (2, 3))
    assert out.dtype == torch.int64
    assert torch.equal(out[0], expected)
    assert torch.equal(out[1], torch.tensor([[4, 1, 0], [4, 3, -1]]))  # batch items independent
    assert torch.equal(downsample_labels(batch, (4, 6)), batch)  # identity at full size
    assert downsample_labels(labels[None], (1, 1)).item() == 1  # 1 and 4 tie at 4 votes: smallest
    # uneven split: column x goes to cell floor(x * 4 / 6), i.e. {0,1}, {2}, {3,4}, {5}
    assert torch.equal(downsample_labels(labels[None], (2, 4))[0], torch.tensor([[0, 1, 1, 4], [-1, 3, 2, 4]]))
    nearest = downsample_labels(labels[None], (2, 3), mode="nearest")[0]  # pixels (1|3, 1|3|5)
    assert torch.equal(nearest, torch.tensor([[2, 1, 5], [-1, 2, 4]]))
    with pytest.raises(ValueError):
        downsample_labels(labels[None], (5, 6))


def test_relabel_consecutive_and_label_kernel() -> None:
    x = np.array([[5, 5, 9], [-1, 2, 9]])
    assert relabel_consecutive(x).tolist() == [[1, 1, 2], [-1, 0, 2]]
    assert relabel_consecutive(torch.from_numpy(x)).tolist() == [[1, 1, 2], [-1, 0, 2]]
    assert relabel_consecutive(x, ignore_index=None).tolist() == [[2, 2, 3], [0, 1, 3]]
    assert relabel_consecutive(np.array([10**9, 3])).tolist() == [1, 0]  # wide range (sort path)
    k, valid = label_kernel(torch.tensor([[0, 1, 0, -1]]))
    assert valid.tolist() == [[True, True, True, False]]
    assert k[0].tolist() == [[1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]


def test_downsample_labels_sparse_path_matches_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    import ndd.data.labels as labels_module

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(-1, 7, (3, 33, 47), generator=g)
    dense = downsample_labels(labels, (9, 10))
    monkeypatch.setattr(labels_module, "_LUT_LIMIT", 0)  # force the sort-based counting
    assert torch.equal(downsample_labels(labels, (9, 10)), dense)
    assert torch.equal(relabel_consecutive(labels), labels)  # already consecutive, via torch.unique
