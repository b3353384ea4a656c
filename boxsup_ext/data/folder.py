"""A generic folder format: images, PNG class maps, split lists, class names.

Layout under ``root``::

    classes.txt                 class names, one a line, the first "background"
    images/<id>.jpg|.png        RGB images
    labels/<id>.png             class maps (palette or grayscale indices, 255 = ignore)
    splits/<split>.txt          image ids (or <split>.txt at the root)
    instances/<id>.png          optional instance ids 1..K (K = number of boxes, in box order)
    boxes/<id>.json             optional {"boxes": [[x0, y0, x1, y1], ...], "labels": [name or index, ...],
                                "difficult": [bool, ...]} in half-open pixel coordinates

Without ``boxes/<id>.json`` the boxes are the tight boxes of the connected components of each class
in the class map (components under ``min_component_area`` pixels dropped), and those components are
the instances. This serves PASCAL-CONTEXT after its usual conversion to 59-class PNGs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from boxsup_ext.core import IGNORE_LABEL
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
from boxsup_ext.data.voc import read_class_names
from boxsup_ext.utils import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def class_map_components(class_map: np.ndarray, num_classes: int, min_area: int) -> tuple[np.ndarray, np.ndarray]:
    """Connected components (8-connected) of each object class in a class map.

    Returns (component map int32 [H, W] with 0 = none and k + 1 = component k, labels int64 [K]),
    components ordered by class, then by first pixel in raster order; ignore (255), background and
    components smaller than ``min_area`` pixels are left out.
    """
    from scipy import ndimage

    components = np.zeros(class_map.shape, np.int32)
    labels: list[int] = []
    for cls in np.unique(class_map):
        if cls == 0 or cls == IGNORE_LABEL or cls >= num_classes:
            continue
        blobs, count = ndimage.label(class_map == cls, structure=np.ones((3, 3), bool))
        kept = np.flatnonzero(np.bincount(blobs.ravel(), minlength=count + 1)[1:] >= min_area) + 1
        renumber = np.zeros(count + 1, np.int32)
        renumber[kept] = len(labels) + 1 + np.arange(len(kept), dtype=np.int32)
        inside = blobs > 0
        components[inside] = renumber[blobs[inside]]
        labels.extend([int(cls)] * len(kept))
    return components, np.asarray(labels, np.int64)


def components_to_boxes(components: np.ndarray, count: int) -> np.ndarray:
    """float32 [K, 4] tight half-open (x0, y0, x1, y1) boxes of components 1..K of a component map."""
    from scipy import ndimage

    slices = ndimage.find_objects(components, max_label=count)
    return np.asarray([[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in slices], np.float32).reshape(-1, 4)


class FolderDataset(SegmentationDataset):
    """The generic folder format (see the module docstring).

    Args:
        root: dataset folder.
        split: split list name.
        name: dataset name (each record's ``source``).
        min_component_area: smallest connected component, in pixels, that becomes a box.
        skip_bad: log and leave out bad images/objects instead of raising.
    """

    def __init__(
        self,
        root: PathLike,
        split: str,
        name: str = "folder",
        min_component_area: int = 16,
        skip_bad: bool = False,
    ) -> None:
        root = Path(root)
        if not (root / "classes.txt").exists():
            raise InputError(f"{root / 'classes.txt'}: missing; a folder dataset lists its class names there")
        problems = ProblemLog(skip_bad)
        super().__init__(name, read_class_names(root), problems)
        self.root = root
        self.min_component_area = int(min_component_area)
        self._image_paths: list[Path] = []
        self._box_files: list[bool] = []
        list_path = root / "splits" / f"{split}.txt"
        if not list_path.exists() and (root / f"{split}.txt").exists():
            list_path = root / f"{split}.txt"
        for image_id in read_id_list(list_path):
            self._add_image(image_id, problems)

    def _find_image(self, image_id: str) -> Path:
        for suffix in IMAGE_SUFFIXES:
            path = self.root / "images" / f"{image_id}{suffix}"
            if path.exists():
                return path
        return self.root / "images" / f"{image_id}.jpg"

    def _add_image(self, image_id: str, problems: ProblemLog) -> None:
        image_path = self._find_image(image_id)
        size = image_size(image_path, problems)
        if size is None:
            return
        height, width = size
        label_path = self.root / "labels" / f"{image_id}.png"
        for mask_path in (label_path, self.root / "instances" / f"{image_id}.png"):
            if (mask_path == label_path or mask_path.exists()) and not mask_matches_image(mask_path, size, problems):
                return
        box_path = self.root / "boxes" / f"{image_id}.json"
        if box_path.exists():
            objects = self._read_box_file(box_path, height, width, problems)
        else:
            class_map = self._read_class_map(label_path, size, problems)
            if class_map is None:
                return
            components, labels = class_map_components(class_map, self.num_classes, self.min_component_area)
            objects = (components_to_boxes(components, len(labels)), labels, np.zeros(len(labels), bool))
            if len(labels) == 0:
                problems.report(label_path, f"class map has no object of at least {self.min_component_area} pixels")
                objects = None
        if objects is None:
            return
        self.records.append(ImageRecord(image_id, height, width, *objects, "mask", self.name))
        self._image_paths.append(image_path)
        self._box_files.append(box_path.exists())

    def _read_class_map(self, path: Path, size: tuple[int, int], problems: ProblemLog) -> Optional[np.ndarray]:
        try:
            return load_class_map_png(path, *size, self.num_classes)
        except InputError as err:
            problems.report(path, str(err).split(": ", 1)[-1])
            return None

    def _read_box_file(self, path: Path, height: int, width: int, problems: ProblemLog):
        try:
            data = json.loads(path.read_text())
            raw_boxes, raw_labels = data["boxes"], data["labels"]
            raw_difficult = data.get("difficult", [False] * len(raw_boxes))
            if not (len(raw_boxes) == len(raw_labels) == len(raw_difficult)):
                raise ValueError("'boxes', 'labels' and 'difficult' differ in length")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            problems.report(path, f"box file is not {{'boxes': [[x0, y0, x1, y1], ...], 'labels': [...]}} ({err})")
            return None
        boxes, labels, difficult = [], [], []
        for k, (box, label, flag) in enumerate(zip(raw_boxes, raw_labels, raw_difficult)):
            index = self.class_names.index(label) if label in self.class_names else label
            if not isinstance(index, int) or not 0 < index < self.num_classes:
                problems.report(path, f"object {k} has unknown class {label!r}")
                continue
            clipped = clip_box(box, height, width, path, problems)
            if clipped is not None:
                boxes.append(clipped)
                labels.append(index)
                difficult.append(bool(flag))
        if not boxes:
            problems.report(path, "box file has no usable objects")
            return None
        return stack_objects(boxes, labels, difficult)

    def image_file(self, i: int) -> Path:
        return self._image_paths[i]

    def load_image(self, i: int) -> np.ndarray:
        record = self.records[i]
        return load_rgb(self._image_paths[i], record.height, record.width)

    def load_class_map(self, i: int) -> Optional[np.ndarray]:
        record = self.records[i]
        path = self.root / "labels" / f"{record.image_id}.png"
        return load_class_map_png(path, record.height, record.width, self.num_classes)

    def load_instances(self, i: int) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """Masks bool [M, H, W] from ``instances/<id>.png``, or the class-map components behind derived boxes."""
        record = self.records[i]
        path = self.root / "instances" / f"{record.image_id}.png"
        if path.exists():
            instance_map = check_label_size(path, load_label_png(path), record.height, record.width)
            ids = np.arange(1, record.num_boxes + 1)
            return instance_map[None] == ids[:, None, None], record.labels.copy()
        if self._box_files[i]:
            return None
        components, labels = class_map_components(self.load_class_map(i), self.num_classes, self.min_component_area)
        ids = np.arange(1, len(labels) + 1)
        return components[None] == ids[:, None, None], labels
