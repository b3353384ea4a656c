"""Confusion-matrix segmentation metrics (mean IoU, per-class IoU, pixel accuracy).

Everything here works on integer label maps and is exact: the confusion matrix counts pixels, so
matrices from several images, workers or ranks can simply be summed before taking the IoU.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

from boxsup_ext.core import IGNORE_LABEL
from boxsup_ext.utils import InputError

ArrayLike = Union[np.ndarray, torch.Tensor]


def _as_numpy(array: ArrayLike) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def _scored_pixels(pred: ArrayLike, gt: ArrayLike, num_classes: int, ignore: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat int64 (pred, gt) of the pixels the ground truth scores: gt in [0, C) and not ``ignore``."""
    if num_classes < 1:
        raise InputError(f"num_classes must be at least 1, got {num_classes}")
    pred_np, gt_np = _as_numpy(pred), _as_numpy(gt)
    if pred_np.shape != gt_np.shape:
        raise InputError(f"pred and gt must have the same shape, got {pred_np.shape} and {gt_np.shape}")
    gt_flat = gt_np.reshape(-1).astype(np.int64)
    pred_flat = pred_np.reshape(-1).astype(np.int64)
    valid = (gt_flat != ignore) & (gt_flat >= 0) & (gt_flat < num_classes)
    return pred_flat[valid], gt_flat[valid]


def confusion_matrix(pred: ArrayLike, gt: ArrayLike, num_classes: int, ignore: int = IGNORE_LABEL) -> np.ndarray:
    """Count pixels by (ground-truth class, predicted class).

    Args:
        pred: predicted class map, integer array of any shape (e.g. [H, W] or [B, H, W]); pixels
            equal to ``ignore`` are no prediction (an estimated label map leaves pixels it cannot
            decide as ignore) and are skipped, see :func:`ignored_prediction_counts` for their share.
        gt: ground-truth class map of the same shape; pixels equal to ``ignore`` are skipped, and so
            are ground-truth values outside [0, num_classes).
        num_classes: C, the number of classes including background (class 0).
        ignore: label value of pixels that do not count (255 in VOC).

    Returns:
        int64 array [C, C]; entry [g, p] counts pixels of true class g predicted as p.

    Raises:
        InputError: a scored pixel's prediction is outside [0, C) and is not ``ignore``. Such a value
            names no class; recording it as some class would bring that class into the mean IoU.
    """
    pred_flat, gt_flat = _scored_pixels(pred, gt, num_classes, ignore)
    predicted = pred_flat != ignore
    pred_flat, gt_flat = pred_flat[predicted], gt_flat[predicted]
    bad = (pred_flat < 0) | (pred_flat >= num_classes)
    if bad.any():
        values = np.unique(pred_flat[bad])
        raise InputError(
            f"pred holds {values[:5].tolist()} at {int(bad.sum())} pixel(s): not a class in [0, {num_classes}) "
            f"and not the ignore value {ignore}"
        )
    counts = np.bincount(gt_flat * num_classes + pred_flat, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def ignored_prediction_counts(pred: ArrayLike, gt: ArrayLike, num_classes: int, ignore: int = IGNORE_LABEL) -> np.ndarray:
    """How many scored pixels a prediction leaves as ``ignore``, the pixels :func:`confusion_matrix` skips.

    Args: as :func:`confusion_matrix`.

    Returns:
        int64 array ``[ignored, scored]``: pixels where the ground truth scores (a class in [0, C))
        and the prediction is ``ignore``, and all pixels where the ground truth scores. Summed over
        images, ``ignored / scored`` is the share of the truth that a mean IoU of these predictions
        does not judge.
    """
    pred_flat, _ = _scored_pixels(pred, gt, num_classes, ignore)
    return np.array([int((pred_flat == ignore).sum()), pred_flat.size], dtype=np.int64)


def miou_from_confusion(cm: ArrayLike) -> tuple[float, np.ndarray, float]:
    """Mean IoU, per-class IoU and pixel accuracy of a confusion matrix.

    Args:
        cm: [C, C] pixel counts as returned by :func:`confusion_matrix` (rows: truth, columns:
            prediction).

    Returns:
        ``(miou, per_class_iou, pixel_acc)``: ``miou`` is the mean over classes that occur in the
        ground truth or the prediction (a class absent from both has an undefined IoU and is left
        out); ``per_class_iou`` is float64 [C] with NaN for such classes; ``pixel_acc`` is the
        fraction of counted pixels predicted correctly (NaN when no pixel was counted). IoU values
        are fractions in [0, 1], not percentages.
    """
    cm_np = cm.detach().cpu().numpy() if isinstance(cm, torch.Tensor) else np.asarray(cm)
    if cm_np.ndim != 2 or cm_np.shape[0] != cm_np.shape[1]:
        raise InputError(f"confusion matrix must be square [C, C], got shape {cm_np.shape}")
    cm_np = cm_np.astype(np.float64)
    tp = np.diag(cm_np)
    union = cm_np.sum(axis=0) + cm_np.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(union > 0, tp / np.where(union > 0, union, 1.0), np.nan)
    present = ~np.isnan(per_class)
    miou = float(per_class[present].mean()) if present.any() else float("nan")
    total = cm_np.sum()
    pixel_acc = float(tp.sum() / total) if total > 0 else float("nan")
    return miou, per_class, pixel_acc
