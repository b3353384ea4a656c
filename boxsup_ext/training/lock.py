"""One trainer per run directory: an OS lock on ``<run_dir>/.lock`` held for the whole run.

``fcntl.flock`` is released by the kernel when the holder exits, however it exits (SIGKILL
included), so a lock left by a dead process is never in the way. The holder writes its pid into
the file so a second trainer can say who holds the run. The file is removed on release; a trainer
that locked a file removed under it (by a holder finishing at that moment) locks the new one.

A forked child (a DataLoader worker) would share the lock through its copy of the descriptor and
keep it after a SIGKILL of the trainer until it notices and exits, so the descriptor is closed in
every child right after the fork (the parent's lock is unaffected) and is not inherited by exec.
A lock whose recorded holder is gone anyway is waited for a few seconds.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path
from typing import Optional

from boxsup_ext.run_dir import RunDir
from boxsup_ext.utils import InputError, ensure_output_dir


# Descriptors of the locks this process holds, closed in forked children.
_HELD: set[int] = set()
# How long a lock whose recorded holder has exited is waited for (its forked children exiting).
DEAD_HOLDER_WAIT_S = 10.0


def _close_held_in_child() -> None:
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


class RunLock:
    """Exclusive, non-blocking lock of a run directory. Use as a context manager."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = RunDir(run_dir).lock_file
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        ensure_output_dir(self.run_dir, "run directory (--run-dir)")
        deadline = None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as err:
                raise InputError(
                    f"cannot create the lock file {self.path} ({err.strerror}); choose a writable --run-dir"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = _read_pid(fd)
                os.close(fd)
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                if holder and not _alive(holder):
                    # A trainer killed moments ago: its forked children still hold the lock until they exit.
                    deadline = deadline if deadline is not None else time.monotonic() + DEAD_HOLDER_WAIT_S
                    if time.monotonic() < deadline:
                        time.sleep(0.2)
                        continue
                    raise InputError(
                        f"run directory {self.run_dir} is still locked by processes left by trainer pid {holder}, which "
                        f"has exited (its DataLoader workers?); stop them or wait for them to exit, then run again"
                    ) from None
                who = f"pid {holder}" if holder else "another process"
                raise InputError(
                    f"run directory {self.run_dir} is in use by another trainer ({who}); wait for it to finish, "
                    "stop it, or choose another --run-dir"
                ) from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the previous holder removed the file after we opened it: lock the new one
        os.set_inheritable(fd, False)  # os.open's default; said here because the lock depends on it
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        _HELD.add(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # while still holding the lock, so nobody locks a file about to vanish
        except FileNotFoundError:
            pass
        _HELD.discard(self._fd)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def run_holder(run_dir: Path) -> Optional[str]:
    """Who holds the run directory's lock (``"pid N"``, or ``"another process"`` when the file does
    not say), or None when no trainer does. Probes without creating the lock file; the probe holds
    a shared lock for an instant only."""
    try:
        fd = os.open(RunDir(run_dir).lock_file, os.O_RDONLY)
    except OSError:
        return None  # no lock file: no trainer has the run
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        holder = _read_pid(fd)
        return f"pid {holder}" if holder else "another process"
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_pid(fd: int) -> Optional[int]:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)
