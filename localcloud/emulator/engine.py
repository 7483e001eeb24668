"""The dispatch engine: which attempts are due, and what happens when they finish. No I/O, no real time.

A driver calls `take_due(now)`, sends each returned `Attempt`, then reports it with `complete(attempt, status,
now)`; `next_wakeup(now)` says when to look again. `AsyncDispatcher` drives it with real HTTP and real time,
`simulate` with a manual clock, so every rule below is tested without sleeping.

Rules (queue.py RateLimits / RetryConfig, target.py HttpRequest):
* A RUNNING queue dispatches tasks whose schedule_time has come, in schedule order, through a token bucket:
  each dispatch takes a token, the bucket refills at max_dispatches_per_second up to max_burst_size (it starts
  full), and at most max_concurrent_dispatches attempts are in flight.
* 2xx = success: the task is deleted. Anything else (3xx included: redirects are not followed) or no response
  (deadline, connection error) is a failed attempt, retried per the retry law in retry.py, scheduled at
  completion time + backoff, or deleted once retrying is over.
* RunTask dispatches at once, even on a PAUSED queue or with no tokens left; if it fails, the next attempt is
  scheduled at the RunTask time + backoff ("reset to the time that RunTask was called plus the retry delay").

The start of an attempt changes memory only; its outcome (the task dropped, or rescheduled) is told to the
state's journal, which a durable store commits in groups (store.py: what a crash costs).
"""

from __future__ import annotations

import heapq
import itertools
import logging
from dataclasses import dataclass
from typing import Protocol

from contract import cloud_tasks as limits
from contract.retry import backoff_delay, retry_allowed
from localcloud.emulator.clock import epoch_micros
from localcloud.emulator.config import QueueSettings
from localcloud.emulator.names import short_id
from localcloud.emulator.routing import OAuthAuth, OidcAuth, OutgoingRequest, route
from localcloud.emulator.state import AttemptLog, EmulatorState, Ending, QueueRecord, TaskRecord

__all__ = ["Attempt", "DispatchEngine", "TokenMinter", "cloud_tasks_headers"]

_LOG = logging.getLogger(__name__)

OAUTH_PLACEHOLDER = "local-emulator-oauth-access-token"


class TokenMinter(Protocol):
    """Signs an OIDC ID token for a service account (localcloud.emulator.oidc.TokenIssuer is the real one)."""

    def mint(self, service_account_email: str, audience: str) -> str: ...


@dataclass(frozen=True, eq=False)
class Attempt:
    """One dispatch: the complete HTTP request to send, and what identifies it when reported back."""

    attempt_id: int
    queue_name: str
    task_name: str
    number: int  # 1-based: the task's dispatch_count including this attempt
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    timeout: float  # the task's dispatch_deadline
    schedule_time: float  # the ETA this attempt was scheduled for
    dispatch_time: float
    forced: bool  # dispatched by RunTask
    oidc: OidcAuth | None  # the token in Authorization (audience resolved), if any
    queue_uid: int
    task_seq: int


def cloud_tasks_headers(request: OutgoingRequest, queue: QueueRecord, record: TaskRecord) -> dict[str, str]:
    """The headers of the next attempt of `record`: the task's own plus Cloud Tasks' (creating-http-target-tasks).

    RetryCount counts earlier dispatches; ExecutionCount earlier responses other than 5xx; PreviousResponse
    (504 when the previous attempt got no response) and an empty RetryReason are sent on retries only.
    """
    headers = {
        key: value
        for key, value in request.headers.items()
        if key.lower() not in limits.RESERVED_HEADERS and not key.lower().startswith(limits.RESERVED_HEADER_PREFIXES)
    }
    headers["User-Agent"] = limits.USER_AGENT
    headers[limits.HEADER_QUEUE_NAME] = short_id(queue.name)
    headers[limits.HEADER_TASK_NAME] = short_id(record.name)
    headers[limits.HEADER_RETRY_COUNT] = str(record.dispatch_count)
    headers[limits.HEADER_EXECUTION_COUNT] = str(record.execution_count)
    eta = epoch_micros(record.schedule)  # the same microseconds as the task's schedule_time
    headers[limits.HEADER_ETA] = f"{eta // 1_000_000}.{eta % 1_000_000:06d}"
    if record.dispatch_count > 0:
        headers[limits.HEADER_PREVIOUS_RESPONSE] = str(record.previous_response or 0)
        headers[limits.HEADER_RETRY_REASON] = ""
    if isinstance(request.auth, OAuthAuth):
        _replace_header(headers, "Authorization", f"Bearer {OAUTH_PLACEHOLDER}")
    return headers


def _replace_header(headers: dict[str, str], key: str, value: str) -> None:
    for existing in [k for k in headers if k.lower() == key.lower()]:
        del headers[existing]
    headers[key] = value


class DispatchEngine:
    """Token buckets, concurrency, schedules and the retry law over the shared `EmulatorState`."""

    def __init__(self, state: EmulatorState, minter: TokenMinter | None = None) -> None:
        self._state = state
        self._minter = minter
        self._forced: list[Attempt] = []  # RunTask attempts waiting for the driver
        self._attempt_ids = itertools.count(1)

    # ----- called by the core, under the state lock -----

    def enqueue(self, queue: QueueRecord, record: TaskRecord) -> None:
        """Make `record` dispatchable at `record.schedule`; any older heap entry of it becomes stale."""
        record.version += 1
        heapq.heappush(queue.heap, (record.schedule, record.seq, record.version, record.name))

    def retune(self, queue: QueueRecord, settings: QueueSettings, now: float) -> None:
        """Apply new rate limits live: the tokens in the bucket stay, up to the new burst size."""
        old = queue.settings
        tokens = max(0.0, old.burst - max(0.0, queue.tat - now) * old.rate)
        queue.settings = settings
        queue.tat = now + (settings.burst - min(tokens, float(settings.burst))) / settings.rate

    def force(self, queue: QueueRecord, record: TaskRecord, now: float) -> None:
        """RunTask: dispatch `record` now, ignoring pause, schedule and rate limits."""
        self._forced.append(self._start(queue, record, now, forced=True))

    def reset(self) -> None:
        self._forced.clear()

    # ----- called by drivers -----

    def take_due(self, now: float) -> list[Attempt]:
        """Mark and return every attempt to send now (RunTask ones first). Tokens are minted outside the lock."""
        with self._state.lock:
            attempts, self._forced = self._forced, []
            for queue in self._state.queues.values():
                if not queue.paused:
                    attempts.extend(self._take_from(queue, now))
        self._mint(attempts)
        return attempts

    def complete(self, attempt: Attempt, status: int | None, now: float) -> None:
        """Record the outcome of `attempt`: an HTTP status, or None for no response (timeout, connection error)."""
        with self._state.lock:
            queue = self._state.queues.get(attempt.queue_name)
            if queue is None or queue.uid != attempt.queue_uid:
                return  # the queue was deleted meanwhile
            queue.running -= 1
            record = queue.tasks.get(attempt.task_name)
            if record is None or record.seq != attempt.task_seq:
                return  # deleted or purged while in flight
            self._record_outcome(record, attempt, status, now)
            if status is not None and 200 <= status < 300:
                self._state.drop_task(queue, record, now, Ending.SUCCEEDED)
            else:
                self._retry_or_drop(queue, record, attempt, now)

    def next_wakeup(self, now: float) -> float | None:
        """The earliest time something may become dispatchable; None when nothing is pending.

        A queue that is at its concurrency limit contributes nothing: only a completion frees a slot, and the
        driver learns about completions itself.
        """
        with self._state.lock:
            if self._forced:
                return now
            times = [t for q in self._state.queues.values() if not q.paused and (t := self._wakeup(q, now)) is not None]
        return min(times, default=None)

    # ----- internals -----

    @staticmethod
    def _token_time(queue: QueueRecord) -> float:
        """When the bucket next holds a token (past = it holds one now)."""
        return queue.tat - (queue.settings.burst - 1) / queue.settings.rate

    def _peek(self, queue: QueueRecord) -> tuple[float, TaskRecord] | None:
        """The next pending task of `queue` (dropping stale heap entries on the way)."""
        while queue.heap:
            schedule, seq, version, name = queue.heap[0]
            record = queue.tasks.get(name)
            if record is not None and record.seq == seq and record.version == version and record.running == 0:
                return schedule, record
            heapq.heappop(queue.heap)
        return None

    def _take_from(self, queue: QueueRecord, now: float) -> list[Attempt]:
        taken: list[Attempt] = []
        while queue.running < queue.settings.max_concurrent and now >= self._token_time(queue):
            head = self._peek(queue)
            if head is None or head[0] > now:
                break
            heapq.heappop(queue.heap)
            record = head[1]
            if now - record.created >= limits.TASK_RETENTION_S:
                # "After a task is 31 days old, the task will be deleted"
                self._state.drop_task(queue, record, now, Ending.EXPIRED)
                continue
            queue.tat = max(queue.tat, now) + 1.0 / queue.settings.rate
            taken.append(self._start(queue, record, now, forced=False))
        return taken

    def _wakeup(self, queue: QueueRecord, now: float) -> float | None:
        head = self._peek(queue)
        if head is None:
            return None
        if head[0] > now:
            return head[0]
        if queue.running >= queue.settings.max_concurrent:
            return None
        return max(now, self._token_time(queue))

    def _start(self, queue: QueueRecord, record: TaskRecord, now: float, *, forced: bool) -> Attempt:
        request = route(record.spec.request, queue.settings.target)
        headers = cloud_tasks_headers(request, queue, record)
        oidc = request.auth if isinstance(request.auth, OidcAuth) else None
        if oidc is not None and not oidc.audience:  # "If empty, the task's target URI is used"
            oidc = OidcAuth(oidc.service_account_email, request.url)
        record.version += 1  # a pending heap entry (RunTask on a scheduled task) is now stale
        record.dispatch_count += 1
        record.running += 1
        queue.running += 1
        queue.dispatched += 1
        if record.first_dispatch is None:
            record.first_dispatch = now
        record.last_attempt = AttemptLog(schedule=record.schedule, dispatch=now)
        return Attempt(
            attempt_id=next(self._attempt_ids),
            queue_name=queue.name,
            task_name=record.name,
            number=record.dispatch_count,
            method=request.method,
            url=request.url,
            headers=headers,
            body=request.body,
            timeout=record.spec.deadline,
            schedule_time=record.schedule,
            dispatch_time=now,
            forced=forced,
            oidc=oidc,
            queue_uid=queue.uid,
            task_seq=record.seq,
        )

    def _record_outcome(self, record: TaskRecord, attempt: Attempt, status: int | None, now: float) -> None:
        record.running -= 1
        record.last_attempt = AttemptLog(attempt.schedule_time, attempt.dispatch_time, now, status)
        record.history.append(record.last_attempt)
        record.previous_response = 504 if status is None else status
        if status is not None:
            record.response_count += 1
            if not 500 <= status <= 599:
                record.execution_count += 1

    def _retry_or_drop(self, queue: QueueRecord, record: TaskRecord, attempt: Attempt, now: float) -> None:
        policy = record.spec.retry or queue.settings.retry
        first = record.first_dispatch if record.first_dispatch is not None else attempt.dispatch_time
        if not retry_allowed(
            policy, attempts=record.dispatch_count, first_dispatch=first, created=record.created, failed_at=now
        ):
            self._state.drop_task(queue, record, now, Ending.FAILED)
            return
        base = attempt.dispatch_time if attempt.forced else now
        record.schedule = base + backoff_delay(policy, record.dispatch_count)
        self._state.journal.task_rescheduled(queue, record)
        if record.running == 0:
            self.enqueue(queue, record)

    def _mint(self, attempts: list[Attempt]) -> None:
        if self._minter is None:
            return
        for attempt in attempts:
            if attempt.oidc is None:
                continue
            try:
                token = self._minter.mint(attempt.oidc.service_account_email, attempt.oidc.audience)
            except Exception:  # a broken minter costs the attempt its token, not the dispatcher its loop
                _LOG.exception("minting an OIDC token for %s failed", attempt.task_name)
                continue
            _replace_header(attempt.headers, "Authorization", f"Bearer {token}")
