"""The built-in synthetic dataset: layout, determinism, consistency, and that boxes are poor labels."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from boxsup_ext.data import detect_kind, open_dataset
from boxsup_ext.data.synthetic import (
    CLASS_NAMES,
    DISTRACTOR_FAMILY,
    PRESETS,
    SHAPE_FAMILY,
    SHAPES,
    class_names,
    draw_image,
    generate,
)
from boxsup_ext.utils import InputError

REPO = Path(__file__).resolve().parents[1]


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn") / "data", num_train=40, num_val=10, seed=3)


def test_layout_and_reader(synthetic):
    for sub in ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationObject"):
        assert len(list((synthetic / sub).iterdir())) == 50
    assert detect_kind(synthetic) == "synthetic"
    train = open_dataset(synthetic, "train", kind="synthetic")
    val = open_dataset(synthetic, "val", kind="synthetic")
    assert (len(train), len(val)) == (40, 10)
    assert train.class_names == list(CLASS_NAMES) and 5 <= train.num_classes - 1 <= 6
    assert {r.supervision for r in train} == {"mask"} and {r.source for r in train} == {"synthetic"}
    assert {(r.height, r.width) for r in train} == {(128, 128)}
    assert not set(r.image_id for r in train) & set(r.image_id for r in val)


def test_labels_boxes_and_instances_agree(synthetic):
    dataset = open_dataset(synthetic, "train", kind="synthetic")
    seen_labels = set()
    for i, record in enumerate(dataset):
        class_map = dataset.load_class_map(i)
        masks, labels = dataset.load_instances(i)
        assert masks.shape == (record.num_boxes, record.height, record.width)
        np.testing.assert_array_equal(labels, record.labels)
        painted = np.zeros_like(class_map)
        for mask, label, box in zip(masks, labels, record.boxes):
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            np.testing.assert_array_equal(box, [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
            painted[mask] = label
        np.testing.assert_array_equal(painted, class_map)  # instances partition the foreground
        seen_labels.update(labels.tolist())
    assert seen_labels == set(range(1, len(CLASS_NAMES)))


def test_box_rectangles_are_clearly_worse_labels_than_masks(synthetic):
    """Mean IoU of each object's filled box against its mask, over the generated set."""
    dataset = open_dataset(synthetic, "train", kind="synthetic")
    ious = []
    for i, record in enumerate(dataset):
        masks, _ = dataset.load_instances(i)
        for mask, (x0, y0, x1, y1) in zip(masks, record.boxes.astype(int)):
            rectangle = np.zeros_like(mask)
            rectangle[y0:y1, x0:x1] = True
            ious.append((mask & rectangle).sum() / (mask | rectangle).sum())
    ious = np.asarray(ious)
    assert len(ious) >= 60
    assert ious.mean() < 0.7, ious.mean()  # a rectangle label is clearly worse than the mask
    assert np.quantile(ious, 0.9) < 0.85
    assert ious.min() > 0.1  # but the box still says where the object is


def test_drawn_images_overlap_vary_in_size_and_shape():
    sizes, shapes, overlapping = [], set(), 0
    for i in range(30):
        drawn = draw_image(np.random.default_rng(i), 96, 160)
        assert drawn.image.shape == (96, 160, 3) and drawn.image.dtype == np.uint8
        widths = drawn.boxes[:, 2] - drawn.boxes[:, 0]
        sizes.extend(widths.tolist())
        shapes.update(drawn.shapes)
        boxes = drawn.boxes
        for a in range(len(boxes)):
            for b in range(a + 1, len(boxes)):
                overlapping += int(boxes[a, 0] < boxes[b, 2] and boxes[b, 0] < boxes[a, 2] and boxes[a, 1] < boxes[b, 3] and boxes[b, 1] < boxes[a, 3])
    assert shapes == set(SHAPES)
    assert max(sizes) > 2.5 * min(sizes)
    assert overlapping >= 5


def test_classes_differ_by_appearance_not_shape():
    """Per-class mean colours are far apart; every class appears with several shapes."""
    colours = {c: [] for c in range(1, len(CLASS_NAMES))}
    shapes = {c: set() for c in colours}
    for i in range(60):
        drawn = draw_image(np.random.default_rng(100 + i))
        for k, (label, shape) in enumerate(zip(drawn.labels, drawn.shapes)):
            colours[int(label)].append(drawn.image[drawn.object_map == k + 1].mean(0))
            shapes[int(label)].add(shape)
    means = np.stack([np.mean(colours[c], 0) for c in colours])
    distances = np.linalg.norm(means[:, None] - means[None], axis=-1)[np.triu_indices(len(means), 1)]
    assert distances.min() > 30, distances
    assert all(len(s) >= 3 for s in shapes.values())


def test_deterministic_by_seed(tmp_path):
    one = generate(tmp_path / "one", 4, 2, seed=7, height=64, width=96)
    two = generate(tmp_path / "two", 4, 2, seed=7, height=64, width=96)
    other = generate(tmp_path / "other", 4, 2, seed=8, height=64, width=96)
    assert tree_digest(one) == tree_digest(two) != tree_digest(other)
    record = open_dataset(one, "val", kind="synthetic")[0]
    assert (record.height, record.width) == (64, 96)


def test_cli_and_bad_arguments(tmp_path):
    out = tmp_path / "cli"
    args = ["--out", str(out), "--num-train", "3", "--num-val", "2", "--seed", "1", "--height", "80", "--width", "100"]
    run = subprocess.run([sys.executable, "-m", "boxsup_ext.data.synthetic", *args], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert (out / "ImageSets" / "Segmentation" / "train.txt").read_text().split() == [f"train_{i:06d}" for i in range(3)]
    assert len(open_dataset(out, "trainval", kind="synthetic")) == 5
    with pytest.raises(InputError, match="--height/--width"):
        generate(tmp_path / "bad", 1, 1, height=8)
    with pytest.raises(InputError, match="--num-train/--num-val"):
        generate(tmp_path / "bad", 0, 0)
    run = subprocess.run(
        [sys.executable, "-m", "boxsup_ext.data.synthetic", "--out", str(out), "--num-train", "-1"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert run.returncode == 2 and "--num-train" in run.stderr


# ---- presets ----


@pytest.fixture(scope="module")
def hard(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("hard") / "data", num_train=12, num_val=2, seed=5, height=72, width=96, preset="hard")


def test_hard_opens_with_nine_classes_and_its_record(hard):
    train = open_dataset(hard, "train", kind="synthetic")
    assert train.class_names == list(PRESETS["hard"].class_names) == list(class_names("hard")) and train.num_classes == 9
    assert (hard / "classes.txt").read_text().split() == list(PRESETS["hard"].class_names)
    record = json.loads((hard / "synthetic.json").read_text())
    assert record["preset"] == "hard" and record["class_names"] == list(PRESETS["hard"].class_names)
    assert (record["max_objects"], record["min_visible"]) == (5, 0.3)
    assert {(r.height, r.width) for r in train} == {(72, 96)}
    assert "preset" not in json.loads((generate(hard.parent / "easy", 1, 1, height=32, width=32) / "synthetic.json").read_text())


def test_hard_boxes_are_tight_on_visible_pixels_and_distractors_are_background(hard):
    dataset = open_dataset(hard, "train", kind="synthetic")
    counts = []
    for i, record in enumerate(dataset):
        class_map = dataset.load_class_map(i)
        masks, labels = dataset.load_instances(i)
        painted = np.zeros_like(class_map)
        for mask, label, box in zip(masks, labels, record.boxes):
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            np.testing.assert_array_equal(box, [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
            painted[mask] = label
        np.testing.assert_array_equal(painted, class_map)
        counts.append(len(labels))
    assert 1 <= min(counts) and max(counts) <= 5 and len(set(counts)) >= 3
    # The same images drawn in memory: distractor pixels have no class, no instance and no box.
    with_distractors = 0
    for i in range(12):
        drawn = draw_image(np.random.default_rng([5, 0, i]), 72, 96, 5, 0.3, preset="hard")
        record = dataset[i]
        np.testing.assert_array_equal(drawn.boxes, record.boxes)
        np.testing.assert_array_equal(drawn.labels, record.labels)
        assert not drawn.class_map[drawn.distractor_mask].any() and not drawn.object_map[drawn.distractor_mask].any()
        for box in drawn.boxes.astype(int):  # no box is a distractor's: each holds its own object
            assert drawn.object_map[box[1]:box[3], box[0]:box[2]].any()
        with_distractors += int(drawn.distractor_mask.sum() >= 40)
    assert with_distractors >= 4


def test_hard_classes_differ_by_shape_and_draw_their_own_families():
    styles = PRESETS["hard"].styles
    assert len(styles) == 8
    # every class looks different (colour pair or texture), and most share their colours with a class
    # of another shape family: shape and texture, not colour alone, tell those apart
    assert len({(s.colour_a, s.colour_b, s.texture) for s in styles}) == len(styles)
    partnered = 0
    for style in styles:
        same_colours = [o for o in styles if o is not style and (o.colour_a, o.colour_b) == (style.colour_a, style.colour_b)]
        partnered += any(not (o.families & style.families) for o in same_colours)
        assert DISTRACTOR_FAMILY not in style.families
    assert partnered >= 6
    assert any(a.families == b.families and a.texture != b.texture for a in styles for b in styles)
    thin_or_concave = {"bar", "lshape", "ushape", "snake", "crescent", "star", "ring", "cshape"}
    assert sum(bool(set(s.shapes) & thin_or_concave) for s in styles) >= 6
    drawn_families = {label: set() for label in range(1, 9)}
    for i in range(40):
        drawn = draw_image(np.random.default_rng(i), 64, 80, 5, 0.3, preset="hard")
        assert ((drawn.labels >= 1) & (drawn.labels <= 8)).all()
        for label, shape in zip(drawn.labels, drawn.shapes):
            drawn_families[int(label)].add(SHAPE_FAMILY[shape])
    assert all(drawn_families[c] == set(styles[c - 1].families) for c in drawn_families)
    for style in PRESETS["hard"].distractor_styles:  # a distractor's look is no class's
        assert not any(
            (c.colour_a, c.colour_b, c.texture) == (style.colour_a, style.colour_b, style.texture) and c.families & style.families
            for p in PRESETS.values() for c in p.styles
        ), style.name


def test_hard_is_deterministic(tmp_path):
    one = generate(tmp_path / "one", 3, 1, seed=2, height=48, width=64, preset="hard")
    two = generate(tmp_path / "two", 3, 1, seed=2, height=48, width=64, preset="hard")
    easy = generate(tmp_path / "easy", 3, 1, seed=2, height=48, width=64)
    assert tree_digest(one) == tree_digest(two) != tree_digest(easy)


def test_pretrain_classes_are_disjoint_from_hard_and_easy():
    pretrain = PRESETS["pretrain"]
    assert len(pretrain.class_names) == 9 and pretrain.class_names[0] == "background"
    others = PRESETS["hard"].styles + PRESETS["easy"].styles
    assert not set(pretrain.class_names[1:]) & {s.name for s in others}
    other_colours = {colour for s in others for colour in (s.colour_a, s.colour_b)}
    for style in pretrain.styles:
        assert not {style.colour_a, style.colour_b} & other_colours, style.name
    assert (pretrain.height, pretrain.width, pretrain.max_distractors) == (PRESETS["hard"].height, PRESETS["hard"].width, 3)
    drawn = draw_image(np.random.default_rng(0), 64, 80, 5, 0.3, preset="pretrain")
    assert drawn.image.shape == (64, 80, 3) and ((drawn.labels >= 1) & (drawn.labels <= 8)).all()


def test_bad_preset_is_one_line(tmp_path):
    with pytest.raises(InputError, match="--preset must be one of easy, hard, pretrain"):
        generate(tmp_path / "bad", 1, 1, preset="medium")
    run = subprocess.run(
        [sys.executable, "-m", "boxsup_ext.data.synthetic", "--out", str(tmp_path / "bad"), "--preset", "medium"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert run.returncode == 2 and run.stderr.strip().count("\n") == 0
    assert "--preset" in run.stderr and "easy, hard, pretrain" in run.stderr and "medium" in run.stderr
    assert not (tmp_path / "bad").exists()


def test_cli_takes_the_presets_default_size(tmp_path):
    out = tmp_path / "cli"
    args = ["--out", str(out), "--num-train", "1", "--num-val", "1", "--preset", "pretrain", "--max-objects", "2"]
    run = subprocess.run([sys.executable, "-m", "boxsup_ext.data.synthetic", *args], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    record = json.loads((out / "synthetic.json").read_text())
    assert (record["preset"], record["height"], record["width"], record["max_objects"]) == ("pretrain", 192, 256, 2)
    assert open_dataset(out, "train", kind="synthetic").class_names == list(class_names("pretrain"))


def test_prepare_synthetic_records_and_checks_the_preset(tmp_path):
    from boxsup_ext.proposals.synthetic_setup import prepare_synthetic

    setup = prepare_synthetic(tmp_path / "hard", 2, 1, size=None, height=40, width=56, methods=(), preset="hard")
    record = json.loads((setup.dataset / "synthetic.json").read_text())
    assert (record["preset"], record["height"], record["width"], record["max_objects"]) == ("hard", 40, 56, 5)
    prepare_synthetic(tmp_path / "hard", 2, 1, height=40, width=56, methods=(), preset="hard")  # reused
    with pytest.raises(InputError, match="preset 'hard' \\(asked 'easy'\\)"):
        prepare_synthetic(tmp_path / "hard", 2, 1, height=40, width=56, methods=())
    prepare_synthetic(tmp_path / "easy", 2, 1, size=32, methods=())
    prepare_synthetic(tmp_path / "easy", 2, 1, size=32, methods=(), preset="easy")  # an easy record names no preset
    with pytest.raises(InputError, match="preset 'easy' \\(asked 'pretrain'\\)"):
        prepare_synthetic(tmp_path / "easy", 2, 1, size=32, max_objects=4, methods=(), preset="pretrain")


def test_negative_seed_and_bad_noise_are_one_line(tmp_path):
    for kwargs, match in (({"seed": -1}, "--seed"), ({"noise_sigma": -1.0}, "--noise-sigma"),
                          ({"noise_sigma": float("nan")}, "--noise-sigma"), ({"noise_sigma": 300.0}, "--noise-sigma")):
        with pytest.raises(InputError, match=match):
            generate(tmp_path / "bad", 1, 1, height=32, width=32, **kwargs)
    assert not (tmp_path / "bad").exists()
    run = subprocess.run(
        [sys.executable, "-m", "boxsup_ext.data.synthetic", "--out", str(tmp_path / "cli"), "--seed", "-3"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert run.returncode == 2 and run.stderr.strip().count("\n") == 0 and "--seed" in run.stderr
