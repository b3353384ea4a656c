"""Which torch device a device option names: the one rule for ``auto`` / ``cpu`` / ``cuda`` /
``cuda:N`` (the trainer's ``run.device``, the commands' ``--device``, the SAM method's ``device``)."""

from __future__ import annotations

from typing import Optional

import torch

from boxsup_ext.utils import InputError


def default_device() -> torch.device:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: Optional[str], what: str = "--device") -> torch.device:
    """The torch device that option ``what`` set to ``device`` names (``auto``, empty or None: cuda
    when a GPU is visible, else cpu), after checking this machine has it, so that a missing GPU is
    reported as such rather than as a failure of whatever first touches the device (loading a
    checkpoint onto it, say). Every refusal is one InputError naming ``what``."""
    name = "" if device is None else str(device).strip().lower()
    if name in ("", "auto"):
        return default_device()
    try:
        target = torch.device(name)
    except RuntimeError:
        raise InputError(f"{_typed(what, repr(device))} is not a torch device; {what} must be auto, cpu, cuda or cuda:N") from None
    if target.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{_typed(what, device)}: CUDA requested but not available on this machine; use {_typed(what, 'cpu')}")
        count = torch.cuda.device_count()
        if target.index is not None and target.index >= count:
            raise InputError(f"{_typed(what, device)}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1}); pick one of them")
    elif target.type == "meta":
        raise InputError(f"{_typed(what, 'meta')} holds no data and cannot run a model; use {_typed(what, 'cpu')} or cuda")
    elif target.type != "cpu":
        try:
            torch.empty(0, device=target)
        except Exception as err:  # noqa: BLE001 - only the allocation runs here: any failure means the device is unusable
            reason = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
            raise InputError(f"{_typed(what, device)} is not available on this machine ({reason}); use {_typed(what, 'cpu')}") from None
    return target


def _typed(what: str, value: object) -> str:
    """``what`` set to ``value`` as the user types it: ``--device cpu`` for a flag, ``run.device=cpu``
    for a config key or method option."""
    return f"{what} {value}" if what.startswith("-") else f"{what}={value}"
