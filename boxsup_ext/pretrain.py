"""Image-level pretraining of the ``tiny_fcn`` backbone: the synthetic analogue of ImageNet weights.

The paper starts BoxSup from a VGG-16 trained on ImageNet classification. Here the backbone of
``tiny_fcn`` (its ``features``) learns multi-label classification (which classes appear in an
image; global average pooling and a linear head, discarded afterwards) on synthetic images of a
class set disjoint from the segmentation presets (``--preset pretrain``). Images are drawn in
memory (image i from ``numpy.random.default_rng([seed, i])``; the held-out images follow the
training ones), so nothing but the result is written.

Output: ``--out FILE``, a plain state dict (``features.0.0.weight`` ..., batch-norm statistics
included) that ``model.pretrained`` loads into a ``tiny_fcn`` of the same ``model.width``, and
``FILE.json`` with the arguments, the class names, the held-out mAP, the time and torch's version.
The same arguments write the same bytes on the same machine.

CLI: ``python -m boxsup_ext.pretrain --out pretrained/tiny16.pt [--width 16] [--force]``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from boxsup_ext.checkpoints import atomic_save_torch
from boxsup_ext.data import synthetic
from boxsup_ext.models import build_model, normalize_images
from boxsup_ext.utils import InputError, atomic_write_json, ensure_output_dir, run_cli

MODELS = ("tiny_fcn",)
WEIGHT_DECAY = 1e-4


class _ImageClassifier(nn.Module):
    """A backbone, global average pooling and a linear multi-label head (one logit per class)."""

    def __init__(self, features: nn.Module, channels: int, num_labels: int):
        super().__init__()
        self.features = features
        self.head = nn.Linear(channels, num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def draw_labelled_images(preset: str, seed: int, start: int, count: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``start .. start + count - 1`` of ``preset``: uint8 [N, size, size, 3] and their
    multi-hot image labels float32 [N, C - 1] (column k: class k + 1 is in the image). Object
    counts and visibility are the preset's."""
    spec = synthetic.get_preset(preset)
    num_labels = len(spec.class_names) - 1
    images = np.empty((count, size, size, 3), np.uint8)
    targets = np.zeros((count, num_labels), np.float32)
    for row, index in enumerate(range(start, start + count)):
        rng = np.random.default_rng([seed, index])
        drawn = synthetic.draw_image(rng, size, size, spec.max_objects, spec.min_visible, preset=preset)
        images[row] = drawn.image
        targets[row, drawn.labels - 1] = 1.0
    return torch.from_numpy(images), torch.from_numpy(targets)


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean over classes (those with a positive) of the average precision of ``scores`` [N, K]
    ranking the positives of ``targets`` [N, K] (0/1) first. Random scores give about the
    positive rate."""
    precisions = []
    for k in range(targets.shape[1]):
        positive = targets[np.argsort(-scores[:, k], kind="stable"), k] > 0
        if positive.any():
            hits = np.cumsum(positive)
            precisions.append(float(np.mean(hits[positive] / (np.flatnonzero(positive) + 1))))
    return float(np.mean(precisions)) if precisions else float("nan")


@torch.no_grad()
def _evaluate(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, batch_size: int) -> float:
    model.eval()
    scores = torch.cat([model(normalize_images(images[i : i + batch_size])) for i in range(0, len(images), batch_size)])
    return mean_average_precision(scores.numpy(), targets.numpy())


def _check_arguments(args: argparse.Namespace) -> None:
    synthetic.get_preset(args.preset)
    checks = (
        (args.width >= 1, f"--width must be at least 1, got {args.width}"),
        (args.images >= 1, f"--images must be at least 1, got {args.images}"),
        (args.val_images >= 1, f"--val-images must be at least 1, got {args.val_images}"),
        (32 <= args.size <= 1024, f"--size must be in 32..1024, got {args.size}"),
        (args.epochs >= 1, f"--epochs must be at least 1, got {args.epochs}"),
        (args.batch_size >= 1, f"--batch-size must be at least 1, got {args.batch_size}"),
        (math.isfinite(args.lr) and args.lr > 0, f"--lr must be a positive number, got {args.lr}"),
        (args.threads >= 0, f"--threads must be 0 (torch's default) or more, got {args.threads}"),
        (args.seed >= 0, f"--seed must be 0 or more, got {args.seed}"),
    )
    for ok, message in checks:
        if not ok:
            raise InputError(message)


def _check_out(out: Path, force: bool) -> None:
    """Refuse an ``--out`` that is a folder, or that exists (or its sidecar does) without ``--force``."""
    for target in (out, sidecar_path(out)):
        if target.is_dir():
            raise InputError(f"--out: {target} is a folder; give a file path such as pretrained/tiny16.pt")
        if (target.exists() or target.is_symlink()) and not force:
            raise InputError(f"--out: {target} exists; pass --force to replace it or choose another --out")
    ensure_output_dir(out.parent, "--out folder")


def sidecar_path(out: Path) -> Path:
    """The JSON record written beside a pretrained file: ``FILE.json``."""
    return out.with_name(out.name + ".json")


def pretrain(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
    """Train the backbone as ``args`` (the CLI's options) say, write ``args.out`` and its sidecar,
    and return the sidecar's record. Global torch state (seed, threads, determinism) is restored."""
    _check_arguments(args)
    out = Path(args.out)
    _check_out(out, args.force)
    started = time.perf_counter()
    spec = synthetic.get_preset(args.preset)
    train_images, train_targets = draw_labelled_images(args.preset, args.seed, 0, args.images, args.size)
    val_images, val_targets = draw_labelled_images(args.preset, args.seed, args.images, args.val_images, args.size)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        torch.use_deterministic_algorithms(True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            state, val_map = _train(args, train_images, train_targets, val_images, val_targets, log)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    chance = float(val_targets.mean())
    atomic_save_torch(state, out)
    record = {
        "file": out.name,
        "model": args.model,
        "width": args.width,
        "preset": args.preset,
        "class_names": list(spec.class_names),
        "arguments": {k: v for k, v in vars(args).items() if k not in ("out", "force")},
        "max_objects": spec.max_objects,
        "min_visible": spec.min_visible,
        "val_map": val_map,
        "val_chance_map": chance,
        "seconds": round(time.perf_counter() - started, 1),
        "torch_version": torch.__version__,
        "keys": len(state),
    }
    atomic_write_json(sidecar_path(out), record)
    log(f"held-out mAP {val_map:.3f} (chance about {chance:.3f}) on {args.val_images} images; "
        f"wrote {out} and {sidecar_path(out).name} in {record['seconds']:.0f} s")  # fmt: skip
    return record


def _train(
    args: argparse.Namespace,
    train_images: torch.Tensor,
    train_targets: torch.Tensor,
    val_images: torch.Tensor,
    val_targets: torch.Tensor,
    log: Callable[[str], None],
) -> tuple[dict[str, torch.Tensor], float]:
    num_classes = train_targets.shape[1] + 1
    network = build_model(args.model, num_classes, width=args.width)
    backbone = network.features
    model = _ImageClassifier(backbone, network.fc_channels, num_classes - 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = math.ceil(len(train_images) / args.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(args.seed)
    val_map = float("nan")
    for epoch in range(1, args.epochs + 1):
        model.train()
        epoch_start, total = time.perf_counter(), 0.0
        order = torch.randperm(len(train_images), generator=generator)
        for step in range(steps_per_epoch):
            batch = order[step * args.batch_size : (step + 1) * args.batch_size]
            images = normalize_images(train_images[batch])
            flip = torch.rand(len(batch), generator=generator) < 0.5
            images[flip] = images[flip].flip(-1)
            loss = F.binary_cross_entropy_with_logits(model(images), train_targets[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(batch)
        val_map = _evaluate(model, val_images, val_targets, args.batch_size)
        log(f"epoch {epoch}/{args.epochs}: loss {total / len(train_images):.4f}, held-out mAP {val_map:.3f} "
            f"({time.perf_counter() - epoch_start:.0f} s)")  # fmt: skip
    state = {f"features.{key}": value.detach().clone().contiguous() for key, value in backbone.state_dict().items()}
    return state, val_map


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m boxsup_ext.pretrain", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="the state dict file to write (its record goes to FILE.json)")
    parser.add_argument("--model", default="tiny_fcn", choices=MODELS, help="the network whose backbone to train")
    parser.add_argument("--width", type=int, default=16, help="model width; must equal model.width of the config that loads the file")
    parser.add_argument("--images", type=int, default=5000, help="training images, drawn in memory")
    parser.add_argument("--val-images", type=int, default=300, help="held-out images for the reported mAP")
    parser.add_argument("--size", type=int, default=96, help="image side in pixels")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-3, help="AdamW peak learning rate (cosine decay to 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the images, the initialisation and the order")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default); part of the result's recipe")
    parser.add_argument("--preset", default="pretrain", help="synthetic class preset (default: pretrain, disjoint from easy/hard)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out (and its .json)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    pretrain(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
