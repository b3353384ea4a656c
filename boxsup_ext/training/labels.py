"""The labels the trainer trains on, one label round per epoch: :func:`labels_of_epoch`.

A label round writes the epoch's label PNGs to the run's ``labels/`` folder: ground-truth masks once,
box-supervised images every epoch in the boxsup modes (relabeled with the current network by
:func:`boxsup_ext.relabel.relabel_batch`), once for the fixed baselines. The work is sharded over
ranks by image position. The round's statistics go to the epoch's log entry; the candidate each box
took goes to ``labels/choices/``; the :class:`LabelState` after the round goes into every checkpoint,
so that a resumed run neither repeats a finished round nor loses the previous round's choices.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import astuple, dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
from torch import nn

from boxsup_ext.config import RELABELED_MODES, Config
from boxsup_ext.core import IGNORE_LABEL
from boxsup_ext.data import TrainImage, TrainingSet, save_label_png
from boxsup_ext.evaluation.evaluator import ConfusionAccumulator
from boxsup_ext.evaluation.metrics import ignored_prediction_counts, miou_from_confusion
from boxsup_ext.models import unwrap_model
from boxsup_ext.relabel import RelabelInput, RelabelSettings, relabel_batch
from boxsup_ext.run_dir import RunDir
from boxsup_ext.training.data import gt_label_map
from boxsup_ext.training.distributed import DistContext
from boxsup_ext.training.logbook import progress
from boxsup_ext.training.signals import StopRequested, Stopper
from boxsup_ext.utils import InputError, atomic_write_bytes, atomic_write_json


@dataclass(frozen=True)
class LabelSetup:
    """What a label round needs besides the epoch, the network and the label state: the same for
    the whole run, so the trainer builds it once."""

    config: Config
    ctx: DistContext
    training: TrainingSet
    stores: dict[int, Any]  # the proposal store of each source with box-supervised images
    run: RunDir
    stopper: Stopper


@dataclass
class LabelRound:
    """What one label round did, summed over ranks: for the epoch's log entry."""

    seconds: float
    stats: dict
    label_miou: Optional[float]


@dataclass
class LabelState:
    """Where the label rounds stand, saved in every checkpoint (as :meth:`to_dict`'s plain dict)."""

    epoch: int = 0  # the epoch whose labels are on disk (0: none yet)
    fixed_done: bool = False  # the labels written only once (masks, fixed baselines) are on disk
    choices: dict[str, list[int]] = field(default_factory=dict)  # the last round's, by image id
    round: Optional[LabelRound] = None  # the last round (None before the first)

    def to_dict(self) -> dict:
        state: dict = {"epoch": self.epoch, "fixed_done": self.fixed_done, "choices": self.choices}
        if self.round is not None:
            state["round"] = vars(self.round).copy()
        return state

    @classmethod
    def from_dict(cls, state: dict) -> "LabelState":
        saved = state.get("round")
        return cls(state.get("epoch", 0), state.get("fixed_done", False), state.get("choices", {}),
                   LabelRound(**saved) if saved else None)


def labels_of_epoch(epoch: int, setup: LabelSetup, model: nn.Module, state: LabelState) -> LabelState:
    """Run ``epoch``'s label round and return the label state after it (its ``round`` holds the
    round's statistics); ``state`` itself when a resumed run did the round before it stopped."""
    if state.epoch == epoch:
        return state
    ctx = setup.ctx
    try:
        if ctx.any_rank(setup.stopper.requested):
            raise StopRequested
        if ctx.is_main:
            mark_round(setup.run, epoch, finished=False)
        ctx.barrier()  # no rank writes a label before labels/ says a round is under way
        state = prepare_labels(epoch, setup, model, state)
    except StopRequested:
        if ctx.is_main:
            since = f"the checkpoint of epoch {epoch - 1}" if epoch > 1 else "the start (no epoch had finished)"
            print(f"stopped by signal before the training steps of epoch {epoch}; --resume continues from {since} "
                  "and prepares this epoch's labels again", file=sys.stderr, flush=True)
        raise
    if ctx.is_main and state.choices:
        save_choices(setup.run, epoch, state.choices)
    if ctx.is_main and epoch in setup.config.relabel.snapshot_epochs:
        snapshot_labels(setup.run, epoch, setup.training.images)
    if ctx.is_main:
        mark_round(setup.run, epoch, finished=True)
    return state


def mark_round(run: RunDir, epoch: int, finished: bool) -> None:
    """Say in ``labels/round.json`` which epoch's round ``labels/`` holds and whether it finished: a
    stop in the middle of a round leaves label PNGs of two epochs, which ``export`` must not pass off
    as either (the checkpoint still names the epoch before)."""
    run.labels.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run.round_file, {"epoch": epoch, "finished": finished})


@dataclass
class LabelTally:
    """Sums over the relabeled images of a rank (added over ranks with :meth:`DistContext.sum_array`)."""

    boxes: float = 0.0
    unassigned: float = 0.0
    assigned: float = 0.0
    cost: float = 0.0  # of the chosen candidates
    iou: float = 0.0
    mean_ce: float = 0.0
    pixels: float = 0.0
    foreground: float = 0.0
    ignored: float = 0.0

    def add(self, result: Any) -> None:
        assigned = result.chosen >= 0
        self.boxes += len(result.chosen)
        self.unassigned += int((~assigned).sum())
        self.assigned += int(assigned.sum())
        self.cost += float(np.nansum(result.cost))
        self.iou += float(np.nansum(result.iou))
        self.mean_ce += float(np.nansum(result.mean_ce))
        self.pixels += result.label.size
        self.foreground += int(((result.label > 0) & (result.label != IGNORE_LABEL)).sum())
        self.ignored += int((result.label == IGNORE_LABEL).sum())

    def summed(self, ctx: DistContext) -> "LabelTally":
        return LabelTally(*ctx.sum_array(np.array(astuple(self), dtype=np.float64)).tolist())

    def stats(self) -> dict:
        """The box and pixel statistics of the log's ``label_stats``."""
        per_box = max(self.assigned, 1.0)
        return {
            "boxes": int(self.boxes),
            "boxes_unassigned": int(self.unassigned),
            "mean_cost": float(self.cost / per_box) if self.assigned else None,
            "mean_iou": float(self.iou / per_box) if self.assigned else None,
            "mean_ce": float(self.mean_ce / per_box) if self.assigned else None,
            "foreground_fraction": float(self.foreground / self.pixels) if self.pixels else None,
            "ignore_fraction": float(self.ignored / self.pixels) if self.pixels else None,
        }


@dataclass
class LabelScore:
    """The relabeled images' labels against their ground truth, where the dataset has it: the
    evaluator's :class:`ConfusionAccumulator` plus the ground-truth pixels the labels leave as ignore."""

    confusion: ConfusionAccumulator
    ignored: np.ndarray  # ground-truth pixels the labels leave as ignore, all ground-truth pixels

    @classmethod
    def empty(cls, num_classes: int) -> "LabelScore":
        return cls(ConfusionAccumulator(num_classes), np.zeros(2, dtype=np.int64))

    def add(self, label: np.ndarray, gt: np.ndarray) -> None:
        self.confusion.add(label, gt)
        self.ignored += ignored_prediction_counts(label, gt, self.confusion.num_classes)

    def summed(self, ctx: DistContext) -> tuple[np.ndarray, np.ndarray]:
        """(confusion matrix, ignored counts) summed over ranks."""
        return ctx.sum_array(self.confusion.total), ctx.sum_array(self.ignored)


def prepare_labels(epoch: int, setup: LabelSetup, model: nn.Module, state: LabelState) -> LabelState:
    """Write this epoch's label PNGs (every rank its share) and return the label state after the
    round: its choices merged over ranks, its statistics summed over ranks."""
    ctx = setup.ctx
    start = time.perf_counter()
    mask_images, box_images = labels_due(setup.config.train.mode, setup.training.images, first_time=not state.fixed_done)
    write_mask_labels(setup, mask_images, epoch)
    choices, tally, score = relabel_images(setup, box_images, epoch, model, state.choices)
    parts = ctx.gather_objects(choices)  # every rank's {image id: chosen candidates}
    relabeled = [sorted(part) for part in parts]
    merged: dict[str, list[int]] = {}
    for part in parts:
        merged.update(part)
    tally = tally.summed(ctx)
    confusion, ignored = score.summed(ctx)
    ctx.barrier()  # every label file is on disk before anyone trains on it

    all_ids = [image_id for part in relabeled for image_id in part]
    stats = {
        "relabeled": len(all_ids),
        "relabel_per_rank": [len(part) for part in relabeled],
        "relabel_duplicates": len(all_ids) - len(set(all_ids)),
        "relabel_missing": len({image.image_id for image in box_images} - set(all_ids)),
        "masks_written": len(mask_images),
        **tally.stats(),
        # label_miou judges the labelled pixels only; this is the share of the truth it leaves out
        "label_ignore_share": float(ignored[0] / ignored[1]) if ignored[1] else None,
        "changed_fraction": changed_fraction(merged, state.choices),
    }
    label_miou = miou_from_confusion(confusion)[0] if confusion.sum() else None
    return LabelState(epoch, True, merged, LabelRound(time.perf_counter() - start, stats, label_miou))


def labels_due(mode: str, images: Sequence[TrainImage], first_time: bool) -> tuple[list[TrainImage], list[TrainImage]]:
    """The images whose labels this round writes: (from ground-truth masks, by relabeling boxes)."""
    mask_images, box_images = [], []
    for image in images:
        if mode == "mask" or image.supervision == "mask":
            if first_time:
                mask_images.append(image)
        elif mode in RELABELED_MODES or first_time:
            box_images.append(image)
    return mask_images, box_images


def write_mask_labels(setup: LabelSetup, images: Sequence[TrainImage], epoch: int) -> None:
    """Label PNGs of this rank's share of the mask-supervised ``images``, from their ground truth."""
    config, ctx = setup.config, setup.ctx
    for image in progress(ctx.shard(images), config.run.progress and ctx.is_main, desc=f"masks  {epoch}"):
        label = gt_label_map(setup.training.datasets[image.source], image.index)
        if label is None:
            raise InputError(
                f"image {image.image_id!r} of data.train.{image.source} has no ground-truth mask, which mode "
                f"{config.train.mode!r} / supervision 'mask' needs; use supervision 'box' for it"
            )
        save_label_png(setup.run.label_file(image.image_id), label)


def relabel_images(
    setup: LabelSetup, images: Sequence[TrainImage], epoch: int, model: nn.Module, previous: dict[str, list[int]]
) -> tuple[dict[str, list[int]], LabelTally, LabelScore]:
    """Relabel this rank's share of the box-supervised ``images`` in batches of
    ``relabel.batch_images``, writing their label PNGs; returns the chosen candidates per image,
    the tally and the score against ground truth. ``previous``: the previous round's choices by
    image id, which ``relabel.keep_previous`` keeps unless the new draw is cheaper by more than
    ``relabel.keep_margin`` (ignored when it is off).

    Every rank runs the same number of batches, the largest share's (each batch checks for a stop
    with a collective), so a rank with a smaller share runs empty batches at the end."""
    config, ctx, datasets = setup.config, setup.ctx, setup.training.datasets
    settings = RelabelSettings.from_config(config.relabel, config.train.mode, epoch)
    if settings.keep_margin is None:
        previous = {}
    batch_size = config.relabel.batch_images
    batches = math.ceil(math.ceil(len(images) / ctx.world_size) / batch_size)
    shard = ctx.shard(images)
    net = unwrap_model(model)
    choices: dict[str, list[int]] = {}
    tally, score = LabelTally(), LabelScore.empty(net.num_classes)
    was_training = net.training
    net.eval()
    for first in progress(range(0, batches * batch_size, batch_size), config.run.progress and ctx.is_main, desc=f"relabel {epoch}"):
        if ctx.any_rank(setup.stopper.requested):
            raise StopRequested
        batch = shard[first : first + batch_size]
        if not batch:
            continue
        inputs = [relabel_input(datasets, setup.stores, image, previous.get(image.image_id)) for image in batch]
        for image, result in zip(batch, relabel_batch(net, inputs, settings, config.run.seed, epoch, ctx.device)):
            save_label_png(setup.run.label_file(image.image_id), result.label)
            choices[image.image_id] = result.chosen.tolist()
            tally.add(result)
            gt = gt_label_map(datasets[image.source], image.index)
            if gt is not None:
                score.add(result.label, gt)
    net.train(was_training)
    return choices, tally, score


def changed_fraction(choices: dict[str, list[int]], previous: dict[str, list[int]]) -> Optional[float]:
    """Share of the boxes of images relabeled in both rounds whose chosen candidate changed."""
    common = [i for i in choices if i in previous]
    changed = sum(sum(a != b for a, b in zip(choices[i], previous[i])) for i in common)
    common_boxes = sum(len(choices[i]) for i in common)
    return changed / common_boxes if common_boxes else None


def relabel_input(datasets: Sequence[Any], stores: dict[int, Any], image: TrainImage, previous: Optional[list[int]]) -> RelabelInput:
    """The relabel step's input for one training image: its pixels, its store entry's candidates, its boxes and
    labels, and the previous round's choices (``previous``; None for none). Also used by benchmarks/relabel_profile.py."""
    dataset = datasets[image.source]
    record = dataset[image.index]
    entry = stores[image.source].get(image.image_id)  # checked against the image (size, provenance) by the store
    return RelabelInput(image.image_id, dataset.load_image(image.index), entry.candidates, record.boxes, record.labels,
                        None if previous is None else np.asarray(previous, dtype=np.int64))


def save_choices(run: RunDir, epoch: int, choices: dict[str, list[int]]) -> None:
    """Keep the candidate each box took in this epoch's label round (image id -> one index per
    box, -1 for none) as ``labels/choices/epoch_NNN.json``, compact, so that ``export`` can rebuild
    the instances of any epoch's labels. Read by nothing the trainer computes."""
    atomic_write_json(run.choices_file(epoch), {"epoch": epoch, "choices": choices}, indent=None)


def snapshot_labels(run: RunDir, epoch: int, images: Sequence[TrainImage]) -> None:
    """Copy the current label PNGs to ``labels/snapshots/epoch_NNN/`` (for figures)."""
    for image in images:
        source = run.label_file(image.image_id)
        if source.exists():
            atomic_write_bytes(run.snapshot_dir(epoch) / source.name, source.read_bytes())
