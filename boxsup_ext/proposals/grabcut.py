"""The ``grabcut`` baseline of the paper's Table 2: one OpenCV GrabCut mask per box."""

from __future__ import annotations

import cv2
import numpy as np

from boxsup_ext import core
from boxsup_ext.proposals.registry import register_method
from boxsup_ext.utils import InputError


def grabcut_mask(image: np.ndarray, box: np.ndarray, iterations: int = 5, seed: int = 0) -> np.ndarray:
    """GrabCut foreground bool [H, W] of one box, started from the box as the initial rectangle.

    Pixels outside the box are background by construction. A box under 2 x 2 pixels, or a run
    that ends with no foreground, gives the box's rectangle itself (GrabCut has nothing to work on).
    """
    height, width = image.shape[:2]
    col0, row0, col1, row1 = (int(v) for v in core.box_pixel_ranges(box, height, width)[0])
    rectangle = np.zeros((height, width), dtype=bool)
    rectangle[row0:row1, col0:col1] = True
    if col1 - col0 < 2 or row1 - row0 < 2 or (col1 - col0) * (row1 - row0) >= height * width:
        # GrabCut needs background samples outside the rectangle; a full-image box has none.
        return rectangle
    mask = np.zeros((height, width), dtype=np.uint8)
    background_model = np.zeros((1, 65), dtype=np.float64)
    foreground_model = np.zeros((1, 65), dtype=np.float64)
    cv2.setRNGSeed(int(seed))
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    cv2.grabCut(bgr, mask, (col0, row0, col1 - col0, row1 - row0), background_model, foreground_model,
                int(iterations), cv2.GC_INIT_WITH_RECT)
    foreground = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    return foreground if foreground.any() else rectangle


def grabcut(image: np.ndarray, boxes: np.ndarray, *, iterations: int = 5, seed: int = 0, max_candidates: int = 2000):
    """One GrabCut candidate per box.

    image: uint8 [H, W, 3] RGB. boxes: float32 [M, 4] (x0, y0, x1, y1) pixels. iterations: GrabCut
    iterations per box. seed: OpenCV's RNG seed. max_candidates: accepted for a uniform command
    line and unused (one candidate per box). Returns units int32 [H, W], members int64 [M, W64] (row m = box m) and
    scores float32 [M] (all 1).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"grabcut needs an RGB uint8 image [H, W, 3], got {image.dtype} {image.shape}")
    if int(iterations) < 1:
        raise InputError(f"grabcut option iterations must be at least 1, got {iterations}")
    height, width = image.shape[:2]
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    masks = np.zeros((boxes.shape[0], height, width), dtype=bool)
    for index, box in enumerate(boxes):
        masks[index] = grabcut_mask(image, box, int(iterations), seed)
    units, members = core.masks_to_units(masks)
    return units, members, np.ones(members.shape[0], dtype=np.float32)


register_method("grabcut", grabcut)
