"""Signals noted without taking a lock.

A Python signal handler runs in the main thread between two bytecodes: perhaps while that thread holds a lock, or
inside the handler of the signal just before (SIGTERM twice in a row, Ctrl-C pressed twice). threading.Event.set()
takes the event's lock, so a handler calling it can wait for ever on a lock its own thread holds. The handler here
only assigns an attribute; the code that waits polls it.
"""

from __future__ import annotations

import signal
import time
from types import FrameType


class SignalFlag:
    """A signal handler that notes the signal's number in `received`, and nothing else."""

    def __init__(self) -> None:
        self.received: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum  # calls nothing: see the module's docstring

    @property
    def is_set(self) -> bool:
        return self.received is not None

    def wait(self, seconds: float) -> bool:
        """Whether a signal has come; when none had, after sleeping `seconds` (a signal does not cut the sleep
        short: keep `seconds` to what a stop may wait)."""
        if self.received is None:
            time.sleep(seconds)
        return self.received is not None


def stop_on_signals() -> SignalFlag:
    """A SignalFlag installed for SIGTERM and SIGINT: a command that runs until it is stopped."""
    flag = SignalFlag()
    signal.signal(signal.SIGTERM, flag)
    signal.signal(signal.SIGINT, flag)
    return flag
