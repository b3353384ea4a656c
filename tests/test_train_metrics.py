from __future__ import annotations

import numpy as np
import pytest
import torch

from boxsup_ext.evaluation.metrics import confusion_matrix, ignored_prediction_counts, miou_from_confusion
from boxsup_ext.utils import InputError


def test_confusion_counts_and_ignore():
    gt = np.array([[0, 1, 1], [2, 255, 2]])
    pred = np.array([[0, 1, 2], [2, 0, 0]])
    cm = confusion_matrix(pred, gt, 3)
    assert cm.dtype == np.int64 and cm.sum() == 5
    assert cm[0, 0] == 1 and cm[1, 1] == 1 and cm[1, 2] == 1 and cm[2, 2] == 1 and cm[2, 0] == 1
    assert np.array_equal(confusion_matrix(torch.from_numpy(pred), torch.from_numpy(gt), 3), cm)


def test_ignore_in_a_label_map_is_no_prediction_and_creates_no_class():
    # An estimated label map (the trainer's label_miou) leaves undecided pixels as 255. Those pixels
    # are not predictions: before, each was recorded as class (g + 1) % C, so a class present in
    # neither map entered the mean with IoU 0 (here classes 2 and 3: 0.5 instead of 1.0).
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [255, 255, 1, 1]])
    label = np.array([[0, 0, 1, 1], [0, 255, 255, 1], [255, 0, 1, 255]])
    cm = confusion_matrix(label, gt, 5)
    assert cm.sum() == 7 and cm[0, 0] == 3 and cm[1, 1] == 4
    miou, per_class, acc = miou_from_confusion(cm)
    assert miou == 1.0 and acc == 1.0
    assert np.isnan(per_class[2:]).all()  # absent from both maps: no phantom class
    ignored, scored = ignored_prediction_counts(label, gt, 5)
    assert (ignored, scored) == (3, 10)  # the share the mean does not judge, reported on its own
    assert ignored_prediction_counts(torch.from_numpy(label), torch.from_numpy(gt), 5).tolist() == [3, 10]


def test_a_wrong_prediction_never_creates_a_class():
    gt = np.array([[0, 1], [1, 2]])
    wrong = np.array([[1, 1], [1, 2]])  # a wrong in-range prediction: an error of classes 0 and 1 only
    per_class = miou_from_confusion(confusion_matrix(wrong, gt, 4))[1]
    assert per_class[0] == 0.0 and per_class[1] == pytest.approx(2 / 3) and per_class[2] == 1.0
    assert np.isnan(per_class[3])
    for value in (9, -1):  # names no class: an error, not a made-up class
        with pytest.raises(InputError, match=rf"pred holds \[{value}\] at 1 pixel\(s\): not a class in \[0, 4\)"):
            confusion_matrix(np.array([[0, 1], [1, value]]), gt, 4)


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
