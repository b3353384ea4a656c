"""The ``rectangles`` baseline of the paper's Table 2: each box's own rectangle is its one candidate."""

from __future__ import annotations

import numpy as np

from boxsup_ext import core
from boxsup_ext.proposals.registry import register_method


def rectangles(image: np.ndarray, boxes: np.ndarray, *, max_candidates: int = 2000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One candidate per box: the pixels inside the box (half-open pixel convention).

    image: uint8 [H, W, 3] (only its size is used). boxes: float32 [M, 4] (x0, y0, x1, y1) pixels.
    max_candidates: accepted for a uniform command line and unused (one candidate per box).
    Returns units int32 [H, W], members int64 [M, W64] (row m = box m) and scores float32 [M] (all 1).
    """
    height, width = image.shape[:2]
    masks = core.box_masks(boxes, height, width)
    units, members = core.masks_to_units(masks)
    return units, members, np.ones(members.shape[0], dtype=np.float32)


register_method("rectangles", rectangles, uses_pixels=False)
