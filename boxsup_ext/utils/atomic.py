"""Atomic file writes: write to a temporary name in the same directory, fsync, then rename.

A crash or kill at any point leaves either the old file or the new one, never half a file. New
files get the permissions the user's umask gives (``0o666 & ~umask``, like ``open(path, "w")``),
not the owner-only ``0o600`` of :func:`tempfile.mkstemp`, so a shared folder can read them. A
file that is replaced keeps its permission bits (like writing into it in place would), so a
group-writable file stays group-writable whatever the writer's umask.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

PathLike = Union[str, os.PathLike]

_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)


def _temp_name(path: Path) -> str:
    """A random hidden name beside ``path`` for a file that will be renamed to it."""
    return str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")


def _create_temp_beside(path: Path) -> tuple[int, str]:
    """Create a new, empty file with a random name beside ``path``; return (fd, name).

    ``os.open`` with mode ``0o666`` lets the kernel apply the umask, which avoids reading it
    (``os.umask`` can only be read by setting it, a race with other threads)."""
    for _ in range(100):
        name = _temp_name(path)
        try:
            return os.open(name, _CREATE_FLAGS, 0o666), name
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def _keep_permissions(path: Path, fd: int) -> None:
    """Give the temporary file ``fd`` the permission bits of the file it will replace, if any
    (read when the write ends, so a chmod made meanwhile is kept). A new file keeps its umask mode."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode) & 0o777
    except (FileNotFoundError, NotADirectoryError):
        return
    # Best effort: a filesystem without permission bits (some FUSE/SMB mounts) refuses chmod.
    with contextlib.suppress(OSError, AttributeError):
        os.fchmod(fd, mode)


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[io.IOBase]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path`` atomically."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = _create_temp_beside(path)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            _keep_permissions(path, handle.fileno())
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


def atomic_symlink(target: PathLike, path: PathLike) -> None:
    """Make ``path`` a symbolic link to ``target``, replacing what is there atomically: the link is
    made under a temporary name beside ``path``, then renamed. Raises ``OSError`` where the
    filesystem refuses links (nothing is left behind)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_name = _temp_name(path)
    os.symlink(target, tmp_name)
    try:
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def atomic_write_lines(path: PathLike, lines: Iterable[str]) -> None:
    """One line per item (a list of image ids, of class names), each ending in a newline, UTF-8."""
    atomic_write_bytes(path, "".join(f"{line}\n" for line in lines).encode())


def atomic_write_json(path: PathLike, obj: Any, indent: Optional[int] = 2) -> None:
    """JSON through a temporary file; ``indent=None`` writes it on one line."""
    with atomic_write(path, "w") as handle:
        json.dump(obj, handle, indent=indent, sort_keys=False)
        handle.write("\n")
