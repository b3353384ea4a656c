"""Command line: ``python -m boxsup_ext.proposals {generate,eval,methods} ...``.

    generate  compute a proposal store for one dataset split (parallel, resumable)
    eval      ABO and recall of a store against the dataset's ground truth
    methods   list the registered proposal methods
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import yaml

from boxsup_ext.utils import InputError, atomic_write_json, ensure_output_dir, run_cli


def parse_params(pairs: Sequence[str]) -> dict:
    """``key=value`` strings to a dict; values are read as YAML (numbers, lists, strings)."""
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--param {pair!r} must look like key=value (e.g. --param ks=[100,200])")
        try:
            params[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise InputError(f"--param {pair!r}: value is not valid YAML ({err})") from None
    return params


def _add_dataset_arguments(parser: argparse.ArgumentParser, default_split: str) -> None:
    parser.add_argument("--dataset", required=True, help="dataset root folder")
    parser.add_argument("--split", default=default_split, help=f"split name (default {default_split})")
    parser.add_argument("--kind", default="auto", help="voc, voc07, coco, folder, synthetic or auto (default)")
    parser.add_argument("--skip-bad", action="store_true", help="log and skip broken images instead of stopping")


def _open_dataset(args):
    from boxsup_ext.data import open_dataset

    return open_dataset(args.dataset, args.split, kind=args.kind, skip_bad=args.skip_bad)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m boxsup_ext.proposals", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="compute a proposal store")
    _add_dataset_arguments(generate, "train")
    generate.add_argument("--method", default="selective_search", help="registered method (see `methods`)")
    generate.add_argument("--out", required=True, help="store directory (created; reruns resume)")
    generate.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    generate.add_argument("--max-candidates", type=int, default=2000, help="candidates per image at most (default 2000)")
    generate.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="method option, repeatable (e.g. ks=[100,200], mat_dir=/path)")
    generate.add_argument("--no-progress", action="store_true", help="no progress bar")

    evaluate = commands.add_parser("eval", help="ABO / recall of a store against ground truth")
    _add_dataset_arguments(evaluate, "val")
    evaluate.add_argument("--store", required=True, help="store directory made by generate")
    evaluate.add_argument("--limit", type=int, default=None, help="evaluate the first N images only")
    evaluate.add_argument("--json", default=None, help="also write the figures to this JSON file")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")

    commands.add_parser("methods", help="list the registered proposal methods")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from boxsup_ext.proposals import available_methods, generate_proposals, get_method, open_store

    if args.command == "methods":
        print("\n".join(available_methods()))
        return 0
    if args.command == "generate":
        params = parse_params(args.param)
        method = get_method(args.method)
        if method.accepts("max_candidates"):
            params.setdefault("max_candidates", args.max_candidates)
        method.check_options(params)  # before the dataset is read or anything written: a typo costs nothing
        ensure_output_dir(args.out, "--out", create=False)
    dataset = _open_dataset(args)
    if args.command == "generate":
        store = generate_proposals(dataset, args.method, args.out, workers=args.workers, progress=not args.no_progress, **params)
        print(f"{store.path}: {len(store)} entries ({args.method}, {len(dataset)} images in {dataset.name!r} {args.split})")
        return 0
    from boxsup_ext.proposals.evaluate import evaluate_store, format_report

    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be at least 1, got {args.limit}")
    store = open_store(args.store, dataset)
    result = evaluate_store(dataset, store, limit=args.limit, progress=not args.no_progress)
    result.update(dataset=str(args.dataset), split=args.split, store=str(args.store))
    print(format_report(result))
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
