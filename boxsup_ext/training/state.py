"""What a checkpoint holds, RNG state and the run directory's identity checks (the layout itself is
:mod:`boxsup_ext.run_dir`; checkpoint files are written and read by :mod:`boxsup_ext.checkpoints`).

A checkpoint is a dict with ``model``, ``model_meta``, ``config``,
``epoch`` (completed epochs), ``step`` (batches done in the next epoch; non-zero only after an
interrupt), ``optimizer``, ``scheduler``, ``scaler`` (a GradScaler's state under CUDA AMP, else None), ``rng``,
``partial`` (the interrupted epoch's progress), ``label_state``, ``best_miou``,
``dataset_fingerprints``, ``world_size``, ``elapsed_s``. Every value is a tensor or a plain type
(the RNG states too), so checkpoints load with ``torch.load(weights_only=True)``: loading never
runs code from the file.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from boxsup_ext.checkpoints import load_checkpoint
from boxsup_ext.run_dir import RunDir
from boxsup_ext.utils import InputError, atomic_write

# Config keys a resumed run may change: they affect speed and display, not the results.
RESUMABLE_KEYS = (
    "train.epochs",
    "data.workers",
    "run.threads",
    "run.progress",
    "run.tensorboard",
    "run.run_dir",
)
# Keys a resumed run may change with a warning: the run continues, but not with the bits of an
# uninterrupted one (on a GPU, relabel.batch_images groups images into other bf16 forward passes;
# run.device moves the arithmetic to other hardware). run.device "auto" on other hardware is not
# seen here.
WARNED_KEYS = (
    "relabel.batch_images",
    "run.device",
)


class RunMismatch(InputError):
    """A run directory holds a run of another config or other images (``--resume`` refused);
    ``differences`` lists the config keys that differ (empty when the images do)."""

    def __init__(self, message: str, differences: list[str]) -> None:
        super().__init__(message)
        self.differences = differences


def capture_rng() -> dict[str, Any]:
    """The global random streams (Python, NumPy, torch CPU and CUDA) as tensors and plain types."""
    version, python_state, gauss = random.getstate()
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state()
    state = {
        "python": [version, list(python_state), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set the global random streams to a :func:`capture_rng` result."""
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(python_state), gauss))
    kind, keys, position, has_gauss, cached_gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of nested dicts; list items that are dicts (``data.train``) by position."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            flat[name] = len(value)
            for index, item in enumerate(value):
                flat.update(_flatten(item, f"{name}.{index}."))
        else:
            flat[name] = value
    return flat


def _normalised(saved: dict) -> dict:
    """A saved config dict through the config loader: keys added to the package since (also those
    of list items such as a ``data.train`` source) take their defaults. A config the loader no
    longer accepts is compared as saved."""
    from boxsup_ext.config import config_from_dict, config_to_dict

    try:
        return config_to_dict(config_from_dict(saved))
    except (InputError, TypeError, ValueError):
        return saved


def config_changes(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """The keys whose values differ between a run's saved config and the current one, as
    ``key: saved -> current``: (refused: all but :data:`RESUMABLE_KEYS` and :data:`WARNED_KEYS`;
    warned: the :data:`WARNED_KEYS`). A key the saved config lacks (added to the package later)
    counts as its default, inside ``data.train``'s sources too."""
    from boxsup_ext.config import Config, config_to_dict

    a, b = _flatten(_normalised(saved)), _flatten(current)
    defaults = _flatten(config_to_dict(Config()))
    refused, warned = [], []
    for key in sorted(set(a) | set(b)):
        before = a.get(key, defaults.get(key))
        if before == b.get(key) or key in RESUMABLE_KEYS:
            continue
        (warned if key in WARNED_KEYS else refused).append(f"{key}: {before!r} -> {b.get(key)!r}")
    return refused, warned


def checkpoint_to_resume(run: RunDir, resume: bool, config_dict: dict, fingerprints: list[str], show: bool = True) -> Optional[dict]:
    """Make sure ``run`` may hold this run; returns the checkpoint to resume from, if any.

    A fresh run needs a run directory without another run's state. ``--resume`` needs the saved
    config to match the current one (except :data:`RESUMABLE_KEYS`, and :data:`WARNED_KEYS` with a
    warning when ``show``) and the checkpoint to have been made on the same datasets; a mismatch
    is a :class:`RunMismatch`.
    """
    run_dir, latest = run.root, run.latest
    has_state = latest.exists() or run.record_file.exists()
    if not resume:
        if has_state:
            raise InputError(
                f"run directory {run_dir} holds another run's state; pass --resume to continue it "
                "or choose an empty --run-dir"
            )
        return None
    if run.record_file.exists():
        saved = read_run_identity(run.record_file)
        diffs, changed = config_changes(saved.get("config", {}), config_dict)
        if diffs:
            raise RunMismatch(f"run directory {run_dir} holds a run with another config ({'; '.join(diffs[:3])}); use a new --run-dir", diffs)
        if saved.get("dataset_fingerprints") != fingerprints:
            raise RunMismatch(f"run directory {run_dir} holds a run on other images (dataset fingerprints differ); use a new --run-dir", [])
        if changed and show:
            print(f"warning: --resume with {'; '.join(changed)}: the run continues, but not with the bits of an "
                  "uninterrupted run", file=sys.stderr, flush=True)
    if not latest.exists():
        return None
    checkpoint = load_checkpoint(latest)
    if checkpoint.get("dataset_fingerprints") != fingerprints:
        raise RunMismatch(f"{latest} was trained on other images (dataset fingerprints differ); use a new --run-dir", [])
    return checkpoint


def read_run_identity(path: Path) -> dict:
    """The ``run.json`` of a run directory; a damaged one is one line."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(
            f"{path} is not readable JSON ({err.__class__.__name__}); it records which config and images the run "
            "belongs to: restore it, or start the run again in a new --run-dir"
        ) from None
    if not isinstance(saved, dict) or not isinstance(saved.get("config", {}), dict):
        raise InputError(f"{path} does not hold a run record (a JSON object with 'config'); restore it or use a new --run-dir")
    return saved


def write_run_identity(run: RunDir, config_dict: dict, fingerprints: list[str]) -> None:
    """``run.json``: the config and datasets this run directory belongs to."""
    with atomic_write(run.record_file, "w") as handle:
        json.dump({"config": config_dict, "dataset_fingerprints": fingerprints}, handle, indent=2)


def model_digest(model: torch.nn.Module) -> str:
    """SHA-256 over the model's parameters and buffers (bytes, in state_dict order)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
