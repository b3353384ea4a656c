"""User-facing errors.

An :class:`InputError` is a problem the user can fix (a bad path, a corrupt file, a wrong
argument). Command-line entry points wrap their ``main`` in :func:`run_cli`, which turns such an
error into one line on stderr and exit status 2 instead of a traceback.
"""

from __future__ import annotations

import errno
import sys
from typing import Callable, Optional, Sequence

# OSError numbers of a full disk or quota (or a file too large for its filesystem) ...
FULL_DISK_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG})
# ... and of any storage that refuses writes (also read-only or forbidden).
STORAGE_ERRNOS = FULL_DISK_ERRNOS | {errno.EROFS, errno.EACCES, errno.EPERM}


class InputError(ValueError):
    """A bad input the user can fix. The message names the file or argument and what to do."""


def run_cli(main: Callable[[Optional[Sequence[str]]], int | None], argv: Optional[Sequence[str]] = None) -> int:
    """Run a CLI ``main``; report an :class:`InputError` as one line and return exit status 2."""
    try:
        status = main(argv)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0 if status is None else int(status)
