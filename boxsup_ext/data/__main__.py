"""``python -m boxsup_ext.data check ROOT [--kind K] [--split S]``: summarise a dataset."""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from boxsup_ext.utils import InputError, run_cli

COMMANDS = ("check",)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m boxsup_ext.data {{{','.join(COMMANDS)}}} ...\n\n"
              "  check ROOT   summarise a dataset: images, boxes per class, masks, problems found")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "check":
        from boxsup_ext.data.check import main as check_main

        return check_main(rest)
    raise InputError(f"unknown command {command!r}; expected one of {COMMANDS}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
