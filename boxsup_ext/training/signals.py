"""Stopping the trainer: SIGINT/SIGTERM become a flag that the trainer checks between batches (it
then saves a checkpoint and raises :class:`StopRequested`), and the ``BOXSUP_FAULT_AT`` test hook
that makes the process signal itself after a given training step."""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

# Test hook: "EPOCH:STEP[:SIGNAL]" makes the process send itself SIGNAL (default SIGKILL; e.g.
# SIGTERM, SIGINT, SIGSTOP) right after that training step.
FAULT_ENV = "BOXSUP_FAULT_AT"


class StopRequested(Exception):
    """SIGINT/SIGTERM arrived; the trainer stops at the next safe point."""


@dataclass
class Stopper:
    """Turns SIGINT/SIGTERM into a flag checked between batches."""

    signum: Optional[int] = None
    _previous: dict = field(default_factory=dict)

    def install(self) -> None:
        if not _in_main_thread():  # signal handlers can only be set from the main thread
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def requested(self) -> bool:
        return self.signum is not None


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def fault_injection_from_env() -> Callable[[int, int], None]:
    """The :data:`FAULT_ENV` test hook as a callback after each training step: with
    ``EPOCH:STEP[:SIGNAL]`` set, the process sends itself SIGNAL (default SIGKILL) after that step."""
    fault = os.environ.get(FAULT_ENV, "")
    if not fault:
        return lambda epoch, step: None
    parts = fault.split(":")
    at, signum = (int(parts[0]), int(parts[1])), getattr(signal, parts[2]) if len(parts) > 2 else signal.SIGKILL

    def send_signal(epoch: int, step: int) -> None:
        if (epoch, step) == at:
            os.kill(os.getpid(), signum)

    return send_signal
