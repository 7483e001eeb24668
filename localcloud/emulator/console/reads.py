"""What the console reads from the emulator's state: plain values, copied out while the core holds its lock.

The builders here (`queue_view`, `task_row`, `task_detail`, `finished_view`) are called by the core's
"console reads" methods with the state lock held; they copy numbers, strings and frozen settings out of the
records and do nothing else, so the console formats and sends them after the lock is released. Everything
derived (a task's state, its timeline's backoffs, a policy's backoff schedule) is worked out from those copies.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from google.cloud import tasks_v2

from contract.retry import RetryPolicy, backoff_delay, retrying_stops
from localcloud.emulator.config import QueueSettings
from localcloud.emulator.routing import TaskRequest
from localcloud.emulator.state import AttemptLog, FinishedTask, QueueRecord, TaskRecord

__all__ = [
    "AttemptRow",
    "FinishedView",
    "QueueView",
    "TaskDetail",
    "TaskPage",
    "TaskRow",
    "TaskState",
    "backoff_schedule",
    "finished_view",
    "queue_view",
    "task_detail",
    "task_row",
    "task_state",
    "timeline",
]


class TaskState(StrEnum):
    """Where a task stands in its queue, as the console shows it."""

    RUNNING = "running"  # an attempt is in flight
    RETRYING = "retrying"  # an attempt failed; the next one is scheduled by the retry law
    WAITING = "waiting"  # never attempted, due now: held by the rate limit, the concurrency limit or a pause
    SCHEDULED = "scheduled"  # never attempted, schedule_time still ahead


def task_state(record: TaskRecord, now: float) -> TaskState:
    if record.running:
        return TaskState.RUNNING
    if record.dispatch_count:
        return TaskState.RETRYING
    return TaskState.WAITING if record.schedule <= now else TaskState.SCHEDULED


def _attempt_copy(log: AttemptLog | None) -> AttemptLog | None:
    return AttemptLog(log.schedule, log.dispatch, log.response, log.status) if log is not None else None


@dataclass(frozen=True)
class QueueView:
    name: str
    state: str  # RUNNING, PAUSED or DISABLED
    depth: int  # tasks in the queue
    in_flight: int  # attempts running now
    dispatched: int  # attempts started since the queue was created (sampled for the dispatch rate)
    counts: dict[str, int]  # tasks by TaskState value
    settings: QueueSettings  # frozen: rate, burst, concurrency, retry policy, queue-level routing
    purge_time: float | None


def queue_view(queue: QueueRecord, now: float) -> QueueView:
    # task_state, inlined: this loop runs over every task under the state lock, once a second per open page.
    running = retrying = waiting = 0
    for record in queue.tasks.values():
        if record.running:
            running += 1
        elif record.dispatch_count:
            retrying += 1
        elif record.schedule <= now:
            waiting += 1
    counts = {
        TaskState.RUNNING: running,
        TaskState.RETRYING: retrying,
        TaskState.WAITING: waiting,
        TaskState.SCHEDULED: len(queue.tasks) - running - retrying - waiting,
    }
    pb = tasks_v2.Queue.pb(queue.queue)
    purged = pb.purge_time.ToMicroseconds() / 1e6 if pb.HasField("purge_time") else None
    return QueueView(
        name=queue.name,
        state=tasks_v2.Queue.State(pb.state).name,
        depth=len(queue.tasks),
        in_flight=queue.running,
        dispatched=queue.dispatched,
        counts={str(state): count for state, count in counts.items()},
        settings=queue.settings,
        purge_time=purged,
    )


@dataclass(frozen=True)
class TaskRow:
    name: str
    seq: int
    state: TaskState
    created: float
    schedule: float  # the next attempt's time (for a running task: the running attempt's)
    dispatch_count: int
    response_count: int
    last_attempt: AttemptLog | None  # response None: still in flight


def task_row(record: TaskRecord, now: float) -> TaskRow:
    return TaskRow(
        name=record.name,
        seq=record.seq,
        state=task_state(record, now),
        created=record.created,
        schedule=record.schedule,
        dispatch_count=record.dispatch_count,
        response_count=record.response_count,
        last_attempt=_attempt_copy(record.last_attempt),
    )


@dataclass(frozen=True)
class TaskPage:
    rows: list[TaskRow]
    total: int  # tasks that match the filter
    before: int  # matching tasks before this page (so the page starts at number before + 1)
    next_after: int | None  # the cursor of the next page; None on the last page


@dataclass(frozen=True)
class TaskDetail:
    row: TaskRow
    queue_name: str
    history: tuple[AttemptLog, ...]  # finished attempts, oldest first (the last HISTORY_LIMIT)
    first_dispatch: float | None
    policy: RetryPolicy
    policy_source: str  # "task" (its own retry_config), "queue", or "default" (its queue is gone)
    request: TaskRequest  # frozen: the task's own URL, method, headers, body and token
    queue_settings: QueueSettings | None  # None once the queue is gone; its http_target reshapes the request
    deadline: float
    ending: str | None  # an Ending once the task has left its queue; None while it is in it
    ended_at: float | None


def task_detail(queue: QueueRecord | None, record: TaskRecord, now: float, finished: FinishedTask | None) -> TaskDetail:
    """`queue` is the task's queue while it is in it (None once the queue itself is gone)."""
    settings = queue.settings if queue is not None else None
    policy = record.spec.retry or (settings.retry if settings is not None else RetryPolicy())
    return TaskDetail(
        row=task_row(record, now),
        queue_name=queue.name if queue is not None else record.name.rsplit("/tasks/", 1)[0],
        history=tuple(AttemptLog(a.schedule, a.dispatch, a.response, a.status) for a in record.history),
        first_dispatch=record.first_dispatch,
        policy=policy,
        policy_source="task" if record.spec.retry is not None else "queue" if settings is not None else "default",
        request=record.spec.request,
        queue_settings=settings,
        deadline=record.spec.deadline,
        ending=finished.ending if finished is not None else None,
        ended_at=finished.at if finished is not None else None,
    )


@dataclass(frozen=True)
class FinishedView:
    queue_name: str
    name: str
    ending: str  # an Ending
    at: float
    created: float
    dispatch_count: int
    last_attempt: AttemptLog | None


def finished_view(finished: FinishedTask) -> FinishedView:
    record = finished.record
    return FinishedView(
        queue_name=finished.queue_name,
        name=record.name,
        ending=finished.ending,
        at=finished.at,
        created=record.created,
        dispatch_count=record.dispatch_count,
        last_attempt=_attempt_copy(record.last_attempt),
    )


# ----- derived, outside the lock -----


@dataclass(frozen=True)
class AttemptRow:
    """One attempt on a task's timeline."""

    number: int  # 1-based
    schedule: float
    dispatch: float
    response: float | None  # None: still in flight
    status: int | None  # HTTP status; None: no response (deadline or connection error), or still in flight
    latency: float | None
    # From this attempt's response to the next attempt's schedule: the backoff the emulator applied. None when
    # no attempt follows (yet).
    backoff: float | None
    # What the retry law gives after this attempt failed, for comparison (RunTask resets the schedule).
    law_backoff: float | None


def timeline(detail: TaskDetail) -> list[AttemptRow]:
    """The task's attempts, oldest first: finished ones from its history, then the one in flight, if any."""
    row = detail.row
    attempts = list(detail.history)
    if row.last_attempt is not None and row.last_attempt.response is None:
        attempts.append(row.last_attempt)
    first_number = row.dispatch_count - len(attempts) + 1  # older attempts than HISTORY_LIMIT are not kept
    rows: list[AttemptRow] = []
    for index, attempt in enumerate(attempts):
        number = first_number + index
        failed = attempt.response is not None and not (attempt.status is not None and 200 <= attempt.status < 300)
        backoff: float | None = None
        if attempt.response is not None and failed:
            if index + 1 < len(attempts):
                backoff = attempts[index + 1].schedule - attempt.response
            elif detail.ending is None and row.state is TaskState.RETRYING:
                backoff = row.schedule - attempt.response
        rows.append(
            AttemptRow(
                number=number,
                schedule=attempt.schedule,
                dispatch=attempt.dispatch,
                response=attempt.response,
                status=attempt.status,
                latency=attempt.response - attempt.dispatch if attempt.response is not None else None,
                backoff=backoff,
                law_backoff=backoff_delay(detail.policy, number) if failed and number >= 1 else None,
            )
        )
    return rows


def backoff_schedule(policy: RetryPolicy, count: int = 12) -> list[float]:
    """The first `count` backoffs the policy implies (after failed attempt 1, 2, ...), fewer when its attempt
    limit ends the retries first (and no duration limit keeps them going)."""
    delays: list[float] = []
    for failed in range(1, count + 1):
        if retrying_stops(policy, attempts=failed, retried_for=0.0):
            break
        delays.append(backoff_delay(policy, failed))
    return delays
