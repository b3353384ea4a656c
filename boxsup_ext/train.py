"""The BoxSup trainer: ``python -m boxsup_ext.train --config FILE [--set key=value ...]``.

Per epoch: relabel the box-supervised images with the current network (the first epoch too), train
one epoch of SGD on the stored labels, validate every few epochs, checkpoint. Modes:

- ``boxsup`` / ``boxsup_greedy``: relabel every epoch, sampling among the k cheapest / the cheapest;
- ``rectangles`` / ``grabcut``: fixed labels from those proposal stores (the best box match per box);
- ``mask``: every image trains on its ground-truth masks (the upper bound).

Images whose source gives masks (``supervision: mask`` or ``auto`` with masks) always use them.
Under ``torchrun --nproc_per_node=K`` it trains with DistributedDataParallel, relabeling a share of
the images on each rank; rank 0 logs and checkpoints. ``--resume`` continues a run exactly, with
the same bits as an uninterrupted run on a CPU (tested), whatever stopped it; on a GPU the relabel
forward runs batched under bfloat16 and cuDNN is not deterministic, so last bits can differ.
SIGINT/SIGTERM save a checkpoint at the next batch boundary before exiting. One trainer at a time
holds a run directory (an OS lock).

This file reads top to bottom: the building blocks (data, proposal stores, optimizer, the state a
checkpoint saves), one SGD epoch and validation, the loop (:func:`train`, :func:`_train`), the
epoch's log entry and the run summary, the command line. An epoch's label round is
:func:`boxsup_ext.training.labels.labels_of_epoch`; the signal handling and the ``BOXSUP_FAULT_AT``
test hook are in :mod:`boxsup_ext.training.signals`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from boxsup_ext.checkpoints import save_checkpoint
from boxsup_ext.config import Config, config_to_dict, dump_config, load_config, save_config
from boxsup_ext.data import TrainingSet, open_source, open_training_set
from boxsup_ext.core import IGNORE_LABEL
from boxsup_ext.evaluation.evaluator import ConfusionAccumulator, InferenceSettings, LabelPredictor
from boxsup_ext.evaluation.metrics import miou_from_confusion
from boxsup_ext.models import IMAGENET_MEAN, IMAGENET_STD, convert_sync_batchnorm, model_from_config, model_meta, unwrap_model
from boxsup_ext.run_dir import RunDir, read_log
from boxsup_ext.training.data import LabelledImages, epoch_batches, epoch_loader, gt_label_map, rank_slice
from boxsup_ext.training.distributed import DistContext, init_distributed, shutdown_distributed
from boxsup_ext.training.labels import LabelSetup, LabelState, labels_of_epoch
from boxsup_ext.training.lock import RunLock
from boxsup_ext.training.logbook import EpochLog, progress
from boxsup_ext.training.signals import StopRequested, Stopper, fault_injection_from_env
from boxsup_ext.training.state import (
    capture_rng,
    checkpoint_to_resume,
    model_digest,
    restore_rng,
    write_run_identity,
)
from boxsup_ext.utils import InputError, atomic_write_json, ensure_output_dir, run_cli
from boxsup_ext.utils.errors import STORAGE_ERRNOS


class TrainingDiverged(InputError):
    """The loss or the weights became NaN or infinite; training stops before the weights reach a checkpoint."""


# ----------------------------------------------------------------------------------------------
# Building blocks: data, proposals, model, optimizer, checkpoint


def open_data(config: Config) -> tuple[TrainingSet, Optional[Any]]:
    """The training set of ``data.train`` and the validation dataset (None when ``data.val.root``
    is empty)."""
    training = open_training_set(config.data.train, config.data.skip_bad)
    val = open_source(config.data.val, config.data.skip_bad) if config.data.val.root else None
    return training, val


def open_proposal_stores(config: Config, training: TrainingSet) -> dict[int, Any]:
    """The proposal store of every source that has box-supervised images (not needed in ``mask``
    mode). A missing store or one made for other images is an InputError."""
    from boxsup_ext.proposals import open_store

    if config.train.mode == "mask":
        return {}
    needed = sorted({image.source for image in training.images if image.supervision == "box"})
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
        stores[source] = open_store(path, training.datasets[source])
    return stores


def make_optimizer(model: nn.Module, config: Config) -> tuple[torch.optim.Optimizer, Any]:
    """SGD with the classifier's lr scaled by ``classifier_lr_mult``; lr steps every ``lr_step`` epochs."""
    cfg = config.train
    classifier = list(unwrap_model(model).classifier.parameters())
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


@dataclass
class EpochProgress:
    """Running totals of a (possibly resumed) training epoch."""

    step: int = 0
    loss_sum: float = 0.0
    seconds: float = 0.0


@dataclass
class TrainState:
    """What the loop updates and a checkpoint saves: the network and its optimizer, where the run
    stands, and the label rounds' state."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Optional[torch.amp.GradScaler]
    meta: dict
    start_epoch: int = 1
    partial: EpochProgress = field(default_factory=EpochProgress)
    best_miou: Optional[float] = None
    label_state: LabelState = field(default_factory=LabelState)
    elapsed_before: float = 0.0


def build_state(config: Config, ctx: DistContext, training: TrainingSet, checkpoint: Optional[dict]) -> TrainState:
    """Seed the global streams, build model, optimizer and scaler, then restore ``checkpoint`` (the
    weights, optimizer, schedule and every random stream) when resuming."""
    torch.manual_seed(config.run.seed)
    np.random.seed(config.run.seed % (1 << 32))
    num_classes = config.model.num_classes or training.num_classes
    model = build_model_for(config, num_classes, resuming=checkpoint is not None).to(ctx.device)
    if ctx.distributed:  # model.bn=sync: SyncBatchNorm before the optimizer and the DDP wrap below
        model = convert_sync_batchnorm(model, ctx.device)
    optimizer, scheduler = make_optimizer(model, config)
    scaler = torch.amp.GradScaler("cuda") if config.train.amp and ctx.device.type == "cuda" else None
    state = TrainState(model, optimizer, scheduler, scaler, model_meta(model, class_names=training.class_names))
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if scaler is not None and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        rng_states = checkpoint["rng"]
        if len(rng_states) != ctx.world_size and ctx.is_main:
            print(f"warning: the checkpoint was saved by {len(rng_states)} process(es), this run has {ctx.world_size}; every "
                  "rank continues from rank 0's random streams, so the resume is not exact", file=sys.stderr, flush=True)
        restore_rng(rng_states[ctx.rank] if len(rng_states) == ctx.world_size else rng_states[0])
        state.start_epoch = checkpoint["epoch"] + 1
        state.partial = EpochProgress(**checkpoint.get("partial", {}))
        state.best_miou = checkpoint.get("best_miou")
        state.label_state = LabelState.from_dict(checkpoint["label_state"])
        state.elapsed_before = float(checkpoint.get("elapsed_s", 0.0))
    if ctx.distributed:
        state.model = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    return state


def build_model_for(config: Config, num_classes: int, resuming: bool) -> nn.Module:
    """The run's network. When resuming, the checkpoint holds every weight, so the files of the
    starting weights (``model.pretrained``, ``model.init_checkpoint``) are not read again and need
    not still exist; the random initialisation it replaces draws from streams the checkpoint restores."""
    if not resuming:
        return model_from_config(config.model, num_classes)
    with warnings.catch_warnings():  # "no ImageNet weights": they come from the checkpoint
        warnings.filterwarnings("ignore", message=".*has no ImageNet weights")
        return model_from_config(dataclasses.replace(config.model, pretrained="", init_checkpoint=""), num_classes)


def save_state(
    paths: Sequence[Path], state: TrainState, epoch_done: int, config: Config, ctx: DistContext, fingerprints: list[str], elapsed: float
) -> None:
    """Gather every rank's random streams; rank 0 writes the checkpoint of ``state`` after
    ``epoch_done`` epochs (and ``state.partial.step`` steps of the next) to each of ``paths``."""
    rng_all = ctx.gather_objects(capture_rng())
    if not ctx.is_main:
        return
    checkpoint = {
        "model": unwrap_model(state.model).state_dict(),
        "model_meta": state.meta,
        "config": config_to_dict(config),
        "epoch": epoch_done,
        "step": state.partial.step,
        "partial": vars(state.partial).copy(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict() if state.scaler is not None else None,
        "rng": rng_all,
        "label_state": state.label_state.to_dict(),
        "best_miou": state.best_miou,
        "dataset_fingerprints": fingerprints,
        "world_size": ctx.world_size,
        "elapsed_s": state.elapsed_before + elapsed,
    }
    for path in paths:
        save_checkpoint(path, checkpoint)


# ----------------------------------------------------------------------------------------------
# SGD epoch and validation


def train_one_epoch(
    epoch: int, config: Config, ctx: DistContext, state: TrainState, training: TrainingSet, labels_dir: Path,
    stopper: Stopper, after_step: Callable[[int, int], None],
) -> bool:
    """One epoch of SGD (or its rest, from ``state.partial.step``), adding to ``state.partial``.
    ``after_step(epoch, step)`` runs after every step. Returns whether a signal stopped it early."""
    cfg, partial = config.train, state.partial
    if cfg.batch_size % ctx.world_size:
        raise InputError(f"train.batch_size {cfg.batch_size} must be a multiple of the number of processes {ctx.world_size}")
    samples = LabelledImages(training.datasets, training.images, labels_dir, epoch, config.run.seed, config.data)
    plan = epoch_batches(len(training.images), cfg.batch_size, config.run.seed, epoch)
    batches = [rank_slice(b, ctx.rank, ctx.world_size) for b in plan]
    loader = epoch_loader(samples, batches[partial.step :], config.data.workers, config.run.seed, epoch, ctx.device.type == "cuda")
    state.model.train()
    started = time.perf_counter()
    bar = progress(loader, config.run.progress and ctx.is_main, desc=f"train  {epoch}", total=len(batches), initial=partial.step)
    for images, labels in bar:
        loss = forward_loss(state, images.to(ctx.device, non_blocking=True), labels.to(ctx.device, non_blocking=True))
        loss_value = float(loss.detach())
        finite = math.isfinite(loss_value)
        backward_step(state, loss)
        partial.step += 1
        partial.loss_sum += loss_value if finite else 0.0
        after_step(epoch, partial.step)
        # One collective per step for both questions. Under AMP a non-finite loss is an fp16
        # overflow: the GradScaler skipped that step and lowered its scale. Without AMP the update
        # just taken is poisoned, but nothing of it is saved.
        diverged, stop = ctx.any_ranks(state.scaler is None and not finite, stopper.requested)
        if diverged:
            raise TrainingDiverged(
                f"the training loss is {loss_value} at epoch {epoch} step {partial.step} (train.lr "
                f"{state.optimizer.param_groups[0]['lr']:g}; lower it); stopped without saving, so "
                "checkpoints/latest.pt still holds the last good state"
            )
        if stop and partial.step < len(batches):
            partial.seconds += time.perf_counter() - started
            return True
    partial.seconds += time.perf_counter() - started
    return False


def forward_loss(state: TrainState, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-pixel cross-entropy of a batch (labels 255 ignored), gradients cleared."""
    state.optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=images.device.type, dtype=torch.float16, enabled=state.scaler is not None):
        logits = state.model(images)
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        if (labels != IGNORE_LABEL).any():
            return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_LABEL)
        return logits.sum() * 0.0  # all pixels ignored: a zero loss that still runs DDP's gradient sync


def backward_step(state: TrainState, loss: torch.Tensor) -> None:
    if state.scaler is not None:
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        loss.backward()
        state.optimizer.step()


def check_weights_finite(state: TrainState, ctx: DistContext, epoch: int) -> None:
    """Stop (one line) when a weight became NaN or infinite, before it reaches a checkpoint: a
    finite loss does not prove the last step's update was. Under AMP the GradScaler skips the steps
    whose gradients overflow, so a non-finite weight there is a real divergence too."""
    net = unwrap_model(state.model)
    bad = [name for name, p in net.named_parameters() if not bool(torch.isfinite(p.detach()).all())]
    if ctx.any_rank(bool(bad)):
        where = f" ({bad[0]}{' and others' if len(bad) > 1 else ''})" if bad else " on another rank"
        raise TrainingDiverged(
            f"the weights became NaN or infinite{where} in epoch {epoch} by step {state.partial.step} (train.lr "
            f"{state.optimizer.param_groups[0]['lr']:g}; lower it); stopped without saving, so checkpoints/latest.pt still "
            "holds the last good state"
        )


def validate(model: nn.Module, dataset: Any, limit: int, ctx: DistContext, show: bool) -> Optional[dict]:
    """Single-scale, full-image validation mIoU (no CRF), sharded over ranks: the evaluator's
    :class:`LabelPredictor` one image at a time.

    Returns {"miou", "per_class_iou", "pixel_accuracy"} (the evaluator's names) or None when no validation image has a mask.
    """
    net = unwrap_model(model)
    was_training = net.training
    predictor = LabelPredictor(net, IMAGENET_MEAN, IMAGENET_STD, InferenceSettings(batch_size=1), ctx.device)
    scores = ConfusionAccumulator(net.num_classes)
    count = len(dataset) if limit <= 0 else min(limit, len(dataset))
    for index in progress(ctx.shard(range(count)), show, desc="val"):
        gt = gt_label_map(dataset, index)
        if gt is not None:
            scores.add(predictor.labels([dataset.load_image(index)])[0], gt)
    net.train(was_training)
    confusion = ctx.sum_array(scores.total)
    if not confusion.sum():
        return None
    miou, per_class, pixel_accuracy = miou_from_confusion(confusion)
    return {"miou": miou, "per_class_iou": [None if np.isnan(v) else float(v) for v in per_class], "pixel_accuracy": pixel_accuracy}


def validate_when_due(epoch: int, config: Config, ctx: DistContext, model: nn.Module, val_dataset: Optional[Any]) -> Optional[dict]:
    """:func:`validate` in a validation epoch (every ``train.val_every`` epochs, and the last);
    None in other epochs and without a validation set."""
    due = config.train.val_every and epoch % config.train.val_every == 0
    if val_dataset is None or not (due or epoch == config.train.epochs):
        return None
    return validate(model, val_dataset, config.data.val.limit, ctx, config.run.progress and ctx.is_main)


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
        if err.errno not in STORAGE_ERRNOS or (err.filename is not None and not _is_under(err.filename, run_dir)):
            raise
        # A full disk or a run directory that became unwritable mid-run: checkpoints are written
        # atomically, so the last one is whole.
        latest = RunDir(run_dir).latest
        then = f"--resume continues from {latest}" if latest.is_file() else "run it again (no checkpoint was saved yet)"
        raise InputError(
            f"{err.filename or run_dir}: {err.strerror}; training stopped. Free space or fix the permissions, then {then}"
        ) from None
    finally:
        if lock is not None:
            lock.release()
        stopper.restore()
        shutdown_distributed()


def _is_under(path: Any, folder: Path) -> bool:
    """Whether ``path`` (an OSError's filename) lies in ``folder``."""
    try:
        return Path(os.fsdecode(path)).resolve().is_relative_to(Path(folder).resolve())
    except (TypeError, ValueError, OSError):
        return False


def _train(config: Config, resume: bool, ctx: DistContext, stopper: Stopper) -> dict:
    """Set up (data, proposal stores, the checkpoint to resume, the state), run the epochs from
    ``state.start_epoch``, write the summary."""
    run_started = time.perf_counter()
    if config.run.threads > 0:
        torch.set_num_threads(config.run.threads)
    run = RunDir(config.run.run_dir)
    training, val_dataset = open_data(config)
    stores = open_proposal_stores(config, training)
    fingerprints = training.fingerprints()
    checkpoint = checkpoint_to_resume(run, resume, config_to_dict(config), fingerprints, show=ctx.is_main)
    if checkpoint is not None and checkpoint["epoch"] >= config.train.epochs:
        return _finished_run(run, checkpoint, config, ctx)
    start_run_dir(run, config, ctx, fingerprints, nothing_to_resume=resume and checkpoint is None)
    state = build_state(config, ctx, training, checkpoint)
    labelling = LabelSetup(config, ctx, training, stores, run, stopper)
    log = open_log(run, config, state.start_epoch) if ctx.is_main else None
    after_step = fault_injection_from_env()

    val_result = None
    try:
        for epoch in range(state.start_epoch, config.train.epochs + 1):
            state.label_state = labels_of_epoch(epoch, labelling, state.model, state.label_state)
            stopped = train_one_epoch(epoch, config, ctx, state, training, run.labels, stopper, after_step)
            check_weights_finite(state, ctx, epoch)
            if stopped:
                save_state([run.latest], state, epoch - 1, config, ctx, fingerprints, time.perf_counter() - run_started)
                if ctx.is_main:
                    print(f"stopped by signal in epoch {epoch} after step {state.partial.step}; checkpoint saved, resume with --resume", file=sys.stderr)
                raise StopRequested
            ctx.broadcast_buffers(unwrap_model(state.model))
            entry = epoch_entry(epoch, ctx, state)
            state.scheduler.step()
            val_result = validate_when_due(epoch, config, ctx, state.model, val_dataset)
            is_best = val_result is not None and (state.best_miou is None or val_result["miou"] > state.best_miou)
            if val_result is not None:
                entry["val_miou"] = val_result["miou"]
                state.best_miou = float(max(state.best_miou or 0.0, val_result["miou"]))
            if ctx.distributed:
                digests = ctx.gather_objects(model_digest(unwrap_model(state.model)))
                entry["rank_weight_digests"] = digests
                entry["weights_in_sync"] = len(set(digests)) == 1
            state.partial = EpochProgress()
            # The log entry goes first: a process killed before the checkpoint leaves an entry of an
            # epoch the checkpoint has not reached, which the resume's truncate_after removes; the
            # other order would lose the entry of a checkpointed epoch for good.
            if log is not None:
                log.append(entry)
            # best.pt only from a validated epoch: without validation there is no best.
            save_state([run.latest] + ([run.best] if is_best else []), state, epoch, config, ctx, fingerprints,
                       time.perf_counter() - run_started)
            if ctx.is_main:
                _print_epoch(entry)
    finally:
        if log is not None:
            log.close()
    return write_summary(run, config, ctx, state, log, val_result, time.perf_counter() - run_started)


def start_run_dir(run: RunDir, config: Config, ctx: DistContext, fingerprints: list[str], nothing_to_resume: bool) -> None:
    """Once every rank has checked the run directory, rank 0 writes the run's identity there
    (``config.yaml``, ``run.json``); on a ``--resume`` that found no checkpoint it says so first."""
    if nothing_to_resume and ctx.is_main:
        print(f"--resume: {run.root} holds no checkpoint to resume from; starting a fresh run there", file=sys.stderr, flush=True)
    ctx.barrier()  # every rank has checked before rank 0 writes the run's identity
    if ctx.is_main:
        save_config(config, run.config_file)
        write_run_identity(run, config_to_dict(config), fingerprints)


def open_log(run: RunDir, config: Config, start_epoch: int) -> EpochLog:
    """Rank 0's epoch log (``log.jsonl``, and TensorBoard with ``run.tensorboard``) without the
    entries of epochs after the checkpoint's: they are trained again."""
    log = EpochLog(run.log_file, run.tensorboard if config.run.tensorboard else None)
    print(f"logging to {log.loggers}", flush=True)
    log.truncate_after(start_epoch - 1)
    return log


# ----------------------------------------------------------------------------------------------
# The log entry and the run summary


def epoch_entry(epoch: int, ctx: DistContext, state: TrainState) -> dict:
    """The log entry of a trained epoch (before validation): mean loss over ranks, lr, times, the
    statistics of the epoch's label round."""
    partial, label_round = state.partial, state.label_state.round
    relabel_s = label_round.seconds if label_round else 0.0
    entry: dict = {
        "epoch": epoch,
        "loss": float(ctx.sum_array(np.array([partial.loss_sum / max(partial.step, 1)]))[0] / ctx.world_size),
        "lr": state.optimizer.param_groups[0]["lr"],
        "time_s": partial.seconds + relabel_s,
        "relabel_s": relabel_s,
        "label_stats": label_round.stats if label_round else None,
    }
    if label_round is not None and label_round.label_miou is not None:
        entry["label_miou"] = label_round.label_miou
        entry["label_ignore_share"] = label_round.stats.get("label_ignore_share")
    return entry


def write_summary(
    run: RunDir, config: Config, ctx: DistContext, state: TrainState, log: Optional[EpochLog], val_result: Optional[dict], seconds: float
) -> dict:
    """The run summary (rank 0 writes ``metrics/train_summary.json``): last and best validation
    mIoU, seconds over all resumes, the relabel share of the logged epochs' time."""
    return _save_summary(
        run, ctx, config.train.mode, config.train.epochs, log.entries if log is not None else [],
        final=val_result["miou"] if val_result else None, best=state.best_miou,
        per_class=val_result["per_class_iou"] if val_result else None, seconds=state.elapsed_before + seconds,
    )


def _save_summary(
    run: RunDir, ctx: DistContext, mode: str, epochs: int, entries: Sequence[dict], final: Optional[float],
    best: Optional[float], per_class: Optional[list], seconds: Optional[float],
) -> dict:
    """The summary's one layout (rank 0 writes it); the relabel share comes from the log ``entries``."""
    relabel_all, time_all = sum(e.get("relabel_s") or 0.0 for e in entries), sum(e.get("time_s") or 0.0 for e in entries)
    summary = {"mode": mode, "epochs": epochs, "final_val_miou": final, "best_val_miou": best, "per_class_iou": per_class,
               "seconds": seconds, "relabel_share": relabel_all / time_all if time_all else None}
    if ctx.is_main:
        atomic_write_json(run.summary_file, summary)
    return summary


def _finished_run(run: RunDir, checkpoint: dict, config: Config, ctx: DistContext) -> dict:
    """``--resume`` of a run that has done ``train.epochs`` already: say so and return its saved
    summary, touching nothing. Only a run killed between its last checkpoint and its summary (none,
    or one of fewer epochs left by an earlier finish) gets the summary written, from the checkpoint
    and the log."""
    if ctx.is_main:
        print(f"--resume: {run.root} has finished {checkpoint['epoch']} epochs (train.epochs is {config.train.epochs}); "
              "nothing to do", file=sys.stderr, flush=True)
    try:
        summary = json.loads(run.summary_file.read_text())
    except (OSError, ValueError):
        summary = None
    if isinstance(summary, dict) and summary.get("epochs") == checkpoint["epoch"]:
        return summary
    entries = read_log(run.log_file) if run.log_file.is_file() else []
    last = next((e for e in entries if e.get("epoch") == checkpoint["epoch"]), {})
    return _save_summary(run, ctx, config.train.mode, checkpoint["epoch"], entries, final=last.get("val_miou"),
                         best=checkpoint.get("best_miou"), per_class=None, seconds=checkpoint.get("elapsed_s"))


def _print_epoch(entry: dict) -> None:
    parts = [f"epoch {entry['epoch']}", f"loss {entry['loss']:.4f}", f"lr {entry['lr']:.2e}",
             f"time {entry['time_s']:.1f}s", f"relabel {entry['relabel_s']:.1f}s"]
    for key in ("label_miou", "val_miou"):
        if entry.get(key) is not None:
            parts.append(f"{key} {100 * entry[key]:.2f}")
    print("  ".join(parts), flush=True)


# ----------------------------------------------------------------------------------------------
# Command line


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
