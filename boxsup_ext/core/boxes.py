"""The box pixel rule, in NumPy: which pixels a box (x0, y0, x1, y1) covers.

Pixel (row y, column x) is inside a box when its centre (x + 0.5, y + 0.5) lies in
[x0, x1) x [y0, y1), i.e. columns [ceil(x0 - 0.5), ceil(x1 - 0.5)) and the same for rows, clamped
to the image. A NaN coordinate covers nothing; infinite or huge ones are clamped. This is
``math::pixel_range`` of csrc/common/proposal_math.h, which the kernels use (they refuse
non-finite boxes before applying it); tests/test_core.py checks that the two agree.
"""

from __future__ import annotations

import numpy as np


def _axis_range(lo: np.ndarray, hi: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Half-open pixel index range [begin, end) int64 along one axis of ``size`` pixels."""
    undefined = np.isnan(lo) | np.isnan(hi)
    # Clamp before rounding so infinite or huge coordinates stay defined (as the C++ does).
    begin = np.clip(np.ceil(np.clip(lo - 0.5, -1.0, size + 1.0)), 0, size)
    end = np.clip(np.ceil(np.clip(hi - 0.5, -1.0, size + 1.0)), 0, size)
    begin = np.where(undefined, 0, begin).astype(np.int64)
    end = np.where(undefined, 0, end).astype(np.int64)
    return begin, np.maximum(end, begin)


def box_pixel_ranges(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel ranges int64 [M, 4] (col0, row0, col1, row1), half-open, of boxes float [M, 4] (or [4]).

    Boxes are (x0, y0, x1, y1) in pixel units; an empty range has col1 == col0 or row1 == row0.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    with np.errstate(invalid="ignore"):
        col0, col1 = _axis_range(boxes[:, 0], boxes[:, 2], int(width))
        row0, row1 = _axis_range(boxes[:, 1], boxes[:, 3], int(height))
    return np.stack([col0, row0, col1, row1], axis=1)


def box_masks(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Rectangle masks bool [M, H, W] of boxes float [M, 4] (x0, y0, x1, y1) by the pixel rule."""
    ranges = box_pixel_ranges(boxes, height, width)
    cols = np.arange(int(width))
    rows = np.arange(int(height))
    inside_x = (cols[None, :] >= ranges[:, 0:1]) & (cols[None, :] < ranges[:, 2:3])  # [M, W]
    inside_y = (rows[None, :] >= ranges[:, 1:2]) & (rows[None, :] < ranges[:, 3:4])  # [M, H]
    return inside_y[:, :, None] & inside_x[:, None, :]
