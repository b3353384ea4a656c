"""Export a run's pseudo labels for other frameworks.

    python -m boxsup_ext.export --run DIR --out OUT [--epoch K] [--format voc|coco|mmseg]
        [--copy-images] [--overwrite]

The labels are those of one relabel round of the run: by default its last one, the run's
``labels/`` folder (the epoch ``labels/round.json`` names; for runs trained before the trainer wrote
it, the epoch of the label state in ``checkpoints/latest.pt``). A run stopped in the middle of a
label round holds labels of two epochs there and is refused until it is resumed. ``--epoch K`` takes the copy in ``labels/snapshots/epoch_K/`` (``relabel.snapshot_epochs``). Every
training image of the run's ``data.train`` is exported, the mask-supervised ones (semi-supervised
runs) with their ground-truth labels. Formats:

- ``voc``: ``SegmentationClass/<id>.png`` (VOC-palette PNGs of class indices, 255 ignore),
  ``ImageSets/Segmentation/train.txt`` and ``classes.txt``: drop them into a VOC-layout dataset.
- ``coco``: ``annotations/instances_train.json``, one instance per box: the candidate the relabel
  round chose for it, rebuilt from the run's proposal store (clipped to the box when the run had
  ``relabel.clip_to_box``), RLE-encoded; ``bbox`` is the box, ``file_name`` the image's absolute
  path. A box without a candidate (or whose clipped candidate is empty) has no annotation.
- ``mmseg``: ``img_dir/train/`` (symlinks to the images, copies with ``--copy-images`` or where
  links fail), ``ann_dir/train/<id>.png`` (single-channel class indices, 255 ignore),
  ``splits/train.txt`` and ``boxsup_pseudo.py``, a config snippet for mmsegmentation.

Each export writes ``manifest.json`` (run, epoch, format, the recipe, package version and commit,
counts, dataset roots) last. An OUT that exists and holds anything is refused unless
``--overwrite`` is given, which replaces the files of the same names and leaves any other file.
Every file is written atomically (temporary name, then rename) with the user's umask.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from boxsup_ext.core import IGNORE_LABEL, Candidates, box_masks, paint_instances
from boxsup_ext.data import TrainingSet, load_label_png, open_training_set, voc_palette
from boxsup_ext.data.palette import encode_label_png
from boxsup_ext.run_dir import RunDir, choice_epochs, open_run, snapshot_epochs
from boxsup_ext.utils import (
    InputError, atomic_symlink, atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_lines, ensure_output_dir, run_cli,
)

FORMATS = ("voc", "coco", "mmseg")
SPLIT = "train"  # the split name every format gives the exported images
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class LabelSet:
    """The label maps of one relabel round of a run: ``folder`` holds ``<image_id>.png``."""

    run: RunDir
    config: Any  # the run's Config
    epoch: int
    folder: Path

    @property
    def where(self) -> str:
        """``folder`` relative to the run directory (for messages and the manifest)."""
        return self.folder.relative_to(self.run.root).as_posix()


def open_label_set(run_dir: Path, epoch: Optional[int]) -> tuple[LabelSet, dict]:
    """The labels to export from ``run_dir`` (``epoch`` None: the last relabel, ``labels/``) and the
    label state of the run's latest checkpoint ({} when it has none). Refuses a folder that is not
    a run, a ``mask``-mode run, a run without labels, and an epoch without a snapshot."""
    run = open_run(run_dir)
    config = run.read_config()
    if config.train.mode == "mask":
        raise InputError(
            f"--run {run.root} trained in mode 'mask' on ground-truth masks: it estimated no labels to export; "
            "give a run of mode boxsup, boxsup_greedy, rectangles or grabcut"
        )
    if not any(run.labels.glob("*.png")):
        raise InputError(f"--run {run.root} has no labels yet ({run.labels} holds no label PNG); train it for an epoch first")
    label_state = _checkpoint_label_state(run)
    current = label_state.get("epoch")
    current = current if isinstance(current, int) and current > 0 else None
    snapshots = snapshot_epochs(run)
    label_round = run.label_round()  # None for runs trained before labels/round.json was written
    if label_round is not None:
        current, finished = label_round
        if not finished and (epoch is None or epoch == current):  # its snapshot, if any, may be half copied
            raise InputError(
                f"--run {run.root} stopped in the middle of epoch {current}'s label round, so {run.labels} holds labels "
                f"of two epochs ({run.round_file} says so); resume the run with python -m boxsup_ext.train --resume, "
                f"or export a snapshot with --epoch K ({_available([s for s in snapshots if s != current], None)})"
            )
    if epoch is None:
        if current is None:
            raise InputError(
                f"--run {run.root} has no checkpoint that says which epoch {run.labels} holds (the first epoch has not "
                f"finished); export a snapshot with --epoch K ({_available(snapshots, None)}) or train on"
            )
        _refuse_running(run)
        return LabelSet(run, config, current, run.labels), label_state
    if epoch in snapshots:
        return LabelSet(run, config, epoch, run.snapshot_dir(epoch)), label_state
    if epoch == current:
        _refuse_running(run)
        return LabelSet(run, config, epoch, run.labels), label_state
    raise InputError(f"--epoch {epoch}: {run.root} keeps no labels of epoch {epoch}; available: {_available(snapshots, current)}")


def _available(snapshots: Sequence[int], current: Optional[int]) -> str:
    parts = [f"{', '.join(map(str, snapshots))} (labels/snapshots)"] if snapshots else []
    if current is not None and current not in snapshots:
        parts.append(f"{current} (labels/, the last relabel)")
    return " and ".join(parts) or "none (set relabel.snapshot_epochs before training to keep some)"


def _checkpoint_label_state(run: RunDir) -> dict:
    """The ``label_state`` of ``checkpoints/latest.pt`` ({} without a checkpoint); the weights are
    memory-mapped, not read."""
    if not run.latest.is_file():
        return {}
    from boxsup_ext.checkpoints import load_checkpoint

    return load_checkpoint(run.latest, mmap=True)["label_state"]


def _refuse_running(run: RunDir) -> None:
    from boxsup_ext.training.lock import run_holder

    holder = run_holder(run.root)
    if holder is not None:
        raise InputError(
            f"a trainer ({holder}) is training {run.root} and rewrites {run.labels} every epoch; wait for it to "
            "finish or export a finished snapshot with --epoch K"
        )


def read_choices(path: Path) -> dict[str, list[int]]:
    """A ``labels/choices/epoch_NNN.json`` record: image id -> chosen candidate per box (-1: none)."""
    try:
        record = json.loads(path.read_text())
        choices = record["choices"]
        if not isinstance(choices, dict) or not all(
            isinstance(v, list) and all(isinstance(i, int) for i in v) for v in choices.values()
        ):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"{path} is damaged (not a record of chosen candidates); remove it, or export --format voc/mmseg") from None
    return choices


def choices_at(labels: LabelSet, label_state: dict) -> dict[str, list[int]]:
    """The candidate each box of each relabeled image took in the labels of ``labels.epoch``: the
    image's record from the last relabel round at or before that epoch (``labels/choices/``, and the
    checkpoint's label state, which holds its last round's choices for runs from before the
    trainer kept the records)."""
    rounds = {epoch: labels.run.choices_file(epoch) for epoch in choice_epochs(labels.run) if epoch <= labels.epoch}
    found: dict[int, dict[str, list[int]]] = {epoch: read_choices(path) for epoch, path in rounds.items()}
    saved = label_state.get("epoch")
    if isinstance(saved, int) and saved <= labels.epoch and saved not in found and label_state.get("choices"):
        found[saved] = label_state["choices"]
    merged: dict[str, list[int]] = {}
    for epoch in sorted(found):
        merged.update(found[epoch])
    return merged


@dataclass(frozen=True)
class ExportImage:
    """One training image to export and its label map file."""

    image_id: str
    source: int
    index: int
    supervision: str
    record: Any  # its ImageRecord
    label_file: Path


def list_images(labels: LabelSet, training: TrainingSet) -> list[ExportImage]:
    """Every training image of the run with its label PNG in ``labels.folder`` (all must exist)."""
    images, missing = [], []
    for image in training.images:
        path = labels.folder / f"{image.image_id}.png"
        if not path.is_file():
            missing.append(image.image_id)
        record = training.datasets[image.source][image.index]
        images.append(ExportImage(image.image_id, image.source, image.index, image.supervision, record, path))
    if missing:
        raise InputError(
            f"{labels.folder} lacks the labels of {len(missing)} of the run's {len(images)} training images (first: "
            f"{missing[0]}); the run's data.train changed or the run stopped mid-relabel: resume it, or export another --epoch"
        )
    return images


def instance_masks(candidates: Candidates, chosen: Sequence[int], boxes: np.ndarray, clip: bool) -> np.ndarray:
    """bool [M, H, W]: box m's chosen candidate, clipped to its box when ``clip`` (as the relabel
    step paints it); all False for a box with ``chosen`` -1."""
    chosen = np.asarray(chosen, dtype=np.int64)
    height, width = candidates.units.shape
    masks = np.zeros((len(chosen), height, width), dtype=bool)
    assigned = np.flatnonzero(chosen >= 0)
    if assigned.size:
        if int(chosen[assigned].max()) >= candidates.num_candidates:
            raise ValueError(f"candidate {int(chosen[assigned].max())} chosen, the store has {candidates.num_candidates}")
        masks[assigned] = candidates.masks(chosen[assigned])
        if clip:
            masks[assigned] &= box_masks(boxes[assigned], height, width)
    return masks


# ----------------------------------------------------------------------------------------------
# The formats


def write_voc(out: Path, training: TrainingSet, images: Sequence[ExportImage]) -> dict:
    for image in _progress(images, "voc"):
        atomic_write_bytes(out / "SegmentationClass" / f"{image.image_id}.png", encode_label_png(load_label_png(image.label_file)))
    atomic_write_lines(out / "ImageSets" / "Segmentation" / f"{SPLIT}.txt", [image.image_id for image in images])
    atomic_write_lines(out / "classes.txt", training.class_names)
    return {"labels": "SegmentationClass", "image_set": f"ImageSets/Segmentation/{SPLIT}.txt", "classes": "classes.txt"}


def write_mmseg(out: Path, labels: LabelSet, training: TrainingSet, images: Sequence[ExportImage], counts: dict, copy: bool) -> dict:
    files = [_image_file(training, image) for image in images]
    suffixes = sorted({path.suffix.lower() for path in files})
    # mmseg finds image i at img_dir/<id><img_suffix>, one suffix for all; its readers decode by content.
    suffix = suffixes[0] if len(suffixes) == 1 else ".jpg"
    placed = {"symlink": 0, "copy": 0}
    for image, path in _progress(list(zip(images, files)), "mmseg"):
        atomic_write_bytes(out / "ann_dir" / SPLIT / f"{image.image_id}.png", encode_label_png(load_label_png(image.label_file), palette=False))
        placed[_place_image(path, out / "img_dir" / SPLIT / f"{image.image_id}{suffix}", copy)] += 1
    atomic_write_lines(out / "splits" / f"{SPLIT}.txt", [image.image_id for image in images])
    counts["images_linked"], counts["images_copied"] = placed["symlink"], placed["copy"]
    with atomic_write(out / "boxsup_pseudo.py", "w") as handle:
        handle.write(mmseg_config(out, training.class_names, suffix, labels))
    return {"images": f"img_dir/{SPLIT}", "labels": f"ann_dir/{SPLIT}", "split": f"splits/{SPLIT}.txt", "config": "boxsup_pseudo.py"}


def mmseg_config(out: Path, class_names: Sequence[str], img_suffix: str, labels: LabelSet) -> str:
    """The config snippet of an mmseg export: mmsegmentation 1.x's training dataloader over the
    export (its usual VOC training pipeline), with the 0.x form in comments."""
    flat = voc_palette()
    palette = [flat[3 * c : 3 * c + 3] for c in range(len(class_names))]
    root = str(out.resolve())
    return f'''# mmsegmentation (1.x) training data: the BoxSup pseudo labels of {labels.run.root.resolve()}
# ({labels.where}, epoch {labels.epoch}), written by python -m boxsup_ext.export. List this file in a config's
# _base_ beside a model, a schedule and a runtime (not a dataset base), set the heads' num_classes = {len(class_names)}
# and the data preprocessor's size = crop_size, and add your validation data.
# Labels are class indices with 0 = background and {IGNORE_LABEL} = ignore: reduce_zero_label=False, ignore_index={IGNORE_LABEL}.
dataset_type = 'BaseSegDataset'
data_root = {root!r}
classes = {tuple(class_names)!r}
palette = {palette!r}
num_classes = {len(class_names)}
crop_size = (512, 512)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
train_dataset = dict(
    type=dataset_type,
    data_root=data_root,
    metainfo=dict(classes=classes, palette=palette),
    data_prefix=dict(img_path='img_dir/{SPLIT}', seg_map_path='ann_dir/{SPLIT}'),
    ann_file='splits/{SPLIT}.txt',
    img_suffix={img_suffix!r},
    seg_map_suffix='.png',
    reduce_zero_label=False,
    ignore_index={IGNORE_LABEL},
    pipeline=train_pipeline,
)
train_dataloader = dict(
    batch_size=4, num_workers=4, persistent_workers=True, sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=train_dataset,
)
# mmsegmentation 0.x instead:
# data = dict(train=dict(type='CustomDataset', data_root=data_root, img_dir='img_dir/{SPLIT}', ann_dir='ann_dir/{SPLIT}',
#                        split='splits/{SPLIT}.txt', classes=classes, palette=palette, img_suffix={img_suffix!r},
#                        seg_map_suffix='.png', reduce_zero_label=False, ignore_index={IGNORE_LABEL}, pipeline=train_pipeline))
'''


def write_coco(
    out: Path, labels: LabelSet, training: TrainingSet, images: Sequence[ExportImage], counts: dict, choices: dict[str, list[int]]
) -> dict:
    from pycocotools import mask as mask_utils

    from boxsup_ext.train import open_proposal_stores

    stores = open_proposal_stores(labels.config, training)
    clip = bool(labels.config.relabel.clip_to_box)
    coco_images, annotations = [], []
    counts["boxes_empty"] = 0
    for number, image in enumerate(_progress(images, "coco"), start=1):
        record = image.record
        coco_images.append({"id": number, "file_name": str(_image_file(training, image).resolve()),
                            "height": record.height, "width": record.width, "boxsup_id": image.image_id})
        if image.supervision == "mask":
            instances = training.datasets[image.source].load_instances(image.index)
            if instances is None:
                continue
            masks, chosen = instances[0], [None] * record.num_boxes
        else:
            chosen = _chosen_of(image, choices, labels)
            entry = stores[image.source].get(image.image_id)
            where = f"{stores[image.source].path} entry of {image.image_id!r}"
            try:
                masks = instance_masks(entry.candidates, chosen, record.boxes, clip)
            except ValueError as err:
                raise InputError(f"{where} does not fit the choices of epoch {labels.epoch} ({err}); was the store rebuilt after training?") from None
            _check_painted(image, masks, np.asarray(chosen) >= 0, where, labels)
        for m in range(record.num_boxes):
            if chosen[m] is not None and chosen[m] < 0:
                continue
            area = int(masks[m].sum())
            if area == 0:
                counts["boxes_empty"] += 1
                continue
            rle = mask_utils.encode(np.asfortranarray(masks[m].astype(np.uint8)))
            x0, y0, x1, y1 = (float(v) for v in record.boxes[m])
            annotation = {"id": len(annotations) + 1, "image_id": number, "category_id": int(record.labels[m]),
                          "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
                          "area": area, "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0}
            if chosen[m] is not None:
                annotation["boxsup_candidate"] = int(chosen[m])
            annotations.append(annotation)
    counts["annotations"] = len(annotations)
    categories = [{"id": c, "name": name, "supercategory": "object"} for c, name in enumerate(training.class_names) if c > 0]
    name = f"annotations/instances_{SPLIT}.json"
    atomic_write_json(out / name, {
        "info": {"description": f"BoxSup pseudo labels of {labels.run.root.resolve()} ({labels.where}, epoch {labels.epoch})",
                 "date_created": _now()},
        "licenses": [], "images": coco_images, "annotations": annotations, "categories": categories,
    }, indent=None)
    return {"annotations": name}


def _chosen_of(image: ExportImage, choices: dict[str, list[int]], labels: LabelSet) -> list[int]:
    chosen = choices.get(image.image_id)
    if chosen is None:
        raise InputError(
            f"{labels.run.root} keeps no chosen candidates of {image.image_id!r} for epoch {labels.epoch} (labels/choices/ "
            "is missing them: runs trained before the trainer kept it export COCO only for their last relabel); "
            "--format voc or mmseg export the label maps alone"
        )
    if len(chosen) != image.record.num_boxes:
        raise InputError(
            f"{image.image_id!r} has {image.record.num_boxes} boxes in the dataset but {len(chosen)} chosen candidates in "
            f"epoch {labels.epoch}; the dataset changed since training"
        )
    return chosen


def _check_painted(image: ExportImage, masks: np.ndarray, assigned: np.ndarray, where: str, labels: LabelSet) -> None:
    """The instances, painted by the relabel step's rule, must give the label map wherever it is
    not ignore: else the store, the dataset or the labels changed since that round."""
    label = load_label_png(image.label_file)
    painted = paint_instances(masks[assigned], image.record.labels[assigned], *label.shape)
    differ = int(((painted != label) & (label != IGNORE_LABEL)).sum())
    if differ:
        raise InputError(
            f"{image.label_file}: {differ} pixels differ from the candidates of epoch {labels.epoch} in {where}; the store "
            "or dataset changed since training, or the run stopped mid-relabel (resume it); --format voc/mmseg export the PNGs alone"
        )


# ----------------------------------------------------------------------------------------------
# Files


def _image_file(training: TrainingSet, image: ExportImage) -> Path:
    path = training.datasets[image.source].image_file(image.index)
    if path is None:
        raise InputError(f"data.train.{image.source} serves {image.image_id!r} without an image file; this format needs image files")
    return Path(path)


def _place_image(source: Path, target: Path, copy: bool) -> str:
    """Put the image ``source`` at ``target``: a symlink (made under a temporary name, then renamed)
    unless ``copy`` or the filesystem refuses links, else an atomic copy. Returns which."""
    if not copy:
        try:
            atomic_symlink(source.resolve(), target)
            return "symlink"
        except OSError:
            pass
    with open(source, "rb") as src, atomic_write(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return "copy"


def _progress(items: Sequence, desc: str):
    from boxsup_ext.training.logbook import progress

    return progress(items, sys.stderr.isatty() and len(items) > 50, desc=desc)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def package_commit() -> Optional[str]:
    """The git commit of the checkout this package runs from, or None (an installed copy, no git)."""
    here = Path(__file__).resolve().parent
    try:
        result = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None


def manifest(fmt: str, labels: LabelSet, training: TrainingSet, images: Sequence[ExportImage], counts: dict, files: dict) -> dict:
    from boxsup_ext import __version__
    from boxsup_ext.config import config_to_dict

    config = config_to_dict(labels.config)
    sources = [{"kind": s["kind"], "root": str(Path(s["root"]).resolve()), "split": s["split"], "supervision": s["supervision"]}
               for s in config["data"]["train"]]
    roots = sorted({source["root"] for source in sources})
    return {
        "format": fmt,
        "run": str(labels.run.root.resolve()),
        "epoch": labels.epoch,
        "labels": labels.where,
        "recipe": {"train_mode": config["train"]["mode"], "relabel": config["relabel"]},
        "package": {"name": "boxsup_ext", "version": __version__, "git_commit": package_commit()},
        "dataset_root": roots[0] if len(roots) == 1 else roots,
        "datasets": sources,
        "classes": training.class_names,
        "counts": counts,
        "files": files,
        "created": _now(),
    }


def box_counts(images: Sequence[ExportImage], choices: dict[str, list[int]]) -> dict:
    """Images, boxes, and the boxes left without a candidate (None when a relabeled image's choices
    are not known) of an export."""
    box_images = [image for image in images if image.supervision != "mask"]
    known = all(image.image_id in choices for image in box_images)
    return {
        "images": len(images),
        "images_ground_truth": len(images) - len(box_images),
        "boxes": sum(image.record.num_boxes for image in images),
        "boxes_unassigned": sum(sum(c < 0 for c in choices[image.image_id]) for image in box_images) if known else None,
    }


# ----------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m boxsup_ext.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, type=Path, help="trainer run directory")
    parser.add_argument("--out", required=True, type=Path, help="output folder (must be empty or new unless --overwrite)")
    parser.add_argument("--epoch", type=int, metavar="K", help="export labels/snapshots/epoch_K/ (default: the last relabel, labels/)")
    parser.add_argument("--format", choices=FORMATS, default="voc", help="voc (default), coco or mmseg")
    parser.add_argument("--copy-images", action="store_true", help="mmseg: copy the images into img_dir instead of linking them")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out, replacing files of the same names")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.copy_images and args.format != "mmseg":
        raise InputError("--copy-images is for --format mmseg (the other formats do not place images)")
    out = ensure_output_dir(args.out, "--out", create=False)
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise InputError(f"--out {out} exists and is not empty; choose a new folder or pass --overwrite to replace the files there")
    labels, label_state = open_label_set(args.run, args.epoch)
    training = open_training_set(labels.config.data.train, labels.config.data.skip_bad)
    images = list_images(labels, training)
    choices = choices_at(labels, label_state)
    counts = box_counts(images, choices)
    ensure_output_dir(out, "--out")
    if args.format == "voc":
        files = write_voc(out, training, images)
    elif args.format == "mmseg":
        files = write_mmseg(out, labels, training, images, counts, args.copy_images)
    else:
        files = write_coco(out, labels, training, images, counts, choices)
    atomic_write_json(out / MANIFEST, manifest(args.format, labels, training, images, counts, files))
    unassigned = counts["boxes_unassigned"]
    print(f"wrote the {args.format} export of {labels.where} (epoch {labels.epoch}) to {out}: {counts['images']} images, "
          f"{counts['boxes']} boxes, {'?' if unassigned is None else unassigned} without a candidate")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
