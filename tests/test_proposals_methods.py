"""Proposal methods: Felzenszwalb segmentation, selective search, rectangles, grabcut, MCG import
and the plug-in registry, on small images the tests draw."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.io import savemat

from boxsup_ext import core
from boxsup_ext.proposals import get_method, register_method
from boxsup_ext.proposals.evaluate import mask_best_overlaps
from boxsup_ext.proposals.felzenszwalb import segment
from boxsup_ext.proposals.registry import check_candidates
from boxsup_ext.utils import InputError


def shapes_image(h: int = 72, w: int = 96, seed: int = 0):
    """RGB uint8 [H, W, 3] with an ellipse and a triangle on a noisy striped background, plus masks."""
    rng = np.random.default_rng(seed)
    image = np.zeros((h, w, 3), dtype=np.float64)
    image[:] = (60, 120, 60)
    image[:, ::6] += 25  # stripes: texture
    ellipse = np.zeros((h, w), np.uint8)
    cv2.ellipse(ellipse, (28, 36), (18, 12), 30, 0, 360, 1, -1)
    triangle = np.zeros((h, w), np.uint8)
    cv2.fillPoly(triangle, [np.array([[60, 10], [90, 60], [55, 55]], np.int32)], 1)
    image[ellipse > 0] = (200, 40, 40)
    image[triangle > 0] = (30, 40, 200)
    image += rng.normal(0, 6, image.shape)
    masks = np.stack([ellipse > 0, triangle > 0])
    return np.clip(image, 0, 255).astype(np.uint8), masks


def candidates_of(units, members, scores) -> core.Candidates:
    """The candidates of a method's output (its scores unused)."""
    return core.Candidates(units, members)


# --- Felzenszwalb ------------------------------------------------------------------------------

def test_felzenszwalb_splits_two_flat_halves():
    rng = np.random.default_rng(1)
    image = np.zeros((40, 50, 3), np.float64)
    image[:, 25:] = 180
    image = np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)
    # The smoothing turns the step into a ramp of 40-pixel columns; min_size 50 folds them in.
    labels = segment(image, k=100, min_size=50)
    assert labels.dtype == np.int32 and labels.shape == (40, 50)
    assert labels.max() == 1
    assert np.all(labels[:, :23] == labels[0, 0]) and np.all(labels[:, 27:] == labels[0, 49])
    assert labels[0, 0] != labels[0, 49]
    # Without the clean-up the ramp columns stay regions of their own (k / 40 < the step).
    ramp = segment(image, k=100, min_size=1)
    assert ramp.max() >= 3
    assert all(len(np.unique(ramp[:, col])) == 1 for col in (24, 25))


def test_felzenszwalb_min_size_and_scale():
    image, _ = shapes_image()
    fine = segment(image, k=20, min_size=30)
    coarse = segment(image, k=500, min_size=30)
    assert np.bincount(fine.ravel()).min() >= 30
    np.testing.assert_array_equal(np.unique(fine), np.arange(fine.max() + 1))  # dense labels
    assert coarse.max() <= fine.max()
    # Regions are connected: relabelling each region's connected components changes nothing.
    for region in range(int(fine.max()) + 1):
        count, _ = cv2.connectedComponents((fine == region).astype(np.uint8), connectivity=8)
        assert count == 2


def test_felzenszwalb_handles_tiny_images():
    assert segment(np.full((1, 1, 3), 7, np.uint8)).tolist() == [[0]]
    assert segment(np.zeros((3, 1), np.uint8), k=1, min_size=1).shape == (3, 1)


# --- selective search --------------------------------------------------------------------------

def test_selective_search_output_form_and_quality():
    image, masks = shapes_image()
    units, members, scores = get_method("selective_search")(image, np.zeros((0, 4), np.float32))
    h, w = image.shape[:2]
    candidates, scores = check_candidates(units, members, scores, h, w, "test")
    units, members = candidates.units, candidates.members
    num_units = core.unit_count(units)
    assert members.shape[1] == core.num_words(num_units)
    assert 1 <= members.shape[0] <= 2000
    assert np.all(np.diff(scores) < 0) and scores[0] == 1.0 and scores[-1] > 0
    assert np.unique(members, axis=0).shape[0] == members.shape[0]  # duplicates removed
    candidate_masks = core.unpack_masks(units, members)
    assert candidate_masks.reshape(len(members), -1).any(axis=1).all()  # no empty candidate
    assert candidate_masks.reshape(len(members), -1).all(axis=1).any()  # the hierarchy's root
    best = mask_best_overlaps(candidates, masks)
    assert best.min() > 0.8, best


def test_selective_search_options_seed_and_limit():
    image, _ = shapes_image(seed=2)
    first = get_method("selective_search")(image, None, seed=5, ks="50,150", strategies=["ctsf", "c", "sf"])
    again = get_method("selective_search")(image, None, seed=5, ks="50,150", strategies=["ctsf", "c", "sf"])
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    limited = get_method("selective_search")(image, None, seed=5, ks="50,150", strategies=["ctsf", "c", "sf"], max_candidates=7)
    assert limited[1].shape[0] == 7
    np.testing.assert_array_equal(limited[1], first[1][:7])  # the same ranking, cut
    single = get_method("selective_search")(image, None, colour_spaces="gray", ks=[100], strategies="s")
    assert single[1].shape[0] >= 1


@pytest.mark.parametrize(
    "options, message",
    [
        ({"strategies": "cx"}, "letters of 'ctsf'"),
        ({"colour_spaces": "xyz"}, "colour space 'xyz' is unknown"),
        ({"max_candidates": 0}, "max_candidates must be at least 1"),
        ({"ks": ""}, "ks must not be empty"),
    ],
)
def test_selective_search_rejects_bad_options(options, message):
    image, _ = shapes_image(h=20, w=20)
    with pytest.raises(InputError, match=message):
        get_method("selective_search")(image, None, **options)


def test_selective_search_rejects_non_rgb_image():
    with pytest.raises(InputError, match="RGB uint8"):
        get_method("selective_search")(np.zeros((10, 10), np.uint8), None)


# --- fixed-mask baselines ----------------------------------------------------------------------

def test_rectangles_are_the_boxes():
    image = np.zeros((30, 40, 3), np.uint8)
    boxes = np.array([[2.0, 3.0, 20.0, 25.0], [10.5, 0.0, 39.5, 12.2], [5.0, 5.0, 5.0, 9.0]], np.float32)
    units, members, scores = get_method("rectangles")(image, boxes)
    assert members.shape[0] == 3 and np.all(scores == 1)
    np.testing.assert_array_equal(core.unpack_masks(units, members), core.box_masks(boxes, 30, 40))
    assert core.unit_count(units) <= 6


def test_grabcut_beats_the_rectangle_on_an_ellipse():
    image, masks = shapes_image(seed=3)
    ys, xs = np.nonzero(masks[0])
    box = np.array([[xs.min() - 2, ys.min() - 2, xs.max() + 3, ys.max() + 3]], np.float32)
    cut = candidates_of(*get_method("grabcut")(image, box, iterations=3))
    rect = candidates_of(*get_method("rectangles")(image, box))
    cut_iou = mask_best_overlaps(cut, masks[:1])[0]
    rect_iou = mask_best_overlaps(rect, masks[:1])[0]
    assert cut_iou > 0.85 and cut_iou > rect_iou + 0.1
    # Nothing outside the box is foreground.
    assert not cut.masks()[0][:, : int(box[0, 0])].any()


def test_grabcut_degenerate_boxes_fall_back_to_rectangles():
    image, _ = shapes_image(h=24, w=24)
    boxes = np.array([[3.0, 3.0, 4.0, 20.0], [0.0, 0.0, 24.0, 24.0]], np.float32)
    units, members, _ = get_method("grabcut")(image, boxes)
    np.testing.assert_array_equal(core.unpack_masks(units, members), core.box_masks(boxes, 24, 24))
    with pytest.raises(InputError, match="iterations"):
        get_method("grabcut")(image, boxes, iterations=0)


# --- MCG import --------------------------------------------------------------------------------

def write_mcg(path, superpixels, labels, scores):
    cells = np.empty((len(labels), 1), dtype=object)
    for i, ids in enumerate(labels):
        cells[i, 0] = np.asarray(ids, dtype=np.float64).reshape(-1, 1)
    savemat(str(path), {"superpixels": superpixels.astype(np.uint16), "labels": cells, "scores": np.asarray(scores, np.float64).reshape(-1, 1)})


def test_mcg_import_reads_the_released_format(tmp_path):
    rng = np.random.default_rng(0)
    superpixels = rng.integers(1, 71, size=(12, 15))  # 70 superpixels, 1-based: members span 2 words
    superpixels[0, :2] = [1, 70]
    labels = [[1, 2, 3], [70], [5, 69, 64, 65], [10]]
    scores = [0.2, 0.9, 0.5, 0.1]
    write_mcg(tmp_path / "img_7.mat", superpixels, labels, scores)
    image = np.zeros((12, 15, 3), np.uint8)
    mcg = get_method("mcg")
    assert mcg.needs_image_id
    units, members, got_scores = mcg.run(image, np.zeros((0, 4)), "img_7", mat_dir=str(tmp_path), max_candidates=3)
    np.testing.assert_array_equal(units, superpixels - 1)
    np.testing.assert_allclose(got_scores, [0.9, 0.5, 0.2])
    masks = core.unpack_masks(units, members)
    for mask, ids in zip(masks, [labels[1], labels[2], labels[0]]):
        np.testing.assert_array_equal(mask, np.isin(superpixels, ids))


def test_mcg_import_refuses_missing_and_mismatched_files(tmp_path):
    image = np.zeros((12, 15, 3), np.uint8)
    with pytest.raises(InputError, match=r"nope\.mat: MCG file not found"):
        get_method("mcg").run(image, np.zeros((0, 4)), "nope", mat_dir=str(tmp_path))
    write_mcg(tmp_path / "small.mat", np.ones((5, 5)), [[1]], [1.0])
    with pytest.raises(InputError, match="superpixels are 5x5 but the image is 12x15"):
        get_method("mcg").run(image, np.zeros((0, 4)), "small", mat_dir=str(tmp_path))
    write_mcg(tmp_path / "badids.mat", np.ones((12, 15)), [[1, 4]], [1.0])
    with pytest.raises(InputError, match="outside 1..1"):
        get_method("mcg").run(image, np.zeros((0, 4)), "badids", mat_dir=str(tmp_path))
    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(InputError, match="junk.mat"):
        get_method("mcg").run(image, np.zeros((0, 4)), "junk", mat_dir=str(tmp_path))


# --- registry ----------------------------------------------------------------------------------

def test_registry_plugins_and_errors():
    def halves(image, boxes, **options):
        h, w = image.shape[:2]
        units = np.zeros((h, w), np.int32)
        units[:, w // 2 :] = 1
        return units, core.pack_rows(np.array([[True, False], [False, True], [True, True]])), np.array([3, 2, 1], np.float32)

    register_method("test_halves", halves)
    register_method("test_halves", halves)  # the same function again is fine
    units, members, scores = get_method("test_halves").run(np.zeros((4, 6, 3), np.uint8), [], "x")
    assert members.shape == (3, 1) and scores.dtype == np.float32
    with pytest.raises(ValueError, match="registered already"):
        register_method("test_halves", lambda image, boxes: halves(image, boxes))
    with pytest.raises(InputError, match="unknown; choose one of: .*selective_search"):
        get_method("no_such_method")

    @register_method("test_broken", overwrite=True)
    def broken(image, boxes, **options):
        return np.zeros((2, 2), np.int32), np.zeros((1, 1), np.int64), np.zeros(1, np.float32)

    with pytest.raises(ValueError, match="units must be an integer map of shape"):
        get_method("test_broken").run(np.zeros((4, 6, 3), np.uint8), [], "x")


# --- units of selective search -----------------------------------------------------------------

def test_common_refinement_is_exact_without_sliver_folding():
    from boxsup_ext.proposals.selective_search import common_refinement

    rng = np.random.default_rng(5)
    segs = [rng.integers(0, 4, size=(9, 11)).astype(np.int32), (np.arange(99).reshape(9, 11) % 3).astype(np.int32)]
    units, region_of_unit = common_refinement(segs, min_unit_size=0)
    pairs = np.stack([segs[0].ravel(), segs[1].ravel()], 1)
    assert core.unit_count(units) == np.unique(pairs, axis=0).shape[0]
    for seg, unit_region in zip(segs, region_of_unit):
        # Every unit lies in one region, and regions map back exactly (up to renumbering).
        remapped = unit_region[units]
        for region in np.unique(seg):
            assert len(np.unique(remapped[seg == region])) == 1
        assert len(np.unique(remapped)) == len(np.unique(seg))


def test_sliver_folding_bounds_unit_size_and_keeps_a_partition():
    from boxsup_ext.proposals.selective_search import common_refinement

    a = np.zeros((30, 40), np.int32)
    a[:, 20:] = 1
    b = np.zeros((30, 40), np.int32)
    b[:, 21:] = 1  # one column apart: a 30-pixel sliver
    b[10:12, 5:7] = 2  # a 4-pixel speck
    exact, _ = common_refinement([a, b], min_unit_size=0)
    assert core.unit_count(exact) == 4
    units, region_of_unit = common_refinement([a, b], min_unit_size=31)
    assert core.unit_count(units) == 2
    assert np.bincount(units.ravel()).min() >= 31
    assert region_of_unit.shape == (2, 2) and region_of_unit.max() <= 1


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 7, 3), (5, 1, 3), (20, 20, 3)])
def test_flat_and_tiny_images_give_the_whole_image(shape):
    units, members, scores = get_method("selective_search")(np.full(shape, 9, np.uint8), None)
    assert members.shape[0] == 1 and scores.tolist() == [1.0]
    assert core.unpack_masks(units, members)[0].all()


@pytest.mark.parametrize("name", ["rectangles", "grabcut"])
def test_box_methods_without_boxes_give_no_candidates(name):
    units, members, scores = get_method(name).run(np.zeros((10, 12, 3), np.uint8), np.zeros((0, 4)), "x")
    assert units.shape == (10, 12) and members.shape == (0, 1) and scores.shape == (0,)
