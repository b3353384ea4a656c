"""COCO reader: polygon / RLE masks, VOC-20 mapping vs all 80, crowds, broken inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from boxsup_ext.data import open_dataset
from boxsup_ext.data.coco import VOC_TO_COCO
from boxsup_ext.data.voc import VOC_CLASSES
from boxsup_ext.utils import InputError

H, W = 20, 30


def rle(mask: np.ndarray, compressed: bool) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    if compressed:
        return {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}
    flat = mask.astype(np.uint8).ravel(order="F")
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return {"size": [H, W], "counts": np.diff(np.concatenate([[0], changes])).tolist()}


def write_coco(root: Path) -> Path:
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    for name in ("000000000001.jpg", "000000000002.jpg", "000000000003.jpg"):
        Image.fromarray(np.full((H, W, 3), 100, np.uint8)).save(root / "val2017" / name)
    dog = np.zeros((H, W), bool)
    dog[2:8, 3:13] = True
    person = np.zeros((H, W), bool)
    person[10:20, 20:30] = True
    crowd = np.zeros((H, W), bool)
    crowd[0:4, 25:30] = True
    categories = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 62, "name": "chair"},
                  {"id": 77, "name": "cell phone"}, {"id": 5, "name": "airplane"}]  # fmt: skip
    annotations = [
        # image 1: a polygon dog, an uncompressed-RLE person, a compressed-RLE crowd person.
        {"id": 10, "image_id": 1, "category_id": 18, "bbox": [3, 2, 10, 6], "iscrowd": 0,
         "segmentation": [[3, 2, 13, 2, 13, 8, 3, 8]]},
        {"id": 11, "image_id": 1, "category_id": 1, "bbox": [20, 10, 12, 12], "iscrowd": 0, "segmentation": rle(person, False)},
        {"id": 12, "image_id": 1, "category_id": 1, "bbox": [25, 0, 5, 4], "iscrowd": 1, "segmentation": rle(crowd, True)},
        # image 2: a cell phone only (not a VOC class) and a compressed-RLE airplane.
        {"id": 20, "image_id": 2, "category_id": 77, "bbox": [1, 1, 5, 5], "iscrowd": 0, "segmentation": rle(dog, True)},
        {"id": 21, "image_id": 2, "category_id": 5, "bbox": [3, 2, 10, 6], "iscrowd": 0, "segmentation": rle(dog, True)},
        # image 3: a cell phone only.
        {"id": 30, "image_id": 3, "category_id": 77, "bbox": [1, 1, 5, 5], "iscrowd": 0, "segmentation": rle(dog, True)},
    ]  # fmt: skip
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "height": H, "width": W} for i in (1, 2, 3)]
    (root / "annotations" / "instances_val2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return root


@pytest.fixture
def coco(tmp_path):
    return write_coco(tmp_path / "coco")


def test_voc20_mapping_names():
    assert len(VOC_TO_COCO) == 20 and set(VOC_TO_COCO) == set(VOC_CLASSES[1:])
    assert VOC_TO_COCO["diningtable"] == "dining table" and VOC_TO_COCO["tvmonitor"] == "tv"


def test_voc20_records_masks_and_crowds(coco):
    dataset = open_dataset(coco, "val2017", kind="coco")
    assert dataset.class_names == list(VOC_CLASSES)
    assert [r.image_id for r in dataset] == ["000000000001", "000000000002"]  # image 3 has no VOC object
    assert dataset.num_without_objects == 1
    first, second = dataset
    np.testing.assert_array_equal(first.boxes, [[3, 2, 13, 8], [20, 10, 30, 20]])  # person box clipped
    np.testing.assert_array_equal(first.labels, [VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")])
    np.testing.assert_array_equal(second.labels, [VOC_CLASSES.index("aeroplane")])
    assert first.supervision == "mask" and first.source == "coco"
    masks, labels = dataset.load_instances(0)
    assert masks.shape == (2, H, W) and masks.dtype == bool
    assert masks[0][2:8, 3:13].all() and masks[0].sum() >= 60  # polygon covers the rectangle
    assert masks[1].sum() == 100 and masks[1][10:20, 20:30].all()  # uncompressed RLE
    class_map = dataset.load_class_map(0)
    assert class_map[5, 5] == VOC_CLASSES.index("dog") and class_map[15, 25] == VOC_CLASSES.index("person")
    assert (class_map[0:4, 25:30] == 255).all() and class_map[15, 0] == 0
    np.testing.assert_array_equal(dataset.load_instances(1)[0][0][2:8, 3:13], True)  # compressed RLE
    assert dataset.load_image(1).shape == (H, W, 3)


def test_all80_keeps_every_category(coco):
    dataset = open_dataset(coco, "val2017", kind="coco", categories="all80")
    assert dataset.class_names == ["background", "person", "airplane", "dog", "chair", "cell phone"]
    assert len(dataset) == 3 and dataset[2].labels.tolist() == [5]
    boxes_only = open_dataset(coco, "val2017", kind="coco", use_masks=False)
    assert {r.supervision for r in boxes_only} == {"box"} and boxes_only.load_instances(0) is None
    with pytest.raises(InputError, match="categories must be one of"):
        open_dataset(coco, "val2017", kind="coco", categories="voc21")


def edit_annotations(root: Path, change) -> None:
    path = root / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


BROKEN = {
    "missing image": (lambda r: (r / "val2017" / "000000000002.jpg").unlink(), "000000000002.jpg: image file is missing"),
    "unreadable image": (lambda r: (r / "val2017" / "000000000002.jpg").write_bytes(b"x"), "000000000002.jpg: image file is unreadable"),
    "mask size": (
        lambda r: edit_annotations(r, lambda d: d["annotations"][4]["segmentation"].update(size=[H + 1, W])),
        r"instances_val2017.json image 2 \(000000000002.jpg\): annotation 21: mask size \[21, 30\] differs",
    ),
    "zero area": (
        lambda r: edit_annotations(r, lambda d: d["annotations"][4].update(bbox=[3, 2, 0, 6])),
        r"image 2 \(000000000002.jpg\) annotation 21: box \(3, 2, 3, 8\) has zero area",
    ),
    "box outside": (
        lambda r: edit_annotations(r, lambda d: d["annotations"][4].update(bbox=[40, 2, 5, 6])),
        r"annotation 21: box \(40, 2, 45, 8\) lies outside the 30x20 image",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_inputs(coco, case):
    breaker, message = BROKEN[case]
    breaker(coco)
    with pytest.raises(InputError, match=message):
        open_dataset(coco, "val2017", kind="coco")
    skipped = open_dataset(coco, "val2017", kind="coco", skip_bad=True)
    assert [r.image_id for r in skipped] == ["000000000001"] and len(skipped.problems) == 1


def test_bad_annotation_files(coco, tmp_path):
    with pytest.raises(InputError, match="instances_train2017.json: COCO annotation file not found"):
        open_dataset(coco, "train2017", kind="coco", image_dir=coco / "val2017")
    (coco / "annotations" / "instances_val2017.json").write_text("{")
    with pytest.raises(InputError, match="instances_val2017.json: not valid JSON"):
        open_dataset(coco, "val2017", kind="coco")
    (coco / "annotations" / "instances_val2017.json").write_text("[]")
    with pytest.raises(InputError, match="not a COCO instances file"):
        open_dataset(coco, "val2017", kind="coco")
