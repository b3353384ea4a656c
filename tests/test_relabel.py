from __future__ import annotations

import numpy as np
import pytest
import torch

from boxsup_ext import core, reference
from boxsup_ext.core import IGNORE_LABEL, paint_instances
from boxsup_ext.models import build_model
from boxsup_ext.relabel import (
    RelabelInput,
    RelabelSettings,
    assignment_cost,
    image_generator,
    relabel_batch,
    sample_topk,
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
    item = RelabelInput("im", image, units.numpy().astype(np.int32), members.numpy(), boxes, labels)
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
