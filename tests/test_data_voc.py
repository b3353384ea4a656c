"""VOC-layout readers: parsing, box convention, splits, masks, broken inputs, --skip-bad, check CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from boxsup_ext.data import load_label_png, open_dataset, save_label_png, voc_palette
from boxsup_ext.data.check import main as check_main
from boxsup_ext.utils import InputError

REPO = Path(__file__).resolve().parents[1]


def xml_text(objects, width=40, height=30):
    body = "".join(
        f"<object><name>{name}</name><difficult>{int(diff)}</difficult><bndbox><xmin>{x0}</xmin>"
        f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for name, (x0, y0, x1, y1), diff in objects
    )
    return f"<annotation><size><width>{width}</width><height>{height}</height></size>{body}</annotation>"


def write_voc(root: Path, width=40, height=30) -> Path:
    """Three images: a (two objects, class map + object map), b (one difficult object, Aug map), c (boxes only)."""
    for sub in ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationClassAug", "SegmentationObject"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for image_id in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
    # a: cat at VOC (1,1)-(10,10) -> half-open (0,0,10,10); dog at (21,5)-(40,30) -> (20,4,40,30).
    (root / "Annotations" / "a.xml").write_text(xml_text([("cat", (1, 1, 10, 10), False), ("dog", (21, 5, 40, 30), False)]))
    (root / "Annotations" / "b.xml").write_text(xml_text([("person", (5, 5, 15, 20), True)]))
    # c: box runs past the image on the right/bottom and must be clipped.
    (root / "Annotations" / "c.xml").write_text(xml_text([("car", (30, 20, 60, 50), False)]))
    objects = np.zeros((height, width), np.uint8)
    objects[0:10, 0:10] = 1
    objects[4:30, 20:40] = 2
    objects[0, 0] = 255
    class_map = np.choose(np.minimum(objects, 3), [0, 8, 12, 255]).astype(np.uint8)
    save_label_png(root / "SegmentationClass" / "a.png", class_map)
    save_label_png(root / "SegmentationObject" / "a.png", objects)
    aug = np.zeros((height, width), np.uint8)
    aug[4:20, 4:15] = 15
    Image.fromarray(aug, mode=None).save(root / "SegmentationClassAug" / "b.png")  # grayscale, as in SBD's Aug
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("a\n")
    (sets / "trainaug.txt").write_text("a\nb\n")
    (sets / "trainval.txt").write_text("a\nb\nc\n")
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "trainval.txt").write_text("a\nb\nc\n")
    return root


@pytest.fixture
def voc(tmp_path):
    return write_voc(tmp_path / "VOC2012")


def test_palette_png_round_trip(tmp_path):
    palette = voc_palette()
    assert len(palette) == 768 and palette[3:6] == [128, 0, 0] and palette[-3:] == [224, 224, 192]
    label = np.arange(256, dtype=np.uint8).reshape(16, 16)
    save_label_png(tmp_path / "x.png", label)
    with Image.open(tmp_path / "x.png") as image:
        assert image.mode == "P"
    np.testing.assert_array_equal(load_label_png(tmp_path / "x.png"), label)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(InputError, match="rgb.png.*mode 'RGB'"):
        load_label_png(tmp_path / "rgb.png")


def test_voc_records_boxes_and_masks(voc):
    dataset = open_dataset(voc, "trainval", kind="voc")
    assert [r.image_id for r in dataset] == ["a", "b", "c"]
    assert dataset.num_classes == 21 and dataset.class_names[0] == "background"
    a, b, c = dataset
    np.testing.assert_array_equal(a.boxes, [[0, 0, 10, 10], [20, 4, 40, 30]])
    assert a.boxes.dtype == np.float32 and a.labels.dtype == np.int64
    np.testing.assert_array_equal(a.labels, [8, 12])
    assert b.difficult.tolist() == [True] and a.difficult.tolist() == [False, False]
    np.testing.assert_array_equal(c.boxes, [[29, 19, 40, 30]])  # clipped to the 40 x 30 image
    assert (a.supervision, b.supervision, c.supervision) == ("mask", "mask", "box")
    assert (a.height, a.width) == (30, 40) and a.source == "voc"
    assert dataset.load_image(0).shape == (30, 40, 3) and dataset.load_image(0).dtype == np.uint8
    class_map = dataset.load_class_map(0)
    assert class_map[5, 5] == 8 and class_map[10, 25] == 12 and class_map[0, 0] == 255
    assert dataset.load_class_map(1)[10, 10] == 15  # from SegmentationClassAug (grayscale PNG)
    assert dataset.load_class_map(2) is None and dataset.load_instances(2) is None
    masks, labels = dataset.load_instances(0)
    assert masks.shape == (2, 30, 40) and masks.dtype == bool
    assert masks[0].sum() == 99 and masks[1].sum() == 26 * 20  # pixel (0, 0) is 255, not object 1
    np.testing.assert_array_equal(labels, a.labels)
    assert dataset.index_of("c") == 2


def test_voc_splits_and_fingerprint(voc):
    assert len(open_dataset(voc, "train")) == 1
    assert [r.image_id for r in open_dataset(voc, "train_aug")] == ["a", "b"]
    with pytest.raises(InputError, match="split list not found; available splits: .*trainaug"):
        open_dataset(voc, "nosuch")
    first, again = open_dataset(voc, "trainval"), open_dataset(voc, "trainval")
    assert first.fingerprint() == again.fingerprint() and len(first.fingerprint()) == 16
    assert first.fingerprint() != open_dataset(voc, "trainaug").fingerprint()


def test_voc07_is_boxes_only(voc):
    dataset = open_dataset(voc, "trainval", kind="voc07")
    assert dataset.name == "voc07" and len(dataset) == 3
    assert {r.supervision for r in dataset} == {"box"}
    assert dataset.load_class_map(0) is None


def test_object_map_ids_follow_xml_order(voc):
    # VOC's SegmentationObject id k + 1 is the k-th XML object, whatever its class.
    (voc / "Annotations" / "a.xml").write_text(xml_text([("dog", (1, 1, 10, 10), False), ("cat", (21, 5, 40, 30), False)]))
    masks, labels = open_dataset(voc, "train").load_instances(0)
    np.testing.assert_array_equal(labels, [12, 8])
    assert masks[0].sum() == 99 and masks[1].sum() == 26 * 20


BROKEN = {
    "missing image": (lambda r: (r / "JPEGImages" / "b.jpg").unlink(), "b.jpg: image file is missing"),
    "unreadable image": (lambda r: (r / "JPEGImages" / "b.jpg").write_bytes(b"not a jpeg"), "b.jpg: image file is unreadable"),
    "missing xml": (lambda r: (r / "Annotations" / "b.xml").unlink(), "b.xml: annotation XML is missing"),
    "bad xml": (lambda r: (r / "Annotations" / "b.xml").write_text("<annotation>"), "b.xml: annotation XML is not well-formed"),
    "no objects": (lambda r: (r / "Annotations" / "b.xml").write_text(xml_text([])), "b.xml: annotation has no objects"),
    "box outside": (
        lambda r: (r / "Annotations" / "b.xml").write_text(xml_text([("person", (50, 5, 60, 20), False)])),
        r"b.xml: box \(49, 4, 60, 20\) lies outside the 40x30 image",
    ),
    "zero area": (
        lambda r: (r / "Annotations" / "b.xml").write_text(xml_text([("person", (6, 5, 5, 20), False)])),
        "b.xml: box .* has zero area",
    ),
    "unknown class": (
        lambda r: (r / "Annotations" / "b.xml").write_text(xml_text([("unicorn", (5, 5, 15, 20), False)])),
        "b.xml: object 0 has unknown class name 'unicorn'",
    ),
    "mask size": (
        lambda r: Image.fromarray(np.zeros((31, 40), np.uint8)).save(r / "SegmentationClassAug" / "b.png"),
        "b.png: mask is 40x31 but the image is 40x30",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_inputs_name_the_file(voc, case):
    breaker, message = BROKEN[case]
    breaker(voc)
    with pytest.raises(InputError, match=message) as info:
        open_dataset(voc, "trainval")
    assert "\n" not in str(info.value) and "skip-bad" in str(info.value)
    skipped = open_dataset(voc, "trainval", skip_bad=True)
    assert [r.image_id for r in skipped] == ["a", "c"]
    assert skipped.problems and all("/b." in line for line in skipped.problems)


def test_skip_bad_drops_only_the_bad_object(voc):
    (voc / "Annotations" / "a.xml").write_text(xml_text([("unicorn", (1, 1, 10, 10), False), ("dog", (21, 5, 40, 30), False)]))
    dataset = open_dataset(voc, "train", skip_bad=True)
    np.testing.assert_array_equal(dataset[0].labels, [12])
    masks, _ = dataset.load_instances(0)
    assert masks.shape[0] == 1 and masks[0][10, 25] and not masks[0][5, 5]  # still SegmentationObject id 2


def test_truncated_image_is_caught_when_decoded(voc, capsys):
    data = (voc / "JPEGImages" / "c.jpg").read_bytes()
    (voc / "JPEGImages" / "c.jpg").write_bytes(data[: len(data) // 2])
    dataset = open_dataset(voc, "trainval")  # the header is intact
    with pytest.raises(InputError, match="c.jpg: image file is unreadable"):
        dataset.load_image(2)
    assert check_main([str(voc), "--split", "trainval"]) == 1
    out = capsys.readouterr().out
    assert "[trainval] 3 images, 4 boxes (1 difficult), 2 class maps, 1 instance maps" in out
    assert "problems: 1" in out and "c.jpg" in out


def test_check_cli(voc):
    run = subprocess.run([sys.executable, "-m", "boxsup_ext.data", "check", str(voc)], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert "[train] 1 images, 2 boxes" in run.stdout and "cat 1" in run.stdout and "problems: 0" in run.stdout
    (voc / "Annotations" / "b.xml").write_text(xml_text([]))
    run = subprocess.run([sys.executable, "-m", "boxsup_ext.data", "check", str(voc)], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 1 and "b.xml: annotation has no objects" in run.stdout
    run = subprocess.run([sys.executable, "-m", "boxsup_ext.data", "check", str(voc / "nope")], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 2 and run.stderr.strip().count("\n") == 0 and "not a folder" in run.stderr
