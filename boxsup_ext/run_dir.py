"""A trainer run directory: its one layout, written by ``boxsup_ext.train`` and read by
``evaluate`` and ``figures``.

    config.yaml                          the resolved Config (read back with :meth:`RunDir.read_config`)
    run.json                             the config and dataset fingerprints the run belongs to
    checkpoints/latest.pt, best.pt       checkpoints (contents: :mod:`boxsup_ext.training.state`; files: :mod:`boxsup_ext.checkpoints`)
    labels/<image_id>.png                the current training labels
    labels/round.json                    {epoch, finished} of the label round labels/ holds (for ``export``)
    labels/snapshots/epoch_<NNN>/        copies of the labels after chosen epochs (for figures)
    labels/choices/epoch_<NNN>.json      the candidate each box took in that epoch's relabel round,
                                         by image id (the images it relabeled; for ``export``)
    log.jsonl                            one JSON object per epoch
    metrics/train_summary.json           once the run has finished; evaluate adds eval_<tag>.json
    tensorboard/                         TensorBoard events, when enabled
    eval/<tag>/                          evaluate's default output folder
    .lock                                while a trainer holds the run (:mod:`boxsup_ext.training.lock`)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from boxsup_ext.utils import InputError

_SNAPSHOT_DIR = re.compile(r"^epoch_(\d+)$")
_CHOICES_FILE = re.compile(r"^epoch_(\d+)\.json$")
CHECKPOINT_KINDS = ("final", "best")


@dataclass(frozen=True)
class RunDir:
    """The paths of a run directory (nothing is read or created on construction)."""

    root: Path

    def __init__(self, root: Union[str, Path]) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def record_file(self) -> Path:
        return self.root / "run.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def latest(self) -> Path:
        return self.checkpoints / "latest.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def labels(self) -> Path:
        return self.root / "labels"

    @property
    def log_file(self) -> Path:
        return self.root / "log.jsonl"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def summary_file(self) -> Path:
        return self.metrics / "train_summary.json"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    def label_file(self, image_id: str) -> Path:
        return self.labels / f"{image_id}.png"

    def snapshot_dir(self, epoch: int) -> Path:
        return self.labels / "snapshots" / f"epoch_{epoch:03d}"

    def choices_file(self, epoch: int) -> Path:
        return self.labels / "choices" / f"epoch_{epoch:03d}.json"

    @property
    def round_file(self) -> Path:
        """``labels/round.json``: which epoch's label round ``labels/`` holds, and whether it finished."""
        return self.labels / "round.json"

    def label_round(self) -> Optional[tuple[int, bool]]:
        """(epoch, finished) of the label round ``labels/`` holds, from :attr:`round_file`; None for a
        run without one (made before the trainer wrote it).

        Raises:
            InputError: the file is there but unreadable or not such a record.
        """
        if not self.round_file.exists():
            return None
        try:
            record = json.loads(self.round_file.read_text())
            epoch, finished = record["epoch"], record["finished"]
        except (OSError, ValueError, KeyError, TypeError):
            epoch = finished = None
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1 or not isinstance(finished, bool):
            raise InputError(
                f"{self.round_file} is not the trainer's record of a label round ({{\"epoch\": E, \"finished\": true|false}}); "
                "resume the run (its next round rewrites it) or export a snapshot with --epoch K"
            )
        return epoch, finished

    def read_config(self) -> Any:
        """The run's resolved trainer config (a :class:`boxsup_ext.config.Config`)."""
        from boxsup_ext.config import load_config

        return load_config(self.config_file)


def open_run(run_dir: Union[str, Path]) -> RunDir:
    """The run directory ``run_dir`` (``--run``), after checking it looks like a trainer run (has
    ``config.yaml``)."""
    run = RunDir(run_dir)
    if not run.config_file.is_file():
        raise InputError(f"--run {run.root} is not a training run directory (no config.yaml); give the trainer's run dir")
    return run


def run_checkpoint(run: RunDir, kind: str = "final") -> tuple[Path, str]:
    """The checkpoint of a run to evaluate, and a label for it.

    ``kind="final"`` (the default) is ``checkpoints/latest.pt``: labelled ``"final"`` when the
    checkpoint is the end of its run (``epoch`` at least its config's ``train.epochs`` and no step
    of a further epoch done), else ``"latest"`` (a run stopped midway, also one resumed with more
    epochs after finishing). A checkpoint that does not say (not the trainer's) is ``"final"`` when
    ``metrics/train_summary.json`` exists. ``kind="best"`` is
    ``checkpoints/best.pt``, the epoch with the highest validation mIoU; scoring it on that same
    split is optimistic, and its label ``"best-on-val"`` says so.
    """
    if kind not in CHECKPOINT_KINDS:
        raise InputError(f"--checkpoint-kind must be one of {', '.join(CHECKPOINT_KINDS)}, got {kind!r}")
    if kind == "best":
        if not run.best.is_file():
            raise InputError(f"{run.best} does not exist; has the run validated an epoch? (the default --checkpoint-kind final uses latest.pt)")
        return run.best, "best-on-val"
    if not run.latest.is_file():
        raise InputError(f"{run.latest} does not exist; has the run finished an epoch?")
    from boxsup_ext.checkpoints import checkpoint_finished  # torch, only when a checkpoint is read

    finished = checkpoint_finished(run.latest)
    if finished is None:
        finished = run.summary_file.is_file()
    return run.latest, "final" if finished else "latest"


def run_data_source(run: RunDir, which: str = "val") -> Any:
    """The ``data.val`` (``which="val"``) or first ``data.train`` source of a run's config (a
    :class:`boxsup_ext.config.SourceConfig`), which must name a dataset root."""
    data = run.read_config().data
    source = data.val if which == "val" else data.train[0]
    if not source.root:
        raise InputError(f"{run.config_file} has no data.{which} dataset root; pass --dataset ROOT instead")
    return source


def read_log(path: Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run's ``log.jsonl`` (``RunDir.log_file``; one JSON object per
    line), in file order. A torn last line is dropped."""
    path = Path(path)
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


def snapshot_epochs(run: RunDir) -> list[int]:
    """Epoch numbers that have a label snapshot directory, ascending."""
    return _numbered(run.labels / "snapshots", _SNAPSHOT_DIR, folders=True)


def choice_epochs(run: RunDir) -> list[int]:
    """Epoch numbers that have a ``labels/choices/epoch_<NNN>.json`` record, ascending."""
    return _numbered(run.labels / "choices", _CHOICES_FILE, folders=False)


def _numbered(root: Path, pattern: "re.Pattern[str]", folders: bool) -> list[int]:
    """The numbers of the entries of ``root`` whose names match ``pattern`` (folders or files), ascending."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = pattern.match(child.name)
        if match and (child.is_dir() if folders else child.is_file()):
            found.append(int(match.group(1)))
    return sorted(found)


def snapshot_path(run: RunDir, epoch: int, image_id: str) -> Optional[Path]:
    """``labels/snapshots/epoch_<NNN>/<image_id>.png`` if it exists, else None."""
    path = run.snapshot_dir(epoch) / f"{image_id}.png"
    return path if path.is_file() else None
