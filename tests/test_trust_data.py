"""Trust catalogue for datasets and proposal stores (issue 9, items 5, 6, 7, 13, 14).

Every case here is a bad input a user can make: it must end in one clear InputError (or one
``error:`` line and exit status 2 from a CLI) naming the file or argument, or, for a stale proposal
store, be rebuilt by ``generate``. Nothing may give a silently wrong result. The datasets are the
tiny VOC / COCO fixtures of test_data_voc / test_data_coco, so the whole file runs in seconds.
"""

from __future__ import annotations

import io
import re
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from boxsup_ext.data import open_dataset, save_label_png
from boxsup_ext.data.check import main as check_main
from boxsup_ext import core
from boxsup_ext.proposals import generate_proposals, open_store
from boxsup_ext.proposals.__main__ import main as proposals_main
from boxsup_ext.proposals.store import read_entry, write_entry
from boxsup_ext.utils import InputError, run_cli
from test_data_coco import edit_annotations, write_coco
from test_data_voc import write_voc, xml_text


@pytest.fixture
def voc(tmp_path):
    return write_voc(tmp_path / "VOC2012")


def run(main, argv, capsys) -> tuple[int, str]:
    """Exit status and stderr of a CLI run through run_cli."""
    status = run_cli(main, [str(a) for a in argv])
    return status, capsys.readouterr().err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Item 5: a proposal store made before the dataset changed is stale, never silently used.


def move_box_of_a(root: Path) -> None:
    """Move image a's cat box (VOC 1-based corners) by a few pixels."""
    (root / "Annotations" / "a.xml").write_text(xml_text([("cat", (5, 3, 14, 12), False), ("dog", (21, 5, 40, 30), False)]))


def test_box_method_store_is_stale_after_boxes_move_and_generate_rebuilds_only_those(voc, tmp_path, capsys):
    store_dir = tmp_path / "store"
    generate_proposals(open_dataset(voc, "trainval"), "rectangles", store_dir, progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in (store_dir / "entries").iterdir()}
    move_box_of_a(voc)
    dataset = open_dataset(voc, "trainval")
    store = open_store(store_dir, dataset)  # same ids and sizes: the manifest alone cannot tell
    store.get("b"), store.get("c")  # untouched images stay usable
    with pytest.raises(InputError, match=r"a\.npz: stale proposal store .*store: the boxes of image 'a' changed.*rerun .*generate"):
        store.get("a")
    status, err = run(proposals_main, ["eval", "--dataset", voc, "--split", "trainval", "--store", store_dir, "--no-progress"], capsys)
    assert status == 2 and "stale proposal store" in one_error_line(err)
    # generate on the same folder rebuilds exactly the changed image, and the store is right again.
    generate_proposals(dataset, "rectangles", store_dir, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in (store_dir / "entries").iterdir()}
    assert after["b.npz"] == stamps["b.npz"] and after["c.npz"] == stamps["c.npz"] and after["a.npz"] != stamps["a.npz"]
    entry = open_store(store_dir, dataset).get("a")
    record = dataset[dataset.index_of("a")]
    np.testing.assert_array_equal(entry.candidates.masks(), core.box_masks(record.boxes, record.height, record.width))


def test_pixel_method_store_is_stale_after_the_image_file_changes(voc, tmp_path):
    store_dir = tmp_path / "store"
    generate_proposals(open_dataset(voc, "trainval"), "grabcut", store_dir, progress=False, iterations=1)
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(voc / "JPEGImages" / "b.jpg")  # same size
    store = open_store(store_dir, open_dataset(voc, "trainval"))
    store.get("a")
    with pytest.raises(InputError, match=r"stale proposal store .*the image file of image 'b' changed"):
        store.get("b")


def test_box_independent_method_is_not_stale_when_only_boxes_move(voc, tmp_path):
    store_dir = tmp_path / "store"
    generate_proposals(open_dataset(voc, "trainval"), "selective_search", store_dir, progress=False, ks=[50], strategies="ctsf", colour_spaces="rgb")
    assert json.loads((store_dir / "manifest.json").read_text())["depends_on"] == ["image"]
    move_box_of_a(voc)
    store = open_store(store_dir, open_dataset(voc, "trainval"))
    assert store.get("a").candidates.num_candidates > 0  # selective search never looked at the boxes


def test_version_1_store_is_refused_for_reading_and_rebuilt_by_generate(voc, tmp_path):
    store_dir = tmp_path / "store"
    dataset = open_dataset(voc, "trainval")
    generate_proposals(dataset, "rectangles", store_dir, progress=False)
    manifest = json.loads((store_dir / "manifest.json").read_text())
    manifest["format_version"] = 1  # as written before entries carried provenance
    (store_dir / "manifest.json").write_text(json.dumps(manifest))
    entry = read_entry(store_dir / "entries" / "a.npz")
    write_entry(store_dir / "entries" / "a.npz", entry.candidates.units, entry.candidates.members, entry.scores)  # no provenance
    with pytest.raises(InputError, match="format version 1, this code reads 2; rerun .*generate"):
        open_store(store_dir, dataset)
    generate_proposals(dataset, "rectangles", store_dir, progress=False)
    assert open_store(store_dir, dataset).get("a").provenance["boxes"]


# ---------------------------------------------------------------------------------------------
# Item 13: method options are checked before anything is written.

BAD_PARAMS = {
    "unknown name": (["bogus=3"], "selective_search", r"has no option 'bogus'.*its options are: colour_spaces, ks"),
    "text for numbers": (["ks=abc"], "selective_search", r"option 'ks' must be a non-empty list .* of finite number"),
    "list item": (["ks=[100, x]"], "selective_search", r"option 'ks' must be"),
    "number for text list": (["strategies=3"], "selective_search", r"option 'strategies' must be"),
    "text for integer": (["seed=abc"], "selective_search", r"option 'seed' must be integer, got 'abc'"),
    "float for integer": (["max_candidates=2.5"], "selective_search", r"option 'max_candidates' must be integer"),
    "nan": (["sigma=.nan"], "selective_search", r"option 'sigma' must be finite number"),
    "grabcut unknown": (["iteration=3"], "grabcut", r"method 'grabcut' has no option 'iteration'"),
    "rectangles unknown": (["ks=3"], "rectangles", r"method 'rectangles' has no option 'ks'"),
    "mcg without mat_dir": ([], "mcg", r"method 'mcg' needs option 'mat_dir'; pass it as --param mat_dir="),
}


@pytest.mark.parametrize("case", sorted(BAD_PARAMS))
def test_bad_method_params_are_one_line_and_write_nothing(voc, tmp_path, capsys, case):
    params, method, message = BAD_PARAMS[case]
    out = tmp_path / "store"
    argv = ["generate", "--dataset", voc, "--split", "trainval", "--method", method, "--out", out, "--no-progress"]
    status, err = run(proposals_main, argv + [f"--param={p}" for p in params], capsys)
    assert status == 2
    assert re.search(message, one_error_line(err)), err
    assert not out.exists()


def test_corrected_command_after_a_refused_run_succeeds(voc, tmp_path, capsys):
    out = tmp_path / "store"
    base = ["generate", "--dataset", voc, "--split", "trainval", "--method", "selective_search", "--out", out, "--no-progress"]
    # A value only the method itself can judge fails after the manifest is written ...
    status, err = run(proposals_main, base + ["--param", "strategies=xyz"], capsys)
    assert status == 2 and "strategy 'xyz' must be letters of 'ctsf'" in one_error_line(err)
    # ... and does not block the corrected command on the same folder (no entry was made).
    assert run(proposals_main, base + ["--param", "strategies=c", "--param", "ks=[50]"], capsys)[0] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"]["strategies"] == "c" and manifest["complete"] is True
    with pytest.raises(InputError, match="bogus"):
        generate_proposals(open_dataset(voc, "trainval"), "rectangles", tmp_path / "api", progress=False, bogus=1)
    assert not (tmp_path / "api").exists()


def test_a_foreign_manifest_in_the_output_folder_is_not_replaced(voc, tmp_path, capsys):
    out = tmp_path / "site"
    out.mkdir()
    (out / "manifest.json").write_text('{"name": "my web app"}')
    status, err = run(proposals_main, ["generate", "--dataset", voc, "--split", "trainval", "--method", "rectangles", "--out", out], capsys)
    assert status == 2 and "manifest.json: store format version None" in one_error_line(err)
    assert (out / "manifest.json").read_text() == '{"name": "my web app"}'


# ---------------------------------------------------------------------------------------------
# Item 14: an entry that breaks the units + members invariants is refused at read, by name.


def raw_entry(path: Path, **overrides) -> Path:
    """An .npz entry with a consistent 4 x 5 image of unit ids up to 64 (65 units: 2 words), changed by ``overrides``."""
    units = (np.arange(20, dtype=np.int32) * 3 + 7).reshape(4, 5)
    arrays = {
        "units": units,
        "members": core.pack_rows(np.eye(3, 70, dtype=bool)),
        "scores": np.ones(3, np.float32),
        "size": np.array([4, 5], np.int64),
        "seconds": np.array(0.0),
        "provenance": np.array("{}"),
    }
    arrays.update(overrides)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())
    return path


BAD_ENTRIES = {
    "unit ids past members width": ({"members": np.zeros((3, 1), np.int64)}, r"members has 1 words per row, 2 needed"),
    "negative unit id": ({"units": -np.ones((4, 5), np.int32)}, r"units must be >= 0"),
    "units not the recorded size": ({"size": np.array([5, 4])}, r"units must be an integer map of shape \(5, 4\)"),
    "float units": ({"units": np.zeros((4, 5), np.float32)}, r"units must be an integer map"),
    "int32 members": ({"members": np.zeros((3, 2), np.int32)}, r"members must be int64 \[N, W64\]"),
    "1-d members": ({"members": np.zeros(6, np.int64)}, r"members must be int64 \[N, W64\]"),
    "scores count": ({"scores": np.ones(2, np.float32)}, r"3 candidates but 2 scores"),
    "size not two numbers": ({"size": np.array([4, 5, 1])}, r"damaged proposal entry"),
    "units past int32": ({"units": np.full((4, 5), 2**40, np.int64)}, r"unit ids must fit int32"),
    "provenance not JSON": ({"provenance": np.array("{")}, r"damaged proposal entry"),
    "object array": ({"scores": np.array([None, 1, 2], dtype=object)}, r"damaged proposal entry"),
}


@pytest.mark.parametrize("case", sorted(BAD_ENTRIES))
def test_inconsistent_entries_are_refused_naming_the_file(tmp_path, case):
    overrides, message = BAD_ENTRIES[case]
    path = raw_entry(tmp_path / "img.npz", **overrides)
    with pytest.raises(InputError, match=rf"img\.npz: .*{message}.*rerun generate"):
        read_entry(path)


def test_consistent_raw_entry_reads(tmp_path):
    entry = read_entry(raw_entry(tmp_path / "img.npz"))
    assert entry.candidates.units.dtype == np.int32 and entry.candidates.num_units == 65 and entry.candidates.masks().shape == (3, 4, 5)


def test_entry_missing_an_array_is_damaged(tmp_path):
    path = raw_entry(tmp_path / "img.npz")
    with zipfile.ZipFile(path) as archive:
        kept = {name: archive.read(name) for name in archive.namelist() if name != "members.npy"}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in kept.items():
            archive.writestr(name, data)
    with pytest.raises(InputError, match=r"img\.npz: damaged proposal entry"):
        read_entry(path)


# ---------------------------------------------------------------------------------------------
# Item 6: class maps with ids outside the dataset's classes.


def write_bad_class_map(root: Path) -> Path:
    """Image a's class map with ids 30 and 40 (VOC has 21 classes) besides valid ids and ignore."""
    label = np.zeros((30, 40), np.uint8)
    label[0:10, 0:10] = 8
    label[0, 0] = 255
    label[20:22, 30:35] = 30
    label[25, 5] = 40
    path = root / "SegmentationClass" / "a.png"
    save_label_png(path, label)
    return path


def test_class_ids_outside_the_classes_are_an_error_naming_file_and_ids(voc):
    path = write_bad_class_map(voc)
    dataset = open_dataset(voc, "trainval")
    with pytest.raises(InputError, match=rf"{re.escape(str(path))}: class map holds ids 30, 40 \(11 pixels\) outside the dataset's 21 classes"):
        dataset.load_class_map(dataset.index_of("a"))
    # Training reads ground truth through the same loader (mask mode and semi-supervised images).
    from boxsup_ext.training.data import gt_label_map

    with pytest.raises(InputError, match=r"a\.png: class map holds ids 30, 40"):
        gt_label_map(dataset, dataset.index_of("a"))
    assert dataset.load_class_map(dataset.index_of("b")).max() == 15  # a valid map still loads


def test_data_check_reports_out_of_range_class_ids(voc, capsys):
    path = write_bad_class_map(voc)
    assert check_main([str(voc), "--split", "trainval"]) == 1
    out = capsys.readouterr().out
    assert "problems: 1" in out and f"{path}: class map holds ids 30, 40" in out


def test_evaluate_refuses_out_of_range_class_ids(voc, tmp_path, capsys):
    from boxsup_ext import evaluate
    from test_eval_cli import _checkpoint

    write_bad_class_map(voc)
    checkpoint = _checkpoint(tmp_path / "model.pt", 21)
    argv = ["--checkpoint", checkpoint, "--dataset", voc, "--split", "trainval", "--out", tmp_path / "eval", "--no-progress"]
    status, err = run(evaluate.main, argv, capsys)
    assert status == 2 and "a.png: class map holds ids 30, 40" in one_error_line(err)


def test_folder_dataset_class_ids_outside_classes_are_reported(tmp_path):
    root = tmp_path / "folder"
    for sub in ("images", "labels", "splits"):
        (root / sub).mkdir(parents=True)
    (root / "classes.txt").write_text("background\nthing\n")
    (root / "splits" / "train.txt").write_text("x\n")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "x.png")
    label = np.zeros((8, 8), np.uint8)
    label[2:6, 2:6] = 1
    label[7, 7] = 7
    save_label_png(root / "labels" / "x.png", label)
    with pytest.raises(InputError, match=r"labels/x\.png: class map holds ids 7 \(1 pixels\) outside the dataset's 2 classes"):
        open_dataset(root, "train", kind="folder")


# ---------------------------------------------------------------------------------------------
# Item 7: COCO annotations that would silently drop an image, decode garbage, or crash.


@pytest.fixture
def coco(tmp_path):
    return write_coco(tmp_path / "coco")


def set_annotation(index: int, **fields):
    def change(data):
        for key, value in fields.items():
            if value is None:
                data["annotations"][index].pop(key, None)
            else:
                data["annotations"][index][key] = value

    return change


# annotation 21 is image 2's one VOC object (an airplane, compressed RLE); 11 an uncompressed-RLE person.
BAD_COCO = {
    "undefined category": (set_annotation(4, category_id=99), r"annotation 21: category_id 99 is not one of the file's categories"),
    "text category": (set_annotation(4, category_id="5"), r"annotation 21: category_id '5' is not one of"),
    "missing category": (set_annotation(4, category_id=None), r"annotation 21: category_id None is not one of"),
    "missing bbox": (set_annotation(4, bbox=None), r"annotation 21: bbox must be 4 finite numbers \[x, y, width, height\], got None"),
    "text bbox": (set_annotation(4, bbox=["a", 2, 10, 6]), r"annotation 21: bbox must be 4 finite numbers .*got \['a', 2, 10, 6\]"),
    "short bbox": (set_annotation(4, bbox=[3, 2, 10]), r"annotation 21: bbox must be 4 finite numbers"),
    "bbox not a list": (set_annotation(4, bbox="3 2 10 6"), r"annotation 21: bbox must be 4 finite numbers"),
    "garbage compressed counts": (set_annotation(4, segmentation={"size": [20, 30], "counts": "garbage!!"}), r"annotation 21: RLE counts is not a valid compressed RLE string"),
    "compressed counts too short": (set_annotation(4, segmentation={"size": [20, 30], "counts": "68"}), r"annotation 21: RLE counts cover 14 pixels, the 30x20 mask has 600"),
    "non-ascii counts": (set_annotation(4, segmentation={"size": [20, 30], "counts": "é"}), r"annotation 21: RLE counts is not a valid compressed"),
    "counts not text or list": (set_annotation(4, segmentation={"size": [20, 30], "counts": 5}), r"annotation 21: RLE counts must be a list of run lengths or"),
    "negative run": (set_annotation(4, segmentation={"size": [20, 30], "counts": [700, -100]}), r"annotation 21: RLE counts must be integers in 0\.\.600"),
    "huge run": (set_annotation(4, segmentation={"size": [20, 30], "counts": [10**30]}), r"annotation 21: RLE counts must be integers in 0\.\.600"),
    "huge bbox number": (set_annotation(4, bbox=[10**400, 2, 10, 6]), r"annotation 21: bbox must be 4 finite numbers"),
    "runs not covering the mask": (set_annotation(4, segmentation={"size": [20, 30], "counts": [10, 20]}), r"annotation 21: RLE counts cover 30 pixels"),
    "size not a pair": (set_annotation(4, segmentation={"size": 600, "counts": [600]}), r"annotation 21: mask size 600 differs"),
    "polygon with text": (set_annotation(4, segmentation=[[3, 2, 13, 2, "x", 8]]), r"annotation 21: polygon segmentation needs .*finite numbers"),
    "annotation without image_id": (set_annotation(4, image_id=None), r" annotation 21: image_id must be an integer, got None"),
}


@pytest.mark.parametrize("case", sorted(BAD_COCO))
def test_bad_coco_annotations_are_one_clear_error_or_skipped(coco, case):
    change, message = BAD_COCO[case]
    edit_annotations(coco, change)
    with pytest.raises(InputError, match=rf"instances_val2017\.json.*{message}"):
        open_dataset(coco, "val2017", kind="coco")
    skipped = open_dataset(coco, "val2017", kind="coco", skip_bad=True)
    assert [r.image_id for r in skipped] == ["000000000001"] and len(skipped.problems) == 1
    assert "annotation 21" in skipped.problems[0]


def test_bad_coco_images_and_categories(coco):
    edit_annotations(coco, lambda d: d["images"][1].pop("file_name"))
    with pytest.raises(InputError, match=r"instances_val2017\.json images\[1\]: an image needs an integer 'id' and a 'file_name'"):
        open_dataset(coco, "val2017", kind="coco")
    edit_annotations(coco, lambda d: d["categories"].append({"id": "x", "name": "thing"}))
    with pytest.raises(InputError, match=r"instances_val2017\.json: 'categories' must be a list of"):
        open_dataset(coco, "val2017", kind="coco")


def test_compressed_rle_runs_match_pycocotools():
    from pycocotools import mask as mask_utils

    from boxsup_ext.data.coco import compressed_rle_runs

    rng = np.random.default_rng(3)
    for shape in [(1, 1), (7, 5), (40, 33), (300, 2)]:
        for density in (0.0, 0.1, 0.5, 1.0):
            mask = (rng.random(shape) < density).astype(np.uint8)
            mask[: shape[0] // 2] = 1 if density > 0.3 else mask[: shape[0] // 2]  # long runs: multi-digit counts
            encoded = mask_utils.encode(np.asfortranarray(mask))
            runs = compressed_rle_runs(encoded["counts"].decode("ascii"))
            flat = mask.ravel(order="F")
            expected = np.diff(np.flatnonzero(np.concatenate([[True], flat[1:] != flat[:-1], [True]])))
            if flat[0]:
                expected = np.concatenate([[0], expected])
            np.testing.assert_array_equal(runs, expected)
    assert compressed_rle_runs("") is None and compressed_rle_runs("0o") is None  # "o" = digit 63: a run cut off


def test_generate_rebuilds_a_damaged_entry_and_a_stale_one_after_reading_once(voc, tmp_path):
    store_dir = tmp_path / "store"
    dataset = open_dataset(voc, "trainval")
    generate_proposals(dataset, "rectangles", store_dir, progress=False)
    store = open_store(store_dir, dataset)
    store.get("a")  # checked and remembered as current ...
    move_box_of_a(voc)
    with pytest.raises(InputError, match="stale proposal store"):
        open_store(store_dir, open_dataset(voc, "trainval")).get("a")  # ... but a fresh open checks again
    (store_dir / "entries" / "c.npz").write_bytes(b"garbage")
    generate_proposals(open_dataset(voc, "trainval"), "rectangles", store_dir, progress=False)
    fresh = open_store(store_dir, open_dataset(voc, "trainval"))
    assert [fresh.get(i).candidates.num_candidates for i in ("a", "b", "c")] == [2, 1, 1]
