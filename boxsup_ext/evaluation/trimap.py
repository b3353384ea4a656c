"""Trimaps around ground-truth boundaries, for the paper's boundary/interior error analysis (Fig. 4).

Definitions (pixels are indexed by integer (row, col); distances are between pixel centres, in
pixels):

* A **boundary pixel** is a pixel whose label differs from the label of at least one of its four
  edge neighbours (up, down, left, right) inside the image. The ignore label counts as a label of
  its own, so in VOC the pixels on both edges of a void (255) band are boundary pixels. The image
  border is not a boundary.
* The **trimap band of width w** is the set of pixels whose Euclidean distance to the nearest
  boundary pixel is at most ``w``: ``{p : min_b ||p - b||_2 <= w}``. Boundary pixels are at distance
  0, so width 0 is the boundary itself; an image with a single label has an empty band.
* The **interior** for width w is every pixel outside the band.

Pixels labelled ``ignore`` never count in either region's confusion matrix.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from boxsup_ext.utils import InputError


def boundary_pixels(label: np.ndarray) -> np.ndarray:
    """Boundary pixels of a label map (see the module docstring).

    Args:
        label: integer [H, W] label map (any integer dtype; the ignore label is an ordinary value).

    Returns:
        bool [H, W], True on boundary pixels.
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise InputError(f"label map must be 2-D [H, W], got shape {list(label.shape)}")
    boundary = np.zeros(label.shape, dtype=bool)
    vertical = label[1:, :] != label[:-1, :]
    horizontal = label[:, 1:] != label[:, :-1]
    boundary[1:, :] |= vertical
    boundary[:-1, :] |= vertical
    boundary[:, 1:] |= horizontal
    boundary[:, :-1] |= horizontal
    return boundary


def boundary_distance(label: np.ndarray) -> np.ndarray:
    """Euclidean distance (pixels, float64 [H, W]) from each pixel centre to the nearest boundary
    pixel centre; ``+inf`` everywhere when the map has no boundary."""
    boundary = boundary_pixels(label)
    if not boundary.any():
        return np.full(boundary.shape, np.inf)
    return ndimage.distance_transform_edt(~boundary)


def trimap_bands(label: np.ndarray, widths: Sequence[float]) -> np.ndarray:
    """Trimap bands of several widths at once.

    Args:
        label: integer [H, W] ground-truth label map.
        widths: non-negative band widths in pixels.

    Returns:
        bool [len(widths), H, W]; plane k is True on pixels within ``widths[k]`` of a boundary.
    """
    widths = [float(w) for w in widths]
    if any(w < 0 for w in widths):
        raise InputError(f"trimap widths must be >= 0, got {widths}")
    distance = boundary_distance(label)
    if not widths:
        return np.zeros((0,) + distance.shape, dtype=bool)
    return distance[None] <= np.asarray(widths)[:, None, None]


def parse_widths(text: str) -> tuple[int, ...]:
    """Parse the ``--trimap`` argument ``"1,2,4,8"`` into non-negative integer widths (pixels)."""
    try:
        widths = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InputError(f"--trimap must be comma-separated integers such as 1,2,4,8, got {text!r}") from None
    if not widths or any(w < 0 for w in widths):
        raise InputError(f"--trimap needs non-negative widths, got {text!r}")
    return widths
