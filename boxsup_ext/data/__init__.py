"""Datasets: VOC 2012 / 2007, COCO, a generic folder format, unions of sources, the synthetic set.

The core is torch-free (numpy + PIL; scipy and pycocotools are imported only where needed), so it
imports fast. Entry points::

    open_dataset(root, split, kind="voc"|"voc07"|"coco"|"folder"|"synthetic", skip_bad=False, **kw)
    open_training_set(config.data.train)   # the sources of a trainer config, with their supervision
    python -m boxsup_ext.data check ROOT
    python -m boxsup_ext.data.synthetic --out DIR --num-train N --num-val M --seed S
"""

from __future__ import annotations

from pathlib import Path

from boxsup_ext.data.palette import load_label_png, save_label_png, voc_palette
from boxsup_ext.data.records import ImageRecord, PathLike, SegmentationDataset
from boxsup_ext.data.sources import TrainImage, TrainingSet, open_source, open_training_set
from boxsup_ext.data.voc import VOC_CLASSES, VOCDataset
from boxsup_ext.utils import InputError

KINDS = ("voc", "voc07", "coco", "folder", "synthetic")

__all__ = [
    "KINDS",
    "VOC_CLASSES",
    "ImageRecord",
    "SegmentationDataset",
    "TrainImage",
    "TrainingSet",
    "VOCDataset",
    "detect_kind",
    "load_label_png",
    "open_dataset",
    "open_source",
    "open_training_set",
    "save_label_png",
    "voc_palette",
]


def detect_kind(root: PathLike) -> str:
    """Guess a dataset's kind from its layout (``synthetic.json`` / ``Annotations`` / COCO ``annotations``)."""
    root = Path(root)
    if (root / "synthetic.json").exists():
        return "synthetic"
    if (root / "Annotations").is_dir():
        return "voc"
    if list((root / "annotations").glob("instances_*.json")):
        return "coco"
    if (root / "classes.txt").exists() and (root / "images").is_dir():
        return "folder"
    raise InputError(f"{root}: cannot tell the dataset kind from its layout; pass --kind")


def open_dataset(root: PathLike, split: str, kind: str = "voc", skip_bad: bool = False, **kwargs) -> SegmentationDataset:
    """Open one split of a dataset.

    Args:
        root: dataset folder (VOC: the ``VOC2012`` / ``VOC2007`` folder; COCO: the folder holding
            ``annotations/``; folder / synthetic: the dataset folder).
        split: split name (VOC: ``train``, ``val``, ``trainval``, ``trainaug``; COCO: ``train2017`` ...).
        kind: ``voc``, ``voc07`` (boxes only), ``coco``, ``folder``, ``synthetic`` (VOC layout), or
            ``auto`` (see :func:`detect_kind`).
        skip_bad: log and leave out bad images/objects instead of raising :class:`InputError`.
        **kwargs: passed to the reader (``COCODataset``: ``categories="voc20"|"all80"``, ...).
    """
    if not Path(root).is_dir():
        raise InputError(f"{root}: dataset root is not a folder")
    if kind == "auto":
        kind = detect_kind(root)
    if kind in ("voc", "synthetic"):
        return VOCDataset(root, split, name=kwargs.pop("name", kind), skip_bad=skip_bad, **kwargs)
    if kind == "voc07":
        kwargs.setdefault("use_masks", False)
        return VOCDataset(root, split, name=kwargs.pop("name", "voc07"), prefer_main=True, skip_bad=skip_bad, **kwargs)
    if kind == "coco":
        from boxsup_ext.data.coco import COCODataset

        return COCODataset(root, split, skip_bad=skip_bad, **kwargs)
    if kind == "folder":
        from boxsup_ext.data.folder import FolderDataset

        return FolderDataset(root, split, skip_bad=skip_bad, **kwargs)
    raise InputError(f"dataset kind must be one of {KINDS} or 'auto', got {kind!r}")
