"""PASCAL VOC 2012 (+ SBD), the generic image-label layout and the synthetic multi-class data set."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ndd.data import (
    VOC_CLASSES,
    ImageLabelFolder,
    MultiClassShapes,
    VOCSegmentation,
    read_mask_png,
    voc_palette,
    write_mask_png,
    write_multiclass_dataset,
)


def _xml(names):
    objects = "".join(f"<object><name>{n}</name><difficult>0</difficult></object>" for n in names)
    return f"<annotation><filename>x.jpg</filename>{objects}</annotation>"


def make_voc(root: Path) -> Path:
    """A small VOCdevkit/VOC2012 tree: 3 images, palette masks, SBD-style aug masks, XML, split lists."""
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "Annotations",
                "ImageSets/Segmentation", "ImageSets/SegmentationAug"):
        (voc / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    objects = {"2007_000001": ["cat", "dog"], "2007_000002": ["person"], "2008_000003": ["cat", "cat", "car"]}
    ids = list(objects)
    for k, (i, names) in enumerate(objects.items()):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{i}.jpg")
        mask = np.zeros((20, 30), np.uint8)
        for j, n in enumerate(sorted(set(names))):
            mask[2 + 5 * j : 6 + 5 * j, 3:10] = VOC_CLASSES.index(n)
        mask[0, :] = 255
        write_mask_png(voc / "SegmentationClass" / f"{i}.png", mask)  # palette
        Image.fromarray(mask).save(voc / "SegmentationClassAug" / f"{i}.png")  # grey, as SBD's
        (voc / "Annotations" / f"{i}.xml").write_text(_xml(names))
    (voc / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids[:2]) + "\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text(ids[2] + "\n")
    (voc / "ImageSets/SegmentationAug/train_aug.txt").write_text(
        "".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in ids))
    return voc


def test_voc_layout_labels_and_masks(tmp_path):
    voc = make_voc(tmp_path)
    for root in (tmp_path, tmp_path / "VOCdevkit", voc):  # any of the three levels
        data = VOCSegmentation(root, "train")
        assert data.root == voc and data.ids == ["2007_000001", "2007_000002"]
    item = VOCSegmentation(tmp_path, "train")[0]
    assert item["image"].shape == (3, 20, 30) and 0 <= item["image"].min() and item["image"].max() <= 1
    expected = {0, VOC_CLASSES.index("cat"), VOC_CLASSES.index("dog")}  # background is always present
    assert set(np.flatnonzero(item["classes"].numpy())) == expected and item["classes"].shape == (21,)
    assert (item["labels"][0] == -1).all() and set(item["labels"].unique().tolist()) == {-1, *expected}
    aug = VOCSegmentation(tmp_path, "train_aug")
    assert len(aug) == 3 and aug.mask_dir.name == "SegmentationClassAug"
    # labels from the masks give the same classes here; from XML, a repeated class counts once
    from_mask = VOCSegmentation(tmp_path, "train_aug", image_labels="mask")
    assert from_mask.image_labels == aug.image_labels == [[8, 12], [15], [7, 8]]
    assert VOCSegmentation(tmp_path, "val", require_masks=True).has_masks()


def test_voc_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a PASCAL VOC 2012 folder"):
        VOCSegmentation(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="VOC folder not found"):
        VOCSegmentation(tmp_path / "nope", "train")
    voc = make_voc(tmp_path)
    with pytest.raises(FileNotFoundError, match="split 'trainval': no list file"):
        VOCSegmentation(voc, "trainval")
    (voc / "JPEGImages" / "2007_000002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image file\(s\) missing .*2007_000002.jpg"):
        VOCSegmentation(voc, "train")
    # a mask value outside the 21 classes and 255
    bad = np.zeros((20, 30), np.uint8)
    bad[5, 5] = 30
    write_mask_png(voc / "SegmentationClass" / "2008_000003.png", bad)
    data = VOCSegmentation(voc, "val")
    with pytest.raises(ValueError, match=r"2008_000003.png has values 30 outside the classes 0..20 and 255"):
        data[0]
    # an unknown class in an annotation stops the run at construction
    (voc / "Annotations" / "2008_000003.xml").write_text(_xml(["unicorn"]))
    with pytest.raises(ValueError, match=r"2008_000003.xml: unknown class 'unicorn'"):
        VOCSegmentation(voc, "val")
    # an RGB (colour) mask is refused with a hint
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(voc / "SegmentationClass" / "2007_000001.png")
    with pytest.raises(ValueError, match="is an RGB image: store ids"):
        read_mask_png(voc / "SegmentationClass" / "2007_000001.png", 21)


def test_mask_png_round_trip_and_voc_palette(tmp_path):
    pal = voc_palette()
    assert pal[0].tolist() == [0, 0, 0] and pal[1].tolist() == [128, 0, 0] and pal[15].tolist() == [192, 128, 128]
    assert pal[255].tolist() == [224, 224, 192]
    mask = np.array([[0, 1, 20], [255, 3, 3]], np.uint8)
    write_mask_png(tmp_path / "m.png", mask)
    with Image.open(tmp_path / "m.png") as im:
        assert im.mode == "P" and im.getpalette()[3:6] == [128, 0, 0]
    assert read_mask_png(tmp_path / "m.png", 21).tolist() == [[0, 1, 20], [-1, 3, 3]]


def make_folder(root: Path, labels: str = "csv") -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(np.full((12, 16, 3), 100, np.uint8)).save(root / "images" / f"{name}.png")
    write_mask_png(root / "masks" / "a.png", np.ones((12, 16), np.uint8))
    table = {"a.png": ["cat"], "b": ["dog", "cat"], "c": []}
    if labels == "csv":
        (root / "labels.csv").write_text("image,labels\na.png,cat\nb,dog;cat\nc,\n")
    else:
        (root / "labels.json").write_text(json.dumps(table))
    (root / "train.txt").write_text("a\nb\n")
    return root


@pytest.mark.parametrize("labels", ["csv", "json"])
def test_generic_layout(tmp_path, labels):
    root = make_folder(tmp_path / "d", labels)
    data = ImageLabelFolder(root)
    assert data.classes == ("background", "cat", "dog") and data.background == 0
    assert data.ids == ["a", "b", "c"] and data.image_labels == [[1], [1, 2], []]
    assert data[2]["classes"].tolist() == [1.0, 0.0, 0.0]
    assert data[0]["labels"].unique().tolist() == [1] and (data[1]["labels"] == -1).all()  # b has no mask
    assert ImageLabelFolder(root, "train").ids == ["a", "b"]
    (root / "classes.txt").write_text("background\ndog\ncat\nbird\n")  # an explicit class list wins
    data = ImageLabelFolder(root)
    assert data.classes == ("background", "dog", "cat", "bird") and data.image_labels[1] == [1, 2]


def test_generic_layout_errors(tmp_path):
    root = make_folder(tmp_path / "d")
    with pytest.raises(FileNotFoundError, match="no images/ in it"):
        ImageLabelFolder(tmp_path)
    with pytest.raises(FileNotFoundError, match="split 'val': no list file"):
        ImageLabelFolder(root, "val")
    with pytest.raises(FileNotFoundError, match=r"1 mask file\(s\) missing"):
        ImageLabelFolder(root, "train", require_masks=True)
    (root / "classes.txt").write_text("background\ncat\n")
    with pytest.raises(ValueError, match="labels of image 'b' in labels.csv: unknown class 'dog'"):
        ImageLabelFolder(root)
    (root / "classes.txt").unlink()
    (root / "images" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 labelled image\(s\) missing .*: b"):
        ImageLabelFolder(root)
    (root / "labels.csv").write_text("name,classes\na,cat\n")
    with pytest.raises(ValueError, match="needs a header with columns 'image' and 'labels'"):
        ImageLabelFolder(root)
    (root / "labels.csv").unlink()
    with pytest.raises(FileNotFoundError, match="no labels.csv or labels.json"):
        ImageLabelFolder(root)


def test_synthetic_multiclass_data(tmp_path):
    data = MultiClassShapes(6, (64, 64), seed=3)
    image, mask, ids = data.render(2)
    image2, mask2, ids2 = MultiClassShapes(6, (64, 64), seed=3).render(2)
    assert np.array_equal(image, image2) and np.array_equal(mask, mask2)  # a function of (seed, index)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert ids == sorted(set(np.unique(mask).tolist()) - {0, 255})  # the labels are the classes in the mask
    assert 1 <= len(ids) <= 3 and (mask == 0).mean() > 0.2
    item = data[2]
    assert item["classes"][0] == 1 and item["classes"][ids].eq(1).all() and item["classes"].sum() == len(ids) + 1
    info = write_multiclass_dataset(tmp_path / "s", 5, 3, (48, 48), seed=1)
    assert info["classes"] == ["background", "disc", "square", "triangle", "star", "cross"]
    train = ImageLabelFolder(tmp_path / "s", "train", require_masks=True)
    val = ImageLabelFolder(tmp_path / "s", "val", require_masks=True)
    assert len(train) == 5 and len(val) == 3 and not set(train.ids) & set(val.ids)
    for k in range(len(train)):  # image-level labels agree with the hidden masks
        mask = train.read_mask(k)
        assert train.image_labels[k] == sorted(set(np.unique(mask).tolist()) - {0, -1})
    with pytest.raises(FileExistsError, match="already holds a data set"):
        write_multiclass_dataset(tmp_path / "s", 1, 1, (48, 48))
