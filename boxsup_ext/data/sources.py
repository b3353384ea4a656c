"""The training set: the sources of ``data.train``, each with its supervision, as one list of images.

A source (a :class:`boxsup_ext.config.SourceConfig`: ``kind``, ``root``, ``split``, ``supervision``,
``limit``, ``mask_list``, ``categories``) is one dataset split. Its ``supervision`` is ``auto``
(each record's own: masks where the dataset has them), ``box`` or ``mask`` (forced for every
image), or ``semi`` (masks for the image ids listed in ``mask_list`` — e.g. the 1,464 original VOC
train images — boxes for the rest). The trainer and the tests open training sets here only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from boxsup_ext.data.records import SegmentationDataset, read_id_list
from boxsup_ext.utils import InputError


@dataclass(frozen=True)
class TrainImage:
    """One training image: where it comes from and how it is supervised (``"box"``/``"mask"``)."""

    source: int  # index into the training set's datasets (data.train.<source>)
    index: int  # index of the image within that dataset
    image_id: str
    supervision: str


@dataclass
class TrainingSet:
    """The opened sources of ``data.train`` (``datasets[s]`` is source s) and all their images in
    order. Every source has the same class count; image ids are unique over all sources (labels
    are stored as ``labels/<image_id>.png``)."""

    datasets: list[SegmentationDataset]
    images: list[TrainImage]

    @property
    def class_names(self) -> list[str]:
        return list(self.datasets[0].class_names)

    @property
    def num_classes(self) -> int:
        return self.datasets[0].num_classes

    def fingerprints(self) -> list[str]:
        return [dataset.fingerprint() for dataset in self.datasets]


def open_source(source: Any, skip_bad: bool = False) -> SegmentationDataset:
    """The dataset split a source names (COCO sources take their ``categories``)."""
    from boxsup_ext.data import open_dataset

    extra = {"categories": source.categories} if source.kind == "coco" else {}
    return open_dataset(source.root, source.split, kind=source.kind, skip_bad=skip_bad, **extra)


def open_training_set(sources: Sequence[Any], skip_bad: bool = False) -> TrainingSet:
    """Open the sources of ``data.train`` (``SourceConfig`` s) and list their images."""
    datasets = []
    for i, source in enumerate(sources):
        if not source.root:
            raise InputError(f"data.train.{i}.root is empty; set it to the dataset folder (--set data.train.{i}.root=DIR)")
        datasets.append(open_source(source, skip_bad))
    for i, dataset in enumerate(datasets[1:], start=1):
        if dataset.num_classes != datasets[0].num_classes:
            raise InputError(f"data.train.{i} has {dataset.num_classes} classes but data.train.0 has {datasets[0].num_classes}")
    return TrainingSet(datasets, list_train_images(datasets, sources))


def list_train_images(datasets: Sequence[SegmentationDataset], sources: Sequence[Any]) -> list[TrainImage]:
    """All training images of ``datasets`` in order; ``sources[s]`` is the source of dataset s
    (its ``supervision``, and ``limit`` > 0 keeps only the first that many images)."""
    images: list[TrainImage] = []
    seen: dict[str, int] = {}
    for number, (dataset, source) in enumerate(zip(datasets, sources)):
        mask_ids: set[str] = set()
        if source.supervision == "semi":
            path = Path(source.mask_list)
            if not source.mask_list or not path.is_file():
                raise InputError(f"data.train.{number}.mask_list: {path} does not exist; give a file of image ids")
            mask_ids = set(read_id_list(path))
        count = len(dataset) if source.limit <= 0 else min(source.limit, len(dataset))
        for index in range(count):
            record = dataset[index]
            if record.image_id in seen:
                raise InputError(
                    f"image id {record.image_id!r} occurs in data.train.{seen[record.image_id]} and "
                    f"data.train.{number}; training sources must not share images"
                )
            seen[record.image_id] = number
            if source.supervision == "semi":
                kind = "mask" if record.image_id in mask_ids else "box"
            else:
                kind = record.supervision if source.supervision == "auto" else source.supervision
            images.append(TrainImage(number, index, record.image_id, kind))
    if not images:
        raise InputError("the training sources (data.train) hold no images")
    return images
