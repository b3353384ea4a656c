from __future__ import annotations

import itertools

import numpy as np
import pytest

from boxsup_ext.evaluation.trimap import boundary_pixels, parse_widths, trimap_bands
from boxsup_ext.utils import InputError


def _brute_boundary(label: np.ndarray) -> np.ndarray:
    height, width = label.shape
    out = np.zeros(label.shape, bool)
    for y, x in itertools.product(range(height), range(width)):
        for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            ny, nx = y + dy, x + dx
            if 0 <= ny < height and 0 <= nx < width and label[ny, nx] != label[y, x]:
                out[y, x] = True
    return out


def _brute_band(label: np.ndarray, width: float) -> np.ndarray:
    boundary = np.argwhere(_brute_boundary(label))
    ys, xs = np.mgrid[: label.shape[0], : label.shape[1]]
    band = np.zeros(label.shape, bool)
    for by, bx in boundary:
        band |= (ys - by) ** 2 + (xs - bx) ** 2 <= width * width
    return band


def test_square_object_band_by_hand():
    label = np.zeros((9, 9), np.uint8)
    label[3:6, 3:6] = 1
    boundary = boundary_pixels(label)
    # The object ring (all 3x3 object pixels except the centre) and the background pixels that
    # touch it edge-wise (12 of them; diagonal corners do not touch).
    assert boundary[3:6, 3:6].sum() == 8 and not boundary[4, 4]
    assert boundary.sum() == 8 + 12
    band0, band1 = trimap_bands(label, [0, 1])
    assert band1[4, 4] and band1[2, 2] and band1[1, 4]
    assert not band1[0, 4] and not band1[1, 1]
    np.testing.assert_array_equal(band0, boundary)


@pytest.mark.parametrize("seed", range(4))
def test_band_is_exactly_pixels_within_w(seed):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, size=(int(rng.integers(5, 14)), int(rng.integers(5, 14))))
    # Larger uniform blobs so bands at bigger widths are not the whole image.
    label = np.kron(label, np.ones((2, 2), int))[:17, :19]
    label[label == 2] = 255
    widths = [0, 1, 1.5, 2, 3, 5]
    bands = trimap_bands(label, widths)
    assert bands.shape == (len(widths),) + label.shape and bands.dtype == bool
    for w, band in zip(widths, bands):
        np.testing.assert_array_equal(band, _brute_band(label, w), err_msg=f"width {w}")
    assert all((bands[i] <= bands[i + 1]).all() for i in range(len(widths) - 1))


def test_uniform_map_has_empty_band():
    assert not trimap_bands(np.full((4, 6), 7, np.uint8), [8]).any()


def test_bad_inputs():
    with pytest.raises(InputError, match="2-D"):
        boundary_pixels(np.zeros((2, 2, 2)))
    with pytest.raises(InputError, match=">= 0"):
        trimap_bands(np.zeros((3, 3)), [-1])
    assert parse_widths("1,2, 8") == (1, 2, 8)
    with pytest.raises(InputError, match="--trimap"):
        parse_widths("1,x")
