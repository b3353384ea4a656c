"""Records, the dataset base class, and the shared checks every reader applies.

A dataset is a sequence of :class:`ImageRecord` (boxes, labels, size) plus loaders for the pixels.
Readers find problems while indexing a dataset and hand them to a :class:`ProblemLog`: by default
the first problem raises :class:`~boxsup_ext.utils.InputError` with one line naming the file; with
``skip_bad=True`` it is logged and the bad object (box-level problems) or image (file-level
problems) is left out.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
from PIL import Image

from boxsup_ext.core import IGNORE_LABEL
from boxsup_ext.data.palette import load_label_png
from boxsup_ext.utils import InputError

PathLike = Union[str, os.PathLike]
logger = logging.getLogger("boxsup_ext.data")

@dataclass(frozen=True)
class ImageRecord:
    """One image's annotation.

    Attributes:
        image_id: unique, file-name-safe id (e.g. ``2007_000032``).
        height, width: image size in pixels.
        boxes: float32 [M, 4] (x0, y0, x1, y1), half-open pixel coordinates, clipped to the image,
            each of positive area.
        labels: int64 [M], class index in [1, num_classes).
        difficult: bool [M], the VOC ``difficult`` flag (False where the source has none).
        supervision: ``"mask"`` (ground-truth masks are used for training) or ``"box"``.
        source: name of the dataset the record comes from.
    """

    image_id: str
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    supervision: str
    source: str

    @property
    def num_boxes(self) -> int:
        return int(self.boxes.shape[0])


class ProblemLog:
    """Collects problems found in a dataset: raise on the first one, or log and keep going."""

    def __init__(self, skip_bad: bool = False) -> None:
        self.skip_bad = bool(skip_bad)
        self.problems: list[str] = []

    def report(self, path: PathLike, message: str) -> None:
        """Record ``"<path>: <message>"``; raise it as an InputError unless skipping bad inputs."""
        line = f"{path}: {message}"
        if not self.skip_bad:
            raise InputError(f"{line} (or pass --skip-bad / skip_bad=True to skip it)")
        logger.warning("skipping: %s", line)
        self.problems.append(line)


def image_size(path: Path, problems: ProblemLog, what: str = "image") -> Optional[tuple[int, int]]:
    """(height, width) read from the file header, or None after reporting a missing/unreadable file."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except FileNotFoundError:
        problems.report(path, f"{what} file is missing")
        return None
    except (OSError, SyntaxError) as err:
        problems.report(path, f"{what} file is unreadable ({err.__class__.__name__}: {err})")
        return None
    return height, width


def mask_matches_image(path: Path, size: tuple[int, int], problems: ProblemLog) -> bool:
    """Whether the mask file at ``path`` is readable and has the image's (height, width); reports it if not."""
    mask_size = image_size(path, problems, what="mask")
    if mask_size is None:
        return False
    if mask_size != size:
        problems.report(path, f"mask is {mask_size[1]}x{mask_size[0]} but the image is {size[1]}x{size[0]}")
        return False
    return True


def load_rgb(path: Path, height: int, width: int) -> np.ndarray:
    """Decode an image file to np.uint8 [H, W, 3] RGB, checking it has the indexed size."""
    try:
        with Image.open(path) as image:
            image.load()
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise InputError(f"{path}: image file is missing; check the dataset root") from None
    except (OSError, SyntaxError) as err:
        raise InputError(f"{path}: image file is unreadable ({err}); re-create or remove it") from None
    if array.shape[:2] != (height, width):
        raise InputError(
            f"{path}: image is {array.shape[1]}x{array.shape[0]} but its annotation says {width}x{height}"
        )
    return array


def check_label_size(path: Path, label: np.ndarray, height: int, width: int) -> np.ndarray:
    if label.shape != (height, width):
        raise InputError(
            f"{path}: mask is {label.shape[1]}x{label.shape[0]} but the image is {width}x{height}; "
            "the mask belongs to another image or was resized"
        )
    return label


def class_id_problem(label: np.ndarray, num_classes: int) -> Optional[str]:
    """Why a class map's values are not all class ids in [0, num_classes) or IGNORE_LABEL, or None."""
    if not label.size or int(label.max()) < num_classes:
        return None
    counts = np.bincount(label.ravel(), minlength=IGNORE_LABEL + 1)
    counts[:num_classes] = 0
    counts[IGNORE_LABEL] = 0
    bad = np.flatnonzero(counts)
    if not bad.size:
        return None
    shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
    return (
        f"class map holds ids {shown} ({int(counts.sum())} pixels) outside the dataset's {num_classes} classes "
        f"(0..{num_classes - 1}, {IGNORE_LABEL} = ignore)"
    )


def load_class_map_png(path: Path, height: int, width: int, num_classes: int) -> np.ndarray:
    """The one reader of ground-truth class map files: uint8 [H, W] from a label PNG, checked to
    have the image's size and only ids of the dataset's classes (or ignore); InputError naming the
    file otherwise. Training, evaluation and ``data check`` all read class maps through it."""
    label = check_label_size(path, load_label_png(path), height, width)
    problem = class_id_problem(label, num_classes)
    if problem is not None:
        raise InputError(f"{path}: {problem}; fix the file, or list every class in the dataset's classes.txt")
    return label


def clip_box(
    box: Sequence[float], height: int, width: int, path: PathLike, problems: ProblemLog
) -> Optional[np.ndarray]:
    """Clip one (x0, y0, x1, y1) box to the image; report and return None when nothing is left.

    Returns float32 [4]. A box wholly outside the image, or of zero area, is a problem.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(np.isfinite([x0, y0, x1, y1])):
        problems.report(path, f"box {box} has a non-finite coordinate")
        return None
    if x1 <= x0 or y1 <= y0:
        problems.report(path, f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) has zero area")
        return None
    clipped = np.array([max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))], np.float32)
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        problems.report(
            path, f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the {width}x{height} image"
        )
        return None
    return clipped


def stack_objects(
    boxes: list[np.ndarray], labels: list[int], difficult: list[bool]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrays (float32 [M, 4], int64 [M], bool [M]) from per-object lists (M may be 0)."""
    return (
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(labels, dtype=np.int64).reshape(-1),
        np.asarray(difficult, dtype=bool).reshape(-1),
    )


def read_id_list(path: Path) -> list[str]:
    """Image ids from a split list (one per line; extra columns as in VOC's Main lists ignored)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: split list not found; check the dataset root and split name") from None
    ids = [line.split()[0] for line in text.splitlines() if line.strip()]
    if not ids:
        raise InputError(f"{path}: split list is empty")
    return ids


class SegmentationDataset(Sequence[ImageRecord]):
    """Base class: a sequence of :class:`ImageRecord` with pixel loaders.

    Subclasses fill ``self.records`` and implement the three ``load_*`` methods.

    Attributes:
        name: dataset name (also each record's ``source``).
        class_names: list of names, index 0 ``"background"``.
        problems: lines describing what ``skip_bad`` left out (empty otherwise).
    """

    def __init__(self, name: str, class_names: Sequence[str], problems: Optional[ProblemLog] = None) -> None:
        self.name = name
        self.class_names = list(class_names)
        self.records: list[ImageRecord] = []
        self.problems: list[str] = problems.problems if problems is not None else []
        self._index: Optional[dict[str, int]] = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self.records[i] for i in range(*index.indices(len(self)))]
        return self.records[index]

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self.records)

    def index_of(self, image_id: str) -> int:
        """Position of ``image_id`` in the dataset; KeyError when absent."""
        if self._index is None:
            self._index = {record.image_id: i for i, record in enumerate(self.records)}
        return self._index[image_id]

    def fingerprint(self) -> str:
        """Stable hex hash (16 chars) of the image ids and sizes, in order."""
        digest = hashlib.sha256()
        for record in self.records:
            digest.update(f"{record.image_id}\t{record.height}\t{record.width}\n".encode())
        return digest.hexdigest()[:16]

    def image_file(self, i: int) -> Optional[Path]:
        """The file image ``i`` is decoded from, or None when it has no file of its own.

        Proposal stores digest this file's bytes to tell when an image changed under them.
        """
        return None

    def load_image(self, i: int) -> np.ndarray:
        """Image ``i`` as np.uint8 [H, W, 3] RGB."""
        raise NotImplementedError

    def load_class_map(self, i: int) -> Optional[np.ndarray]:
        """Ground-truth class map np.uint8 [H, W] (255 = ignore), or None when the source has none."""
        raise NotImplementedError

    def load_instances(self, i: int) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """Instance masks bool [K, H, W] and labels int64 [K] (aligned with the boxes), or None."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, images={len(self)}, classes={self.num_classes})"
