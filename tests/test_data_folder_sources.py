"""Generic folder format (derived and listed boxes) and unions of sources with mask/box/semi supervision."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from boxsup_ext.config import SourceConfig
from boxsup_ext.data import open_dataset, open_training_set, save_label_png
from boxsup_ext.data.synthetic import generate
from boxsup_ext.utils import InputError


def write_folder(root: Path) -> Path:
    """Images p (derived boxes: two 'wall' blobs and a 'sky' region) and q (boxes file)."""
    for sub in ("images", "labels", "splits", "boxes"):
        (root / sub).mkdir(parents=True)
    (root / "classes.txt").write_text("background\nsky\nwall\n")
    (root / "splits" / "train.txt").write_text("p\nq\n")
    for image_id, suffix in (("p", ".png"), ("q", ".jpg")):
        Image.fromarray(np.full((24, 32, 3), 50, np.uint8)).save(root / "images" / f"{image_id}{suffix}")
    label = np.zeros((24, 32), np.uint8)
    label[0:6, :] = 1
    label[10:20, 2:8] = 2
    label[12:22, 20:30] = 2
    label[23, 0:2] = 2  # a 2-pixel speck, under min_component_area
    label[8, 8:12] = 255
    save_label_png(root / "labels" / "p.png", label)
    save_label_png(root / "labels" / "q.png", label)
    (root / "boxes" / "q.json").write_text(json.dumps({"boxes": [[1, 2, 40, 9]], "labels": ["wall"], "difficult": [True]}))
    return root


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "context")


def test_folder_derives_boxes_from_components(folder):
    dataset = open_dataset(folder, "train", kind="folder")
    assert dataset.class_names == ["background", "sky", "wall"] and len(dataset) == 2
    p, q = dataset
    np.testing.assert_array_equal(p.boxes, [[0, 0, 32, 6], [2, 10, 8, 20], [20, 12, 30, 22]])
    np.testing.assert_array_equal(p.labels, [1, 2, 2])
    masks, labels = dataset.load_instances(0)
    assert masks.shape == (3, 24, 32) and [m.sum() for m in masks] == [192, 60, 100]
    np.testing.assert_array_equal(labels, p.labels)
    np.testing.assert_array_equal(q.boxes, [[1, 2, 32, 9]])  # listed box, clipped
    assert q.difficult.tolist() == [True] and dataset.load_instances(1) is None
    assert dataset.load_class_map(1)[8, 9] == 255 and {r.supervision for r in dataset} == {"mask"}
    assert dataset.load_image(0).shape == (24, 32, 3)


def test_folder_broken_inputs(folder):
    save_label_png(folder / "labels" / "p.png", np.zeros((25, 32), np.uint8))
    with pytest.raises(InputError, match="p.png: mask is 32x25 but the image is 32x24"):
        open_dataset(folder, "train", kind="folder")
    save_label_png(folder / "labels" / "p.png", np.zeros((24, 32), np.uint8))
    with pytest.raises(InputError, match="p.png: class map has no object of at least 16 pixels"):
        open_dataset(folder, "train", kind="folder")
    (folder / "boxes" / "q.json").write_text(json.dumps({"boxes": [[1, 2, 4, 9]], "labels": ["door"]}))
    skipped = open_dataset(folder, "train", kind="folder", skip_bad=True)
    assert len(skipped) == 0 and len(skipped.problems) == 3
    assert "q.json: object 0 has unknown class 'door'" in skipped.problems[1]
    (folder / "classes.txt").unlink()
    with pytest.raises(InputError, match="classes.txt: missing"):
        open_dataset(folder, "train", kind="folder")


@pytest.fixture(scope="module")
def two_synthetic(tmp_path_factory):
    base = tmp_path_factory.mktemp("union")
    return generate(base / "a", 6, 2, seed=1, height=48, width=48), generate(base / "b", 6, 2, seed=2, height=48, width=48)


def test_training_set_semi_supervision(two_synthetic, tmp_path):
    first, _ = two_synthetic
    mask_list = tmp_path / "masked.txt"
    mask_list.write_text("train_000000\ntrain_000003\n")
    training = open_training_set(
        [
            SourceConfig(kind="synthetic", root=str(first), split="train", supervision="semi", mask_list=str(mask_list)),
            SourceConfig(kind="synthetic", root=str(first), split="val", supervision="box", limit=1),
        ]
    )
    assert len(training.images) == 7 and Counter(image.supervision for image in training.images) == {"mask": 2, "box": 5}
    assert [i.image_id for i in training.images if i.supervision == "mask"] == ["train_000000", "train_000003"]
    last = training.images[-1]
    assert (last.source, last.index, last.image_id) == (1, 0, "val_000000")
    source = open_dataset(first, "val", kind="synthetic")
    np.testing.assert_array_equal(training.datasets[last.source].load_image(last.index), source.load_image(0))
    assert training.class_names == source.class_names and training.fingerprints()[1] == source.fingerprint()
    auto = open_training_set([SourceConfig(kind="synthetic", root=str(first), split="train", supervision="auto")])
    assert Counter(image.supervision for image in auto.images) == {"mask": 6}


def test_training_set_refusals(two_synthetic, folder):
    first, second = two_synthetic
    synthetic = SourceConfig(kind="synthetic", root=str(first), split="train")
    with pytest.raises(InputError, match="image id 'train_000000' occurs in data.train.0 and data.train.1"):
        open_training_set([synthetic, SourceConfig(kind="synthetic", root=str(second), split="train")])
    with pytest.raises(InputError, match="data.train.1 has 3 classes but data.train.0 has"):
        open_training_set([synthetic, SourceConfig(kind="folder", root=str(folder), split="train")])
    with pytest.raises(InputError, match=r"data.train.0.mask_list: .* does not exist"):
        open_training_set([SourceConfig(kind="synthetic", root=str(first), split="train", supervision="semi")])
    with pytest.raises(InputError, match=r"data.train.0.root is empty"):
        open_training_set([SourceConfig(kind="synthetic", split="train")])
    with pytest.raises(InputError, match="dataset kind must be one of"):
        open_dataset(first, "train", kind="pascal")
