"""Checkpoint files: the one place that writes them (``torch.save`` to a temporary name, then a
rename, so a crash never leaves half a file) and reads them (``torch.load(weights_only=True)``:
loading never runs code from the file, and every failure is one line naming the file).

What a trainer checkpoint holds is described in :mod:`boxsup_ext.training.state`; models are
rebuilt from one by :func:`boxsup_ext.models.load_model_from_checkpoint`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Optional, Union

import torch

from boxsup_ext.utils import InputError, atomic_write
from boxsup_ext.utils.atomic import PathLike
from boxsup_ext.utils.errors import FULL_DISK_ERRNOS


def atomic_save_torch(obj: Any, path: PathLike) -> None:
    """``torch.save`` through a temporary file beside ``path``, renamed over it when complete
    (:func:`boxsup_ext.utils.atomic_write`)."""
    with atomic_write(path, "wb") as handle:
        torch.save(obj, handle)


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Write ``checkpoint`` atomically (temp name + rename): a failed write (a full disk) leaves the
    previous file in place and is one line naming the file."""
    try:
        atomic_save_torch(checkpoint, path)
    except (OSError, RuntimeError) as err:
        # torch's zip writer reports a short write as "[enforce fail at inline_container.cc] unexpected pos";
        # any other RuntimeError (CUDA, a bug) is not about the file and propagates unchanged.
        if isinstance(err, RuntimeError) and not is_torch_archive_error(err):
            raise
        reason = (err.strerror or str(err)) if isinstance(err, OSError) else "it could not be written in full"
        full = not isinstance(err, OSError) or err.errno in FULL_DISK_ERRNOS
        kept = "the previous checkpoint there is kept" if Path(path).exists() else "nothing was written"
        raise InputError(f"cannot write checkpoint {path} ({reason}){'; is the disk full?' if full else ';'} {kept}") from None


def load_checkpoint(path: Path, mmap: bool = False) -> dict[str, Any]:
    """A trainer checkpoint (it has a ``label_state`` mapping), read with :func:`load_checkpoint_file`;
    ``mmap``: the tensors are memory-mapped, not read (for a caller that wants the rest)."""
    checkpoint = load_checkpoint_file(path, mmap=mmap)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("label_state"), dict):
        raise InputError(f"{path} is not a boxsup_ext.train checkpoint (no label_state); give a run directory of boxsup_ext.train")
    return checkpoint


def read_checkpoint_bytes(path: Union[str, Path]) -> bytes:
    """The bytes of checkpoint file ``path``, read once: hash them and load them (``path=`` of
    :func:`boxsup_ext.models.load_model_from_checkpoint` / :func:`load_checkpoint_file`) so the hash describes the
    weights loaded even while a trainer replaces the file. Errors are one line naming the file."""
    path = _existing(path, "checkpoint")
    try:
        return path.read_bytes()
    except OSError as err:
        raise InputError(f"cannot read checkpoint {path} ({err.strerror or err}); check the path and its permissions") from None


def read_model_checkpoint(path: Union[str, Path, bytes], what: str = "checkpoint", name: Optional[str] = None) -> dict[str, Any]:
    """A trainer checkpoint that holds a model (``model`` and ``model_meta``), read with
    :func:`load_checkpoint_file`; ``what`` names the argument in the one-line errors. ``path`` may
    be the file's bytes (read once, e.g. to hash and load the very same content), then ``name``
    is the file it came from, for messages."""
    if isinstance(path, (bytes, bytearray, memoryview)):
        label: Any = name or "checkpoint bytes"
    else:
        path = label = _existing(path, what)
    checkpoint = load_checkpoint_file(path, name=str(label))
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict) or "model_meta" not in checkpoint:
        raise InputError(f"{what} {label} lacks 'model'/'model_meta'; it was not written by boxsup_ext.train")
    return checkpoint


def _existing(path: Union[str, Path], what: str) -> Path:
    """``path`` as a Path, checked to be a file; else one line naming ``what`` (the argument)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist; give a trainer checkpoint (a run's checkpoints/best.pt or latest.pt)")
    return path


def checkpoint_state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint, without a ``module.`` prefix (a wrapped model's keys)."""
    return {key.removeprefix("module."): value for key, value in checkpoint["model"].items()}


# Phrases of torch's zip archive reader/writer (caffe2 inline_container / miniz) errors: a file that
# is cut short, not a torch archive, or damaged. Other RuntimeErrors are not about the file.
_ARCHIVE_ERRORS = (
    "inline_container",
    "PytorchStreamReader",
    "PytorchStreamWriter",
    "failed finding central directory",
    "not a ZIP archive",
)


def is_torch_archive_error(err: BaseException) -> bool:
    """Whether ``err`` is torch's zip reader/writer reporting a damaged, short or non-archive file."""
    return isinstance(err, RuntimeError) and any(phrase in str(err) for phrase in _ARCHIVE_ERRORS)


def load_checkpoint_file(
    path: Union[str, Path, bytes, io.BytesIO],
    map_location: Any = "cpu",
    mmap: bool = False,
    name: Optional[str] = None,
) -> Any:
    """``torch.load`` with ``weights_only=True``: only tensors and plain types are rebuilt, so a
    file that would run code (a pickle with ``__reduce__``) is refused. Errors are one line.

    ``path`` is a file, or the bytes of one (``bytes`` or a ``BytesIO``: read once, so a hash of
    the bytes describes exactly what was loaded); ``name`` names it in messages (default: the
    path). ``mmap`` memory-maps a file instead of reading it (paths only).

    Raises:
        InputError: the file holds objects other than tensors and plain types; it cannot be read
            (an ``OSError``: missing, a folder, no permission ... with the system's reason); or
            torch's archive reader finds it empty, cut short or not a checkpoint. Any other error
            (out of memory, a bug) propagates unchanged.
    """
    import pickle

    if isinstance(path, (bytes, bytearray, memoryview)):
        path = io.BytesIO(bytes(path))
    label = name or (str(path) if not isinstance(path, io.IOBase) else "checkpoint bytes")
    try:
        extra = {"mmap": True} if mmap and not isinstance(path, io.IOBase) else {}
        return torch.load(path, map_location=map_location, weights_only=True, **extra)
    except pickle.UnpicklingError as err:
        if "global" not in str(err).lower():  # no object refused (GLOBAL): random bytes or another format, not a pickle of objects
            raise InputError(
                f"checkpoint {label} is not a torch checkpoint (neither a torch archive nor a pickle torch can read); "
                "is it the right file? use a checkpoint written by boxsup_ext.train"
            ) from None
        detail = str(err).split("Unsupported global: ", 1)[-1].split(" was not an allowed global")[0].splitlines()[0][:120]
        raise InputError(
            f"checkpoint {label} holds objects other than tensors and plain types ({detail}); refusing to load it "
            "(loading a checkpoint never runs code); use a checkpoint written by boxsup_ext.train"
        ) from None
    except OSError as err:
        raise InputError(f"cannot read checkpoint {label} ({err.strerror or err}); check the path and its permissions") from None
    except EOFError:
        raise InputError(f"checkpoint {label} is empty or cut short; is the file complete?") from None
    except RuntimeError as err:
        if not is_torch_archive_error(err):
            raise
        reason = str(err).splitlines()[0].split(". This is an internal miniz error")[0][:160]
        raise InputError(f"checkpoint {label} is not readable ({reason}); is the file complete?") from None


def checkpoint_finished(path: Path) -> Optional[bool]:
    """Whether a trainer checkpoint is the end of its run (None when it does not say). Loaded with
    ``weights_only=True`` (no code runs) and memory-mapped, so the weights are not read."""
    checkpoint = load_checkpoint_file(path, mmap=True)
    if not isinstance(checkpoint, dict):
        return None
    config = checkpoint.get("config")
    train = config.get("train") if isinstance(config, dict) else None
    epochs = train.get("epochs") if isinstance(train, dict) else None
    epoch = checkpoint.get("epoch")
    if not isinstance(epochs, int) or not isinstance(epoch, int):
        return None
    return epoch >= epochs and not checkpoint.get("step", 0)
