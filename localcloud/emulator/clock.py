"""Where the emulator reads the time: the system clock when serving, a manual clock in tests.

Everything time-dependent (schedule times, token refills, backoff, tombstone expiry) reads `Clock.now()`, so a
test can drive days of queue behaviour in microseconds by moving a `ManualClock` instead of sleeping.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock", "epoch_micros"]


def epoch_micros(t: float) -> int:
    """Epoch seconds as whole microseconds, the resolution of Cloud Tasks' timestamps. Every timestamp the
    emulator shows (Task fields, X-CloudTasks-TaskETA) goes through this one conversion, so they agree."""
    return round(t * 1e6)


class Clock(Protocol):
    """A source of wall-clock time in epoch seconds."""

    def now(self) -> float: ...


class SystemClock:
    """The real wall clock (`time.time()`): Cloud Tasks timestamps are wall-clock epoch times."""

    def now(self) -> float:
        return time.time()


class ManualClock:
    """A clock that only moves when told to. Thread-safe; it never goes backwards (nor does real time)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by `seconds` (>= 0) and return the new time."""
        if seconds < 0:
            raise ValueError(f"cannot advance a clock by a negative amount: {seconds}")
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, t: float) -> None:
        """Jump to time `t`, which must not be earlier than now."""
        with self._lock:
            if t < self._now:
                raise ValueError(f"cannot move the clock back from {self._now} to {t}")
            self._now = float(t)
