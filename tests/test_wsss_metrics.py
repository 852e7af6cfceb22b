"""mIoU from a confusion matrix, multi-scale crop inference, and ``evaluate`` on mask folders."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from ndd.data import write_mask_png
from ndd.wsss import confusion_matrix, evaluate, multi_scale_probabilities, scores_from_confusion
from ndd.wsss.steps import crop_windows, scores_to_labels

pytestmark = pytest.mark.usefixtures("one_thread")


def test_miou_against_a_hand_computed_confusion_matrix():
    gt = np.array([[0, 0, 1, 1],
                   [0, 0, 1, 1],
                   [2, 2, -1, -1]])
    pred = np.array([[0, 1, 1, 1],
                     [0, 0, 1, -1],   # -1: left unlabelled (255) by the prediction
                     [2, 0, 2, 2]])
    conf = confusion_matrix(pred, gt, 4)
    # rows: ground truth 0..3; columns: prediction 0..3 and "unlabelled"
    expected = np.array([[3, 1, 0, 0, 0],
                         [0, 3, 0, 0, 1],
                         [1, 0, 1, 0, 0],
                         [0, 0, 0, 0, 0]])
    assert np.array_equal(conf, expected)
    s = scores_from_confusion(conf, ["bg", "a", "b", "c"])
    # IoU = TP / (GT + Pred - TP): bg 3/(4+4-3), a 3/(4+4-3), b 1/(2+1-1); c absent from both
    assert s["per_class"]["bg"] == pytest.approx(3 / 5)
    assert s["per_class"]["a"] == pytest.approx(3 / 5)
    assert s["per_class"]["b"] == pytest.approx(1 / 2)
    assert s["per_class"]["c"] is None and s["present"] == ["bg", "a", "b"]
    assert s["miou"] == pytest.approx((0.6 + 0.6 + 0.5) / 3)
    assert s["pixel_accuracy"] == pytest.approx(7 / 10) and s["pixels"] == 10
    with pytest.raises(ValueError, match="differ in size"):
        confusion_matrix(pred[:2], gt, 4)
    with pytest.raises(ValueError, match="ids must be below 4"):
        confusion_matrix(pred + 4, gt, 4)


def test_evaluate_folders_and_errors(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt = np.zeros((6, 8), np.uint8)
    gt[:, 4:] = 15
    gt[0] = 255
    write_mask_png(gt_dir / "x.png", gt)
    write_mask_png(gt_dir / "y.png", gt)
    write_mask_png(pred_dir / "x.png", gt.clip(0, 15))
    with pytest.raises(FileNotFoundError, match="1 of 2 image.* have no prediction .*: y"):
        evaluate(pred_dir, groundtruth=gt_dir)
    scores = evaluate(pred_dir, groundtruth=gt_dir, allow_missing=True, json_path=tmp_path / "s.json")
    assert scores["miou"] == pytest.approx(1.0) and scores["n_images"] == 1 and scores["n_missing"] == 1
    assert json.loads((tmp_path / "s.json").read_text())["per_class"]["person"] == pytest.approx(1.0)
    write_mask_png(pred_dir / "y.png", np.zeros((6, 9), np.uint8))
    with pytest.raises(ValueError, match=r"prediction .*y.png is 6x9, its ground truth 6x8"):
        evaluate(pred_dir, groundtruth=gt_dir)
    bad = gt.copy()
    bad[3, 3] = 21
    write_mask_png(gt_dir / "y.png", bad)
    with pytest.raises(ValueError, match="y.png has values 21 outside the classes 0..20 and 255"):
        evaluate(pred_dir, groundtruth=gt_dir)


class Pointwise(nn.Module):
    """A 1x1-convolution 'segmentation net': a constant image gives constant logits."""

    def __init__(self, classes=3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, classes, 1)
        self.calls = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return self.conv(x)


def test_multi_scale_inference_on_a_constant_image_gives_a_constant_mask():
    model = Pointwise()
    image = torch.full((3, 400, 330), 0.3)
    image[1] = 0.7
    probs = multi_scale_probabilities(model, image, scales=(0.7, 0.85, 1.0), crop_size=321)
    assert probs.shape == (3, 400, 330)
    torch.testing.assert_close(probs.sum(0), torch.ones(400, 330))
    expected = torch.softmax(model.conv(image[:, :1, :1][None]), 1)[0, :, 0, 0]
    torch.testing.assert_close(probs, expected[:, None, None].expand_as(probs), atol=1e-5, rtol=1e-5)
    mask = probs.argmax(0)
    assert (mask == mask[0, 0]).all()
    # paper §7: ceil(H/321) x ceil(W/321) overlapping 321x321 crops per scale
    assert all(c[-2:] == (321, 321) or min(c[-2:]) < 321 for c in model.calls)
    n_windows = sum(len(crop_windows(round(400 * s), 321)) * len(crop_windows(round(330 * s), 321)) for s in (0.7, 0.85, 1.0))
    assert sum(c[0] for c in model.calls) == n_windows == 1 * 1 + 2 * 1 + 2 * 2  # 280x231, 340x280, 400x330


def test_windows_cover_and_overlap():
    assert crop_windows(300, 321) == [0]
    assert crop_windows(500, 321) == [0, 179]
    starts = crop_windows(1000, 321)
    assert len(starts) == 4 and starts[0] == 0 and starts[-1] == 1000 - 321
    assert all(b - a < 321 for a, b in zip(starts, starts[1:]))  # overlapping, no gap


def test_multi_scale_averages_windows_and_flips():
    class Ramp(nn.Module):  # logits depend on the column inside the window: windows disagree where they overlap
        def forward(self, x):
            col = torch.arange(x.shape[-1], dtype=x.dtype).expand(x.shape[0], 1, x.shape[-2], -1) / 10
            return torch.cat([col, -col], 1)

    image = torch.rand(3, 20, 50)
    probs = multi_scale_probabilities(Ramp(), image, scales=(1.0,), crop_size=30)
    starts = crop_windows(50, 30)  # [0, 20]
    p = lambda c: torch.softmax(torch.tensor([c / 10, -c / 10]), 0)  # noqa: E731
    torch.testing.assert_close(probs[:, 5, 25], (p(25 - starts[0]) + p(25 - starts[1])) / 2)
    torch.testing.assert_close(probs[:, 5, 10], p(10))
    flipped = multi_scale_probabilities(Ramp(), image, scales=(1.0,), crop_size=50, flip=True)
    torch.testing.assert_close(flipped[:, 0, 7], (p(7) + p(42)) / 2)
    with pytest.raises(ValueError, match="NaN"):
        multi_scale_probabilities(Ramp(), torch.full((3, 4, 4), float("nan")))


def test_scores_to_labels_restricts_to_allowed_classes():
    scores = torch.zeros(3, 2, 2)
    scores[2] = 1.0
    scores[1, 0, 0] = 0.5
    labels = scores_to_labels(scores, (13, 16), allowed=torch.tensor([True, True, False]))
    assert labels.shape == (13, 16) and labels[0, 0] == 1 and labels[12, 15] == 0
    assert (scores_to_labels(scores, (16, 16)) == 2).all()
