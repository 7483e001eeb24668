"""Signal handlers take no lock: a Python handler runs in the main thread between two bytecodes, maybe while that
thread holds a lock, or inside the handler of the signal just before.

Seen on 2026-12-03: an emulator whose `localcloud up` was killed got SIGTERMs (PR_SET_PDEATHSIG) and hung for good
in three nested handlers, each in threading.Event.set(), the first holding the event's lock: it kept its ports, and
every later `localcloud up` on them failed."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import pytest

from taskclient.interrupts import SignalFlag, stop_on_signals


@pytest.fixture(autouse=True)
def restore_handlers() -> Iterator[None]:
    saved = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)}
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


def calls_made_by(handler: Callable[[int, FrameType | None], Any]) -> list[str]:
    """The functions (Python or C) that `handler` calls while it handles one SIGTERM."""
    calls: list[str] = []
    depth = 0

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal depth
        if event == "call":
            depth += 1
            if depth > 1:
                calls.append(frame.f_code.co_qualname)
        elif event == "return":
            depth -= 1
        elif event == "c_call" and depth >= 1:
            calls.append(getattr(arg, "__qualname__", repr(arg)))

    sys.setprofile(profile)
    try:
        handler(signal.SIGTERM, None)
    finally:
        sys.setprofile(None)
    return calls


# Before SignalFlag, the emulator's handler (localcloud/__main__.py), `up`'s and `bulk`'s Ctrl-C each called
# threading.Event.set(); this same check listed Event.set and the lock calls under it.
def test_the_stop_handler_calls_nothing_and_notes_the_signal() -> None:
    stop = stop_on_signals()
    handler = signal.getsignal(signal.SIGTERM)
    assert handler is stop and signal.getsignal(signal.SIGINT) is stop
    assert not stop.wait(0)
    assert calls_made_by(stop) == []
    assert stop.wait(0) and stop.is_set and stop.received == signal.SIGTERM


def test_a_signal_during_the_wait_is_noted_by_its_end() -> None:
    flag = SignalFlag()
    signal.signal(signal.SIGTERM, flag)
    signal.signal(signal.SIGALRM, lambda *_: signal.raise_signal(signal.SIGTERM))
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    try:
        assert flag.wait(0.5)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
