#!/usr/bin/env python
"""Where a relabel step's time goes, and the fused op's share of it and of a training epoch.

    python benchmarks/relabel_profile.py --run RUN_DIR [--threads 1] [--repeats 3] [--json PATH]

Takes a finished ``boxsup`` run (e.g. ``runs/demo/runs/boxsup`` after ``make demo``): its config,
data, proposal store and final weights. Relabels every box-supervised training image the way the
trainer does (``relabel.batch_images`` per call, the run's relabel settings at its last epoch) and
times the parts of :func:`boxsup_ext.relabel.relabel_batch`: the network forward
(``network_logits``), the fused cost op (``ops.proposal_costs_batched``), the paint op
(``ops.paint_labels_batched``) and the rest (sampling, the agreement rule, copies), plus reading the
images and candidates from disk. The epoch share uses the run's own log: the op's time over the mean
``time_s`` of its logged epochs (relabel + training steps), measured in the run itself.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from boxsup_ext.utils import InputError, atomic_write_json  # noqa: E402


class Timed:
    """Wraps ``owner.name`` so that each call adds its wall time to ``seconds``."""

    def __init__(self, owner, name: str):
        self.owner, self.name, self.real, self.seconds = owner, name, getattr(owner, name), 0.0

    def __enter__(self) -> "Timed":
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return self.real(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        setattr(self.owner, self.name, timed)
        return self

    def __exit__(self, *exc) -> None:
        setattr(self.owner, self.name, self.real)


def profile(run_dir: Path, threads: int, repeats: int) -> dict:
    import torch

    from boxsup_ext import ops, relabel
    from boxsup_ext.config import RELABELED_MODES
    from boxsup_ext.models import load_model_from_checkpoint
    from boxsup_ext.relabel import RelabelSettings, relabel_batch
    from boxsup_ext.run_dir import open_run, read_log
    from boxsup_ext.train import open_data, open_proposal_stores
    from boxsup_ext.training.labels import relabel_input

    run = open_run(run_dir)
    config = run.read_config()
    if config.train.mode not in RELABELED_MODES:
        raise InputError(f"--run {run_dir}: a {config.train.mode!r} run has no relabel step; give a boxsup run")
    if threads > 0:
        torch.set_num_threads(threads)
    loaded = load_model_from_checkpoint(run.latest)
    model = (loaded[0] if isinstance(loaded, tuple) else loaded).eval()
    training, _val = open_data(config)
    stores = open_proposal_stores(config, training)
    images = [image for image in training.images if image.supervision != "mask"]
    settings = RelabelSettings.from_config(config.relabel, config.train.mode, config.train.epochs)
    batch = config.relabel.batch_images
    device = torch.device("cpu")
    rounds = []
    for _ in range(repeats):
        with Timed(relabel, "network_logits") as net, Timed(ops, "proposal_costs_batched") as cost, \
                Timed(ops, "paint_labels_batched") as paint:
            read = 0.0
            start = time.perf_counter()
            for first in range(0, len(images), batch):
                t0 = time.perf_counter()
                inputs = [relabel_input(training.datasets, stores, image, None) for image in images[first:first + batch]]
                read += time.perf_counter() - t0
                relabel_batch(model, inputs, settings, config.run.seed, config.train.epochs, device)
            total = time.perf_counter() - start
        rounds.append({"total": total, "read": read, "network": net.seconds, "costs_op": cost.seconds, "paint_op": paint.seconds,
                       "rest": total - read - net.seconds - cost.seconds - paint.seconds})
    median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    epochs = [e for e in read_log(run.log_file) if e.get("time_s")]
    epoch_s = statistics.mean(e["time_s"] for e in epochs) if epochs else None
    relabel_s = statistics.mean(e["relabel_s"] for e in epochs) if epochs else None
    return {
        "run": str(run_dir), "images": len(images), "threads": torch.get_num_threads(), "repeats": repeats,
        "seconds": median, "costs_op_share_of_relabel": median["costs_op"] / median["total"],
        "logged_epoch_seconds": epoch_s, "logged_relabel_seconds": relabel_s,
        "costs_op_share_of_epoch": median["costs_op"] / epoch_s if epoch_s else None,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished boxsup run directory (e.g. runs/demo/runs/boxsup)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default, as the trainer)")
    parser.add_argument("--repeats", type=int, default=3, help="relabel rounds to time (the median is reported)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.threads < 0:
        raise InputError(f"--repeats must be at least 1 and --threads 0 or more, got {args.repeats} and {args.threads}")
    if not (Path(args.run) / "checkpoints" / "latest.pt").is_file():
        raise InputError(f"--run {args.run}: no checkpoints/latest.pt; give a finished boxsup run directory")
    result = profile(Path(args.run), args.threads, args.repeats)
    s = result["seconds"]
    print(f"relabel of {result['images']} images, {result['threads']} thread(s), median of {result['repeats']}:")
    for key in ("read", "network", "costs_op", "paint_op", "rest", "total"):
        print(f"  {key:<9} {1000 * s[key]:9.1f} ms  {100 * s[key] / s['total']:5.1f}%")
    if result["costs_op_share_of_epoch"] is not None:
        print(f"the fused cost op: {100 * result['costs_op_share_of_relabel']:.1f}% of a relabel step, "
              f"{100 * result['costs_op_share_of_epoch']:.1f}% of the run's mean logged epoch ({result['logged_epoch_seconds']:.2f} s, "
              f"of which relabel {result['logged_relabel_seconds']:.2f} s)")
    if args.json:
        atomic_write_json(Path(args.json), result)
    return 0


if __name__ == "__main__":
    from boxsup_ext.utils import run_cli

    sys.exit(run_cli(main))
