"""Label-map vocabulary: the ignore value and the order in which regions are painted."""

from __future__ import annotations

import numpy as np

IGNORE_LABEL = 255  # label-map value of pixels that count for nothing (VOC's void)


def paint_order(areas: np.ndarray) -> np.ndarray:
    """Indices int64 [K] in paint order: larger regions first, ties in the given order, so smaller
    regions end on top. The compiled ``paint_labels`` (CPU and CUDA) paints in this order too."""
    return np.argsort(-np.asarray(areas, dtype=np.int64).reshape(-1), kind="stable")


def paint_instances(masks: np.ndarray, labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Label map uint8 [H, W] from instance masks bool [K, H, W] and classes [K], painted in
    :func:`paint_order`; pixels no mask covers are background 0."""
    masks = np.asarray(masks, dtype=bool).reshape(-1, int(height), int(width))
    label = np.zeros((int(height), int(width)), dtype=np.uint8)
    for k in paint_order(masks.reshape(masks.shape[0], -1).sum(axis=1)):
        label[masks[k]] = int(labels[k])
    return label
