"""PASCAL VOC 2012 / 2007 readers (and any dataset in the VOC layout, such as the synthetic one).

Layout under ``root`` (the ``VOC2012`` / ``VOC2007`` folder)::

    JPEGImages/<id>.jpg               images
    Annotations/<id>.xml              boxes (1-based inclusive pixel corners), names, difficult flags
    SegmentationClass/<id>.png        palette class maps (255 = ignore), optional
    SegmentationClassAug/<id>.png     grayscale class maps of the augmented set, optional
    SegmentationObject/<id>.png       instance ids 1..K in the XML's object order, optional
    ImageSets/Segmentation/<split>.txt  (train, val, trainval, trainaug)
    ImageSets/Main/<split>.txt        detection splits (used by VOC 2007 and as a fallback)
    classes.txt                       optional class names, one a line, first "background"
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from boxsup_ext.data.palette import load_label_png
from boxsup_ext.data.records import (
    ImageRecord,
    PathLike,
    ProblemLog,
    SegmentationDataset,
    check_label_size,
    clip_box,
    image_size,
    load_class_map_png,
    load_rgb,
    mask_matches_image,
    read_id_list,
    stack_objects,
)
from boxsup_ext.utils import InputError

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

SPLIT_ALIASES = {"train_aug": "trainaug", "trainaug": "trainaug"}
CLASS_MAP_DIRS = ("SegmentationClass", "SegmentationClassAug")


def read_class_names(root: Path, default: Sequence[str] = VOC_CLASSES) -> list[str]:
    """Class names from ``root/classes.txt`` when present (first must be background), else ``default``."""
    path = root / "classes.txt"
    if not path.exists():
        return list(default)
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names or names[0] != "background":
        raise InputError(f"{path}: the first class name must be 'background', got {names[:1]}")
    if len(set(names)) != len(names):
        raise InputError(f"{path}: class names must be unique")
    if len(names) > 255:
        raise InputError(f"{path}: at most 255 classes fit a uint8 label map, got {len(names)}")
    return names


def split_list_path(root: Path, split: str, prefer_main: bool) -> Path:
    """The split list file for ``split``; Segmentation lists first unless ``prefer_main``."""
    names = [split]
    if split in SPLIT_ALIASES:
        names = ["trainaug", "train_aug"]
    folders = ["Main", "Segmentation"] if prefer_main else ["Segmentation", "Main"]
    candidates = [root / "ImageSets" / folder / f"{name}.txt" for folder in folders for name in names]
    for path in candidates:
        if path.exists():
            return path
    if not (root / "ImageSets").is_dir():
        raise InputError(f"{root}: no ImageSets folder; is this the VOC2012/VOC2007 folder of the devkit?")
    raise InputError(f"{candidates[0]}: split list not found; available splits: {available_splits(root)}")


def available_splits(root: Path) -> list[str]:
    """Names of the split lists under ``root/ImageSets/{Segmentation,Main}`` (per-class lists excluded)."""
    found = set()
    for folder in ("Segmentation", "Main"):
        for path in (root / "ImageSets" / folder).glob("*.txt"):
            if "_" not in path.stem or path.stem == "train_aug":
                found.add(path.stem)
    return sorted(found)


def parse_annotation(
    path: Path, class_index: dict[str, int], height: int, width: int, problems: ProblemLog
) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Parse one VOC XML: (boxes float32 [M, 4], labels int64 [M], difficult bool [M], kept int64 [M]).

    ``kept`` holds each returned object's position in the XML (for SegmentationObject ids). Returns
    None after reporting a missing/unparsable file or one without (usable) objects.
    """
    try:
        tree = ET.parse(path)
    except FileNotFoundError:
        problems.report(path, "annotation XML is missing")
        return None
    except ET.ParseError as err:
        problems.report(path, f"annotation XML is not well-formed ({err})")
        return None
    boxes, labels, difficult, kept = [], [], [], []
    objects = tree.getroot().findall("object")
    for position, obj in enumerate(objects):
        name = (obj.findtext("name") or "").strip()
        if name not in class_index:
            problems.report(path, f"object {position} has unknown class name {name!r}")
            continue
        bndbox = obj.find("bndbox")
        try:
            xmin, ymin, xmax, ymax = (float(bndbox.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            problems.report(path, f"object {position} ({name}) has no valid bndbox xmin/ymin/xmax/ymax")
            continue
        # VOC corners are 1-based and inclusive: pixel columns xmin..xmax cover [xmin - 1, xmax).
        box = clip_box((xmin - 1.0, ymin - 1.0, xmax, ymax), height, width, path, problems)
        if box is None:
            continue
        boxes.append(box)
        labels.append(class_index[name])
        difficult.append((obj.findtext("difficult") or "0").strip() == "1")
        kept.append(position)
    if not boxes:
        problems.report(path, "annotation has no objects" if not objects else "annotation has no usable objects")
        return None
    return (*stack_objects(boxes, labels, difficult), np.asarray(kept, dtype=np.int64))


class VOCDataset(SegmentationDataset):
    """A dataset in the VOC layout.

    Args:
        root: the folder holding ``JPEGImages``, ``Annotations``, ``ImageSets``.
        split: split list name (``train``, ``val``, ``trainval``, ``trainaug`` / ``train_aug``).
        name: dataset name, used as every record's ``source``.
        use_masks: when True, images with a class map are ``"mask"``-supervised and class maps are
            loaded; when False (VOC 2007, the paper's box-only extra data) everything is ``"box"``.
        prefer_main: look up ``split`` in ``ImageSets/Main`` before ``ImageSets/Segmentation``.
        skip_bad: log and leave out bad images/objects instead of raising :class:`InputError`.
    """

    def __init__(
        self,
        root: PathLike,
        split: str,
        name: str = "voc",
        use_masks: bool = True,
        prefer_main: bool = False,
        skip_bad: bool = False,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise InputError(f"{root}: dataset root is not a folder")
        problems = ProblemLog(skip_bad)
        super().__init__(name, read_class_names(root), problems)
        self.root = root
        self.split = SPLIT_ALIASES.get(split, split)
        self.use_masks = use_masks
        self._class_map_paths: list[Optional[Path]] = []
        self._object_positions: list[np.ndarray] = []
        class_index = {n: i for i, n in enumerate(self.class_names) if i > 0}
        for image_id in read_id_list(split_list_path(root, split, prefer_main)):
            self._add_image(image_id, class_index, problems)

    def _add_image(self, image_id: str, class_index: dict[str, int], problems: ProblemLog) -> None:
        image_path = self.image_path(image_id)
        size = image_size(image_path, problems)
        if size is None:
            return
        height, width = size
        parsed = parse_annotation(self.root / "Annotations" / f"{image_id}.xml", class_index, height, width, problems)
        if parsed is None:
            return
        class_map_path = self._find_class_map(image_id) if self.use_masks else None
        for mask_path in (class_map_path, self._object_map_path(image_id)):
            if mask_path is not None and mask_path.exists() and not mask_matches_image(mask_path, size, problems):
                return
        boxes, labels, difficult, kept = parsed
        supervision = "mask" if class_map_path is not None else "box"
        self.records.append(ImageRecord(image_id, height, width, boxes, labels, difficult, supervision, self.name))
        self._class_map_paths.append(class_map_path)
        self._object_positions.append(kept)

    def image_path(self, image_id: str) -> Path:
        path = self.root / "JPEGImages" / f"{image_id}.jpg"
        if not path.exists():
            for other in (".jpeg", ".png"):
                if path.with_suffix(other).exists():
                    return path.with_suffix(other)
        return path

    def _find_class_map(self, image_id: str) -> Optional[Path]:
        for folder in CLASS_MAP_DIRS:
            path = self.root / folder / f"{image_id}.png"
            if path.exists():
                return path
        return None

    def _object_map_path(self, image_id: str) -> Path:
        return self.root / "SegmentationObject" / f"{image_id}.png"

    def image_file(self, i: int) -> Path:
        return self.image_path(self.records[i].image_id)

    def load_image(self, i: int) -> np.ndarray:
        record = self.records[i]
        return load_rgb(self.image_path(record.image_id), record.height, record.width)

    def load_class_map(self, i: int) -> Optional[np.ndarray]:
        path = self._class_map_paths[i]
        if path is None:
            return None
        record = self.records[i]
        return load_class_map_png(path, record.height, record.width, self.num_classes)

    def load_instances(self, i: int) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """Masks bool [M, H, W] from ``SegmentationObject`` (id k + 1 = XML object k), or None."""
        record = self.records[i]
        path = self._object_map_path(record.image_id)
        if not self.use_masks or not path.exists():
            return None
        object_map = check_label_size(path, load_label_png(path), record.height, record.width)
        ids = self._object_positions[i] + 1
        masks = object_map[None, :, :] == ids[:, None, None]
        return masks, record.labels.copy()
