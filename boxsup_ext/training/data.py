"""Training samples (image + label file, augmented) and the per-epoch batch plan. The training
images themselves are listed by :mod:`boxsup_ext.data.sources`.

Randomness here never touches the global RNGs: the order of an epoch comes from (seed, epoch) and
each sample's augmentation from (seed, epoch, position), so an epoch is the same whatever the
number of DataLoader workers or ranks, and a resumed epoch repeats the interrupted one exactly.
"""

from __future__ import annotations

import math
import signal
from pathlib import Path
from typing import Any, Optional, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from boxsup_ext.data.sources import TrainImage
from boxsup_ext.models import IMAGENET_MEAN, image_to_tensor
from boxsup_ext.core import IGNORE_LABEL, paint_instances
from boxsup_ext.utils import InputError


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator seeded by (seed, epoch) alone: the one rule for an epoch's random streams
    (its batch order, and the base seed its DataLoader iterators draw for the workers)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def epoch_batches(num_images: int, global_batch: int, seed: int, epoch: int) -> list[list[int]]:
    """The global batches of one epoch: a permutation seeded by (seed, epoch), wrapped around so
    every batch is full (all ranks then take the same number of steps). Returns lists of image
    positions, ``ceil(num_images / global_batch)`` batches of ``global_batch`` each."""
    order = torch.randperm(num_images, generator=epoch_generator(seed, epoch)).tolist()
    steps = math.ceil(num_images / global_batch)
    padded = [order[i % num_images] for i in range(steps * global_batch)]
    return [padded[s * global_batch : (s + 1) * global_batch] for s in range(steps)]


def epoch_loader(
    samples: Dataset, batches: Sequence[Sequence[int]], workers: int, seed: int, epoch: int, pin_memory: bool
) -> DataLoader:
    """The DataLoader of one epoch (or of its rest after a resume): ``batches`` of ``samples``.

    Starting an iterator draws the workers' base seed from the loader's generator; without one it
    comes from the global torch stream, which dropout also draws from, so a resumed epoch (a new
    iterator part-way) would shift every later dropout mask. A generator of (seed, epoch) leaves
    the global stream to the network. Workers ignore SIGINT/SIGTERM: Ctrl-C reaches the whole
    process group, and a worker dead of it would end the epoch in a worker error instead of the
    trainer's checkpoint at the next batch; the trainer shuts its workers down itself.
    """
    return DataLoader(
        samples, batch_sampler=list(batches), num_workers=workers, pin_memory=pin_memory,
        persistent_workers=False, generator=epoch_generator(seed, epoch), worker_init_fn=_leave_stop_signals_to_the_trainer,
    )


def _leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def rank_slice(batch: Sequence[int], rank: int, world_size: int) -> list[int]:
    """This rank's part of a global batch (contiguous equal parts)."""
    per_rank = len(batch) // world_size
    return list(batch[rank * per_rank : (rank + 1) * per_rank])


_PAD_RGB = tuple(int(round(255 * m)) for m in IMAGENET_MEAN)  # pads to ~0 after normalisation


def augment(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    crop_size: int,
    scale_range: tuple[float, float],
    flip: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Random scale, pad, crop and horizontal flip (DeepLab style).

    Args:
        image: uint8 [H, W, 3]; label: uint8 [H, W]. ``crop_size`` in pixels; ``scale_range``
        (min, max) resize factors. Padding uses the ImageNet mean colour and label 255 (ignore).

    Returns:
        (uint8 [crop, crop, 3], uint8 [crop, crop]).
    """
    scale = float(rng.uniform(*scale_range))
    height, width = label.shape
    new_h, new_w = max(1, int(round(height * scale))), max(1, int(round(width * scale)))
    if (new_h, new_w) != (height, width):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
    pad_h, pad_w = max(0, crop_size - new_h), max(0, crop_size - new_w)
    if pad_h or pad_w:
        image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=_PAD_RGB)
        label = cv2.copyMakeBorder(label, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=IGNORE_LABEL)
    top = int(rng.integers(0, label.shape[0] - crop_size + 1))
    left = int(rng.integers(0, label.shape[1] - crop_size + 1))
    image = image[top : top + crop_size, left : left + crop_size]
    label = label[top : top + crop_size, left : left + crop_size]
    if flip and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


class LabelledImages(Dataset):
    """Training samples of one epoch: augmented image float32 [3, crop, crop] (normalised) and
    label int64 [crop, crop] read from ``labels_dir/<image_id>.png``. Item ``i`` is
    ``images[i]``; its augmentation is seeded by (seed, epoch, i)."""

    def __init__(
        self, datasets: Sequence[Any], images: Sequence[TrainImage], labels_dir: Path, epoch: int, seed: int, augmentation: Any
    ) -> None:
        """``augmentation``: the config's ``data:`` section (``crop_size``, ``scale_min``,
        ``scale_max``, ``flip``)."""
        self.datasets = datasets
        self.images = images
        self.labels_dir = Path(labels_dir)
        self.epoch = epoch
        self.seed = seed
        self.crop_size = augmentation.crop_size
        self.scale_range = (augmentation.scale_min, augmentation.scale_max)
        self.flip = augmentation.flip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from boxsup_ext.data import load_label_png

        item = self.images[i]
        image = self.datasets[item.source].load_image(item.index)
        label = load_label_png(self.labels_dir / f"{item.image_id}.png")
        if label.shape != image.shape[:2]:
            raise InputError(f"label {self.labels_dir / item.image_id}.png is {label.shape}, image is {image.shape[:2]}")
        rng = np.random.default_rng([self.seed, self.epoch, i])
        image, label = augment(image, label, rng, self.crop_size, self.scale_range, self.flip)
        return image_to_tensor(image), torch.from_numpy(label.astype(np.int64))


def gt_label_map(dataset: Any, index: int) -> Optional[np.ndarray]:
    """Ground-truth class map uint8 [H, W] of an image: its class map, else its instance masks
    painted (larger first), else None."""
    class_map = dataset.load_class_map(index)
    if class_map is not None:
        return class_map
    instances = dataset.load_instances(index)
    if instances is None:
        return None
    masks, labels = instances
    record = dataset[index]
    return paint_instances(masks, labels, record.height, record.width)
