"""Read the pieces of a trainer run directory that evaluation and figures need.

Layout (written by ``boxsup_ext.train``): ``config.yaml``, ``checkpoints/{best,latest}.pt``,
``labels/snapshots/epoch_<NNN>/<image_id>.png``, ``log.jsonl``, ``metrics/*.json`` (with
``metrics/train_summary.json`` once the run has finished).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

import yaml

from boxsup_ext.utils import InputError

_SNAPSHOT_DIR = re.compile(r"^epoch_(\d+)$")


def check_run_dir(run_dir: Path) -> Path:
    """``run_dir`` as a Path, after checking it looks like a trainer run (has ``config.yaml``)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise InputError(f"--run {run_dir} is not a training run directory (no config.yaml); give the trainer's run dir")
    return run_dir


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The resolved trainer config of a run, as a plain dict."""
    path = check_run_dir(run_dir) / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise InputError(f"{path}: cannot read the run config ({err.__class__.__name__}); is the file complete?") from None
    if not isinstance(config, dict):
        raise InputError(f"{path}: expected a YAML mapping, got {type(config).__name__}")
    return config


CHECKPOINT_KINDS = ("final", "best")


def run_checkpoint(run_dir: Path, kind: str = "final") -> tuple[Path, str]:
    """The checkpoint of a run to evaluate, and a label for it.

    ``kind="final"`` (the default) is ``checkpoints/latest.pt``: labelled ``"final"`` when the run
    has finished (``metrics/train_summary.json`` exists), else ``"latest"``. ``kind="best"`` is
    ``checkpoints/best.pt``, the epoch with the highest validation mIoU; scoring it on that same
    split is optimistic, and its label ``"best-on-val"`` says so.
    """
    run_dir = check_run_dir(run_dir)
    if kind not in CHECKPOINT_KINDS:
        raise InputError(f"--checkpoint-kind must be one of {', '.join(CHECKPOINT_KINDS)}, got {kind!r}")
    if kind == "best":
        path = run_dir / "checkpoints" / "best.pt"
        if not path.is_file():
            raise InputError(f"{path} does not exist; has the run validated an epoch? (the default --checkpoint-kind final uses latest.pt)")
        return path, "best-on-val"
    path = run_dir / "checkpoints" / "latest.pt"
    if not path.is_file():
        raise InputError(f"{path} does not exist; has the run finished an epoch?")
    finished = (run_dir / "metrics" / "train_summary.json").is_file()
    return path, "final" if finished else "latest"


def run_data_source(run_dir: Path, which: str = "val") -> dict[str, Any]:
    """The ``data.val`` (``which="val"``) or first ``data.train`` source of a run's config:
    a dict with ``kind``, ``root``, ``split``."""
    data = read_run_config(run_dir).get("data") or {}
    source = data.get("val") if which == "val" else (data.get("train") or [None])[0]
    if not isinstance(source, dict) or not source.get("root"):
        raise InputError(f"{run_dir}/config.yaml has no data.{which} dataset root; pass --dataset ROOT instead")
    return source


def open_dataset_arg(root: str | Path, split: str, kind: str) -> Any:
    """``boxsup_ext.data.open_dataset`` with a check that ``root`` exists, for CLI arguments."""
    from boxsup_ext.data import open_dataset

    if not Path(root).exists():
        raise InputError(f"dataset root {root} does not exist; pass --dataset with the dataset directory")
    return open_dataset(root, split, kind=kind)


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch records of ``log.jsonl`` (one JSON object per line), in file order."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise InputError(f"{path} does not exist; give a run directory the trainer has logged to")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is not readable as text ({err.__class__.__name__}); give a run directory's log.jsonl") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            # A run killed mid-write can leave a torn last line; anything else is corruption.
            if number == len(lines):
                break
            raise InputError(f"{path}:{number} is not valid JSON; repair or remove that line") from None
        if isinstance(record, dict):
            records.append(record)
    return records


def snapshot_epochs(run_dir: Path) -> list[int]:
    """Epoch numbers that have a label snapshot directory, ascending."""
    root = Path(run_dir) / "labels" / "snapshots"
    if not root.is_dir():
        return []
    epochs = []
    for child in root.iterdir():
        match = _SNAPSHOT_DIR.match(child.name)
        if match and child.is_dir():
            epochs.append(int(match.group(1)))
    return sorted(epochs)


def snapshot_path(run_dir: Path, epoch: int, image_id: str) -> Optional[Path]:
    """``labels/snapshots/epoch_<NNN>/<image_id>.png`` if it exists, else None."""
    path = Path(run_dir) / "labels" / "snapshots" / f"epoch_{epoch:03d}" / f"{image_id}.png"
    return path if path.is_file() else None
