"""The BoxSup trainer: ``python -m boxsup_ext.train --config FILE [--set key=value ...]``.

Per epoch: relabel the box-supervised images with the current network (the first epoch too), train
one epoch of SGD on the stored labels, validate every few epochs, checkpoint. Modes:

- ``boxsup`` / ``boxsup_greedy``: relabel every epoch, sampling among the k cheapest / the cheapest;
- ``rectangles`` / ``grabcut``: fixed labels from those proposal stores (the best box match per box);
- ``mask``: every image trains on its ground-truth masks (the upper bound).

Images whose source gives masks (``supervision: mask`` or ``auto`` with masks) always use them.
Under ``torchrun --nproc_per_node=K`` it trains with DistributedDataParallel, relabeling a share of
the images on each rank; rank 0 logs and checkpoints. ``--resume`` continues a run exactly, with
the same bits as an uninterrupted run, whatever stopped it; SIGINT/SIGTERM save a checkpoint at the
next batch boundary before exiting. One trainer at a time holds a run directory (an OS lock).
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from boxsup_ext.config import Config, SourceConfig, config_to_dict, dump_config, load_config, save_config
from boxsup_ext.metrics import confusion_matrix, ignored_prediction_counts, miou_from_confusion
from boxsup_ext.models import build_model, image_to_tensor, load_checkpoint_file, model_meta, predict_logits
from boxsup_ext.relabel import IGNORE_LABEL, RelabelInput, RelabelSettings, relabel_batch
from boxsup_ext.train_utils.data import (
    LabelledImages,
    TrainImage,
    epoch_batches,
    epoch_loader,
    gt_label_map,
    list_train_images,
    rank_slice,
)
from boxsup_ext.train_utils.distributed import DistContext, init_distributed, shutdown_distributed
from boxsup_ext.train_utils.lock import RunLock
from boxsup_ext.train_utils.logbook import EpochLog, progress
from boxsup_ext.train_utils.state import (
    capture_rng,
    check_run_dir,
    model_digest,
    restore_rng,
    save_checkpoint,
    write_run_identity,
)
from boxsup_ext.utils import InputError, atomic_write_bytes, atomic_write_json, ensure_output_dir, run_cli

# Test hook: "EPOCH:STEP[:SIGNAL]" makes the process send itself SIGNAL (default SIGKILL; e.g.
# SIGTERM, SIGINT, SIGSTOP) right after that training step.
FAULT_ENV = "BOXSUP_FAULT_AT"
RELABELED_MODES = ("boxsup", "boxsup_greedy")
# Failures of the storage rather than of the program: one line, not a traceback.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


class StopRequested(Exception):
    """SIGINT/SIGTERM arrived; the trainer stops at the next safe point."""


class TrainingDiverged(InputError):
    """The loss became NaN or infinite; training stops before the weights reach a checkpoint."""


@dataclass
class Stopper:
    """Turns SIGINT/SIGTERM into a flag checked between batches."""

    signum: Optional[int] = None
    _previous: dict = field(default_factory=dict)

    def install(self) -> None:
        if not _in_main_thread():  # signal handlers can only be set from the main thread
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def requested(self) -> bool:
        return self.signum is not None


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


# ----------------------------------------------------------------------------------------------
# Building blocks: data, proposals, model, optimizer


def open_sources(config: Config) -> tuple[list[Any], Optional[Any]]:
    """Open the training datasets and the validation dataset (None when ``data.val.root`` is empty)."""
    from boxsup_ext.data import open_dataset

    def open_source(source: SourceConfig) -> Any:
        extra = {"categories": source.categories} if source.kind == "coco" else {}
        return open_dataset(source.root, source.split, kind=source.kind, skip_bad=config.data.skip_bad, **extra)

    train = []
    for i, source in enumerate(config.data.train):
        if not source.root:
            raise InputError(f"data.train.{i}.root is empty; set it to the dataset folder (--set data.train.{i}.root=DIR)")
        train.append(open_source(source))
    val = open_source(config.data.val) if config.data.val.root else None
    return train, val


def open_proposal_stores(config: Config, datasets: Sequence[Any], images: Sequence[TrainImage]) -> dict[int, Any]:
    """The proposal store of every source that has box-supervised images (not needed in ``mask``
    mode). A missing store or one made for other images is an InputError."""
    from boxsup_ext.proposals import open_store

    if config.train.mode == "mask":
        return {}
    needed = sorted({image.source for image in images if image.supervision == "box"})
    stores = {}
    for source in needed:
        path = config.data.train[source].proposals
        if not path:
            raise InputError(
                f"data.train.{source}.proposals is empty but mode {config.train.mode!r} needs a proposal store for "
                "its box-supervised images; build one with python -m boxsup_ext.proposals"
            )
        if not Path(path).exists():
            raise InputError(f"data.train.{source}.proposals: proposal store {path} does not exist; build it first")
        stores[source] = open_store(path, datasets[source])
    return stores


def make_model(config: Config, num_classes: int, class_names: Sequence[str]) -> nn.Module:
    """Build the network of ``config.model``, optionally initialised from a checkpoint."""
    cfg = config.model
    if cfg.name == "tiny_fcn":
        kwargs: dict[str, Any] = {"width": cfg.width, "dropout": cfg.dropout}
    else:
        kwargs = {"pretrained": cfg.pretrained or None, "fc_init": cfg.fc_init, "fc_channels": cfg.fc_channels, "dropout": cfg.dropout}
    model = build_model(cfg.name, num_classes, **kwargs)
    if cfg.init_checkpoint:
        path = Path(cfg.init_checkpoint)
        if not path.is_file():
            raise InputError(f"model.init_checkpoint: {path} does not exist")
        source = load_checkpoint_file(path)
        if not isinstance(source, dict) or not isinstance(source.get("model"), dict) or "model_meta" not in source:
            raise InputError(f"model.init_checkpoint {path} lacks 'model'/'model_meta'; give a boxsup_ext.train checkpoint")
        state = {k.removeprefix("module."): v for k, v in source["model"].items()}
        if cfg.replace_classifier:
            state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
            missing, unexpected = model.load_state_dict(state, strict=False)
            if unexpected or any(not k.startswith("classifier.") for k in missing):
                raise InputError(f"model.init_checkpoint {path} does not match model {cfg.name!r} (keys {unexpected or missing})")
        else:
            saved_classes = source["model_meta"]["num_classes"]
            if saved_classes != num_classes:
                raise InputError(
                    f"model.init_checkpoint {path} has {saved_classes} classes, the data {num_classes}; "
                    "set model.replace_classifier=true to fine-tune with a new classifier"
                )
            model.load_state_dict(state)
    return model


def make_optimizer(model: nn.Module, config: Config) -> tuple[torch.optim.Optimizer, Any]:
    """SGD with the classifier's lr scaled by ``classifier_lr_mult``; lr steps every ``lr_step`` epochs."""
    cfg = config.train
    classifier = list(_unwrap(model).classifier.parameters())
    classifier_ids = {id(p) for p in classifier}
    backbone = [p for p in model.parameters() if id(p) not in classifier_ids]
    optimizer = torch.optim.SGD(
        [{"params": backbone, "lr": cfg.lr}, {"params": classifier, "lr": cfg.lr * cfg.classifier_lr_mult}],
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    return optimizer, scheduler


# ----------------------------------------------------------------------------------------------
# Relabel step


@dataclass
class LabelRound:
    """What one pass of label preparation did, summed over ranks."""

    seconds: float
    stats: dict
    label_miou: Optional[float]
    choices: dict


def prepare_labels(
    epoch: int,
    config: Config,
    ctx: DistContext,
    model: nn.Module,
    datasets: Sequence[Any],
    images: Sequence[TrainImage],
    stores: dict[int, Any],
    labels_dir: Path,
    label_state: dict,
    stopper: Stopper,
) -> LabelRound:
    """Write this epoch's label PNGs: ground-truth masks once; box images every epoch in the boxsup
    modes (once for the fixed baselines). Work is sharded over ranks by image position."""
    from boxsup_ext.data import save_label_png

    start = time.perf_counter()
    mode = config.train.mode
    first_time = not label_state.get("fixed_done", False)
    mask_images, box_images = [], []
    for image in images:
        if mode == "mask" or image.supervision == "mask":
            if first_time:
                mask_images.append(image)
        elif mode in RELABELED_MODES or first_time:
            box_images.append(image)

    for image in progress(ctx.shard(mask_images), config.run.progress and ctx.is_main, desc=f"masks  {epoch}"):
        label = gt_label_map(datasets[image.source], image.index)
        if label is None:
            raise InputError(
                f"image {image.image_id!r} of data.train.{image.source} has no ground-truth mask, which mode "
                f"{mode!r} / supervision 'mask' needs; use supervision 'box' for it"
            )
        save_label_png(labels_dir / f"{image.image_id}.png", label)

    if mode in RELABELED_MODES:
        topk = 1 if mode == "boxsup_greedy" else config.relabel.topk
        settings = RelabelSettings(config.relabel.lam, topk, config.relabel.iou, config.relabel.clip_to_box, config.relabel.min_iou)
    else:  # fixed baselines: each box takes the candidate that matches it best, network unused
        settings = RelabelSettings(0.0, 1, "box", config.relabel.clip_to_box)
    num_classes = _unwrap(model).num_classes
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    sums = np.zeros(6, dtype=np.float64)  # boxes, unassigned, cost, iou, ce, assigned
    pixel_counts = np.zeros(3, dtype=np.float64)  # all, foreground, ignore
    label_ignored = np.zeros(2, dtype=np.int64)  # ground-truth pixels the labels leave as ignore, all ground-truth pixels
    choices: dict[str, list[int]] = {}
    mine = ctx.shard(box_images)
    batch_size = config.relabel.batch_images
    eval_model = _unwrap(model)
    was_training = eval_model.training
    eval_model.eval()
    bar = progress(range(0, len(mine), batch_size), config.run.progress and ctx.is_main, desc=f"relabel {epoch}")
    for first in bar:
        if ctx.any_rank(stopper.requested):
            raise StopRequested
        batch = [_relabel_input(datasets, stores, image) for image in mine[first : first + batch_size]]
        for image, result in zip(mine[first : first + batch_size], relabel_batch(eval_model, batch, settings, config.run.seed, epoch, ctx.device)):
            save_label_png(labels_dir / f"{image.image_id}.png", result.label)
            choices[image.image_id] = result.chosen.tolist()
            assigned = result.chosen >= 0
            sums += [len(result.chosen), (~assigned).sum(), np.nansum(result.cost), np.nansum(result.iou), np.nansum(result.mean_ce), assigned.sum()]
            pixel_counts += [result.label.size, ((result.label > 0) & (result.label != IGNORE_LABEL)).sum(), (result.label == IGNORE_LABEL).sum()]
            gt = datasets[image.source].load_class_map(image.index)
            if gt is not None:
                confusion += confusion_matrix(result.label, gt, num_classes)
                label_ignored += ignored_prediction_counts(result.label, gt, num_classes)
    eval_model.train(was_training)

    relabeled = ctx.gather_objects(sorted(choices))
    merged: dict[str, list[int]] = {}
    for part in ctx.gather_objects(choices):
        merged.update(part)
    sums = ctx.sum_array(sums)
    pixel_counts = ctx.sum_array(pixel_counts)
    label_ignored = ctx.sum_array(label_ignored)
    confusion = ctx.sum_array(confusion)
    ctx.barrier()  # every label file is on disk before anyone trains on it

    all_ids = [image_id for part in relabeled for image_id in part]
    expected = {image.image_id for image in box_images}
    previous = label_state.get("choices", {})
    common = [i for i in merged if i in previous]
    changed = sum(sum(a != b for a, b in zip(merged[i], previous[i])) for i in common)
    common_boxes = sum(len(merged[i]) for i in common)
    assigned = max(sums[5], 1.0)
    stats = {
        "relabeled": len(all_ids),
        "relabel_per_rank": [len(part) for part in relabeled],
        "relabel_duplicates": len(all_ids) - len(set(all_ids)),
        "relabel_missing": len(expected - set(all_ids)),
        "masks_written": len(mask_images),
        "boxes": int(sums[0]),
        "boxes_unassigned": int(sums[1]),
        "mean_cost": float(sums[2] / assigned) if sums[5] else None,
        "mean_iou": float(sums[3] / assigned) if sums[5] else None,
        "mean_ce": float(sums[4] / assigned) if sums[5] else None,
        "foreground_fraction": float(pixel_counts[1] / pixel_counts[0]) if pixel_counts[0] else None,
        "ignore_fraction": float(pixel_counts[2] / pixel_counts[0]) if pixel_counts[0] else None,
        # label_miou judges the labelled pixels only; this is the share of the truth it leaves out
        "label_ignore_share": float(label_ignored[0] / label_ignored[1]) if label_ignored[1] else None,
        "changed_fraction": changed / common_boxes if common_boxes else None,
    }
    label_miou = miou_from_confusion(confusion)[0] if confusion.sum() else None
    return LabelRound(time.perf_counter() - start, stats, label_miou, merged)


def _relabel_input(datasets: Sequence[Any], stores: dict[int, Any], image: TrainImage) -> RelabelInput:
    dataset = datasets[image.source]
    record = dataset[image.index]
    entry = stores[image.source].get(image.image_id)
    if (entry.height, entry.width) != (record.height, record.width):
        raise InputError(
            f"proposal store entry {image.image_id!r} is {entry.width}x{entry.height} but the image is "
            f"{record.width}x{record.height}; rebuild the store for this dataset"
        )
    return RelabelInput(image.image_id, dataset.load_image(image.index), entry.units, entry.members, record.boxes, record.labels)


def snapshot_labels(labels_dir: Path, epoch: int, images: Sequence[TrainImage]) -> None:
    """Copy the current label PNGs to ``labels/snapshots/epoch_NNN/`` (for figures)."""
    target = labels_dir / "snapshots" / f"epoch_{epoch:03d}"
    for image in images:
        source = labels_dir / f"{image.image_id}.png"
        if source.exists():
            atomic_write_bytes(target / source.name, source.read_bytes())


# ----------------------------------------------------------------------------------------------
# SGD epoch and validation


@dataclass
class EpochProgress:
    """Running totals of a (possibly resumed) training epoch."""

    step: int = 0
    loss_sum: float = 0.0
    seconds: float = 0.0


def train_one_epoch(
    epoch: int,
    config: Config,
    ctx: DistContext,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: Optional[torch.amp.GradScaler],
    datasets: Sequence[Any],
    images: Sequence[TrainImage],
    labels_dir: Path,
    partial: EpochProgress,
    stopper: Stopper,
) -> tuple[EpochProgress, bool]:
    """One epoch of SGD (or its rest, from ``partial.step``). Returns the totals and whether it
    stopped early on a signal."""
    cfg = config.train
    if cfg.batch_size % ctx.world_size:
        raise InputError(f"train.batch_size {cfg.batch_size} must be a multiple of the number of processes {ctx.world_size}")
    samples = LabelledImages(
        datasets, images, labels_dir, epoch, config.run.seed, config.data.crop_size,
        (config.data.scale_min, config.data.scale_max), config.data.flip,
    )
    batches = [rank_slice(b, ctx.rank, ctx.world_size) for b in epoch_batches(len(images), cfg.batch_size, config.run.seed, epoch)]
    total_steps = len(batches)
    loader = epoch_loader(samples, batches[partial.step :], config.data.workers, config.run.seed, epoch, ctx.device.type == "cuda")
    fault_at, fault_signal = _fault_hook()
    use_amp = scaler is not None
    model.train()
    started = time.perf_counter()
    bar = progress(loader, config.run.progress and ctx.is_main, desc=f"train  {epoch}", total=total_steps, initial=partial.step)
    for images_batch, labels_batch in bar:
        images_batch = images_batch.to(ctx.device, non_blocking=True)
        labels_batch = labels_batch.to(ctx.device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=ctx.device.type, dtype=torch.float16, enabled=use_amp):
            logits = model(images_batch)
            logits = F.interpolate(logits, size=labels_batch.shape[-2:], mode="bilinear", align_corners=False)
            if (labels_batch != IGNORE_LABEL).any():
                loss = F.cross_entropy(logits.float(), labels_batch, ignore_index=IGNORE_LABEL)
            else:  # all pixels ignored: a zero loss that still runs DDP's gradient sync
                loss = logits.sum() * 0.0
        loss_value = float(loss.detach())
        if ctx.any_rank(not math.isfinite(loss_value)):
            raise TrainingDiverged(
                f"the training loss is {loss_value} at epoch {epoch} step {partial.step + 1} (train.lr "
                f"{optimizer.param_groups[0]['lr']:g}; lower it); stopped without saving, so "
                "checkpoints/latest.pt still holds the last good state"
            )
        if use_amp:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        partial.step += 1
        partial.loss_sum += loss_value
        if fault_at == (epoch, partial.step):
            os.kill(os.getpid(), fault_signal)
        if ctx.any_rank(stopper.requested) and partial.step < total_steps:
            partial.seconds += time.perf_counter() - started
            return partial, True
    partial.seconds += time.perf_counter() - started
    return partial, False


def _fault_hook() -> tuple[Optional[tuple[int, int]], int]:
    """(epoch, step) and signal of the :data:`FAULT_ENV` test hook, or (None, SIGKILL) when unset."""
    fault = os.environ.get(FAULT_ENV, "")
    if not fault:
        return None, signal.SIGKILL
    parts = fault.split(":")
    return (int(parts[0]), int(parts[1])), getattr(signal, parts[2]) if len(parts) > 2 else signal.SIGKILL


@torch.no_grad()
def validate(model: nn.Module, dataset: Any, limit: int, ctx: DistContext, show: bool) -> Optional[dict]:
    """Single-scale, full-image validation mIoU (no CRF), sharded over ranks.

    Returns {"miou", "per_class_iou", "pixel_acc"} or None when no validation image has a mask.
    """
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    num_classes = net.num_classes
    count = len(dataset) if limit <= 0 else min(limit, len(dataset))
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    for index in progress(ctx.shard(range(count)), show, desc="val"):
        gt = gt_label_map(dataset, index)
        if gt is None:
            continue
        logits = predict_logits(net, image_to_tensor(dataset.load_image(index)).to(ctx.device))
        confusion += confusion_matrix(logits.argmax(0), gt, num_classes)
    net.train(was_training)
    confusion = ctx.sum_array(confusion)
    if not confusion.sum():
        return None
    miou, per_class, pixel_acc = miou_from_confusion(confusion)
    return {"miou": miou, "per_class_iou": [None if np.isnan(v) else float(v) for v in per_class], "pixel_acc": pixel_acc}


# ----------------------------------------------------------------------------------------------
# The loop


def train(config: Config, resume: bool = False) -> dict:
    """Run (or resume) the training described by ``config``; returns the run summary (also written
    to ``metrics/train_summary.json``): final/best validation mIoU, seconds, relabel share.

    Rank 0 holds the run directory's lock for the whole run. Resuming a finished run (or one that
    has done at least ``train.epochs``) changes nothing and returns the saved summary."""
    ctx = init_distributed(config.run.device)
    stopper = Stopper()
    stopper.install()
    run_dir = Path(config.run.run_dir)
    lock = RunLock(run_dir) if ctx.is_main else None
    try:
        if lock is not None:
            lock.acquire()
        else:
            ensure_output_dir(run_dir, "run directory (--run-dir)")
        return _train(config, resume, ctx, stopper)
    except OSError as err:
        if err.errno not in _STORAGE_ERRNOS:
            raise
        # A full disk or a folder that became unwritable mid-run: checkpoints are written atomically,
        # so the last one is whole.
        raise InputError(
            f"{err.filename or run_dir}: {err.strerror}; training stopped. Free space or fix the permissions, then "
            f"--resume continues from {run_dir / 'checkpoints' / 'latest.pt'}"
        ) from None
    finally:
        if lock is not None:
            lock.release()
        stopper.restore()
        shutdown_distributed()


def _train(config: Config, resume: bool, ctx: DistContext, stopper: Stopper) -> dict:
    run_started = time.perf_counter()
    if config.run.threads > 0:
        torch.set_num_threads(config.run.threads)
    run_dir = Path(config.run.run_dir)
    labels_dir = run_dir / "labels"
    config_dict = config_to_dict(config)

    datasets, val_dataset = open_sources(config)
    images = list_train_images(datasets, config.data.train)
    stores = open_proposal_stores(config, datasets, images)
    class_names = list(datasets[0].class_names)
    num_classes = config.model.num_classes or datasets[0].num_classes
    for i, dataset in enumerate(datasets[1:], start=1):
        if dataset.num_classes != datasets[0].num_classes:
            raise InputError(f"data.train.{i} has {dataset.num_classes} classes but data.train.0 has {datasets[0].num_classes}")
    fingerprints = [dataset.fingerprint() for dataset in datasets]

    checkpoint = check_run_dir(run_dir, resume, config_dict, fingerprints)
    if checkpoint is not None and checkpoint["epoch"] >= config.train.epochs:
        return _finished_run(run_dir, checkpoint, config, ctx)
    if resume and checkpoint is None and ctx.is_main:
        print(f"--resume: {run_dir} holds no checkpoint to resume from; starting a fresh run there", file=sys.stderr, flush=True)
    ctx.barrier()  # every rank has checked before rank 0 writes the run's identity
    if ctx.is_main:
        save_config(config, run_dir / "config.yaml")
        write_run_identity(run_dir, config_dict, fingerprints)

    torch.manual_seed(config.run.seed)
    np.random.seed(config.run.seed % (1 << 32))
    model = make_model(config, num_classes, class_names).to(ctx.device)
    optimizer, scheduler = make_optimizer(model, config)
    use_amp = config.train.amp and ctx.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None

    start_epoch, partial, best_miou, elapsed_before = 1, EpochProgress(), None, 0.0
    label_state: dict = {"epoch": 0, "fixed_done": False, "choices": {}}
    if checkpoint is not None:
        _unwrap(model).load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if scaler is not None and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        rng_states = checkpoint["rng"]
        restore_rng(rng_states[ctx.rank] if len(rng_states) == ctx.world_size else rng_states[0])
        start_epoch = checkpoint["epoch"] + 1
        partial = EpochProgress(**checkpoint.get("partial", {}))
        best_miou = checkpoint.get("best_miou")
        label_state = checkpoint["label_state"]
        elapsed_before = float(checkpoint.get("elapsed_s", 0.0))
    if ctx.distributed:
        model = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)

    log = EpochLog(run_dir / "log.jsonl", run_dir / "tensorboard" if config.run.tensorboard and ctx.is_main else None) if ctx.is_main else None
    if log is not None:
        log.truncate_after(start_epoch - 1)
    meta = model_meta(model, class_names=class_names)

    def make_checkpoint(epoch_done: int, progress_state: EpochProgress) -> dict:
        return {
            "model": _unwrap(model).state_dict(),
            "model_meta": meta,
            "config": config_dict,
            "epoch": epoch_done,
            "step": progress_state.step,
            "partial": vars(progress_state).copy(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rng_all,
            "label_state": label_state,
            "best_miou": best_miou,
            "dataset_fingerprints": fingerprints,
            "world_size": ctx.world_size,
            "elapsed_s": elapsed_before + time.perf_counter() - run_started,
        }

    summary: dict = {"mode": config.train.mode, "epochs": config.train.epochs, "final_val_miou": None, "best_val_miou": best_miou}
    relabel_total, epoch_total, val_result = 0.0, 0.0, None
    try:
        for epoch in range(start_epoch, config.train.epochs + 1):
            if label_state.get("epoch") != epoch:
                try:
                    if ctx.any_rank(stopper.requested):
                        raise StopRequested
                    label_round = prepare_labels(epoch, config, ctx, model, datasets, images, stores, labels_dir, label_state, stopper)
                except StopRequested:
                    if ctx.is_main:
                        since = f"the checkpoint of epoch {epoch - 1}" if epoch > 1 else "the start (no epoch had finished)"
                        print(f"stopped by signal before the training steps of epoch {epoch}; --resume continues from {since} "
                              "and prepares this epoch's labels again", file=sys.stderr, flush=True)
                    raise
                label_state = {"epoch": epoch, "fixed_done": True, "choices": label_round.choices,
                               "round": {"seconds": label_round.seconds, "stats": label_round.stats, "label_miou": label_round.label_miou}}
                if ctx.is_main and epoch in config.relabel.snapshot_epochs:
                    snapshot_labels(labels_dir, epoch, images)
            # This epoch's label round, also when a resumed run prepared the labels before the stop.
            label_round = LabelRound(choices=label_state["choices"], **label_state["round"]) if label_state.get("round") else None
            partial, stopped = train_one_epoch(
                epoch, config, ctx, model, optimizer, scaler, datasets, images, labels_dir, partial, stopper
            )
            if stopped:
                rng_all = ctx.gather_objects(capture_rng())
                if ctx.is_main:
                    save_checkpoint(run_dir / "checkpoints" / "latest.pt", make_checkpoint(epoch - 1, partial))
                    print(f"stopped by signal in epoch {epoch} after step {partial.step}; checkpoint saved, resume with --resume", file=sys.stderr)
                raise StopRequested
            ctx.broadcast_buffers(_unwrap(model))
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            entry: dict = {
                "epoch": epoch,
                "loss": float(ctx.sum_array(np.array([partial.loss_sum / max(partial.step, 1)]))[0] / ctx.world_size),
                "lr": lr,
                "time_s": partial.seconds + (label_round.seconds if label_round else 0.0),
                "relabel_s": label_round.seconds if label_round else 0.0,
                "label_stats": label_round.stats if label_round else None,
            }
            if label_round is not None and label_round.label_miou is not None:
                entry["label_miou"] = label_round.label_miou
                entry["label_ignore_share"] = label_round.stats.get("label_ignore_share")
            relabel_total += entry["relabel_s"]
            epoch_total += entry["time_s"]
            is_best = False
            due = config.train.val_every and epoch % config.train.val_every == 0
            if val_dataset is not None and (due or epoch == config.train.epochs):
                val_result = validate(model, val_dataset, config.data.val.limit, ctx, config.run.progress and ctx.is_main)
                if val_result is not None:
                    entry["val_miou"] = val_result["miou"]
                    is_best = best_miou is None or val_result["miou"] > best_miou
                    best_miou = float(max(best_miou or 0.0, val_result["miou"]))
            if ctx.distributed:
                digests = ctx.gather_objects(model_digest(_unwrap(model)))
                entry["rank_weight_digests"] = digests
                entry["weights_in_sync"] = len(set(digests)) == 1
            partial = EpochProgress()
            rng_all = ctx.gather_objects(capture_rng())
            if ctx.is_main:
                state = make_checkpoint(epoch, partial)
                save_checkpoint(run_dir / "checkpoints" / "latest.pt", state)
                if is_best or val_dataset is None:
                    save_checkpoint(run_dir / "checkpoints" / "best.pt", state)
                log.append(entry)
                _print_epoch(entry)
    finally:
        if log is not None:
            log.close()

    entries = log.entries if log is not None else []
    relabel_all, time_all = sum(e.get("relabel_s") or 0.0 for e in entries), sum(e.get("time_s") or 0.0 for e in entries)
    summary.update(
        final_val_miou=val_result["miou"] if val_result else None,
        best_val_miou=best_miou,
        per_class_iou=val_result["per_class_iou"] if val_result else None,
        seconds=elapsed_before + time.perf_counter() - run_started,
        relabel_share=relabel_all / time_all if time_all else (relabel_total / epoch_total if epoch_total else None),
    )
    if ctx.is_main:
        atomic_write_json(run_dir / "metrics" / "train_summary.json", summary)
    return summary


def _finished_run(run_dir: Path, checkpoint: dict, config: Config, ctx: DistContext) -> dict:
    """``--resume`` of a run that has done ``train.epochs`` already: say so, touch nothing, and
    return its saved summary."""
    if ctx.is_main:
        print(f"--resume: {run_dir} has finished {checkpoint['epoch']} epochs (train.epochs is {config.train.epochs}); "
              "nothing to do", file=sys.stderr, flush=True)
    path = run_dir / "metrics" / "train_summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        summary = None
    if not isinstance(summary, dict):  # killed between the last checkpoint and the summary
        summary = {"mode": config.train.mode, "epochs": checkpoint["epoch"], "final_val_miou": None,
                   "best_val_miou": checkpoint.get("best_miou"), "seconds": checkpoint.get("elapsed_s"), "relabel_share": None}
    return summary


def _print_epoch(entry: dict) -> None:
    parts = [f"epoch {entry['epoch']}", f"loss {entry['loss']:.4f}", f"lr {entry['lr']:.2e}",
             f"time {entry['time_s']:.1f}s", f"relabel {entry['relabel_s']:.1f}s"]
    for key in ("label_miou", "val_miou"):
        if entry.get(key) is not None:
            parts.append(f"{key} {100 * entry[key]:.2f}")
    print("  ".join(parts), flush=True)


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m boxsup_ext.train", description="Train a segmentation network the BoxSup way.")
    parser.add_argument("--config", help="YAML config (see configs/); defaults: the paper's settings")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.epochs=2 (repeatable)")
    parser.add_argument("--run-dir", help="run directory (same as --set run.run_dir=DIR)")
    parser.add_argument("--resume", action="store_true", help="continue the run in the run directory")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out broken images/objects of the datasets with a warning (same as --set data.skip_bad=true)")
    return parser


def resolve_config(args: argparse.Namespace) -> Config:
    """Config from --config/--set; on --resume without --config, the run directory's config.yaml."""
    overrides = list(args.overrides)
    if args.skip_bad:
        overrides.append("data.skip_bad=true")
    if args.run_dir:
        overrides.append(f"run.run_dir={args.run_dir}")
    config_path = args.config
    if config_path is None and args.resume:
        run_dir = Path(args.run_dir or load_config(None, overrides).run.run_dir)
        if (run_dir / "config.yaml").exists():
            config_path = run_dir / "config.yaml"
    return load_config(config_path, overrides)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_arg_parser().parse_args(argv)
    config = resolve_config(args)
    if int(os.environ.get("RANK", "0")) == 0:
        print(dump_config(config), flush=True)
    try:
        train(config, resume=args.resume)
    except StopRequested:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
