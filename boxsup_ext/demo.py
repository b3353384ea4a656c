"""The main job on the embedded default: ``python -m boxsup_ext.demo --out DIR``.

Builds the synthetic dataset and its Selective Search and rectangle proposal stores, trains
``tiny_fcn`` in ``boxsup`` mode, the ``rectangles`` baseline and the ``mask`` upper bound with the
same schedule, evaluates each on the synthetic validation set (single scale, no CRF), prints a
table and writes ``DIR/demo_results.json`` (mode -> {"miou", "seconds"}). Target: boxsup at least
95% of mask's mIoU and at least 5 points above rectangles. ``configs/synthetic_boxsup.yaml`` holds
the same settings for ``python -m boxsup_ext.train``.

Running it again on the same ``--out`` reuses the dataset, the proposal stores and every finished
run (an unfinished one is resumed), and prints the table again.
"""

from __future__ import annotations

import argparse
import sys
import time
import copy
from pathlib import Path
from typing import Optional, Sequence

from boxsup_ext.utils import InputError, atomic_write_json, ensure_output_dir, run_cli

# The embedded default: the synthetic experiment's trainer settings (configs/synthetic_boxsup.yaml).
DEMO_SETTINGS = {
    "data": {
        "train": [{"kind": "synthetic", "split": "train", "supervision": "box"}],
        "val": {"kind": "synthetic", "split": "val", "supervision": "mask"},
        "crop_size": 64,
        "scale_min": 0.75,
        "scale_max": 1.25,
        "flip": True,
        "workers": 0,
    },
    "model": {"name": "tiny_fcn", "width": 16, "dropout": 0.1},
    # From scratch on CPU the early network's cross-entropy is noise, and with lam = 3 it pulls the
    # labels towards tiny candidates (label mIoU fell from 69% to 15% in a trial); a lighter
    # weight, a minimum box IoU and clipping to the box keep them near the proposals' best.
    "relabel": {"lam": 0.3, "topk": 5, "iou": "box", "min_iou": 0.5, "clip_to_box": True,
                "snapshot_epochs": [1, 2, 5, 10, 20]},
    "train": {
        "mode": "boxsup",
        "epochs": 20,
        "batch_size": 4,
        "lr": 0.05,
        "lr_step": 15,
        "classifier_lr_mult": 1.0,
        "val_every": 5,
    },
    "run": {"seed": 0, "device": "auto", "progress": False, "tensorboard": False},
}
DEMO_MODES = ("boxsup", "rectangles", "mask")
# Selective Search scaled to 64 px images: its defaults (k = 100, 200; base regions >= k pixels) are
# sized for VOC and leave candidates far coarser than the synthetic objects.
DEMO_PROPOSAL_PARAMS = {"selective_search": {"ks": [25, 50, 100], "min_size": 10, "colour_spaces": ["hsv", "lab", "rgb"]}}


def demo_config(dataset: Path, stores: dict, mode: str, run_dir: Path, overrides: Sequence[str] = ()):
    """The trainer config of one demo mode."""
    from boxsup_ext.config import apply_override, config_from_dict, config_to_dict

    values = copy.deepcopy(DEMO_SETTINGS)
    store = {"boxsup": "selective_search", "boxsup_greedy": "selective_search"}.get(mode, mode)
    values["data"]["train"][0].update(root=str(dataset), proposals=str(stores.get(store, "")))
    values["data"]["val"]["root"] = str(dataset)
    values["train"]["mode"] = mode
    values["run"]["run_dir"] = str(run_dir)
    merged = config_to_dict(config_from_dict(values))
    for item in overrides:
        apply_override(merged, item)
    return config_from_dict(merged)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m boxsup_ext.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (dataset, proposals, runs, results)")
    parser.add_argument("--num-train", type=int, default=160, help="synthetic training images")
    parser.add_argument("--num-val", type=int, default=60, help="synthetic validation images")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="dataset and training seed")
    parser.add_argument("--workers", type=int, default=2, help="processes for proposal generation")
    parser.add_argument("--modes", default=",".join(DEMO_MODES), help="comma-separated trainer modes to run")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a trainer config key for every mode (repeatable)")
    args = parser.parse_args(argv)
    from boxsup_ext.config import MODES
    from boxsup_ext.train import train
    from boxsup_ext.train_utils.synthetic_setup import prepare_synthetic, store_dir

    # Every argument is checked before anything is written.
    for name, value in (("--num-train", args.num_train), ("--num-val", args.num_val), ("--workers", args.workers)):
        if value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes:
        raise InputError("--modes is empty; give e.g. boxsup,rectangles,mask")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise InputError(f"--modes: unknown trainer mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    out = ensure_output_dir(args.out, "--out", create=False)
    methods = sorted({"selective_search" if m.startswith("boxsup") else m for m in modes if m != "mask"})
    data_dir = out / "data"
    stores = {method: store_dir(data_dir, method) for method in methods}
    configs = {mode: demo_config(data_dir / "dataset", stores, mode, out / "runs" / mode, [f"run.seed={args.seed}"] + args.overrides)
               for mode in modes}
    started = time.perf_counter()
    prepare_synthetic(data_dir, args.num_train, args.num_val, size=args.size, seed=args.seed,
                      methods=methods, workers=args.workers, method_params=DEMO_PROPOSAL_PARAMS)
    prepare_s = time.perf_counter() - started
    print(f"dataset and proposals ready in {prepare_s:.1f}s ({data_dir})", flush=True)
    results: dict[str, dict] = {}
    for mode, config in configs.items():
        # A run left by an earlier demo is reused when finished and resumed otherwise.
        summary = train(config, resume=(out / "runs" / mode / "run.json").exists())
        results[mode] = {
            "miou": summary["final_val_miou"],
            "seconds": summary["seconds"],
            "relabel_share": summary["relabel_share"],
        }
        print(f"{mode}: val mIoU {100 * (summary['final_val_miou'] or 0):.2f} in {results[mode]['seconds']:.0f}s", flush=True)
    total = time.perf_counter() - started
    atomic_write_json(out / "demo_results.json", results)
    print_table(results, prepare_s, total)
    return 0


def print_table(results: dict, prepare_s: float, total_s: float) -> None:
    """The demo's table: mode, validation mIoU (%), share of mask's mIoU, training seconds (of the
    run, over all its resumes)."""
    mask = results.get("mask", {}).get("miou")
    print(f"\n{'mode':<14}{'val mIoU':>10}{'% of mask':>11}{'seconds':>9}")
    for mode, row in results.items():
        share = f"{100 * row['miou'] / mask:.1f}" if mask and row["miou"] is not None else "-"
        miou = f"{100 * row['miou']:.2f}" if row["miou"] is not None else "-"
        print(f"{mode:<14}{miou:>10}{share:>11}{row['seconds']:>9.0f}")
    if "boxsup" in results and results["boxsup"]["relabel_share"] is not None:
        print(f"relabel share of a boxsup epoch: {100 * results['boxsup']['relabel_share']:.1f}%")
    print(f"data + proposals {prepare_s:.0f}s, total {total_s:.0f}s")


if __name__ == "__main__":
    sys.exit(run_cli(main))
