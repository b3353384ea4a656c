"""``python -m boxsup_ext.export`` on a tiny run (4 synthetic images of 32 px, 2 epochs of tiny_fcn
width 4, snapshots of both epochs): COCO through pycocotools and the package's COCO reader, VOC
through the VOC-layout reader, mmseg PNGs, --epoch, the choices the trainer keeps, the error lines."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from boxsup_ext.config import load_config, save_config
from boxsup_ext.core import IGNORE_LABEL, paint_instances
from boxsup_ext.data import load_label_png, open_dataset
from boxsup_ext.export import instance_masks, main as export_main
from boxsup_ext.proposals import open_store
from boxsup_ext.proposals.synthetic_setup import prepare_synthetic
from boxsup_ext.train import main as train_main
from boxsup_ext.utils import run_cli

NUM_TRAIN = 4


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return prepare_synthetic(tmp_path_factory.mktemp("synthetic"), NUM_TRAIN, 2, size=32, seed=3, methods=("selective_search",))


def train_run(setup, run_dir, clip=True, mode="boxsup", extra=None, expect=0):
    settings = {
        "train.mode": mode, "train.epochs": 2, "train.batch_size": 2, "train.lr": 0.01, "train.val_every": 0,
        "data.train.0.kind": "synthetic", "data.train.0.root": setup.dataset, "data.train.0.supervision": "box",
        "data.train.0.proposals": setup.stores["selective_search"], "data.val.root": "", "data.crop_size": 32,
        "data.workers": 0, "model.name": "tiny_fcn", "model.width": 4, "relabel.snapshot_epochs": "[1, 2]",
        "relabel.topk": 10, "relabel.clip_to_box": str(clip).lower(), "run.threads": 1, "run.progress": "false",
        "run.tensorboard": "false", **(extra or {}),
    }
    args = ["--run-dir", str(run_dir)]
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    assert train_main(args) == expect
    return Path(run_dir)


@pytest.fixture(scope="module")
def run(synthetic, tmp_path_factory):
    return train_run(synthetic, tmp_path_factory.mktemp("runs") / "clipped")


def export(capsys, *args):
    """(exit status, the error line or stdout) of the export command."""
    status = run_cli(export_main, [str(a) for a in args])
    captured = capsys.readouterr()
    return status, (captured.err.strip() if status else captured.out.strip())


def one_line_error(status, message):
    assert status == 2, message
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def label_maps(folder):
    return {p.stem: load_label_png(p) for p in sorted(Path(folder).glob("*.png"))}


def choices_of(run_dir, epoch):
    return json.loads((run_dir / "labels" / "choices" / f"epoch_{epoch:03d}.json").read_text())["choices"]


def check_coco(out, setup, labels_folder, choices, clip):
    """Every instance (pycocotools' annToMask) is the chosen candidate rebuilt from the store; the
    instances painted by the paint rule give the label map wherever it is not ignore."""
    from pycocotools.coco import COCO

    coco = COCO(str(out / "annotations" / "instances_train.json"))
    dataset = open_dataset(setup.dataset, "train", kind="synthetic")
    store = open_store(setup.stores["selective_search"], dataset)
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(dataset.class_names[1:])
    by_id = {info["boxsup_id"]: info for info in coco.dataset["images"]}
    assert sorted(by_id) == sorted(record.image_id for record in dataset)
    total = 0
    for record in dataset:
        info = by_id[record.image_id]
        assert Path(info["file_name"]) == Path(dataset.image_file(dataset.index_of(record.image_id))).resolve()
        entry = store.get(record.image_id)
        chosen = choices[record.image_id]
        expected = instance_masks(entry.candidates, chosen, record.boxes, clip)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[info["id"]]))
        assigned = [m for m, c in enumerate(chosen) if c >= 0 and expected[m].any()]
        assert len(anns) == len(assigned)
        for ann, m in zip(anns, assigned):
            mask = coco.annToMask(ann).astype(bool)
            assert np.array_equal(mask, expected[m])
            assert ann["category_id"] == record.labels[m] and ann["iscrowd"] == 0 and ann["area"] == mask.sum()
            x0, y0, x1, y1 = record.boxes[m]
            assert np.allclose(ann["bbox"], [x0, y0, x1 - x0, y1 - y0])
            if clip:
                col0, row0, col1, row1 = int(np.ceil(x0 - 0.5)), int(np.ceil(y0 - 0.5)), int(np.ceil(x1 - 0.5)), int(np.ceil(y1 - 0.5))
                assert not mask[:row0].any() and not mask[row1:].any() and not mask[:, :col0].any() and not mask[:, col1:].any()
        label = load_label_png(labels_folder / f"{record.image_id}.png")
        masks = np.stack([coco.annToMask(a).astype(bool) for a in anns]) if anns else np.zeros((0, *label.shape), bool)
        painted = paint_instances(masks, [a["category_id"] for a in anns], *label.shape)
        keep = label != IGNORE_LABEL
        assert np.array_equal(painted[keep], label[keep])
        assert (label[keep] > 0).sum() == (painted > 0)[keep].sum()
        total += len(anns)
    return total


def test_trainer_keeps_the_choices_of_every_round(run):
    checkpoint = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert sorted(p.name for p in (run / "labels" / "choices").iterdir()) == ["epoch_001.json", "epoch_002.json"]
    assert choices_of(run, 2) == checkpoint["label_state"]["choices"]
    assert set(choices_of(run, 1)) == set(choices_of(run, 2)) and len(choices_of(run, 1)) == NUM_TRAIN
    # The two rounds chose differently (topk 10), so the --epoch tests below tell them apart.
    assert choices_of(run, 1) != choices_of(run, 2)


def test_coco_export_round_trips_through_pycocotools(run, synthetic, tmp_path, capsys):
    out = tmp_path / "coco"
    status, message = export(capsys, "--run", run, "--out", out, "--format", "coco")
    assert status == 0, message
    total = check_coco(out, synthetic, run / "labels", choices_of(run, 2), clip=True)
    assert total > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "coco" and manifest["epoch"] == 2 and manifest["labels"] == "labels"
    assert manifest["run"] == str(run.resolve()) and manifest["dataset_root"] == str(Path(synthetic.dataset).resolve())
    assert manifest["recipe"]["train_mode"] == "boxsup" and manifest["recipe"]["relabel"]["clip_to_box"] is True
    assert manifest["recipe"]["relabel"]["topk"] == 10 and manifest["package"]["version"]
    boxes = sum(len(c) for c in choices_of(run, 2).values())
    unassigned = sum(c < 0 for v in choices_of(run, 2).values() for c in v)
    counts = manifest["counts"]
    assert counts["images"] == NUM_TRAIN and counts["boxes"] == boxes and counts["boxes_unassigned"] == unassigned
    assert counts["annotations"] == total == boxes - unassigned - counts["boxes_empty"]
    # The package's own COCO reader takes the export back, boxes and masks included.
    from boxsup_ext.data.coco import COCODataset

    back = COCODataset(out, "train", categories="all80", annotation_file=out / "annotations" / "instances_train.json",
                       image_dir="/")
    assert back.class_names == open_dataset(synthetic.dataset, "train", kind="synthetic").class_names
    with_instances = [i for i, c in choices_of(run, 2).items() if any(v >= 0 for v in c)]
    assert sorted(record.image_id for record in back) == sorted(with_instances)
    for i, record in enumerate(back):
        label = load_label_png(run / "labels" / f"{record.image_id}.png")
        keep = label != IGNORE_LABEL
        assert np.array_equal(back.load_class_map(i)[keep], label[keep])


def test_coco_export_without_clipping(synthetic, tmp_path, capsys):
    run = train_run(synthetic, tmp_path / "unclipped", clip=False)
    out = tmp_path / "coco"
    status, message = export(capsys, "--run", run, "--out", out, "--format", "coco", "--epoch", "1")
    assert status == 0, message
    assert check_coco(out, synthetic, run / "labels" / "snapshots" / "epoch_001", choices_of(run, 1), clip=False) > 0
    assert json.loads((out / "manifest.json").read_text())["recipe"]["relabel"]["clip_to_box"] is False


def test_voc_export_opens_as_a_voc_dataset(run, synthetic, tmp_path, capsys):
    out = tmp_path / "voc"
    status, message = export(capsys, "--run", run, "--out", out)
    assert status == 0, message
    assert "epoch 2" in message
    exported = label_maps(out / "SegmentationClass")
    expected = label_maps(run / "labels")
    assert exported.keys() == expected.keys() and all(np.array_equal(exported[k], expected[k]) for k in expected)
    assert all(Image.open(p).mode == "P" for p in (out / "SegmentationClass").glob("*.png"))
    # Beside the dataset's images and boxes, the export is a VOC-layout dataset whose class maps are the labels.
    layout = tmp_path / "layout"
    shutil.copytree(out, layout)
    for folder in ("JPEGImages", "Annotations"):
        os.symlink(Path(synthetic.dataset).resolve() / folder, layout / folder)
    dataset = open_dataset(layout, "train", kind="voc")
    assert len(dataset) == NUM_TRAIN and list(dataset.class_names) == (out / "classes.txt").read_text().split()
    for i, record in enumerate(dataset):
        assert record.supervision == "mask" and np.array_equal(dataset.load_class_map(i), expected[record.image_id])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "voc" and manifest["counts"]["images"] == NUM_TRAIN
    assert manifest["files"]["image_set"] == "ImageSets/Segmentation/train.txt"


def test_mmseg_export(run, synthetic, tmp_path, capsys):
    out = tmp_path / "mmseg"
    status, message = export(capsys, "--run", run, "--out", out, "--format", "mmseg")
    assert status == 0, message
    expected = label_maps(run / "labels")
    ids = (out / "splits" / "train.txt").read_text().split()
    assert sorted(ids) == sorted(expected)
    for image_id in ids:
        with Image.open(out / "ann_dir" / "train" / f"{image_id}.png") as png:
            assert png.mode == "L"
            assert np.array_equal(np.asarray(png), expected[image_id])
        link = out / "img_dir" / "train" / f"{image_id}.jpg"
        assert link.is_symlink() and link.resolve() == (Path(synthetic.dataset) / "JPEGImages" / f"{image_id}.jpg").resolve()
    config: dict = {}
    exec((out / "boxsup_pseudo.py").read_text(), config)
    dataset = config["train_dataset"]
    assert dataset["type"] == "BaseSegDataset" and dataset["reduce_zero_label"] is False and dataset["ignore_index"] == 255
    assert dataset["data_root"] == str(out.resolve()) and config["classes"][0] == "background"
    assert len(config["palette"]) == len(config["classes"]) == config["num_classes"]
    assert (Path(dataset["data_root"]) / dataset["ann_file"]).is_file()
    assert json.loads((out / "manifest.json").read_text())["counts"]["images_linked"] == NUM_TRAIN

    copied = tmp_path / "copied"
    status, message = export(capsys, "--run", run, "--out", copied, "--format", "mmseg", "--copy-images")
    assert status == 0, message
    image = copied / "img_dir" / "train" / f"{ids[0]}.jpg"
    assert not image.is_symlink() and image.read_bytes() == (Path(synthetic.dataset) / "JPEGImages" / f"{ids[0]}.jpg").read_bytes()


def test_epoch_selects_the_snapshot(run, synthetic, tmp_path, capsys):
    snapshot = run / "labels" / "snapshots" / "epoch_001"
    out = tmp_path / "epoch1"
    status, message = export(capsys, "--run", run, "--out", out, "--format", "mmseg", "--epoch", "1")
    assert status == 0, message
    expected = label_maps(snapshot)
    assert expected != {}
    for image_id, label in expected.items():
        assert np.array_equal(load_label_png(out / "ann_dir" / "train" / f"{image_id}.png"), label)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["epoch"] == 1 and manifest["labels"] == "labels/snapshots/epoch_001"
    coco = tmp_path / "coco1"
    assert export(capsys, "--run", run, "--out", coco, "--format", "coco", "--epoch", "1")[0] == 0
    check_coco(coco, synthetic, snapshot, choices_of(run, 1), clip=True)


def test_runs_without_choice_records_export_their_last_round_only(run, tmp_path, capsys):
    """A run from before the trainer kept labels/choices/: COCO of its last relabel comes from the
    checkpoint; an earlier snapshot exports as label maps only."""
    old = Path(shutil.copytree(run, tmp_path / "old"))
    shutil.rmtree(old / "labels" / "choices")
    assert export(capsys, "--run", old, "--out", tmp_path / "last", "--format", "coco")[0] == 0
    new = json.loads((tmp_path / "last" / "annotations" / "instances_train.json").read_text())
    assert export(capsys, "--run", run, "--out", tmp_path / "reference", "--format", "coco")[0] == 0
    reference = json.loads((tmp_path / "reference" / "annotations" / "instances_train.json").read_text())
    assert new["annotations"] == reference["annotations"]
    err = one_line_error(*export(capsys, "--run", old, "--out", tmp_path / "first", "--format", "coco", "--epoch", "1"))
    assert "keeps no chosen candidates" in err and "--format voc or mmseg" in err
    status, _ = export(capsys, "--run", old, "--out", tmp_path / "first_voc", "--epoch", "1")
    assert status == 0
    assert json.loads((tmp_path / "first_voc" / "manifest.json").read_text())["counts"]["boxes_unassigned"] is None


def test_labels_that_do_not_match_the_store_are_refused(run, tmp_path, capsys):
    changed = Path(shutil.copytree(run, tmp_path / "changed"))
    some = sorted((changed / "labels").glob("*.png"))[0]
    label = load_label_png(some)
    label[label != IGNORE_LABEL] = np.where(label[label != IGNORE_LABEL] == 0, 1, 0)
    from boxsup_ext.data import save_label_png

    save_label_png(some, label)
    err = one_line_error(*export(capsys, "--run", changed, "--out", tmp_path / "out", "--format", "coco"))
    assert str(some) in err and "pixels differ" in err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_error_lines(run, tmp_path, capsys):
    err = one_line_error(*export(capsys, "--run", tmp_path, "--out", tmp_path / "a"))
    assert str(tmp_path) in err and "not a training run directory" in err

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run / "config.yaml", bare / "config.yaml")
    err = one_line_error(*export(capsys, "--run", bare, "--out", tmp_path / "b"))
    assert str(bare) in err and "no labels yet" in err

    masked = Path(shutil.copytree(run, tmp_path / "masked"))
    save_config(load_config(masked / "config.yaml", ["train.mode=mask"]), masked / "config.yaml")
    err = one_line_error(*export(capsys, "--run", masked, "--out", tmp_path / "c"))
    assert str(masked) in err and "mode 'mask'" in err

    err = one_line_error(*export(capsys, "--run", run, "--out", tmp_path / "d", "--epoch", "7"))
    assert "--epoch 7" in err and "available: 1, 2 (labels/snapshots)" in err

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("keep me")
    err = one_line_error(*export(capsys, "--run", run, "--out", busy))
    assert str(busy) in err and "--overwrite" in err
    assert sorted(p.name for p in busy.iterdir()) == ["mine.txt"]
    assert export(capsys, "--run", run, "--out", busy, "--overwrite")[0] == 0
    assert (busy / "mine.txt").read_text() == "keep me" and (busy / "manifest.json").is_file()

    err = one_line_error(*export(capsys, "--run", run, "--out", tmp_path / "e", "--copy-images"))
    assert "--format mmseg" in err


def test_a_run_being_trained_is_refused_for_its_current_labels(run, tmp_path, capsys):
    from boxsup_ext.training.lock import RunLock

    held = Path(shutil.copytree(run, tmp_path / "held"))
    with RunLock(held):
        err = one_line_error(*export(capsys, "--run", held, "--out", tmp_path / "a"))
        assert f"pid {os.getpid()}" in err and "--epoch K" in err
        assert export(capsys, "--run", held, "--out", tmp_path / "b", "--epoch", "1")[0] == 0


def test_files_get_the_umask(run, tmp_path, capsys):
    previous = os.umask(0o027)
    try:
        assert export(capsys, "--run", run, "--out", tmp_path / "out", "--format", "coco")[0] == 0
    finally:
        os.umask(previous)
    for path in (tmp_path / "out" / "manifest.json", tmp_path / "out" / "annotations" / "instances_train.json"):
        assert path.stat().st_mode & 0o777 == 0o640
    assert not [p for p in (tmp_path / "out").rglob(".*.tmp")]


def test_a_run_stopped_mid_round_is_refused_until_resumed(run, synthetic, tmp_path, capsys, monkeypatch):
    """A stop between two relabel batches of epoch 2 leaves labels/ with two images of epoch 2 and
    two of epoch 1 while the checkpoint still names epoch 1: exporting labels/ as either epoch would
    be wrong, so it is refused (snapshots still export); after --resume, labels/ is epoch 2's, the
    same as the uninterrupted run's."""
    import signal

    from boxsup_ext.training import labels as labels_module

    real = labels_module.relabel_batch

    def stop_after_first_batch_of_epoch_2(net, inputs, settings, seed, epoch, device):
        results = real(net, inputs, settings, seed, epoch, device)
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the trainer's handler: the round stops before its next batch
        return results

    monkeypatch.setattr(labels_module, "relabel_batch", stop_after_first_batch_of_epoch_2)
    stopped = train_run(synthetic, tmp_path / "stopped", extra={"relabel.batch_images": 2}, expect=130)
    capsys.readouterr()
    labels = label_maps(stopped / "labels")
    epoch1, epoch2 = label_maps(stopped / "labels" / "snapshots" / "epoch_001"), label_maps(run / "labels")
    mixed = [i for i in labels if np.array_equal(labels[i], epoch2[i]) and not np.array_equal(labels[i], epoch1[i])]
    assert len(mixed) == 2, "labels/ should hold two images relabelled in epoch 2"

    err = one_line_error(*export(capsys, "--run", stopped, "--out", tmp_path / "a"))
    assert "middle of epoch 2's label round" in err and "--resume" in err and "--epoch K" in err
    assert one_line_error(*export(capsys, "--run", stopped, "--out", tmp_path / "b", "--epoch", "2"))
    assert export(capsys, "--run", stopped, "--out", tmp_path / "c", "--epoch", "1")[0] == 0  # the snapshot

    monkeypatch.setattr(labels_module, "relabel_batch", real)
    assert train_main(["--run-dir", str(stopped), "--resume"]) == 0
    status, message = export(capsys, "--run", stopped, "--out", tmp_path / "d", "--format", "mmseg")
    assert status == 0, message
    assert json.loads((tmp_path / "d" / "manifest.json").read_text())["epoch"] == 2
    for image_id, label in epoch2.items():
        assert np.array_equal(load_label_png(tmp_path / "d" / "ann_dir" / "train" / f"{image_id}.png"), label)
    (stopped / "labels" / "round.json").write_text('{"epoch": 2}')  # damaged: not read as "no record"
    err = one_line_error(*export(capsys, "--run", stopped, "--out", tmp_path / "e"))
    assert "round.json is not the trainer's record of a label round" in err
