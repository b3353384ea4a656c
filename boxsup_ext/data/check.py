"""``python -m boxsup_ext.data check ROOT``: summarise a dataset and list its problems.

Every listed image, class map and instance map is decoded in full (not only its header), so
truncated files are found. Exit status 0 when no problem was found, 1 otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from boxsup_ext.data.records import PathLike, SegmentationDataset
from boxsup_ext.utils import InputError


def default_splits(root: Path, kind: str) -> list[str]:
    """The splits ``check`` looks at when none is given."""
    if kind in ("voc", "voc07", "synthetic"):
        from boxsup_ext.data.voc import available_splits

        names = available_splits(root)
        preferred = [s for s in ("train", "val", "trainaug", "train_aug", "test") if s in names]
        return preferred or names
    if kind == "coco":
        return sorted(p.stem[len("instances_"):] for p in (root / "annotations").glob("instances_*.json"))
    return sorted(p.stem for p in (root / "splits").glob("*.txt")) or sorted(
        p.stem for p in root.glob("*.txt") if p.name != "classes.txt"
    )


def summarise(dataset: SegmentationDataset, decode: bool = True) -> dict:
    """Counts for one dataset: images, boxes per class, masks present, and problems.

    With ``decode``, every image and mask is decoded, and failures are added to the problems.
    """
    boxes_per_class = np.zeros(dataset.num_classes, np.int64)
    difficult = masks = instances = 0
    problems = list(dataset.problems)
    for i, record in enumerate(dataset.records):
        np.add.at(boxes_per_class, record.labels, 1)
        difficult += int(record.difficult.sum())
        try:
            if decode:
                dataset.load_image(i)
            has_mask = dataset.load_class_map(i) is not None if decode else record.supervision == "mask"
            has_instances = decode and dataset.load_instances(i) is not None
        except InputError as err:
            problems.append(str(err))
            continue
        masks += int(has_mask)
        instances += int(has_instances)
    return {
        "name": dataset.name,
        "images": len(dataset),
        "boxes": int(boxes_per_class.sum()),
        "difficult": difficult,
        "boxes_per_class": {dataset.class_names[c]: int(n) for c, n in enumerate(boxes_per_class) if c > 0},
        "class_maps": masks,
        "instance_maps": instances,
        "fingerprint": dataset.fingerprint(),
        "problems": problems,
    }


def format_summary(split: str, summary: dict) -> str:
    lines = [
        f"[{split}] {summary['images']} images, {summary['boxes']} boxes ({summary['difficult']} difficult), "
        f"{summary['class_maps']} class maps, {summary['instance_maps']} instance maps, "
        f"fingerprint {summary['fingerprint']}",
        "  boxes per class: " + ", ".join(f"{name} {n}" for name, n in summary["boxes_per_class"].items()),
        f"  problems: {len(summary['problems'])}",
    ]
    lines += [f"    {line}" for line in summary["problems"]]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from boxsup_ext.data import KINDS, detect_kind, open_dataset

    parser = argparse.ArgumentParser(prog="python -m boxsup_ext.data check", description=__doc__.split("\n")[0])
    parser.add_argument("root", help="dataset folder")
    parser.add_argument("--kind", default="auto", choices=("auto",) + KINDS)
    parser.add_argument("--split", action="append", help="split to check (repeatable; default: all found)")
    parser.add_argument("--categories", choices=("voc20", "all80"), help="COCO category set (default voc20)")
    parser.add_argument("--headers-only", action="store_true", help="skip decoding every image and mask")
    parser.add_argument("--json", dest="json_out", help="also write the summaries to this JSON file")
    args = parser.parse_args(argv)
    root: PathLike = Path(args.root)
    if not Path(root).is_dir():
        raise InputError(f"{root}: dataset root is not a folder")
    kind = detect_kind(root) if args.kind == "auto" else args.kind
    splits = args.split or default_splits(Path(root), kind)
    if not splits:
        raise InputError(f"{root}: no split lists found; pass --split")
    extra = {"categories": args.categories} if args.categories else {}
    summaries = {}
    print(f"{root} ({kind})")
    for split in splits:
        dataset = open_dataset(root, split, kind=kind, skip_bad=True, **extra)
        summaries[split] = summarise(dataset, decode=not args.headers_only)
        print(format_summary(split, summaries[split]))
    if args.json_out:
        from boxsup_ext.utils import atomic_write_json

        atomic_write_json(args.json_out, summaries)
    return 1 if any(s["problems"] for s in summaries.values()) else 0
