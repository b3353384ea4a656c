"""A training set as a union of sources, each with its supervision.

A source's ``supervision`` is ``"mask"`` (train on its ground-truth masks), ``"box"`` (boxes only,
masks ignored even where present) or ``"semi"`` (masks for the image ids of ``mask_ids`` /
``mask_list`` — e.g. the 1,464 original VOC train images — boxes for the rest).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from boxsup_ext.data.records import PathLike, SegmentationDataset, read_id_list
from boxsup_ext.utils import InputError

SOURCE_SUPERVISIONS = ("mask", "box", "semi")


@dataclasses.dataclass
class Source:
    """One dataset of a union and how it is supervised.

    Attributes:
        dataset: the dataset.
        supervision: ``"mask"``, ``"box"`` or ``"semi"``.
        mask_ids: for ``"semi"``, the image ids trained on masks.
        mask_list: for ``"semi"``, a split-list file of those ids (instead of ``mask_ids``).
    """

    dataset: SegmentationDataset
    supervision: str = "box"
    mask_ids: Optional[Iterable[str]] = None
    mask_list: Optional[PathLike] = None

    def mask_id_set(self) -> set[str]:
        ids = set(self.mask_ids or ())
        if self.mask_list is not None:
            ids.update(read_id_list(Path(self.mask_list)))
        if not ids:
            raise InputError(f"source {self.dataset.name!r}: supervision 'semi' needs mask_ids or a mask_list file")
        return ids


class UnionDataset(SegmentationDataset):
    """The concatenation of several sources; records carry each source's supervision.

    All sources must share the class names. Image ids must be unique across sources.
    """

    def __init__(self, sources: Sequence[Source], name: str = "union") -> None:
        if not sources:
            raise InputError("a training set needs at least one source")
        class_names = sources[0].dataset.class_names
        super().__init__(name, class_names)
        self._members: list[tuple[SegmentationDataset, int]] = []
        seen: dict[str, str] = {}
        for source in sources:
            dataset = source.dataset
            if dataset.class_names != class_names:
                raise InputError(
                    f"source {dataset.name!r} has {dataset.num_classes} classes {dataset.class_names[:3]}..., "
                    f"the first source {len(class_names)}; open all sources with the same class set"
                )
            if source.supervision not in SOURCE_SUPERVISIONS:
                raise InputError(f"source {dataset.name!r}: supervision must be one of {SOURCE_SUPERVISIONS}, got {source.supervision!r}")
            mask_ids = source.mask_id_set() if source.supervision == "semi" else None
            self.problems.extend(dataset.problems)
            for index, record in enumerate(dataset.records):
                if record.image_id in seen:
                    raise InputError(
                        f"image id {record.image_id!r} is in both {seen[record.image_id]!r} and {dataset.name!r}; "
                        "a union must not list an image twice"
                    )
                seen[record.image_id] = dataset.name
                wants_mask = source.supervision == "mask" or (mask_ids is not None and record.image_id in mask_ids)
                if wants_mask and record.supervision != "mask":
                    raise InputError(
                        f"source {dataset.name!r}: image {record.image_id!r} has no ground-truth mask but its "
                        f"supervision is {source.supervision!r}; use 'box' or list only images with masks"
                    )
                supervision = "mask" if wants_mask else "box"
                self.records.append(dataclasses.replace(record, supervision=supervision))
                self._members.append((dataset, index))

    def image_file(self, i: int) -> Optional[Path]:
        dataset, index = self._members[i]
        return dataset.image_file(index)

    def load_image(self, i: int) -> np.ndarray:
        dataset, index = self._members[i]
        return dataset.load_image(index)

    def load_class_map(self, i: int) -> Optional[np.ndarray]:
        dataset, index = self._members[i]
        return dataset.load_class_map(index)

    def load_instances(self, i: int) -> Optional[tuple[np.ndarray, np.ndarray]]:
        dataset, index = self._members[i]
        return dataset.load_instances(index)


def open_training_set(specs: Sequence[dict], skip_bad: bool = False, name: str = "union") -> UnionDataset:
    """Open a union from source specs.

    Each spec is a dict with ``root``, ``split``, ``kind`` (as :func:`open_dataset`), ``supervision``
    (``mask``/``box``/``semi``, default ``box``), for ``semi`` ``mask_list`` (a split-list path) or
    ``mask_ids``, and any further keyword arguments of the reader.
    """
    from boxsup_ext.data import open_dataset

    sources = []
    for position, spec in enumerate(specs):
        spec = dict(spec)
        try:
            root, split = spec.pop("root"), spec.pop("split")
        except KeyError as err:
            raise InputError(f"training source {position}: missing key {err}; each needs 'root' and 'split'") from None
        supervision = spec.pop("supervision", "box")
        mask_ids, mask_list = spec.pop("mask_ids", None), spec.pop("mask_list", None)
        dataset = open_dataset(root, split, skip_bad=skip_bad, **spec)
        sources.append(Source(dataset, supervision, mask_ids, mask_list))
    return UnionDataset(sources, name=name)


def supervision_counts(dataset: SegmentationDataset) -> dict[str, int]:
    """Number of records per supervision, e.g. {"mask": 1464, "box": 9118}."""
    counts: dict[str, int] = {}
    for record in dataset.records:
        counts[record.supervision] = counts.get(record.supervision, 0) + 1
    return counts
