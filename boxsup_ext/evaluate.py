"""Evaluate a trained segmentation model: mIoU, per-class IoU, pixel accuracy, trimap analysis.

    python -m boxsup_ext.evaluate --run RUN [--checkpoint-kind final|best] [--split val] [--crf]
        [--scales 0.8,1.0,1.2] [--flip] [--trimap 1,2,4,8] [--out DIR]
    python -m boxsup_ext.evaluate --checkpoint FILE --dataset ROOT [--kind voc] --split val --out DIR

Writes ``DIR/metrics.json`` (see ``ConfusionAccumulator.results``, plus ``settings``), the printed
table as ``DIR/table.txt``, the predictions as VOC-palette PNGs in ``DIR/predictions/`` (reused
when the command is run again with the same checkpoint and settings, so an interrupted evaluation
resumes; recomputed when the checkpoint or settings changed) and, with ``--trimap``, the boundary/interior plot ``DIR/trimap.png``. With ``--run`` the
dataset is the run's validation split and the checkpoint the run's final one
(``checkpoints/latest.pt``); ``--checkpoint-kind best`` takes ``checkpoints/best.pt`` instead, the
epoch with the best mIoU on the validation split, which makes a score on that same split
optimistic: the output says ``best-on-val``. ``--out`` defaults to
``RUN/eval/<split>[-best][-ms][-flip][-crf]`` and the metrics are also copied to
``RUN/metrics/eval_<split>[...].json``.

Files in DIR that this command did not write are never replaced unless ``--overwrite`` is given
(``DIR/.boxsup-outputs.json`` records what it wrote), and nothing is written when an argument is bad.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from boxsup_ext.evaluation.evaluator import (
    InferenceSettings,
    LabelPredictor,
    add_inference_arguments,
    evaluate_dataset,
    format_results_table,
    load_predictor,
    open_dataset_arg,
    prepare_prediction_dir,
    settings_from_args,
)
from boxsup_ext.run_dir import CHECKPOINT_KINDS, RunDir, open_run, run_checkpoint, run_data_source
from boxsup_ext.evaluation.trimap import parse_widths
from boxsup_ext.checkpoints import read_checkpoint_bytes
from boxsup_ext.utils import InputError, OutputManifest, atomic_write_json, ensure_output_dir, run_cli

CHECKPOINT_NOTES = {
    "final": "final checkpoint of the run",
    "latest": "latest checkpoint; the run has not finished",
    "best-on-val": "best epoch by mIoU on the validation split: optimistic on that split",
    "given": "given with --checkpoint",
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m boxsup_ext.evaluate", description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", type=Path, help="trainer run directory (its final checkpoint and validation split)")
    which.add_argument("--checkpoint", type=Path, help="a checkpoint file written by boxsup_ext.train")
    parser.add_argument(
        "--checkpoint-kind",
        choices=CHECKPOINT_KINDS,
        help="with --run: final (default, checkpoints/latest.pt) or best (best.pt, chosen by mIoU on the "
        "validation split, so a score on that split is optimistic)",
    )
    parser.add_argument("--dataset", help="dataset root (required with --checkpoint; overrides the run's)")
    parser.add_argument("--kind", help="dataset kind: voc, voc07, coco, folder, synthetic (default: the run's, else voc)")
    parser.add_argument("--split", help="split to evaluate (default: the run's validation split, else val)")
    parser.add_argument("--trimap", help="trimap band widths in pixels, e.g. 1,2,4,8 (the paper's Figure 4)")
    parser.add_argument(
        "--out",
        type=Path,
        help="output directory (required with --checkpoint); files there that this command did not write "
        "(OUT/.boxsup-outputs.json lists those it did) are not replaced without --overwrite",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files in --out (predictions/ included) that this command did not write; its own "
        "earlier outputs and predictions are replaced without it",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_inference_arguments(parser)
    return parser


def _tag(split: str, args: argparse.Namespace) -> str:
    tag = split
    if args.checkpoint_kind == "best":
        tag += "-best"
    if args.scales.replace(" ", "") not in ("1", "1.0"):
        tag += "-ms"
    if args.flip:
        tag += "-flip"
    if args.crf:
        tag += "-crf"
    return tag


@dataclasses.dataclass(frozen=True)
class _Target:
    """What one command evaluates and where its outputs go."""

    run: Optional[RunDir]  # None with --checkpoint
    checkpoint: Path
    checkpoint_kind: str  # a key of CHECKPOINT_NOTES
    root: str | Path  # the dataset's
    kind: str
    split: str
    out: Path


def _target_from_args(args: argparse.Namespace) -> _Target:
    """The checkpoint, dataset split and output folder the arguments name: with ``--run`` the
    run's checkpoint, validation split and ``RUN/eval/<tag>``, each overridable; with
    ``--checkpoint``, ``--dataset`` and ``--out`` must be given."""
    if args.run is not None:
        run = open_run(args.run)
        checkpoint, checkpoint_kind = run_checkpoint(run, args.checkpoint_kind or "final")
        source = run_data_source(run, "val") if not (args.dataset and args.kind) else None
        root = args.dataset or source.root
        kind = args.kind or source.kind
        split = args.split or (source.split if source is not None else "val")
        return _Target(run, checkpoint, checkpoint_kind, root, kind, split, args.out or run.root / "eval" / _tag(split, args))
    if args.checkpoint_kind:
        raise InputError("--checkpoint-kind chooses among a run's checkpoints; use it with --run, not --checkpoint")
    if not args.dataset or not args.out:
        raise InputError("--checkpoint needs --dataset ROOT and --out DIR")
    return _Target(None, args.checkpoint, "given", args.dataset, args.kind or "voc", args.split or "val", args.out)


def _load_checked_predictor(
    target: _Target, dataset: Any, settings: InferenceSettings, device: Optional[str]
) -> tuple[LabelPredictor, str]:
    """The target's model as a predictor, and the SHA-256 of the checkpoint bytes it was loaded
    from; an :class:`InputError` when it predicts another number of classes than ``dataset`` has."""
    # Read the checkpoint once, then hash and load those very bytes: a trainer replacing latest.pt
    # meanwhile cannot make the predictions of one epoch be recorded under the next one's hash.
    checkpoint_bytes = read_checkpoint_bytes(target.checkpoint)
    checkpoint_sha256 = hashlib.sha256(checkpoint_bytes).hexdigest()
    predictor, meta = load_predictor(checkpoint_bytes, settings, device, name=str(target.checkpoint))
    if int(meta["num_classes"]) != dataset.num_classes:
        raise InputError(
            f"checkpoint {target.checkpoint} predicts {meta['num_classes']} classes but dataset {target.root} ({target.split}) has "
            f"{dataset.num_classes}; evaluate on the dataset the model was trained for"
        )
    return predictor, checkpoint_sha256


def _result_files(results: dict[str, Any], target: _Target, widths: Sequence[int]) -> tuple[str, dict[str, bytes]]:
    """The table to print and the files to write: ``metrics.json``, ``table.txt`` and, with
    trimap widths, ``trimap.png``."""
    heading = f"checkpoint: {target.checkpoint} ({CHECKPOINT_NOTES.get(target.checkpoint_kind, target.checkpoint_kind)})"
    table = heading + "\n\n" + format_results_table(results)
    files = {
        "metrics.json": (json.dumps(results, indent=2) + "\n").encode(),
        "table.txt": (table + "\n").encode(),
    }
    if widths:
        from boxsup_ext.figures import figure_png, trimap_figure

        fig, _ = trimap_figure([results], [target.run.name if target.run is not None else Path(target.checkpoint).stem])
        files["trimap.png"] = figure_png(fig, dpi=100)
    return table, files


def _copy_into_run(run: RunDir, out: Path, results: dict[str, Any]) -> None:
    """Also write the metrics as ``RUN/metrics/eval_<out name>.json``; a note, not an error, when
    that folder cannot take them (the evaluation itself is written)."""
    copy = run.metrics / f"eval_{out.name}.json"
    try:
        ensure_output_dir(copy.parent, "run metrics folder", create=False)
        atomic_write_json(copy, results)
    except InputError as err:
        print(f"note: metrics not copied into the run ({err})", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _build_parser().parse_args(argv)
    settings = settings_from_args(args)
    widths = parse_widths(args.trimap) if args.trimap else ()
    target = _target_from_args(args)
    root, split, out = target.root, target.split, target.out

    ensure_output_dir(out, "--out", create=False)
    ensure_output_dir(out / "predictions", "predictions folder", create=False)
    outputs = OutputManifest(out, "boxsup_ext.evaluate", overwrite=args.overwrite)
    result_files = ["metrics.json", "table.txt"] + (["trimap.png"] if widths else [])
    outputs.check(result_files)
    dataset = open_dataset_arg(root, split, target.kind)
    predictor, checkpoint_sha256 = _load_checked_predictor(target, dataset, settings, args.device)
    description = {
        "checkpoint": str(Path(target.checkpoint).resolve()),
        # latest.pt is rewritten every epoch under the same name: stored predictions are only
        # reusable for the very same weights.
        "checkpoint_sha256": checkpoint_sha256,
        "dataset": str(Path(root).resolve()),
        "split": split,
        **settings.describe(),
    }
    predictions = prepare_prediction_dir(out / "predictions", description, overwrite=args.overwrite)

    start = time.perf_counter()
    results = evaluate_dataset(predictor, dataset, widths, out / "predictions", progress=not args.no_progress, outputs=predictions)
    results["settings"] = {**description, "checkpoint_kind": target.checkpoint_kind, "kind": target.kind, "device": str(predictor.device)}
    results["time_s"] = round(time.perf_counter() - start, 3)
    if results["num_images"] == 0:
        raise InputError(f"dataset {root} ({split}) has no image with a ground-truth class map to evaluate")

    table, files = _result_files(results, target, widths)
    try:
        outputs.write_files(files)  # their hashes reach the manifest before the files do
    finally:
        outputs.save()
    if target.run is not None:
        _copy_into_run(target.run, out, results)
    print(table)
    print(f"\nwrote {out / 'metrics.json'} ({results['num_images']} images, {results['time_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
