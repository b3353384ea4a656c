from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from boxsup_ext.evaluation.evaluator import (
    ConfusionAccumulator,
    InferenceSettings,
    LabelPredictor,
    format_results_table,
)
from boxsup_ext.evaluation.trimap import trimap_bands

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def test_miou_matches_hand_computed_confusion():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [0, 0, 1, 2], [2, 0, 1, 0]], np.uint8)
    acc = ConfusionAccumulator(3)
    acc.add(pred, gt)
    # rows = truth, cols = prediction; the two ignore pixels are not counted.
    expected_cm = [[3, 1, 0], [0, 3, 1], [1, 0, 1]]
    res = acc.results(["background", "a", "b"])
    assert res["confusion_matrix"] == expected_cm
    iou = {"background": 3 / (4 + 4 - 3), "a": 3 / (4 + 4 - 3), "b": 1 / (2 + 2 - 1)}
    for name, value in iou.items():
        assert res["per_class_iou"][name] == pytest.approx(value)
    assert res["miou"] == pytest.approx(np.mean(list(iou.values())))
    assert res["pixel_accuracy"] == pytest.approx(7 / 10)
    assert res["num_images"] == 1 and res["num_pixels"] == 10
    table = format_results_table(res)
    assert "mean IoU" in table and f"{100 * np.mean(list(iou.values())):6.2f}" in table


def test_miou_matches_independent_set_computation_on_random_maps():
    rng = np.random.default_rng(3)
    num_classes = 5
    acc = ConfusionAccumulator(num_classes)
    inter = np.zeros(num_classes)
    union = np.zeros(num_classes)
    correct = total = 0
    for _ in range(3):
        shape = tuple(rng.integers(4, 20, size=2))
        gt = rng.integers(0, num_classes, size=shape).astype(np.uint8)
        gt[rng.random(shape) < 0.1] = 255
        pred = np.where(rng.random(shape) < 0.6, gt, rng.integers(0, num_classes, size=shape)).astype(np.uint8)
        pred[pred == 255] = 0
        acc.add(pred, gt)
        valid = gt != 255
        for c in range(num_classes):
            inter[c] += np.sum((pred == c) & (gt == c) & valid)
            union[c] += np.sum(((pred == c) | (gt == c)) & valid)
        correct += np.sum((pred == gt) & valid)
        total += valid.sum()
    res = acc.results()
    assert res["miou"] == pytest.approx(np.mean(inter / union))
    assert res["pixel_accuracy"] == pytest.approx(correct / total)
    assert [res["per_class_iou"][str(c)] for c in range(num_classes)] == pytest.approx(list(inter / union))


def test_trimap_boundary_and_interior_split_the_pixels():
    gt = np.zeros((12, 12), np.uint8)
    gt[3:9, 3:9] = 1
    pred = np.zeros_like(gt)
    pred[4:10, 4:10] = 1  # shifted by one pixel: errors only near the boundary
    acc = ConfusionAccumulator(2, trimap_widths=(1, 3))
    acc.add(pred, gt)
    res = acc.results()
    trimap = res["trimap"]
    assert trimap["widths"] == [1, 3]
    assert trimap["boundary_pixels"] == [int(band.sum()) for band in trimap_bands(gt, [1, 3])]
    assert acc.boundary[0].sum() + acc.interior[0].sum() == acc.total.sum()
    np.testing.assert_array_equal(acc.boundary[1] + acc.interior[1], acc.total)
    # The interior at width 3 is far from the boundary and entirely correct; the band is not.
    assert trimap["interior_miou"][1] == pytest.approx(1.0)
    assert trimap["boundary_miou"][0] < trimap["boundary_miou"][1] < 1.0


class ChannelArgmax(nn.Module):
    """Logits are the normalised RGB channels, upsampled from stride 1: class = brightest channel."""

    def forward(self, x):
        return x * 3.0


@pytest.mark.parametrize("flip,scales", [(False, (1.0,)), (True, (1.0,))])
def test_predictor_labels_follow_the_model(flip, scales):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(7, 9, 3), dtype=np.uint8) for _ in range(3)]
    images.append(rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8))
    predictor = LabelPredictor(ChannelArgmax(), MEAN, STD, InferenceSettings(scales=scales, flip=flip, batch_size=2), "cpu")
    labels = predictor.labels(images)
    for image, label in zip(images, labels):
        assert label.dtype == np.uint8 and label.shape == image.shape[:2]
        np.testing.assert_array_equal(label, image.argmax(2))
    probs = predictor.probabilities(images[:1])[0]
    expected = torch.softmax(torch.from_numpy((images[0] / 255.0 - 0.5) / 0.25 * 3.0).permute(2, 0, 1).float(), 0)
    np.testing.assert_allclose(probs, expected.numpy(), atol=1e-5)
