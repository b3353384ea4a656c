"""Per-epoch logging: ``log.jsonl`` (rewritten atomically), TensorBoard when installed, progress bars."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Optional

from boxsup_ext.utils import atomic_write


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf floats become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class EpochLog:
    """The run's ``log.jsonl``: one JSON object per epoch. Kept in memory and rewritten through a
    temporary file on each append, so a crash never leaves a torn line. With ``tensorboard_dir``,
    also TensorBoard scalars when the tensorboard package is installed; ``loggers`` says in words
    which of the two are in use (the trainer prints it once at start)."""

    def __init__(self, path: Path, tensorboard_dir: Optional[Path] = None) -> None:
        self.path = Path(path)
        self.entries: list[dict] = []
        if self.path.exists():
            from boxsup_ext.run_dir import read_log

            # the run directory's one reader: a torn last line (a log written by another tool or an
            # older version without the atomic rewrite) is dropped, other damage is one line
            self.entries = read_log(self.path)
        self._writer = None
        self.loggers = f"{self.path.name}"
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: JSONL only, said once in ``loggers``
                SummaryWriter = None
                self.loggers += " only (run.tensorboard is on but the tensorboard package is not installed: pip install 'boxsup_ext[tensorboard]')"
            if SummaryWriter is not None:  # an unwritable folder is the caller's error, not silence
                self._writer = SummaryWriter(str(tensorboard_dir))
                self.loggers += f" and TensorBoard events in {tensorboard_dir}"

    def truncate_after(self, epoch: int) -> None:
        """Forget entries of epochs after ``epoch``: the trainer logs an epoch before checkpointing
        it, so a run killed in between leaves an entry of an epoch its checkpoint has not reached."""
        self.entries = [e for e in self.entries if e.get("epoch", 0) <= epoch]
        self._write()

    def append(self, entry: dict) -> None:
        self.entries.append(_clean(entry))
        self._write()
        if self._writer is not None:
            self._scalars(entry, entry["epoch"])

    def _scalars(self, values: dict, step: int, prefix: str = "") -> None:
        for key, value in values.items():
            if isinstance(value, dict):
                self._scalars(value, step, f"{prefix}{key}/")
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                self._writer.add_scalar(prefix + key, value, step)
        self._writer.flush()

    def _write(self) -> None:
        with atomic_write(self.path, "w") as handle:
            for entry in self.entries:
                handle.write(json.dumps(entry) + "\n")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def progress(iterable: Iterable, enabled: bool, **kwargs: Any) -> Iterable:
    """A tqdm progress bar when ``enabled`` (and tqdm is importable), else ``iterable`` itself."""
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, dynamic_ncols=True, leave=False, **kwargs)
