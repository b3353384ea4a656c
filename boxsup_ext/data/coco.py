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
import math
from pathlib import Path
from typing import Optional

import numpy as np

from boxsup_ext.core import IGNORE_LABEL, paint_instances
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


def _is_number(value) -> bool:
    """A finite JSON number (an integer beyond float range, e.g. 10**400, is not one)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) < 2**63
    return isinstance(value, float) and math.isfinite(value)


def compressed_rle_runs(counts: str) -> Optional[np.ndarray]:
    """Run lengths int64 [K] of a COCO compressed RLE string, or None when it is not one.

    The format (pycocotools ``rleFrString``): each run is a little-endian group of 5-bit digits in
    characters 48..111, bit 0x20 meaning "more digits follow", the last digit's 0x10 its sign;
    runs from the fourth on are stored as differences to the run two before. pycocotools decodes
    any string without a word, so the runs are checked here (vectorised: crowd RLEs are long).
    """
    try:
        digits = np.frombuffer(counts.encode("ascii"), np.uint8).astype(np.int64) - 48
    except UnicodeEncodeError:
        return None
    if digits.size == 0 or digits.min() < 0 or digits.max() > 63 or digits[-1] & 0x20:
        return None  # a character outside the alphabet, or a run cut off
    last = (digits & 0x20) == 0  # the last digit of each run
    group = np.concatenate([[0], np.cumsum(last)[:-1]])
    starts = np.flatnonzero(np.concatenate([[True], last[:-1]]))
    position = np.arange(digits.size) - starts[group]
    if position.max() > 11:
        return None  # more than 60 bits: no real run is that long
    values = np.zeros(starts.size, np.int64)
    np.add.at(values, group, (digits & 0x1F) << (5 * position))
    negative = (digits[last] & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * (position[last][negative] + 1))
    runs = values.copy()  # undo the differences: run m += run m - 2, for m >= 3
    runs[3::2] = np.cumsum(values[1::2])[1:]
    runs[4::2] = np.cumsum(values[2::2])[1:]
    return runs


def _rle_problem(segmentation: dict, height: int, width: int) -> Optional[str]:
    """Why an RLE dict is not a mask of an H x W image, or None when it is."""
    size = segmentation["size"]
    if not isinstance(size, list) or len(size) != 2 or list(size) != [height, width]:
        return f"mask size {size} differs from the image size [{height}, {width}]"
    counts = segmentation["counts"]
    if isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= height * width for c in counts):
            return f"RLE counts must be integers in 0..{height * width}"
        runs = np.asarray(counts, np.int64)
    elif isinstance(counts, str):
        runs = compressed_rle_runs(counts)
        if runs is None or (runs < 0).any():
            return "RLE counts is not a valid compressed RLE string"
    else:
        return "RLE counts must be a list of run lengths or a compressed RLE string"
    if int(runs.sum()) != height * width:
        return f"RLE counts cover {int(runs.sum())} pixels, the {width}x{height} mask has {height * width}"
    return None


def _segmentation_problem(segmentation, height: int, width: int) -> Optional[str]:
    """Why a COCO segmentation cannot be decoded for an H x W image, or None when it can."""
    if isinstance(segmentation, list):
        if not segmentation or any(
            not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2 or not all(_is_number(v) for v in poly)
            for poly in segmentation
        ):
            return "polygon segmentation needs lists of at least 3 (x, y) points, all finite numbers"
        return None
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        return _rle_problem(segmentation, height, width)
    return "segmentation is neither a polygon list nor an RLE dict with 'counts' and 'size'"


def _bbox_problem(bbox) -> Optional[str]:
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        return f"bbox must be 4 finite numbers [x, y, width, height], got {bbox!r}"
    return None


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
        coco_names = self._read_categories(data)
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
        for ann in data["annotations"]:
            if not isinstance(ann, dict) or not isinstance(ann.get("image_id"), int):
                got = ann.get("image_id") if isinstance(ann, dict) else ann
                problems.report(f"{self.annotation_file} annotation {ann.get('id') if isinstance(ann, dict) else '?'}", f"image_id must be an integer, got {got!r}")
                continue
            by_image.setdefault(ann["image_id"], []).append(ann)
        images = []
        for position, info in enumerate(data["images"]):
            if not isinstance(info, dict) or not isinstance(info.get("id"), int) or not isinstance(info.get("file_name"), str):
                problems.report(f"{self.annotation_file} images[{position}]", f"an image needs an integer 'id' and a 'file_name', got {info!r}")
                continue
            images.append(info)
        for info in sorted(images, key=lambda item: item["id"]):
            self._add_image(info, by_image.get(info["id"], []), coco_names, category_to_class, problems)

    @staticmethod
    def _find_image_dir(root: Path, split: str) -> Path:
        for candidate in (root / split, root / "images" / split):
            if candidate.is_dir():
                return candidate
        raise InputError(f"{root / split}: COCO image folder not found (also tried {root / 'images' / split})")

    def _read_categories(self, data: dict) -> dict[int, str]:
        """COCO category id -> name; a malformed list is an InputError naming the file."""
        categories = data.get("categories", [])
        if not isinstance(categories, list) or not all(
            isinstance(cat, dict) and isinstance(cat.get("id"), int) and isinstance(cat.get("name"), str) for cat in categories
        ):
            raise InputError(f"{self.annotation_file}: 'categories' must be a list of {{'id': integer, 'name': text}}")
        return {cat["id"]: cat["name"] for cat in categories}

    @staticmethod
    def _read_json(path: Path) -> dict:
        try:
            with open(path) as handle:
                data = json.load(handle)
        except FileNotFoundError:
            raise InputError(f"{path}: COCO annotation file not found; check the root and split") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"{path}: not valid JSON ({err}); re-download the annotation file") from None
        if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
            raise InputError(f"{path}: not a COCO instances file (needs 'images', 'annotations', 'categories')")
        return data

    def _add_image(
        self, info: dict, anns: list[dict], coco_names: dict[int, str], category_to_class: dict[int, int], problems: ProblemLog
    ) -> None:
        image_path = self.image_dir / str(info["file_name"])
        where = f"{self.annotation_file} image {info['id']} ({info['file_name']})"
        size = image_size(image_path, problems)
        if size is None:
            return
        height, width = size
        declared = (info.get("height", height), info.get("width", width))
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in declared):
            problems.report(where, f"image height/width must be integers, got {declared[0]!r}/{declared[1]!r}")
            return
        if declared != size:
            problems.report(image_path, f"image is {width}x{height} but {self.annotation_file} says {declared[1]}x{declared[0]}")
            return
        boxes, labels, kept, crowds = [], [], [], []
        for ann in anns:
            category = ann.get("category_id")
            if not isinstance(category, int) or category not in coco_names:
                problems.report(where, f"annotation {ann.get('id')}: category_id {category!r} is not one of the file's categories")
                continue
            if category not in category_to_class:
                continue  # a category left out of the chosen set (voc20)
            if self.use_masks and "segmentation" in ann:
                problem = _segmentation_problem(ann["segmentation"], height, width)
                if problem is not None:
                    problems.report(where, f"annotation {ann.get('id')}: {problem}")
                    continue
            if ann.get("iscrowd", 0):
                crowds.append(ann)
                continue
            problem = _bbox_problem(ann.get("bbox"))
            if problem is not None:
                problems.report(where, f"annotation {ann.get('id')}: {problem}")
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            box = clip_box((x, y, x + w, y + h), height, width, f"{where} annotation {ann.get('id')}", problems)
            if box is not None:
                boxes.append(box)
                labels.append(category_to_class[category])
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

    def image_file(self, i: int) -> Path:
        return self.image_dir / self._file_names[i]

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
        class_map = paint_instances(masks, labels, record.height, record.width)
        for ann in self._crowds[i]:
            class_map[_decode_segmentation(ann["segmentation"], record.height, record.width)] = IGNORE_LABEL
        return class_map
