from __future__ import annotations

import numpy as np
import pytest
import torch

from boxsup_ext.metrics import confusion_matrix, miou_from_confusion
from boxsup_ext.utils import InputError


def test_confusion_counts_and_ignore():
    gt = np.array([[0, 1, 1], [2, 255, 2]])
    pred = np.array([[0, 1, 2], [2, 0, 9]])
    cm = confusion_matrix(pred, gt, 3)
    assert cm.dtype == np.int64 and cm.sum() == 5
    assert cm[0, 0] == 1 and cm[1, 1] == 1 and cm[1, 2] == 1 and cm[2, 2] == 1
    assert cm[2, 0] == 1  # the out-of-range prediction 9 counts as wrong
    assert np.array_equal(confusion_matrix(torch.from_numpy(pred), torch.from_numpy(gt), 3), cm)


def test_miou_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, (50, 40))
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = rng.integers(0, 4, (50, 40))
    miou, per_class, acc = miou_from_confusion(confusion_matrix(pred, gt, 5))
    valid = gt != 255
    expected = []
    for c in range(4):
        inter = ((pred == c) & (gt == c) & valid).sum()
        union = (((pred == c) | (gt == c)) & valid).sum()
        expected.append(inter / union)
        assert per_class[c] == pytest.approx(inter / union)
    assert np.isnan(per_class[4])  # class 4 absent from truth and prediction: left out
    assert miou == pytest.approx(np.mean(expected))
    assert acc == pytest.approx(((pred == gt) & valid).sum() / valid.sum())
    perfect = miou_from_confusion(confusion_matrix(gt, gt, 5))
    assert perfect[0] == 1.0 and perfect[2] == 1.0


def test_metric_errors():
    with pytest.raises(InputError, match="same shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 3)
    with pytest.raises(InputError, match="square"):
        miou_from_confusion(np.zeros((2, 3)))
    assert np.isnan(miou_from_confusion(np.zeros((3, 3), np.int64))[0])
