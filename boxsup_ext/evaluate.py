"""Evaluate a trained segmentation model: mIoU, per-class IoU, pixel accuracy, trimap analysis.

    python -m boxsup_ext.evaluate --run RUN [--split val] [--crf] [--scales 0.8,1.0,1.2] [--flip]
        [--trimap 1,2,4,8] [--out DIR]
    python -m boxsup_ext.evaluate --checkpoint FILE --dataset ROOT [--kind voc] --split val --out DIR

Writes ``DIR/metrics.json`` (see ``ConfusionAccumulator.results``, plus ``settings``), the printed
table as ``DIR/table.txt``, the predictions as VOC-palette PNGs in ``DIR/predictions/`` (reused
when the command is run again with the same checkpoint and settings, so an interrupted evaluation
resumes) and, with ``--trimap``, the boundary/interior plot ``DIR/trimap.png``. With ``--run`` the
dataset is the run's validation split, the checkpoint ``checkpoints/best.pt`` (else
``latest.pt``), ``--out`` defaults to ``RUN/eval/<split>[-ms][-flip][-crf]`` and the metrics are
also copied to ``RUN/metrics/eval_<split>[...].json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from boxsup_ext.evaluation.evaluator import (
    add_inference_arguments,
    evaluate_dataset,
    format_results_table,
    load_predictor,
    prepare_prediction_dir,
    settings_from_args,
)
from boxsup_ext.evaluation.rundir import check_run_dir, open_dataset_arg, run_checkpoint, run_data_source
from boxsup_ext.evaluation.trimap import parse_widths
from boxsup_ext.utils import InputError, atomic_write, atomic_write_json, run_cli


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m boxsup_ext.evaluate", description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", type=Path, help="trainer run directory (its best checkpoint and validation split)")
    which.add_argument("--checkpoint", type=Path, help="a checkpoint file written by boxsup_ext.train")
    parser.add_argument("--dataset", help="dataset root (required with --checkpoint; overrides the run's)")
    parser.add_argument("--kind", help="dataset kind: voc, voc07, coco, folder, synthetic (default: the run's, else voc)")
    parser.add_argument("--split", help="split to evaluate (default: the run's validation split, else val)")
    parser.add_argument("--trimap", help="trimap band widths in pixels, e.g. 1,2,4,8 (the paper's Figure 4)")
    parser.add_argument("--out", type=Path, help="output directory (required with --checkpoint)")
    parser.add_argument("--overwrite", action="store_true", help="discard predictions made with other settings in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_inference_arguments(parser)
    return parser


def _tag(split: str, args: argparse.Namespace) -> str:
    tag = split
    if args.scales.replace(" ", "") not in ("1", "1.0"):
        tag += "-ms"
    if args.flip:
        tag += "-flip"
    if args.crf:
        tag += "-crf"
    return tag


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _build_parser().parse_args(argv)
    settings = settings_from_args(args)
    widths = parse_widths(args.trimap) if args.trimap else ()
    if args.run is not None:
        run_dir = check_run_dir(args.run)
        checkpoint = run_checkpoint(run_dir)
        source = run_data_source(run_dir, "val") if not (args.dataset and args.kind) else {}
        root = args.dataset or source["root"]
        kind = args.kind or source.get("kind", "voc")
        split = args.split or source.get("split", "val")
        out = args.out or run_dir / "eval" / _tag(split, args)
    else:
        run_dir = None
        checkpoint = args.checkpoint
        if not args.dataset or not args.out:
            raise InputError("--checkpoint needs --dataset ROOT and --out DIR")
        root, kind, split, out = args.dataset, args.kind or "voc", args.split or "val", args.out

    dataset = open_dataset_arg(root, split, kind)
    predictor, meta = load_predictor(checkpoint, settings, args.device)
    if int(meta["num_classes"]) != dataset.num_classes:
        raise InputError(
            f"checkpoint {checkpoint} predicts {meta['num_classes']} classes but dataset {root} ({split}) has "
            f"{dataset.num_classes}; evaluate on the dataset the model was trained for"
        )
    description = {"checkpoint": str(Path(checkpoint).resolve()), "dataset": str(Path(root).resolve()), "split": split, **settings.describe()}
    prepare_prediction_dir(out / "predictions", description, overwrite=args.overwrite)

    start = time.perf_counter()
    results = evaluate_dataset(predictor, dataset, widths, out / "predictions", progress=not args.no_progress)
    results["settings"] = {**description, "kind": kind, "device": str(predictor.device)}
    results["time_s"] = round(time.perf_counter() - start, 3)
    if results["num_images"] == 0:
        raise InputError(f"dataset {root} ({split}) has no image with a ground-truth class map to evaluate")

    table = format_results_table(results)
    atomic_write_json(out / "metrics.json", results)
    with atomic_write(out / "table.txt", "w") as handle:
        handle.write(table + "\n")
    if widths:
        from boxsup_ext.figures import trimap_plot

        trimap_plot([results], [run_dir.name if run_dir is not None else Path(checkpoint).stem], out / "trimap.png")
    if run_dir is not None:
        atomic_write_json(run_dir / "metrics" / f"eval_{out.name}.json", results)
    print(table)
    print(f"\nwrote {out / 'metrics.json'} ({results['num_images']} images, {results['time_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
