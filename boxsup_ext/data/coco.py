"""COCO instances reader (pycocotools JSON; RLE and polygon masks).

Layout under ``root`` (COCO 2017 style)::

    annotations/instances_<split>.json
    <split>/<file_name>          or images/<split>/<file_name>

``categories="voc20"`` maps the 20 categories VOC shares to VOC class ids and drops the other 60
(images left without objects are dropped); ``categories="all80"`` keeps the 80 categories in id
order. Crowd annotations are not boxes; they mark their pixels 255 (ignore) in the class map.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from boxsup_ext.data.records import (
    ImageRecord,
    PathLike,
    ProblemLog,
    SegmentationDataset,
    clip_box,
    image_size,
    load_rgb,
    stack_objects,
)
from boxsup_ext.data.voc import VOC_CLASSES
from boxsup_ext.utils import InputError

# VOC name -> COCO name, for the 20 categories both have.
VOC_TO_COCO = {
    "aeroplane": "airplane", "bicycle": "bicycle", "bird": "bird", "boat": "boat", "bottle": "bottle",
    "bus": "bus", "car": "car", "cat": "cat", "chair": "chair", "cow": "cow",
    "diningtable": "dining table", "dog": "dog", "horse": "horse", "motorbike": "motorcycle",
    "person": "person", "pottedplant": "potted plant", "sheep": "sheep", "sofa": "couch",
    "train": "train", "tvmonitor": "tv",
}  # fmt: skip
CATEGORY_SETS = ("voc20", "all80")


def _decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """bool [H, W] mask of a COCO polygon list, uncompressed RLE or compressed RLE."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    return mask_utils.decode(rle).astype(bool)


def _segmentation_problem(segmentation, height: int, width: int) -> Optional[str]:
    """Why a COCO segmentation cannot be decoded for an H x W image, or None when it can."""
    if isinstance(segmentation, list):
        if not segmentation or any(len(poly) < 6 or len(poly) % 2 for poly in segmentation):
            return "polygon segmentation needs lists of at least 3 (x, y) points"
        return None
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [height, width]:
            return f"mask size {segmentation['size']} differs from the image size [{height}, {width}]"
        return None
    return "segmentation is neither a polygon list nor an RLE dict with 'counts' and 'size'"


class COCODataset(SegmentationDataset):
    """COCO instances as a segmentation dataset.

    Args:
        root: folder holding ``annotations/`` and the image folder.
        split: e.g. ``train2017`` / ``val2017``.
        categories: ``"voc20"`` (VOC's 20 classes, VOC ids) or ``"all80"``.
        annotation_file, image_dir: override the default locations.
        use_masks: records are ``"mask"``-supervised and masks are served; False gives ``"box"``.
        skip_bad: log and leave out bad images/objects instead of raising.
    """

    def __init__(
        self,
        root: PathLike,
        split: str,
        categories: str = "voc20",
        annotation_file: Optional[PathLike] = None,
        image_dir: Optional[PathLike] = None,
        use_masks: bool = True,
        name: str = "coco",
        skip_bad: bool = False,
    ) -> None:
        if categories not in CATEGORY_SETS:
            raise InputError(f"categories must be one of {CATEGORY_SETS}, got {categories!r}")
        root = Path(root)
        self.annotation_file = Path(annotation_file or root / "annotations" / f"instances_{split}.json")
        self.image_dir = Path(image_dir) if image_dir else self._find_image_dir(root, split)
        data = self._read_json(self.annotation_file)
        coco_names = {int(cat["id"]): str(cat["name"]) for cat in data.get("categories", [])}
        if categories == "voc20":
            class_names = list(VOC_CLASSES)
            by_coco_name = {coco: VOC_CLASSES.index(voc) for voc, coco in VOC_TO_COCO.items()}
            category_to_class = {cid: by_coco_name[n] for cid, n in coco_names.items() if n in by_coco_name}
        else:
            ordered = sorted(coco_names)
            class_names = ["background"] + [coco_names[cid] for cid in ordered]
            category_to_class = {cid: i + 1 for i, cid in enumerate(ordered)}
        problems = ProblemLog(skip_bad)
        super().__init__(name, class_names, problems)
        self.use_masks = use_masks
        self.num_without_objects = 0
        self._file_names: list[str] = []
        self._annotations: list[list[dict]] = []
        self._crowds: list[list[dict]] = []
        by_image: dict[int, list[dict]] = {}
        for ann in data.get("annotations", []):
            by_image.setdefault(int(ann["image_id"]), []).append(ann)
        for info in sorted(data.get("images", []), key=lambda item: int(item["id"])):
            self._add_image(info, by_image.get(int(info["id"]), []), category_to_class, problems)

    @staticmethod
    def _find_image_dir(root: Path, split: str) -> Path:
        for candidate in (root / split, root / "images" / split):
            if candidate.is_dir():
                return candidate
        raise InputError(f"{root / split}: COCO image folder not found (also tried {root / 'images' / split})")

    @staticmethod
    def _read_json(path: Path) -> dict:
        try:
            with open(path) as handle:
                data = json.load(handle)
        except FileNotFoundError:
            raise InputError(f"{path}: COCO annotation file not found; check the root and split") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"{path}: not valid JSON ({err}); re-download the annotation file") from None
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            raise InputError(f"{path}: not a COCO instances file (needs 'images', 'annotations', 'categories')")
        return data

    def _add_image(self, info: dict, anns: list[dict], category_to_class: dict[int, int], problems: ProblemLog) -> None:
        image_path = self.image_dir / str(info["file_name"])
        where = f"{self.annotation_file} image {info['id']} ({info['file_name']})"
        size = image_size(image_path, problems)
        if size is None:
            return
        height, width = size
        if (int(info.get("height", height)), int(info.get("width", width))) != size:
            problems.report(image_path, f"image is {width}x{height} but {self.annotation_file} says {info['width']}x{info['height']}")
            return
        boxes, labels, kept, crowds = [], [], [], []
        for ann in anns:
            if int(ann["category_id"]) not in category_to_class:
                continue
            if self.use_masks and "segmentation" in ann:
                problem = _segmentation_problem(ann["segmentation"], height, width)
                if problem is not None:
                    problems.report(where, f"annotation {ann.get('id')}: {problem}")
                    continue
            if ann.get("iscrowd", 0):
                crowds.append(ann)
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            box = clip_box((x, y, x + w, y + h), height, width, f"{where} annotation {ann.get('id')}", problems)
            if box is not None:
                boxes.append(box)
                labels.append(category_to_class[int(ann["category_id"])])
                kept.append(ann)
        if not boxes:
            self.num_without_objects += 1
            return
        has_masks = self.use_masks and all("segmentation" in ann for ann in kept)
        arrays = stack_objects(boxes, labels, [False] * len(boxes))
        self.records.append(
            ImageRecord(f"{Path(info['file_name']).stem}", height, width, *arrays, "mask" if has_masks else "box", self.name)
        )
        self._file_names.append(str(info["file_name"]))
        self._annotations.append(kept if has_masks else [])
        self._crowds.append(crowds if has_masks else [])

    def load_image(self, i: int) -> np.ndarray:
        record = self.records[i]
        return load_rgb(self.image_dir / self._file_names[i], record.height, record.width)

    def load_instances(self, i: int) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """Masks bool [M, H, W] decoded from the annotations (one per box), or None without masks."""
        record = self.records[i]
        if not self._annotations[i]:
            return None
        masks = np.zeros((record.num_boxes, record.height, record.width), bool)
        for k, ann in enumerate(self._annotations[i]):
            masks[k] = _decode_segmentation(ann["segmentation"], record.height, record.width)
        return masks, record.labels.copy()

    def load_class_map(self, i: int) -> Optional[np.ndarray]:
        """Class map painted from the instances, largest first (smaller on top); crowds are 255."""
        instances = self.load_instances(i)
        if instances is None:
            return None
        masks, labels = instances
        record = self.records[i]
        class_map = np.zeros((record.height, record.width), np.uint8)
        for k in np.argsort(-masks.reshape(len(masks), -1).sum(1), kind="stable"):
            class_map[masks[k]] = labels[k]
        for ann in self._crowds[i]:
            class_map[_decode_segmentation(ann["segmentation"], record.height, record.width)] = 255
        return class_map
