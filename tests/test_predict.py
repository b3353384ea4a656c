from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from boxsup_ext import predict
from boxsup_ext.data import load_label_png
from boxsup_ext.evaluation.crf import CRFParams
from boxsup_ext.evaluation.evaluator import InferenceSettings, load_predictor
from boxsup_ext.utils import InputError
from test_eval_cli import _checkpoint  # the same small untrained tiny_fcn checkpoint


def _image(path, seed, size=(20, 28)):
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, size=size + (3,), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return array


def test_predict_files_and_folders_skipping_unreadable(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "model.pt", 4)
    first = _image(tmp_path / "in" / "a.png", 0)
    _image(tmp_path / "in" / "sub" / "b.jpg", 1, size=(16, 12))
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png at all")
    single = _image(tmp_path / "one" / "a.png", 2)  # same stem as in/a.png: gets a suffix
    out = tmp_path / "out"
    status = predict.main(["--checkpoint", str(ckpt), str(tmp_path / "in"), str(tmp_path / "one" / "a.png"),
                           "--out", str(out), "--flip", "--crf", "--crf-params", "iterations=2"])
    captured = capsys.readouterr()
    assert status == 1
    assert "broken.png" in captured.err and "skipped 1 unreadable" in captured.out
    assert sorted(p.name for p in out.iterdir()) == [
        ".boxsup-outputs.json", "a.png", "a_2.png", "a_2_overlay.png", "a_overlay.png", "sub__b.png", "sub__b_overlay.png"]

    predictor, _ = load_predictor(ckpt, InferenceSettings(flip=True, crf=CRFParams(iterations=2)), "cpu")
    label = load_label_png(out / "a.png")
    assert label.shape == (20, 28) and label.max() < 4
    assert load_label_png(out / "sub__b.png").shape == (16, 12)
    with Image.open(out / "a_2_overlay.png") as overlay:
        assert overlay.size == (56, 20)
        pixels = np.asarray(overlay.convert("RGB"))
    np.testing.assert_array_equal(pixels[:, :28], single)
    # Background pixels are left as the image; labelled pixels are tinted.
    right, second_label = pixels[:, 28:], load_label_png(out / "a_2.png")
    np.testing.assert_array_equal(right[second_label == 0], single[second_label == 0])
    np.testing.assert_array_equal(predictor.labels([first])[0], label)


def test_overlay_blend_by_hand():
    image = np.full((2, 2, 3), 100, np.uint8)
    label = np.array([[0, 1], [2, 0]], np.uint8)  # VOC: 1 = (128, 0, 0), 2 = (0, 128, 0)
    out = predict.overlay_image(image, label, alpha=0.5)
    assert out.shape == (2, 4, 3)
    np.testing.assert_array_equal(out[0, 3], [114, 50, 50])
    np.testing.assert_array_equal(out[1, 2], [50, 114, 50])
    np.testing.assert_array_equal(out[0, 2], [100, 100, 100])


def test_missing_input_and_empty_folder(tmp_path):
    ckpt = _checkpoint(tmp_path / "model.pt", 3)
    with pytest.raises(InputError, match="does not exist"):
        predict.main(["--checkpoint", str(ckpt), str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "o")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        predict.main(["--checkpoint", str(ckpt), str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
