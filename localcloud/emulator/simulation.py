"""A discrete-event driver for the dispatch engine: hours of queue behaviour in milliseconds, deterministically.

`Simulator(core, respond).run(until)` (or the one-shot `simulate(core, respond, until)`) plays the role of
AsyncDispatcher with the core's ManualClock: it takes due attempts, asks `respond(attempt)` for
`(status or None, duration_seconds)`, and completes each attempt at `now + duration`, jumping the clock from
event to event (a completion or the engine's next wakeup). An attempt whose duration reaches its timeout (the
task's dispatch_deadline) is cut at the deadline with no response, as Cloud Tasks does.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from localcloud.emulator.clock import ManualClock
from localcloud.emulator.core import CloudTasksCore
from localcloud.emulator.engine import Attempt

__all__ = ["Responder", "SimulationReport", "Simulator", "simulate"]

Responder = Callable[[Attempt], tuple[int | None, float]]


@dataclass
class SimulationReport:
    """What happened: every attempt with its outcome, and the most attempts ever in flight at once."""

    attempts: list[tuple[Attempt, int | None, float]] = field(default_factory=list)  # (attempt, status, completed at)
    max_in_flight: int = 0
    end_time: float = 0.0

    def statuses(self, task_name: str) -> list[int | None]:
        return [status for attempt, status, _ in self.attempts if attempt.task_name == task_name]


class Simulator:
    """Discrete-event driver that keeps attempts in flight between `run` calls, so a test can run a while,
    change something through the core (pause, purge, update, RunTask, move the clock), and run on."""

    def __init__(self, core: CloudTasksCore, respond: Responder) -> None:
        clock = core.clock
        if not isinstance(clock, ManualClock):
            raise TypeError("a simulation needs a core built with a ManualClock")
        self.core = core
        self.clock = clock
        self.respond = respond
        self.report = SimulationReport()
        self._in_flight: list[tuple[float, int, Attempt, int | None]] = []  # (completes at, order, attempt, status)
        self._order = itertools.count()

    def run(self, until: float, *, max_attempts: int = 1_000_000) -> SimulationReport:
        """Run until simulated time `until` (epoch seconds) or until nothing is pending or in flight.

        The clock ends at `until`, or where the last event happened when everything went idle first. The
        report is cumulative over all runs.
        """
        while True:
            now = self.clock.now()
            progressed = self._complete_due(now)
            for attempt in self.core.take_due(now):
                progressed = True
                self._start(attempt, now)
            self.report.max_in_flight = max(self.report.max_in_flight, len(self._in_flight))
            if len(self.report.attempts) >= max_attempts:
                raise RuntimeError(f"simulation exceeded {max_attempts} attempts")
            next_time = self._next_event(now)
            if next_time is None:
                break
            if next_time > until:
                self.clock.set(max(until, now))
                break
            if next_time <= now and not progressed:
                raise RuntimeError(f"simulation stalled at {now}: the engine wants to wake at {next_time}")
            self.clock.set(max(next_time, now))
        self.report.end_time = self.clock.now()
        return self.report

    def _start(self, attempt: Attempt, now: float) -> None:
        status, duration = self.respond(attempt)
        if duration >= attempt.timeout:  # the dispatch deadline cuts the request: no response
            status, duration = None, attempt.timeout
        heapq.heappush(self._in_flight, (now + max(duration, 0.0), next(self._order), attempt, status))

    def _next_event(self, now: float) -> float | None:
        candidates = [self.core.next_wakeup(now)]
        if self._in_flight:
            candidates.append(self._in_flight[0][0])
        return min((t for t in candidates if t is not None), default=None)

    def _complete_due(self, now: float) -> bool:
        done = False
        while self._in_flight and self._in_flight[0][0] <= now:
            finished_at, _, attempt, status = heapq.heappop(self._in_flight)
            self.core.complete(attempt, status, finished_at)
            self.report.attempts.append((attempt, status, finished_at))
            done = True
        return done


def simulate(core: CloudTasksCore, respond: Responder, until: float) -> SimulationReport:
    """One-shot `Simulator(core, respond).run(until)`; attempts still in flight at `until` stay in flight."""
    return Simulator(core, respond).run(until)
