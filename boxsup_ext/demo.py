"""The main job on the embedded default: ``python -m boxsup_ext.demo --out DIR``.

Builds the synthetic dataset and its Selective Search and rectangle proposal stores, trains
``tiny_fcn`` in ``boxsup`` mode, the ``rectangles`` baseline and the ``mask`` upper bound with the
same schedule, evaluates each on the synthetic validation set (single scale, no CRF), prints a
table and writes ``DIR/demo_results.json`` (mode -> {"miou", "seconds", "relabel_share"}). What
the table shows over seeds, and what the shipped recipe reaches, is in README.md and
docs/recipes.md (from ``benchmarks/reproduce.py --headline``). The settings are those of
``configs/synthetic_boxsup.yaml`` (also for ``python -m boxsup_ext.train``).

Running it again on the same ``--out`` reuses the dataset, the proposal stores and every finished
run (an unfinished one is resumed), and prints the table again.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from boxsup_ext.utils import InputError, atomic_write_json, ensure_output_dir, run_cli

# The demo's trainer settings; the demo fills in the data paths, mode and run directory.
DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "synthetic_boxsup.yaml"
DEMO_MODES = ("boxsup", "rectangles", "mask")
# Selective Search scaled to 64 px images: its defaults (k = 100, 200; base regions >= k pixels) are
# sized for VOC and leave candidates far coarser than the synthetic objects.
DEMO_PROPOSAL_PARAMS = {"selective_search": {"ks": [25, 50, 100], "min_size": 10, "colour_spaces": ["hsv", "lab", "rgb"]}}


def demo_config(dataset: Path, stores: dict, mode: str, run_dir: Path, overrides: Sequence[str] = ()):
    """The trainer config of one demo mode: :data:`DEMO_CONFIG` with this demo's paths, then
    ``overrides`` (``--set``)."""
    from boxsup_ext.config import load_config

    store = {"boxsup": "selective_search", "boxsup_greedy": "selective_search"}.get(mode, mode)
    paths = {
        "data.train.0.root": str(dataset),
        "data.train.0.proposals": str(stores.get(store, "")),
        "data.val.root": str(dataset),
        "train.mode": mode,
        "run.run_dir": str(run_dir),
        "run.progress": False,
        "run.tensorboard": False,
    }
    return load_config(DEMO_CONFIG, overrides, assignments=paths)


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
    from boxsup_ext.train import StopRequested, train
    from boxsup_ext.training.state import RunMismatch
    from boxsup_ext.proposals.synthetic_setup import prepare_synthetic, store_dir

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
        try:
            summary = train(config, resume=(out / "runs" / mode / "run.json").exists())
        except StopRequested:  # Ctrl-C / SIGTERM: the trainer has saved its checkpoint and said so
            print(f"demo stopped during the {mode} run; the same command again (same --out and --set) continues it",
                  file=sys.stderr, flush=True)
            return 130
        except RunMismatch as err:
            what = f"other settings ({'; '.join(err.differences[:3])})" if err.differences else "other images"
            raise InputError(
                f"--out {out} holds a demo {mode} run made with {what}; use another --out, or the same --set "
                "values and demo options to continue it"
            ) from None
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
