"""The ground floor boxsup_ext.core: candidate form, box pixel rule, paint order. Checked against
brute force and against the compiled ops, which must speak the same vocabulary."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from boxsup_ext import core, ops


@given(n=st.integers(0, 5), u=st.integers(0, 200), seed=st.integers(0, 2**31))
@settings(max_examples=40, deadline=None)
def test_pack_rows_round_trip_and_bit_layout(n, u, seed):
    rows = np.random.default_rng(seed).random((n, u)) < 0.3
    packed = core.pack_rows(rows)
    assert packed.dtype == np.int64 and packed.shape == (n, (u + 63) // 64)
    np.testing.assert_array_equal(core.unpack_rows(packed, u), rows)
    words = packed.view(np.uint64)
    for row, col in zip(*(index.tolist() for index in np.nonzero(rows))):  # bit u % 64 of word u // 64
        assert (int(words[row, col // 64]) >> (col % 64)) & 1 == 1
    assert int(sum(bin(int(w)).count("1") for w in words.ravel())) == int(rows.sum())
    # The compiled pack kernel packs the same words.
    assert torch.equal(ops.pack_masks(torch.from_numpy(rows)), torch.from_numpy(packed))


def test_bit_63_is_set_as_negative_int64():
    rows = np.zeros((1, 64), dtype=bool)
    rows[0, 63] = True
    packed = core.pack_rows(rows)
    assert packed[0, 0] == np.iinfo(np.int64).min


def test_num_words_of_zero_bits_is_zero_as_in_the_ops():
    assert [core.num_words(b) for b in (0, 1, 64, 65, 128)] == [0, 1, 1, 2, 2]
    assert ops.pack_masks(torch.zeros(3, 0, dtype=torch.bool)).shape == (3, 0)
    # An image without pixels has no units, so 0-wide members are valid there (and only there).
    units, members = core.masks_to_units(np.zeros((2, 0, 5), dtype=bool))
    assert members.shape == (2, 0)
    core.Candidates(units, members)
    costs = ops.proposal_costs(torch.from_numpy(units), torch.from_numpy(members), torch.zeros(3, 0, 5),
                               torch.zeros(1, 4), torch.ones(1, dtype=torch.int64))
    assert costs.area.tolist() == [0, 0]


@given(n=st.integers(0, 6), h=st.integers(1, 9), w=st.integers(1, 70), seed=st.integers(0, 2**31))
@settings(max_examples=40, deadline=None)
def test_masks_to_units_is_exact_minimal_and_numbered_like_the_torch_op(n, h, w, seed):
    masks = np.random.default_rng(seed).random((n, h, w)) < 0.5
    units, members = core.masks_to_units(masks)
    assert units.dtype == np.int32 and units.shape == (h, w)
    np.testing.assert_array_equal(core.unpack_masks(units, members), masks)
    # Minimal: two pixels share a unit exactly when they share membership in every mask.
    distinct = np.unique(masks.reshape(n, h * w).T, axis=0).shape[0]
    assert core.unit_count(units) == distinct
    assert members.shape == (n, core.num_words(distinct))
    # Units are numbered by first pixel in raster order.
    first_seen = np.unique(units.ravel(), return_index=True)[1]
    assert np.all(np.diff(first_seen) > 0)
    # One numbering: the tensor entry point gives the same units and words.
    op_units, op_members = ops.masks_to_units(torch.from_numpy(masks))
    assert op_units.dtype == torch.int64 and op_members.dtype == torch.int64
    np.testing.assert_array_equal(op_units.numpy(), units)
    np.testing.assert_array_equal(op_members.numpy(), members)


def test_masks_to_units_with_more_than_64_masks_uses_several_signature_words():
    masks = np.random.default_rng(5).random((70, 6, 7)) < 0.5
    units, members = core.masks_to_units(masks)
    assert members.shape[1] == core.num_words(core.unit_count(units))
    np.testing.assert_array_equal(core.Candidates(units, members).masks(), masks)
    np.testing.assert_array_equal(core.Candidates(units, members).masks([3, 69]), masks[[3, 69]])


CANDIDATE_ERRORS = [
    (np.zeros((4, 5, 1), np.int32), np.zeros((1, 1), np.int64), None, r"units must be an integer map \[H, W\]"),
    (np.zeros((4, 5), np.float32), np.zeros((1, 1), np.int64), None, r"units must be an integer map"),
    (np.zeros((4, 5), np.int32), np.zeros((1, 1), np.int64), (5, 4), r"units must be an integer map of shape \(5, 4\)"),
    (-np.ones((4, 5), np.int32), np.zeros((1, 1), np.int64), None, r"units must be >= 0, found -1"),
    (np.full((2, 2), 2**40, np.int64), np.zeros((1, 1), np.int64), None, r"unit ids must fit int32"),
    (np.zeros((2, 2), np.int32), np.zeros((1, 1), np.int32), None, r"members must be int64 \[N, W64\]"),
    (np.zeros((2, 2), np.int32), np.zeros(3, np.int64), None, r"members must be int64 \[N, W64\]"),
    (np.full((2, 2), 64, np.int32), np.zeros((3, 1), np.int64), None, r"members has 1 words per row, 2 needed"),
]


@pytest.mark.parametrize("units, members, shape, message", CANDIDATE_ERRORS)
def test_candidates_refuse_bad_arrays_naming_the_argument(units, members, shape, message):
    with pytest.raises(ValueError, match=message):
        core.Candidates(units, members, shape=shape)


def test_candidates_normalise_units_to_int32_and_keep_spare_words():
    candidates = core.Candidates(np.array([[0, 2], [1, 1]], np.uint16), np.zeros((4, 3), np.int64), shape=(2, 2))
    assert candidates.units.dtype == np.int32 and candidates.units.flags.c_contiguous
    assert (candidates.num_candidates, candidates.num_units) == (4, 3)


def _box_rule_by_pixel_centres(box, h, w):
    x0, y0, x1, y1 = box
    return np.array([[x0 <= x + 0.5 < x1 and y0 <= y + 0.5 < y1 for x in range(w)] for y in range(h)])


def _op_box_mask(box, h, w):
    """The kernels' box pixels: paint_labels marks the whole box of a box without a candidate."""
    units = torch.zeros(h, w, dtype=torch.int64)
    label = ops.paint_labels(units, torch.zeros(0, 1, dtype=torch.int64), torch.tensor([-1]), torch.tensor([1]),
                             torch.tensor([box], dtype=torch.float32), unassigned=core.IGNORE_LABEL)
    return (label == core.IGNORE_LABEL).numpy()


@pytest.mark.parametrize(
    "box",
    [(0.0, 0.0, 5.0, 4.0), (1.4, 0.6, 3.5, 2.49), (-3.0, -1.0, 100.0, 100.0), (2.0, 2.0, 2.0, 5.0), (4.6, 1.0, 4.4, 3.0),
     (0.5, 0.5, 0.5000001, 6.0), (-1e30, 2.0, 1e30, 1e30), (8.0, 0.0, 9.0, 6.0)],
)
def test_box_masks_follow_the_pixel_centre_convention(box):
    h, w = 6, 7
    expected = _box_rule_by_pixel_centres(box, h, w)
    np.testing.assert_array_equal(core.box_masks(np.array([box], dtype=np.float32), h, w)[0], expected)
    col0, row0, col1, row1 = core.box_pixel_ranges(np.array(box), h, w)[0]
    assert col0 <= col1 and row0 <= row1
    ranged = np.zeros((h, w), dtype=bool)
    ranged[row0:row1, col0:col1] = True
    np.testing.assert_array_equal(ranged, expected)


def test_box_rule_agrees_with_the_kernels_on_random_boxes():
    rng = np.random.default_rng(11)
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(1, 12, size=2))
        corners = rng.uniform(-6, 18, size=4) if rng.random() < 0.8 else rng.choice([-1e20, 1e20, 0.5, 3.0], size=4)
        box = np.float32([min(corners[0], corners[2]), min(corners[1], corners[3]), max(corners[0], corners[2]),
                          max(corners[1], corners[3])])
        if rng.random() < 0.3:  # pixel edges and centres exactly
            box = np.round(box * 2) / 2
        mask = core.box_masks(box[None], h, w)[0]
        np.testing.assert_array_equal(mask, _op_box_mask(box.tolist(), h, w), err_msg=f"box {box.tolist()} in {h}x{w}")


def test_non_finite_boxes_clamp_or_cover_nothing_where_the_kernels_refuse_them():
    nan, inf = float("nan"), float("inf")
    h, w = 3, 4
    boxes = np.array([[nan, 0, 2, 2], [0, 0, nan, 2], [-inf, -inf, inf, inf], [1.0, -inf, 2.0, 1.6], [inf, 0, inf, 3]])
    ranges = core.box_pixel_ranges(boxes, h, w)
    assert ranges.dtype == np.int64
    assert not core.box_masks(boxes[:2], h, w).any()  # NaN: empty
    np.testing.assert_array_equal(ranges[2:], [[0, 0, 4, 3], [1, 0, 2, 2], [4, 0, 4, 3]])
    for box in boxes:  # the op checks boxes first, so no kernel ever applies the rule to them
        with pytest.raises(RuntimeError, match="must be finite"):
            _op_box_mask(box.tolist(), h, w)


def test_paint_order_is_larger_first_ties_in_order_as_in_the_paint_op():
    masks = np.zeros((5, 6, 6), dtype=bool)
    masks[0, :3, :3] = True  # 9 pixels
    masks[1, 2:5, 2:5] = True  # 9 pixels, a tie: painted after 0, so on top
    masks[2, :, :4] = True  # 24: painted first
    masks[3, 3:, :] = True  # 18
    masks[4, 1:2, 1:3] = True  # 2: last, on top
    labels = np.array([1, 2, 3, 4, 5])
    np.testing.assert_array_equal(core.paint_order(masks.reshape(5, -1).sum(1)), [2, 3, 0, 1, 4])
    painted = core.paint_instances(masks, labels, 6, 6)
    assert painted[2, 2] == 2 and painted[4, 2] == 2 and painted[1, 1] == 5 and painted[5, 5] == 4
    units, members = core.masks_to_units(masks)
    op = ops.paint_labels(torch.from_numpy(units), torch.from_numpy(members), torch.arange(5), torch.from_numpy(labels))
    np.testing.assert_array_equal(op.numpy(), painted)


def test_unit_statistics_counts_and_tight_boxes():
    units = np.array([[0, 0, 2], [1, 0, 2], [1, 1, 2]], dtype=np.int32)
    area, box = core.unit_statistics(units, 4)
    np.testing.assert_array_equal(area, [3, 3, 3, 0])
    np.testing.assert_array_equal(box[0], [0, 0, 2, 2])
    np.testing.assert_array_equal(box[1], [0, 1, 2, 3])
    np.testing.assert_array_equal(box[2], [2, 0, 3, 3])
    assert box[3, 2] <= box[3, 0]  # empty unit: empty box
