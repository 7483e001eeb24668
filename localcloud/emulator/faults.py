"""Fault injection for the emulator's gRPC face: failures, latency and a record of what clients sent.

Every `EmulatorServer` owns one, as `server.faults`::

    server.faults.fail_next("CreateTask", grpc.StatusCode.UNAVAILABLE, "try again", times=2)
    server.faults.fail_next("CreateTask", grpc.StatusCode.DEADLINE_EXCEEDED, after_effect=True)
    server.faults.fail_when("CreateTask", lambda request: Fault(code, "no") if "x" in request.task.name else None)
    server.faults.latency = 0.02       # seconds added to every call
    server.faults.recording = True     # then server.faults.calls("CreateTask") lists what arrived

`after_effect=True` models a reply lost after the server committed: the call runs (the task is stored), then
the client gets the fault; if the call itself fails, that error is the answer instead. A call consumes a
`fail_next` fault when it arrives, in order, whatever happens to it next; `fail_when` rules are consulted,
in the order added, only for calls that consumed no `fail_next` fault, and before the call runs.

Per call: record it and take its fault (under the lock), wait out the latency, fail (unless after_effect),
consult the rules, run, fail (after_effect). A request that does not decode never gets here: it is
INVALID_ARGUMENT as always. The latency is slept in the gRPC worker thread, so concurrent slow calls need as
many workers (`EmulatorServer(workers=...)`).

With nothing set, `active` is False and the server does not call in here at all.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from localcloud.emulator.errors import CloudTasksError

__all__ = ["Call", "Fault", "FaultInjector", "Rule"]

_T = TypeVar("_T")


@dataclass(frozen=True)
class Fault:
    """One injected failure: the call is aborted with `code` and `message`."""

    code: grpc.StatusCode
    message: str = "injected fault"

    def __post_init__(self) -> None:
        if self.code is grpc.StatusCode.OK:
            raise ValueError("StatusCode.OK is not a failure")

    def error(self) -> CloudTasksError:
        return CloudTasksError(self.code, self.message)


@dataclass(frozen=True)
class Call:
    """One call as it arrived: the RPC name ("CreateTask"), the decoded request and the invocation metadata."""

    method: str
    request: Any  # the proto-plus request message, e.g. tasks_v2.CreateTaskRequest
    metadata: tuple[tuple[str, str], ...]


# Given a copy of the decoded request; returns the fault to answer with, or None to let the call through.
Rule = Callable[[Any], Fault | None]


@dataclass
class _Pending:
    fault: Fault
    remaining: int
    after_effect: bool


class FaultInjector:
    """Faults, latency and recording for one server; thread-safe (gRPC workers and a test share it)."""

    def __init__(self, methods: Iterable[str] | None = None) -> None:
        # Known RPC names, so a misspelt one fails at once instead of never matching.
        self._methods = frozenset(methods) if methods is not None else None
        self._lock = threading.Lock()
        self._pending: dict[str, deque[_Pending]] = {}
        self._rules: dict[str, list[Rule]] = {}
        self._latency = 0.0
        self._recording = False
        self._calls: list[Call] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._active = False

    # ----- setup -----

    def fail_next(
        self,
        method: str,
        code: grpc.StatusCode,
        message: str = "injected fault",
        *,
        times: int = 1,
        after_effect: bool = False,
    ) -> None:
        """The next `times` calls of `method` fail with `code` (after taking effect, with after_effect)."""
        self._check(method)
        if times < 1:
            raise ValueError(f"times must be at least 1, got {times}")
        fault = Fault(code, message)
        with self._lock:
            self._pending.setdefault(method, deque()).append(_Pending(fault, times, after_effect))
            self._update()

    def fail_when(self, method: str, rule: Rule) -> None:
        """Until `clear()`, a call of `method` fails with the Fault `rule(request)` returns (None: no fault)."""
        self._check(method)
        with self._lock:
            self._rules.setdefault(method, []).append(rule)
            self._update()

    @property
    def latency(self) -> float:
        """Seconds every call waits before it is handled (0: none)."""
        return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        if not seconds >= 0:  # also refuses NaN
            raise ValueError(f"latency must be a non-negative number of seconds, got {seconds}")
        with self._lock:
            self._latency = float(seconds)
            self._update()

    @property
    def recording(self) -> bool:
        """Whether calls are kept for `calls()` (off by default: a long run would keep every request)."""
        return self._recording

    @recording.setter
    def recording(self, on: bool) -> None:
        with self._lock:
            self._recording = on
            self._update()

    def clear(self) -> None:
        """Back to the initial state: no faults, rules or latency, recording off, nothing recorded."""
        with self._lock:
            self._pending.clear()
            self._rules.clear()
            self._latency = 0.0
            self._recording = False
            self._calls.clear()
            self._max_in_flight = self._in_flight
            self._update()

    # ----- inspection -----

    def calls(self, method: str | None = None) -> list[Call]:
        """The calls recorded (of `method`, or all), in arrival order."""
        with self._lock:
            return [call for call in self._calls if method is None or call.method == method]

    @property
    def max_in_flight(self) -> int:
        """The most calls ever being handled at once while the injector was active."""
        return self._max_in_flight

    @property
    def active(self) -> bool:
        """Whether anything is set; the server skips the injector entirely when not."""
        return self._active

    # ----- the server's side -----

    def intercept(
        self,
        method: str,
        request: Any,
        metadata: Iterable[tuple[str, str | bytes]] | None,
        run: Callable[[], _T],
    ) -> _T:
        """Handle one decoded call; `run` performs it. Raises CloudTasksError for an injected fault."""
        with self._lock:
            if self._recording:
                self._calls.append(Call(method, request, _text_pairs(metadata)))
            pending = self._take(method)
            rules = list(self._rules.get(method, ())) if pending is None else []
            latency = self._latency
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            if latency > 0:
                time.sleep(latency)  # the injected latency itself, not a wait for something to happen
            if pending is not None and not pending.after_effect:
                raise pending.fault.error()
            for rule in rules:
                fault = rule(type(request)(request))  # a copy: a rule must not change what runs
                if fault is not None:
                    raise fault.error()
            result = run()
            if pending is not None:
                raise pending.fault.error()
            return result
        finally:
            with self._lock:
                self._in_flight -= 1

    # ----- internals -----

    def _check(self, method: str) -> None:
        if self._methods is not None and method not in self._methods:
            raise ValueError(f"unknown RPC {method!r}; expected one of {', '.join(sorted(self._methods))}")

    def _take(self, method: str) -> _Pending | None:  # caller holds the lock
        queue = self._pending.get(method)
        if not queue:
            return None
        head = queue[0]
        head.remaining -= 1
        if head.remaining == 0:
            queue.popleft()
            if not queue:
                del self._pending[method]
            self._update()
        return head

    def _update(self) -> None:  # caller holds the lock
        self._active = bool(self._recording or self._latency > 0 or self._pending or self._rules)


def _text_pairs(metadata: Iterable[tuple[str, str | bytes]] | None) -> tuple[tuple[str, str], ...]:
    pairs = []
    for key, value in metadata or ():
        text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)
        pairs.append((str(key), text))
    return tuple(pairs)
