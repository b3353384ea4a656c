"""Units + members packing helpers of boxsup_ext.proposals.bits, checked against brute force and
against the float64 torch reference of the kernel author."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from boxsup_ext import reference
from boxsup_ext.proposals import bits


@given(n=st.integers(0, 5), u=st.integers(0, 200), seed=st.integers(0, 2**31))
@settings(max_examples=40, deadline=None)
def test_pack_rows_round_trip_and_bit_layout(n, u, seed):
    rows = np.random.default_rng(seed).random((n, u)) < 0.3
    packed = bits.pack_rows(rows)
    assert packed.dtype == np.int64 and packed.shape == (n, max(1, (u + 63) // 64))
    np.testing.assert_array_equal(bits.unpack_rows(packed, u), rows)
    words = packed.view(np.uint64)
    for row, col in zip(*(index.tolist() for index in np.nonzero(rows))):  # bit u % 64 of word u // 64
        assert (int(words[row, col // 64]) >> (col % 64)) & 1 == 1
    assert int(sum(bin(int(w)).count("1") for w in words.ravel())) == int(rows.sum())


def test_bit_63_is_set_as_negative_int64():
    rows = np.zeros((1, 64), dtype=bool)
    rows[0, 63] = True
    packed = bits.pack_rows(rows)
    assert packed[0, 0] == np.iinfo(np.int64).min


@given(n=st.integers(1, 6), h=st.integers(1, 9), w=st.integers(1, 70), seed=st.integers(0, 2**31))
@settings(max_examples=40, deadline=None)
def test_masks_to_units_is_exact_and_minimal(n, h, w, seed):
    masks = np.random.default_rng(seed).random((n, h, w)) < 0.5
    units, members = bits.masks_to_units(masks)
    assert units.dtype == np.int32 and units.shape == (h, w)
    np.testing.assert_array_equal(bits.unpack_masks(units, members), masks)
    # Minimal: two pixels share a unit exactly when they share membership in every mask.
    signature = masks.reshape(n, -1).T
    distinct = np.unique(signature, axis=0).shape[0]
    assert bits.unit_count(units) == distinct
    # Units are numbered by first pixel in raster order.
    first_seen = np.unique(units.ravel(), return_index=True)[1]
    assert np.all(np.diff(first_seen) > 0)


def test_masks_to_units_agrees_with_torch_reference():
    rng = np.random.default_rng(3)
    masks = rng.random((7, 13, 77)) < 0.4
    units, members = bits.masks_to_units(masks)
    ref_units, ref_members = reference.masks_to_units(torch.from_numpy(masks))
    ours = reference.unpack_members(torch.from_numpy(units.astype(np.int64)), torch.from_numpy(members))
    theirs = reference.unpack_members(ref_units, ref_members)
    assert torch.equal(ours, theirs)
    assert torch.equal(ours, torch.from_numpy(masks))
    assert bits.unit_count(units) == int(ref_units.max()) + 1


@pytest.mark.parametrize(
    "box",
    [(0.0, 0.0, 5.0, 4.0), (1.4, 0.6, 3.5, 2.49), (-3.0, -1.0, 100.0, 100.0), (2.0, 2.0, 2.0, 5.0), (4.6, 1.0, 4.4, 3.0)],
)
def test_box_masks_follow_the_pixel_centre_convention(box):
    h, w = 6, 7
    mask = bits.box_masks(np.array([box], dtype=np.float32), h, w)[0]
    expected = np.array([[box[0] <= x + 0.5 < box[2] and box[1] <= y + 0.5 < box[3] for x in range(w)] for y in range(h)])
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(mask, reference.box_pixel_mask(box, h, w).numpy())
    col0, row0, col1, row1 = bits.box_pixel_range(np.array(box), h, w)
    ranged = np.zeros((h, w), dtype=bool)
    ranged[row0:row1, col0:col1] = True
    np.testing.assert_array_equal(ranged, expected)


def test_unit_statistics_counts_and_tight_boxes():
    units = np.array([[0, 0, 2], [1, 0, 2], [1, 1, 2]], dtype=np.int32)
    area, box = bits.unit_statistics(units, 4)
    np.testing.assert_array_equal(area, [3, 3, 3, 0])
    np.testing.assert_array_equal(box[0], [0, 0, 2, 2])
    np.testing.assert_array_equal(box[1], [0, 1, 2, 3])
    np.testing.assert_array_equal(box[2], [2, 0, 3, 3])
    assert box[3, 2] <= box[3, 0]  # empty unit: empty box
