"""Throughput of the segmentation networks: forward and forward + backward images per second.

    python benchmarks/backbone_bench.py [--device cpu|cuda] [--size 321] [--batch 2] [--threads N]
        [--iters 3] [--warmup 1] [--amp] [--models a,b,...] [--json PATH]

For every model (default: tiny_fcn, vgg16_largefov and the four ResNet DeepLab networks, 21 classes,
random weights, default settings: frozen batch norm for the ResNets):

  fwd_img_s     images/s of a forward pass in eval mode under no_grad (relabel, evaluation)
  train_img_s   images/s of forward + bilinear upsampling + cross-entropy + backward in train mode
                (no optimizer step), the training step's compute
  params_m      parameters (millions), trainable_m those that get gradients (frozen batch norm does not)
  gflop_fwd     GFLOP (2 x multiply-adds) of one image's forward pass, and gflop_train of forward +
                backward, counted with torch.utils.flop_counter on the meta device (no arithmetic)
  saved_mb      MB of activations the autograd graph keeps for backward per image (unique storages
                saved by the forward in train mode, parameters excluded): what training memory
                grows by per image of the batch
  peak_mb       (cuda only) torch.cuda.max_memory_allocated during a training step, weights included

Times are the median over --iters timed iterations after --warmup untimed ones; --amp runs both
passes under float16 autocast (cuda only, as train.amp).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from assign_bench import time_ms  # noqa: E402
from boxsup_ext.models import MODELS, build_model  # noqa: E402

DEFAULT_MODELS = ("tiny_fcn", "vgg16_largefov", "resnet50_deeplabv2", "resnet101_deeplabv2",
                  "resnet50_deeplabv3plus", "resnet101_deeplabv3plus")
NUM_CLASSES = 21


def make_model(name: str, device: torch.device) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no ImageNet weights": random weights time the same
        return build_model(name, NUM_CLASSES).to(device)


def training_loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The trainer's loss: logits upsampled to the crop, per-pixel cross-entropy."""
    logits = F.interpolate(model(images), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits.float(), labels)


def count_gflop(name: str, size: int) -> tuple[float, float]:
    """GFLOP of one image's forward pass (eval) and forward + backward (train), on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = make_model(name, torch.device("meta"))
        images = torch.empty(2, 3, size, size)  # two: DeepLab-v3+ trains on no fewer
        labels = torch.zeros(2, size, size, dtype=torch.long)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(images)
    forward = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        training_loss(model.train(), images, labels).backward()
    return forward / 2e9, counter.get_total_flops() / 2e9


def saved_activation_mb(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """MB per image of the tensors autograd saves for backward (unique storages, parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = training_loss(model, images, labels)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values()) / 2**20 / images.shape[0]


def bench_model(name: str, device: torch.device, size: int, batch: int, warmup: int, iters: int, amp: bool) -> dict:
    torch.manual_seed(0)
    model = make_model(name, device)
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, NUM_CLASSES, (batch, size, size), device=device)
    autocast = torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp)

    def forward() -> None:
        with torch.no_grad(), autocast:
            model(images)

    def train_step() -> None:
        with autocast:
            loss = training_loss(model, images, labels)
        loss.backward()
        model.zero_grad(set_to_none=True)

    gflop_fwd, gflop_train = count_gflop(name, size)
    model.train()
    with autocast:
        saved = saved_activation_mb(model, images, labels)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_s = time_ms(train_step, device.type, iters, warmup) / 1e3
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    model.eval()
    fwd_s = time_ms(forward, device.type, iters, warmup) / 1e3
    return {
        "model": name,
        "output_stride": int(model.output_stride),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "trainable_m": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
        "gflop_fwd": gflop_fwd,
        "gflop_train": gflop_train,
        "fwd_img_s": batch / fwd_s,
        "train_img_s": batch / train_s,
        "saved_mb": saved,
        "peak_mb": peak,
    }


def print_table(report: dict) -> None:
    print(f"device={report['device']} threads={report['threads']} size={report['size']} batch={report['batch']} "
          f"amp={report['amp']} iters={report['iters']} torch={report['torch']}")
    print(f"{'model':<24} {'stride':>6} {'params M':>9} {'GFLOP fwd':>10} {'GFLOP f+b':>10} {'fwd img/s':>10} "
          f"{'f+b img/s':>10} {'saved MB/img':>13} {'peak MB':>8}")
    for row in report["models"]:
        peak = f"{row['peak_mb']:8.0f}" if row["peak_mb"] is not None else f"{'-':>8}"
        print(f"{row['model']:<24} {row['output_stride']:>6} {row['params_m']:9.2f} {row['gflop_fwd']:10.1f} "
              f"{row['gflop_train']:10.1f} {row['fwd_img_s']:10.3f} {row['train_img_s']:10.3f} {row['saved_mb']:13.0f} {peak}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", type=int, default=321, help="square input side in pixels (default 321, the training crop)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    parser.add_argument("--amp", action="store_true", help="float16 autocast (cuda only)")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated model names")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    problems = [
        (args.device == "cuda" and not torch.cuda.is_available(), "--device cuda but no CUDA device is visible"),
        (args.amp and args.device != "cuda", "--amp needs --device cuda (as train.amp)"),
        (args.size < 32, f"--size must be at least 32, got {args.size}"),
        (args.batch < 2, f"--batch must be at least 2 (DeepLab-v3+'s image pooling trains batch norm), got {args.batch}"),
        (args.threads < 0, "--threads must be 0 (torch's default) or more"),
        (args.iters < 1 or args.warmup < 0, "--iters must be at least 1 and --warmup 0 or more"),
        (bool(set(names) - set(MODELS)), f"--models: unknown {sorted(set(names) - set(MODELS))}; choose from {sorted(MODELS)}"),
    ]
    for bad, message in problems:
        if bad:
            print(f"error: {message}", file=sys.stderr)
            return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for name in names:
        rows.append(bench_model(name, device, args.size, args.batch, args.warmup, args.iters, args.amp))
        print(f"  {name}: {rows[-1]['fwd_img_s']:.3f} fwd img/s, {rows[-1]['train_img_s']:.3f} f+b img/s", file=sys.stderr, flush=True)
    report = {
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(), "size": args.size, "batch": args.batch, "amp": args.amp,
        "iters": args.iters, "warmup": args.warmup, "torch": torch.__version__, "models": rows,
    }
    print_table(report)
    if args.json:
        from boxsup_ext.utils import atomic_write_json

        atomic_write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
