"""Where commands write: checking an output folder, and never replacing a file a command did not make.

:func:`ensure_output_dir` turns a folder argument that cannot hold output (a file in the way, an
unwritable or read-only location) into one :class:`InputError` line before any work is done.

:class:`OutputManifest` is how a command that writes files of its own naming into a user's folder
(``predict --out DIR``) knows which files there it made: it keeps ``DIR/.boxsup-outputs.json`` with
the SHA-256 of every file it wrote. A rerun may replace those files; any other existing file (the
user's photo ``DIR/x.png``, or one of ours the user has since edited) is refused unless the user
passes ``--overwrite``. The hash of a file is recorded before the file is renamed into place
(:meth:`OutputManifest.write_files`), so a kill at any point leaves no file of ours unrecorded and
no record vouching for a file it did not see written.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Union

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
        # name -> hash of the file written; None: an entry read without a usable hash (it vouches for
        # nothing that exists); a list: hashes a file being replaced may hold (the new one first)
        # until the write is recorded.
        self.files: dict[str, Union[None, str, list[str]]] = self._read()
        self._checked: set[str] = set()  # names check() passed (a second check() hashes nothing twice)

    def _read(self) -> dict[str, Union[None, str, list[str]]]:
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
        return {str(name): _digests(digest) for name, digest in files.items()}

    def made_by_us(self, name: str) -> bool:
        """Whether ``folder/name`` is a file this manifest's command wrote and nobody changed since.

        An entry without a usable hash (an older or damaged record) vouches for nothing that
        exists: whatever the file there holds, this command did not see it written, and it may be
        the user's."""
        if name not in self.files:
            return False
        digest = self.files[name]
        target = self.folder / name
        if digest is None:
            return not (target.exists() or target.is_symlink())
        try:
            return file_sha256(target) in ([digest] if isinstance(digest, str) else digest)
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

    def write_files(self, files: dict[str, bytes]) -> list[Path]:
        """:meth:`check` the names, record the hashes of ``files`` (name -> bytes) in the manifest
        on disk, then write each file atomically. A kill at any point leaves every file either
        absent, as before (still ours if it was), or with content whose hash is recorded: nothing
        of ours is left unrecorded, and no record covers bytes this command did not write."""
        names = list(files)
        self.check(names)
        hashes = {name: _sha256(data) for name, data in files.items()}
        for name, digest in hashes.items():
            # Until the rename the old content is still there: keep it ours if it was.
            before = self.files.get(name)
            kept = [] if before is None else [before] if isinstance(before, str) else before
            self.files[name] = [digest] + [old for old in kept if old != digest]
        self.save()
        written = []
        for name, data in files.items():
            target = self.folder / name
            atomic_write_bytes(target, data)
            self.files[name] = hashes[name]
            written.append(target)
        return written

    def save(self) -> None:
        """Record the hashes of the files written so far. Entries without a hash are dropped:
        their record would vouch for nothing."""
        written = {name: digest for name, digest in self.files.items() if digest is not None}
        atomic_write_json(self.path, {"command": self.command, "files": dict(sorted(written.items()))})


def _digests(value: object) -> Union[None, str, list[str]]:
    """A manifest entry as read: a hash, a list of hashes (a write in progress), or None."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return [str(v) for v in value]
    return None
