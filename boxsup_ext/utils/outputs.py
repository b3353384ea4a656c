"""Where commands write: checking an output folder, and never replacing a file a command did not make.

:func:`ensure_output_dir` turns a folder argument that cannot hold output (a file in the way, an
unwritable or read-only location) into one :class:`InputError` line before any work is done.

:class:`OutputManifest` is how a command that writes files of its own naming into a user's folder
(``predict --out DIR``) knows which files there it made: it keeps ``DIR/.boxsup-outputs.json`` with
the SHA-256 of every file it wrote. A rerun may replace those files; any other existing file (the
user's photo ``DIR/x.png``, or one of ours the user has since edited) is refused unless the user
passes ``--overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Optional, Union

from boxsup_ext.utils.atomic import atomic_write_bytes, atomic_write_json
from boxsup_ext.utils.errors import InputError

PathLike = Union[str, os.PathLike]

MANIFEST_NAME = ".boxsup-outputs.json"


def ensure_output_dir(path: PathLike, what: str = "output folder", create: bool = True) -> Path:
    """Check that ``path`` can be an output folder; create it (with parents) unless ``create`` is False.

    Args:
        path: the folder.
        what: how the user named it, for the message (``"--out"``, ``"run directory"``).
        create: False only checks that the folder exists or could be created, so a command can
            refuse a bad folder before doing any work and without writing anything.

    Returns:
        ``path`` as a :class:`Path`.

    Raises:
        InputError: ``path`` or one of its parents is a file, or the folder (or, when it does not
            exist yet, its nearest existing parent) is not writable, or creating it fails.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {path} is a file, not a folder; give a folder path (or move the file away)")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{what} {path} cannot be created: {existing} is a file, not a folder; give a folder path outside it")
    where = "" if existing == path else f" (its parent {existing} is not writable)"
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{what} {path} is not writable{where}; choose a folder you can write to")
    try:
        # access() trusts the permission bits, which root bypasses; some filesystems refuse anyway
        # (sysfs, NFS with root squashing). Creating and removing a folder is the real test.
        os.rmdir(tempfile.mkdtemp(prefix=".boxsup-probe-", dir=existing))
    except OSError as err:
        raise InputError(f"{what} {path} is not writable{where} ({err.strerror or err}); choose a folder you can write to") from None
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"{what} {path} cannot be created ({err.strerror or err}); choose a folder you can write to") from None
    return path


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (checkpoints can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class OutputManifest:
    """The files a command has written into ``folder``, by name relative to it and content hash.

    Args:
        folder: the output folder (need not exist yet).
        command: the writer's name, recorded in the manifest and used in messages.
        overwrite: the user asked to replace existing files (``--overwrite``).
    """

    def __init__(self, folder: PathLike, command: str, overwrite: bool = False) -> None:
        self.folder = Path(folder)
        self.command = command
        self.overwrite = overwrite
        self.path = self.folder / MANIFEST_NAME
        self.files: dict[str, Optional[str]] = self._read()
        self._checked: set[str] = set()  # names check() passed (claim() after check() hashes nothing twice)

    def _read(self) -> dict[str, Optional[str]]:
        if not self.path.is_file():
            return {}
        try:
            record = json.loads(self.path.read_text())
            files = record["files"]
            if not isinstance(files, dict):
                raise TypeError("files is not a mapping")
        except (OSError, ValueError, KeyError, TypeError):
            # An unreadable record vouches for nothing: every existing file counts as the user's.
            return {}
        return {str(name): digest if isinstance(digest, str) else None for name, digest in files.items()}

    def made_by_us(self, name: str) -> bool:
        """Whether ``folder/name`` is a file this manifest's command wrote and nobody changed since.
        An entry without a hash is a write that was announced but may not have finished (a crash)."""
        if name not in self.files:
            return False
        digest = self.files[name]
        if digest is None:
            return True
        try:
            return file_sha256(self.folder / name) == digest
        except OSError:
            return False

    def check(self, names: Iterable[str]) -> None:
        """Check every ``folder/name`` is free to write: absent, made by us, or ``overwrite``.
        Writes nothing.

        Raises:
            InputError: naming the first existing file the command did not make, and ``--overwrite``.
        """
        if self.overwrite:
            return
        for name in names:
            if name in self._checked:
                continue
            target = self.folder / name
            if (target.exists() or target.is_symlink()) and not self.made_by_us(name):
                raise InputError(
                    f"{target} exists and is not a file {self.command} wrote there (see {MANIFEST_NAME}); "
                    "pass --overwrite to replace it or choose another --out"
                )
            self._checked.add(name)

    def claim(self, names: Iterable[str]) -> None:
        """:meth:`check` the names, then record them before writing, so that files a crash
        leaves behind still count as ours on the rerun."""
        names = list(names)
        self.check(names)
        new = [name for name in names if name not in self.files]
        for name in new:
            self.files[name] = None
        if new:
            self.save()

    def write_bytes(self, name: str, data: bytes) -> Path:
        """Write ``folder/name`` atomically (it must have been claimed) and record its hash."""
        if name not in self.files:
            raise KeyError(f"{name} was not claimed before writing")
        target = self.folder / name
        atomic_write_bytes(target, data)
        self.files[name] = _sha256(data)
        return target

    def record(self, name: str) -> None:
        """Record ``folder/name`` (claimed, then written by the caller) as made by this command."""
        if name not in self.files:
            raise KeyError(f"{name} was not claimed before writing")
        self.files[name] = file_sha256(self.folder / name)

    def save(self) -> None:
        """Record the names claimed and the hashes of the files written so far."""
        atomic_write_json(self.path, {"command": self.command, "files": dict(sorted(self.files.items()))})
