from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pydensecrf.densecrf")

from boxsup_ext.evaluation.crf import CRFParams, dense_crf, dense_crf_many  # noqa: E402
from boxsup_ext.utils import InputError  # noqa: E402


def _edge_scene(seed: int = 0):
    """A 32x40 image, dark left of column 22 and bright from it on, and a noisy two-class
    prediction whose boundary is misplaced at column 16 with random flips."""
    rng = np.random.default_rng(seed)
    height, width, edge, wrong_edge = 32, 40, 22, 16
    image = np.full((height, width, 3), 40, np.uint8)
    image[:, edge:] = 210
    image = np.clip(image.astype(int) + rng.integers(-6, 7, image.shape), 0, 255).astype(np.uint8)
    truth = np.zeros((height, width), np.int64)
    truth[:, edge:] = 1
    p1 = np.where(np.arange(width)[None, :] >= wrong_edge, 0.7, 0.3) * np.ones((height, 1))
    flips = rng.random((height, width)) < 0.15
    p1 = np.where(flips, 1.0 - p1, p1)
    probs = np.stack([1.0 - p1, p1]).astype(np.float32)
    return image, probs, truth


def test_crf_moves_prediction_to_image_edge():
    image, probs, truth = _edge_scene()
    before = (probs.argmax(0) == truth).mean()
    refined = dense_crf(image, probs, CRFParams(bi_xy_std=30, bi_rgb_std=10, bi_w=6))
    after = (refined.argmax(0) == truth).mean()
    assert refined.shape == probs.shape and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-4)
    assert before < 0.8
    assert after > 0.97, (before, after)
    # The flipped speckles away from the edge are cleaned up by the smoothness kernel too.
    assert (refined.argmax(0)[:, :14] == 0).mean() > 0.98


def test_default_params_are_deeplab_and_parallel_matches_serial():
    params = CRFParams()
    assert (params.bi_w, params.bi_xy_std, params.bi_rgb_std, params.pos_w, params.pos_xy_std) == (4, 121, 5, 3, 3)
    scenes = [_edge_scene(seed) for seed in range(2)]
    serial = dense_crf_many([s[0] for s in scenes], [s[1] for s in scenes], params, workers=1)
    parallel = dense_crf_many([s[0] for s in scenes], [s[1] for s in scenes], params, workers=2)
    for a, b in zip(serial, parallel):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # Decoded images are often read-only; the CRF must accept them unchanged.
    image, probs, _ = scenes[0]
    image.setflags(write=False)
    np.testing.assert_allclose(dense_crf(image, probs, params), serial[0], atol=1e-6)


def test_params_parsing_and_bad_inputs():
    assert CRFParams.from_string("bi_w=5, iterations=3") == CRFParams(bi_w=5.0, iterations=3)
    with pytest.raises(InputError, match="NAME=VALUE"):
        CRFParams.from_string("bogus=1")
    with pytest.raises(InputError, match="bi_rgb_std"):
        CRFParams(bi_rgb_std=0)
    with pytest.raises(InputError, match=r"uint8 \[H, W, 3\]"):
        dense_crf(np.zeros((4, 4, 3), np.float32), np.full((2, 4, 4), 0.5, np.float32))
    with pytest.raises(InputError, match="matching the image"):
        dense_crf(np.zeros((4, 4, 3), np.uint8), np.full((2, 4, 5), 0.5, np.float32))
