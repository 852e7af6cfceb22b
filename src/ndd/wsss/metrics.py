"""Semantic segmentation scores: confusion matrix, per-class IoU, mIoU (NumPy only).

The confusion matrix has a row per ground-truth class and a column per predicted class plus
a last column for pixels the prediction left unlabelled (255): those count against the
ground-truth class (a miss) and for no class. Ground-truth pixels marked ignore (-1 / 255)
are left out. ``IoU_c = TP_c / (GT_c + Pred_c - TP_c)``; a class absent from both the ground
truth and the predictions of the whole set has no IoU (``None``) and is left out of the
mean, as in the VOC devkit (on VOC val every class is present).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["confusion_matrix", "scores_from_confusion", "format_scores"]


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """``(C, C + 1)`` int64 counts: rows ground truth, columns prediction (last: unlabelled).

    Args:
        pred: ``(H, W)`` predicted ids ``0..C-1``; any negative value means "unlabelled".
        gt: ``(H, W)`` ground-truth ids ``0..C-1``; negative values are ignored.

    Raises:
        ValueError: different shapes, or ids ``>= num_classes``.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
    if pred.size and (pred.max() >= num_classes or gt.max() >= num_classes):
        raise ValueError(f"ids must be below {num_classes}: prediction max {pred.max()}, ground truth max {gt.max()}")
    keep = gt >= 0
    p = np.where(pred[keep] >= 0, pred[keep], num_classes).astype(np.int64)
    counts = np.bincount(gt[keep].astype(np.int64) * (num_classes + 1) + p, minlength=num_classes * (num_classes + 1))
    return counts.reshape(num_classes, num_classes + 1)


def scores_from_confusion(conf: np.ndarray, classes: Sequence[str] | None = None) -> dict[str, Any]:
    """mIoU, pixel accuracy, mean class accuracy and per-class IoU of a ``(C, C + 1)`` confusion matrix.

    Returns:
        ``{"miou", "pixel_accuracy", "mean_accuracy", "per_class": {name: IoU or None},
        "present": [names with an IoU], "pixels": int}``.
    """
    conf = np.asarray(conf, dtype=np.int64)
    C = conf.shape[0]
    if conf.shape != (C, C + 1):
        raise ValueError(f"confusion matrix must be (C, C + 1), got {conf.shape}")
    names = list(classes) if classes is not None else [str(i) for i in range(C)]
    tp = np.diag(conf[:, :C]).astype(np.float64)
    gt = conf.sum(1).astype(np.float64)
    pred = conf[:, :C].sum(0).astype(np.float64)
    union = gt + pred - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
    present = ~np.isnan(iou)
    total = gt.sum()
    return {
        "miou": float(np.nanmean(iou)) if present.any() else float("nan"),
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "mean_accuracy": float(np.nanmean(acc)) if (~np.isnan(acc)).any() else float("nan"),
        "per_class": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou, strict=True)},
        "present": [n for n, p in zip(names, present, strict=True) if p],
        "pixels": int(total),
    }


def format_scores(scores: dict[str, Any], title: str = "") -> str:
    """The per-class IoU table and the summary, as printed by ``ndd wsss evaluate``."""
    lines = [title] if title else []
    width = max(len(n) for n in scores["per_class"]) if scores["per_class"] else 5
    for name, iou in scores["per_class"].items():
        lines.append(f"  {name:<{width}}  {'-' if iou is None else f'{100 * iou:5.1f}'}")
    lines.append(f"  {'mIoU':<{width}}  {100 * scores['miou']:5.1f}   (pixel accuracy {100 * scores['pixel_accuracy']:.1f}, "
                 f"mean class accuracy {100 * scores['mean_accuracy']:.1f}, {scores.get('n_images', '?')} images)")
    return "\n".join(lines)
