from __future__ import annotations

import numpy as np
import pytest
import torch

from boxsup_ext import core, reference
from boxsup_ext import relabel as relabel_module
from boxsup_ext.core import IGNORE_LABEL, paint_instances
from boxsup_ext.models import build_model
from boxsup_ext.relabel import (
    RelabelInput,
    RelabelSettings,
    assignment_cost,
    cheapest,
    draw_among,
    image_generator,
    relabel_batch,
)


def make_candidates(height=24, width=20):
    """Units/members for: 0 = left half, 1 = the 6x6 square at (2..8, 2..8), 2 = whole image,
    3 = empty (a unit that no pixel has)."""
    masks = torch.zeros(4, height, width, dtype=torch.bool)
    masks[0, :, : width // 2] = True
    masks[1, 2:8, 2:8] = True
    masks[2] = True
    units, members = (torch.from_numpy(array) for array in core.masks_to_units(masks[:3].numpy()))
    extra_unit = int(units.max()) + 1
    empty = torch.zeros(1, members.shape[1], dtype=torch.int64)
    if extra_unit >= 64 * members.shape[1]:
        members = torch.cat([members, torch.zeros(members.shape[0], 1, dtype=torch.int64)], 1)
        empty = torch.zeros(1, members.shape[1], dtype=torch.int64)
    empty[0, extra_unit // 64] = 1 << (extra_unit % 64)
    return units, torch.cat([members, empty])


def test_cost_formula_and_empty_candidates():
    units, members = make_candidates()
    logits = torch.randn(3, *units.shape)
    boxes = torch.tensor([[2.0, 2.0, 8.0, 8.0], [0.0, 0.0, 10.0, 24.0]])
    labels = torch.tensor([1, 2])
    costs = reference.proposal_costs(units, members, logits, boxes, labels)
    cost = assignment_cost(costs, lam=3.0, iou="box")
    expected = (1 - costs.iou_box) + 3.0 * costs.mean_ce
    assert torch.allclose(cost[:3], expected[:3])
    assert torch.isinf(cost[3]).all()
    mask_cost = assignment_cost(costs, lam=0.0, iou="mask")
    assert torch.allclose(mask_cost[:3], 1 - costs.iou_mask[:3]) and torch.isinf(mask_cost[3]).all()
    # box 0 matches candidate 1 exactly, box 1 candidate 0
    assert cost[1, 0] - 3 * costs.mean_ce[1, 0] == pytest.approx(0.0)
    assert cost[0, 1] - 3 * costs.mean_ce[0, 1] == pytest.approx(0.0)


def sample_topk(cost: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """What relabel_batch draws for each box: uniformly among its ``k`` cheapest finite candidates."""
    return draw_among(*cheapest(cost, k), k, generator)


def test_sample_topk_greedy_and_uniform():
    cost = torch.tensor([[0.5, 3.0], [0.1, float("inf")], [0.3, 1.0], [0.2, float("inf")], [0.9, 2.0]])
    greedy = sample_topk(cost, 1, image_generator(0, 1, "a"))
    assert greedy.tolist() == [1, 2]
    counts = {0: {}, 1: {}}
    for draw in range(400):
        chosen = sample_topk(cost, 3, image_generator(draw, 1, "a"))
        for j in (0, 1):
            counts[j][int(chosen[j])] = counts[j].get(int(chosen[j]), 0) + 1
    assert set(counts[0]) == {1, 3, 2}  # the three cheapest of box 0
    assert set(counts[1]) == {2, 4, 0}  # box 1 has exactly three finite candidates
    assert all(60 < c < 210 for c in counts[0].values())  # roughly uniform (expected ~133)
    none = sample_topk(torch.full((3, 1), float("inf")), 5, image_generator(0, 1, "a"))
    assert none.tolist() == [-1]
    assert sample_topk(torch.zeros(0, 2), 5, image_generator(0, 1, "a")).tolist() == [-1, -1]


def test_sampling_is_seeded_by_seed_epoch_image_only():
    cost = torch.rand(50, 4)
    a = sample_topk(cost, 5, image_generator(3, 2, "img_1"))
    assert torch.equal(a, sample_topk(cost, 5, image_generator(3, 2, "img_1")))
    others = [sample_topk(cost, 5, image_generator(*key)) for key in [(4, 2, "img_1"), (3, 3, "img_1"), (3, 2, "img_2")]]
    assert any(not torch.equal(a, o) for o in others)
    # ties rank by candidate index, so the greedy choice is well defined
    assert sample_topk(torch.ones(6, 2), 1, image_generator(0, 0, "x")).tolist() == [0, 0]


def test_unassigned_boxes_are_ignored_by_the_paint_op_and_paint_instances():
    from boxsup_ext import ops

    corner = torch.zeros(6, 8, dtype=torch.bool)
    corner[0, 0] = True
    units, members = ops.masks_to_units(corner[None])
    boxes = torch.tensor([[0, 0, 8, 6], [0, 0, 2.4, 2], [4, 4, 8, 6]], dtype=torch.float32)
    # box 0 paints the corner pixel; box 1 has no candidate; box 2 has one, so its rectangle stays 0
    label = ops.paint_labels(units, members, torch.tensor([0, -1, -1]), torch.tensor([3, 1, 2]), boxes,
                             clip=False, unassigned=IGNORE_LABEL)
    label2 = ops.paint_labels(units, members, torch.tensor([0, -1, 0]), torch.tensor([3, 1, 2]), boxes,
                              clip=True, unassigned=IGNORE_LABEL)
    for got in (label, label2):
        assert got[0, 0] == 3 and (got[:2, :2][got[:2, :2] != 3] == IGNORE_LABEL).all()
        assert got[:, 2:][got[:, 2:] != IGNORE_LABEL].max() == 0 and got[2:, :2].max() == 0  # 2.4: x = 2 is out
    assert (label[4:, 4:] == IGNORE_LABEL).all() and (label2[4:, 4:] == 0).all()
    assert torch.equal(label, reference.paint_labels(units, members, torch.tensor([0, -1, -1]), torch.tensor([3, 1, 2]),
                                                     boxes, clip=False, unassigned=IGNORE_LABEL))
    masks = np.zeros((2, 4, 4), bool)
    masks[0] = True
    masks[1, 1:3, 1:3] = True
    painted = paint_instances(masks, np.array([1, 2]), 4, 4)
    assert painted[1, 1] == 2 and painted[0, 0] == 1


def test_relabel_batch_matches_the_definition():
    torch.manual_seed(0)
    model = build_model("tiny_fcn", 3, width=4).eval()
    units, members = make_candidates()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (*units.shape, 3), dtype=np.uint8)
    boxes = np.array([[2, 2, 8, 8], [0, 0, 10, 24], [5, 5, 6, 6]], np.float32)
    labels = np.array([1, 2, 1])
    item = RelabelInput("im", image, core.Candidates(units.numpy(), members.numpy()), boxes, labels)
    settings = RelabelSettings(lam=3.0, topk=1, iou="box")
    (result,) = relabel_batch(model, [item], settings, seed=0, epoch=1, device=torch.device("cpu"))
    # recompute with the reference from the same logits
    from boxsup_ext.models import image_to_tensor, predict_logits

    logits = predict_logits(model, image_to_tensor(image))
    costs = reference.proposal_costs(units, members, logits, torch.from_numpy(boxes), torch.from_numpy(labels))
    cost = assignment_cost(costs, 3.0)
    assert result.chosen.tolist() == cost.argmin(0).tolist()
    expected = reference.paint_labels(units, members, torch.from_numpy(result.chosen), torch.from_numpy(labels))
    assert np.array_equal(result.label, expected.numpy())
    assert result.label.dtype == np.uint8 and result.label.shape == units.shape
    np.testing.assert_allclose(result.cost, cost.min(0).values.numpy(), rtol=1e-5)
    # top-k results do not depend on the batch they are relabeled in
    settings5 = RelabelSettings(topk=5)
    alone = relabel_batch(model, [item], settings5, 7, 2, torch.device("cpu"))[0]
    other = item._replace(image_id="other")
    together = relabel_batch(model, [other, item], settings5, 7, 2, torch.device("cpu"))[1]
    assert np.array_equal(alone.chosen, together.chosen) and np.array_equal(alone.label, together.label)


def test_min_iou_leaves_out_poorly_overlapping_candidates():
    units, members = make_candidates()
    costs = reference.proposal_costs(units, members, torch.zeros(3, *units.shape),
                                     torch.tensor([[2.0, 2.0, 8.0, 8.0]]), torch.tensor([1]))
    cost = assignment_cost(costs, lam=3.0, iou="box", min_iou=0.5)
    keep = costs.iou_box[:, 0] >= 0.5
    assert torch.isfinite(cost[keep, 0]).all() and torch.isinf(cost[~keep, 0]).all()
    assert keep.sum() == 1  # only the exact square survives; then it is the only choice
    assert sample_topk(cost, 5, image_generator(0, 1, "x")).tolist() == [1]


# ----------------------------------------------------------------------------------------------
# relabel.agreement, relabel.keep_previous, relabel.greedy_from_epoch


def test_consensus_ignores_the_pixels_the_cheapest_candidates_disagree_on():
    # candidates on a 1 x 8 strip: 0 covers columns 0-3, 1 columns 0-5, 2 columns 0-1, 3 columns 6-7
    masks = np.zeros((4, 1, 8), bool)
    masks[0, 0, :4] = masks[1, 0, :6] = masks[2, 0, :2] = masks[3, 0, 6:] = True
    units, members = core.masks_to_units(masks)
    candidates = core.Candidates(units, members)
    boxes = np.array([[0.0, 0.0, 7.0, 1.0]], np.float32)  # columns 0-6; column 7 is outside
    labels = np.array([2])
    painted = reference.paint_labels(torch.from_numpy(units), torch.from_numpy(members), torch.tensor([0]),
                                     torch.from_numpy(labels)).numpy()
    assert painted.tolist() == [[2, 2, 2, 2, 0, 0, 0, 0]]
    cost = torch.tensor([[0.1], [0.2], [0.3], [0.9]])
    order, counts = relabel_module.cheapest(cost, 3)  # candidates 0, 1, 2 vote
    assert order.tolist() == [[0, 1, 2]] and counts.tolist() == [3]
    out = relabel_module.consensus_ignore(painted, candidates, boxes, labels, order, counts, agreement=2 / 3)
    # columns 0-1: 3 of 3 cover; 2-3: 2 of 3 cover (painted 2, agreement met); 4-5: 1 of 3 cover, so
    # 2 of 3 leave them out (painted 0, met); 6: none cover; 7: outside the box, untouched
    assert out.tolist() == painted.tolist()
    strict = relabel_module.consensus_ignore(painted, candidates, boxes, labels, order, counts, agreement=0.9)
    assert strict.tolist() == [[2, 2, IGNORE_LABEL, IGNORE_LABEL, IGNORE_LABEL, IGNORE_LABEL, 0, 0]]
    # fewer finite candidates than k: only the finite ones vote; off (0) returns the labels unchanged
    finite_only = torch.tensor([[0.1], [float("inf")], [float("inf")], [0.9]])
    order, counts = relabel_module.cheapest(finite_only, 3)
    assert counts.tolist() == [2]
    two = relabel_module.consensus_ignore(painted, candidates, boxes, labels, order, counts, agreement=0.9)
    # candidates 0 and 3 vote: each covered pixel has one vote of two
    assert two.tolist() == [[IGNORE_LABEL] * 4 + [0, 0, IGNORE_LABEL, 0]]
    assert relabel_module.consensus_ignore(painted, candidates, boxes, labels, order, counts, 0.0) is painted


def test_keep_previous_keeps_a_choice_unless_the_new_one_is_cheaper_by_the_margin():
    cost = torch.tensor([[0.50, 0.3], [0.40, float("inf")], [0.30, 0.25]])
    drawn = torch.tensor([2, 2])
    # box 0: new 0.30 against kept 0.50 (cheaper by 0.2 > 0.1): replaced; box 1: 0.25 against 0.3 (0.05): kept
    assert relabel_module.keep_previous(cost, drawn, np.array([0, 0]), 0.1).tolist() == [2, 0]
    assert relabel_module.keep_previous(cost, drawn, np.array([0, 0]), 0.25).tolist() == [0, 0]
    # an excluded (+inf), missing or out-of-range previous choice is not kept; off or no history: unchanged
    assert relabel_module.keep_previous(cost, drawn, np.array([-1, 1]), 1.0).tolist() == [2, 2]
    assert relabel_module.keep_previous(cost, drawn, np.array([7, 0]), 1.0).tolist() == [2, 0]
    assert relabel_module.keep_previous(cost, drawn, None, 1.0) is drawn
    assert relabel_module.keep_previous(cost, drawn, np.array([0, 0]), None) is drawn
    assert relabel_module.keep_previous(cost, drawn, np.array([0]), 1.0) is drawn  # boxes changed


def test_new_relabel_keys_reach_the_settings_and_are_checked():
    from boxsup_ext.config import load_config
    from boxsup_ext.utils import InputError

    config = load_config(None, ["relabel.topk=4", "relabel.greedy_from_epoch=3", "relabel.agreement=0.75",
                                "relabel.keep_previous=true", "relabel.keep_margin=0.2"])
    early, late = (RelabelSettings.from_config(config.relabel, "boxsup", e) for e in (2, 3))
    assert (early.topk, late.topk) == (4, 1)
    assert late.consensus_k == 4 and late.agreement == 0.75 and late.keep_margin == 0.2
    assert RelabelSettings.from_config(load_config(None, []).relabel, "boxsup", 1).keep_margin is None
    baseline = RelabelSettings.from_config(config.relabel, "rectangles", 5)
    assert baseline.agreement == 0.0 and baseline.keep_margin is None  # the fixed baselines stay as they are
    for bad in ("relabel.agreement=1.5", "relabel.greedy_from_epoch=-1", "relabel.keep_margin=-0.1"):
        with pytest.raises(InputError, match=bad.split("=")[0]):
            load_config(None, [bad])


def test_relabel_batch_applies_consensus_and_keeps_previous_choices():
    torch.manual_seed(0)
    model = build_model("tiny_fcn", 3, width=4).eval()
    units, members = make_candidates()
    image = np.random.default_rng(1).integers(0, 255, (*units.shape, 3), dtype=np.uint8)
    boxes = np.array([[0, 0, 12, 24]], np.float32)
    item = RelabelInput("im", image, core.Candidates(units.numpy(), members.numpy()), boxes, np.array([1]))
    cpu = torch.device("cpu")
    plain = relabel_batch(model, [item], RelabelSettings(lam=0.0, topk=3), 0, 1, cpu)[0]
    voted = relabel_batch(model, [item], RelabelSettings(lam=0.0, topk=3, agreement=1.0, consensus_k=3), 0, 1, cpu)[0]
    assert np.array_equal(plain.chosen, voted.chosen)
    changed = plain.label != voted.label
    assert changed.any() and (voted.label[changed] == IGNORE_LABEL).all()
    other = (int(plain.chosen[0]) + 1) % 3
    kept = relabel_batch(model, [item._replace(previous=np.array([other]))],
                         RelabelSettings(lam=0.0, topk=3, keep_margin=10.0), 0, 1, cpu)[0]
    assert kept.chosen.tolist() == [other]


def test_consensus_judges_a_pixel_by_the_boxes_of_its_own_class():
    # two objects of one class on a 1 x 10 strip: object A at columns 0-5 (box 0: 0-6), object B at
    # columns 5-9 (box 1: 4-10); B lies on top at column 5. A pixel of B inside box 0 is painted with
    # the class by B's segment: box 0's candidates do not cover it, box 1's do, so it is certain.
    masks = np.zeros((2, 1, 10), bool)
    masks[0, 0, :6] = masks[1, 0, 5:] = True
    candidates = core.Candidates(*core.masks_to_units(masks))
    boxes = np.array([[0.0, 0.0, 6.0, 1.0], [4.0, 0.0, 10.0, 1.0]], np.float32)
    labels = np.array([3, 3])
    painted = np.full((1, 10), 3, np.uint8)
    order, counts = torch.tensor([[0], [1]]), torch.tensor([1, 1])
    out = relabel_module.consensus_ignore(painted, candidates, boxes, labels, order, counts, agreement=1.0)
    assert out.tolist() == painted.tolist()
    # a pixel painted with another class inside box 0 that box 0's candidates cover stays uncertain
    other = painted.copy()
    other[0, 2] = 1
    assert relabel_module.consensus_ignore(other, candidates, boxes, labels, order, counts, 1.0)[0, 2] == IGNORE_LABEL
