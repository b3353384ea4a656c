"""Atomic file writes: write to a temporary name in the same directory, fsync, then rename.

A crash or kill at any point leaves either the old file or the new one, never half a file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[io.IOBase]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path`` atomically."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def atomic_write_json(path: PathLike, obj: Any, indent: int = 2) -> None:
    with atomic_write(path, "w") as handle:
        json.dump(obj, handle, indent=indent, sort_keys=False)
        handle.write("\n")


def atomic_save_torch(obj: Any, path: PathLike) -> None:
    """``torch.save`` through a temporary file."""
    import torch

    with atomic_write(path, "wb") as handle:
        torch.save(obj, handle)
