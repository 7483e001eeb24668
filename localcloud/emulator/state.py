"""The emulator's in-memory records: queues, tasks, tombstones, and how a stored task is shown to clients.

Records hold plain Python values for everything dispatch touches (schedule, counters, parsed settings), so the
hot path never goes through proto-plus; the protobuf Task is only built when a client asks for one.

Every change that must outlive the process is also told to the state's `Journal`: the default one forgets it
(in memory only, at the cost of a method call), `store.SqliteStore` writes it to SQLite.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from google.cloud import tasks_v2

from localcloud.emulator.clock import epoch_micros
from localcloud.emulator.config import QueueSettings
from localcloud.emulator.errors import invalid_argument
from localcloud.emulator.taskspec import TaskSpec

__all__ = [
    "HISTORY_LIMIT",
    "AttemptLog",
    "EmulatorState",
    "Ending",
    "FinishedTask",
    "Journal",
    "QueueRecord",
    "TaskRecord",
    "Tombstones",
    "page_of",
    "rpc_code_for_http",
    "task_view",
]

T = TypeVar("T")
HISTORY_LIMIT = 100  # attempts kept per task
FINISHED_LIMIT = 1000  # finished tasks kept across queues (each holds its body: bounded by count)
_BASIC = int(tasks_v2.Task.View.BASIC)
_FULL = int(tasks_v2.Task.View.FULL)


@dataclass
class AttemptLog:
    """One attempt as Task.last_attempt reports it; `status` None = no response (or still running)."""

    schedule: float
    dispatch: float
    response: float | None = None
    status: int | None = None


@dataclass(eq=False)
class TaskRecord:
    name: str
    seq: int  # creation order: ListTasks order and page tokens
    stored: Any  # raw Task pb as the client gave it (name filled in, output-only fields cleared)
    spec: TaskSpec
    created: float
    schedule: float
    dispatch_count: int = 0
    response_count: int = 0
    execution_count: int = 0  # responses other than 5xx: X-CloudTasks-TaskExecutionCount
    first_dispatch: float | None = None
    last_attempt: AttemptLog | None = None
    previous_response: int | None = None  # X-CloudTasks-TaskPreviousResponse (504 after no response)
    running: int = 0  # attempts in flight (RunTask can add one to a running task)
    version: int = 0  # bumped on every (re)queueing: older heap entries of this task are stale
    # The task's finished attempts, oldest first, the last HISTORY_LIMIT of them: its timeline in the console.
    history: deque[AttemptLog] = field(default_factory=lambda: deque(maxlen=HISTORY_LIMIT))


class Ending:
    """Why a task left its queue."""

    SUCCEEDED = "succeeded"  # a 2xx answer
    FAILED = "failed"  # its last attempt failed and retrying is over
    DELETED = "deleted"  # DeleteTask
    PURGED = "purged"  # PurgeQueue or DeleteQueue
    EXPIRED = "expired"  # 31 days old (Cloud Tasks' retention)


@dataclass(frozen=True, eq=False)
class FinishedTask:
    """A task that has left its queue, kept a while so that one can look at what became of it."""

    queue_name: str
    record: TaskRecord
    ending: str  # an Ending
    at: float


@dataclass(eq=False)
class QueueRecord:
    name: str
    uid: int  # distinguishes a re-created queue from the deleted one with the same name
    seq: int
    queue: tasks_v2.Queue  # normalized: defaults filled in, state and purge_time current
    settings: QueueSettings
    # Token bucket as GCRA: the bucket is full once now >= tat, and a dispatch is allowed while
    # now >= tat - (burst - 1) / rate. Comparing times (not summing token fractions) keeps a wakeup
    # computed from the same expression exactly consistent with the check, whatever the float rounding.
    tat: float
    running: int = 0  # attempts in flight, counted against max_concurrent_dispatches
    dispatched: int = 0  # attempts started since the queue was created here (the console's dispatch rate)
    tasks: dict[str, TaskRecord] = field(default_factory=dict)  # insertion order = creation order
    heap: list[tuple[float, int, int, str]] = field(default_factory=list)  # (schedule, task seq, version, name)

    @property
    def paused(self) -> bool:
        return bool(self.queue.state != tasks_v2.Queue.State.RUNNING)


class Tombstones:
    """Names reserved for `ttl` seconds after their owner went away (0: not reserved at all)."""

    def __init__(self, ttl: float) -> None:
        if ttl < 0:
            raise ValueError(f"a tombstone TTL cannot be negative: {ttl}")
        self.ttl = ttl
        self._expiry: dict[str, float] = {}
        self._order: deque[tuple[float, str]] = deque()  # expiry order, since the TTL is fixed

    def add(self, name: str, now: float) -> float | None:
        """Reserve `name` from `now`; its expiry, or None when the TTL is 0 (not reserved)."""
        if self.ttl <= 0:
            return None
        self.restore(name, now + self.ttl)
        return now + self.ttl

    def restore(self, name: str, expiry: float) -> None:
        """Reserve `name` until `expiry` (a tombstone saved by an earlier run; restore them in expiry order)."""
        self._expiry[name] = expiry
        self._order.append((expiry, name))

    def holds(self, name: str, now: float) -> bool:
        self._expire(now)
        return self._expiry.get(name, now) > now

    def clear(self) -> None:
        self._expiry.clear()
        self._order.clear()

    def _expire(self, now: float) -> None:
        while self._order and self._order[0][0] <= now:
            expiry, name = self._order.popleft()
            if self._expiry.get(name) == expiry:
                del self._expiry[name]


class Journal:
    """Where the state's lasting changes go: nowhere (the emulator keeps everything in memory only).

    Each method is called under the state lock, right after the change it names, so the calls come in the
    order of the changes; `commit()` is called by an RPC, without the lock, before it answers. A durable
    journal (store.SqliteStore) records them and makes them last; this one does nothing.
    """

    def queue_saved(self, queue: QueueRecord) -> None:
        """`queue` was created, or its message changed (update, pause, resume, purge time)."""

    def queue_dropped(self, queue: QueueRecord, tombstone_until: float | None) -> None:
        """`queue` was deleted (its tasks were dropped first); its name is reserved until `tombstone_until`."""

    def task_created(self, queue: QueueRecord, record: TaskRecord) -> None:
        """`record` was added to `queue`."""

    def task_rescheduled(self, queue: QueueRecord, record: TaskRecord) -> None:
        """An attempt of `record` failed and it will be retried: its counters, history and schedule changed."""

    def task_dropped(self, queue: QueueRecord, record: TaskRecord, tombstone_until: float | None) -> None:
        """`record` left `queue` (done, failed for good, deleted, purged, expired); its name is reserved until
        `tombstone_until`."""

    def cleared(self) -> None:
        """Every queue, task and tombstone was forgotten."""

    def commit(self) -> None:
        """Return once every change told so far lasts."""


class EmulatorState:
    """Everything the core and the dispatch engine share, guarded by one re-entrant lock.

    The lock is held only for dictionary and counter work, never across I/O or token signing.
    """

    def __init__(
        self, *, task_tombstone_ttl: float, queue_tombstone_ttl: float, journal: Journal | None = None
    ) -> None:
        self.lock = threading.RLock()
        self.journal = journal if journal is not None else Journal()
        self.queues: dict[str, QueueRecord] = {}  # insertion order = creation order
        self.task_tombstones = Tombstones(task_tombstone_ttl)
        self.queue_tombstones = Tombstones(queue_tombstone_ttl)
        self.finished: deque[FinishedTask] = deque(maxlen=FINISHED_LIMIT)  # oldest first
        self._seq = itertools.count(1)

    def next_seq(self) -> int:
        return next(self._seq)

    def restore_seq(self, last: int) -> None:
        """Continue numbering after `last`, the highest sequence number of the records restored."""
        self._seq = itertools.count(last + 1)

    def drop_task(self, queue: QueueRecord, record: TaskRecord, now: float, ending: str) -> None:
        """Remove a deleted, purged, completed or permanently failed task (`ending`, an Ending); its name stays
        reserved a while, and it is kept among the finished tasks."""
        if queue.tasks.get(record.name) is record:
            del queue.tasks[record.name]
            tombstone_until = self.task_tombstones.add(record.name, now)
            self.journal.task_dropped(queue, record, tombstone_until)
            self.finished.append(FinishedTask(queue.name, record, ending, now))

    def drop_all_tasks(self, queue: QueueRecord, now: float) -> None:
        """Every task of `queue` dropped as by `drop_task` (DeleteQueue, PurgeQueue)."""
        for record in list(queue.tasks.values()):
            self.drop_task(queue, record, now, Ending.PURGED)

    def drop_queue(self, queue: QueueRecord, now: float) -> None:
        """DeleteQueue: its tasks dropped, the queue removed, its name reserved a while."""
        self.drop_all_tasks(queue, now)
        del self.queues[queue.name]
        self.journal.queue_dropped(queue, self.queue_tombstones.add(queue.name, now))

    def reset(self) -> None:
        self.queues.clear()
        self.task_tombstones.clear()
        self.queue_tombstones.clear()
        self.finished.clear()
        self.journal.cleared()


# google.rpc.Code for an HTTP status, the standard mapping (google/rpc/code.proto); others: UNKNOWN (2).
_DEADLINE_EXCEEDED = 4
_RPC_CODES = {
    400: 3,
    401: 16,
    403: 7,
    404: 5,
    409: 10,
    412: 9,
    416: 11,
    429: 8,
    499: 1,
    500: 13,
    501: 12,
    503: 14,
    504: 4,
}


def rpc_code_for_http(status: int | None) -> int:
    """The google.rpc.Code Cloud Tasks records for an attempt's outcome (None: no response = DEADLINE_EXCEEDED)."""
    if status is None:
        return _DEADLINE_EXCEEDED
    if 200 <= status < 300:
        return 0
    return _RPC_CODES.get(status, 2)


def _fill_attempt(target: Any, log: AttemptLog) -> None:
    target.schedule_time.FromMicroseconds(epoch_micros(log.schedule))
    target.dispatch_time.FromMicroseconds(epoch_micros(log.dispatch))
    if log.response is not None:
        target.response_time.FromMicroseconds(epoch_micros(log.response))
        target.response_status.code = rpc_code_for_http(log.status)
        outcome = f"HTTP status code {log.status}" if log.status is not None else "no response (deadline or error)"
        target.response_status.message = outcome


def task_view(record: TaskRecord, view: int) -> tasks_v2.Task:
    """The task as a client sees it; BASIC (the default) omits the body ("fields which can be large")."""
    pb = tasks_v2.Task.pb()()
    pb.CopyFrom(record.stored)
    pb.schedule_time.FromMicroseconds(epoch_micros(record.schedule))
    pb.create_time.FromSeconds(int(record.created))  # "create_time will be truncated to the nearest second"
    pb.dispatch_count = record.dispatch_count
    pb.response_count = record.response_count
    if record.first_dispatch is not None:  # "Only dispatch_time will be set."
        pb.first_attempt.dispatch_time.FromMicroseconds(epoch_micros(record.first_dispatch))
    if record.last_attempt is not None:
        _fill_attempt(pb.last_attempt, record.last_attempt)
    pb.view = _FULL if view == _FULL else _BASIC
    if pb.view == _BASIC and pb.HasField("http_request"):
        pb.http_request.ClearField("body")
    view_of_task: tasks_v2.Task = tasks_v2.Task.wrap(pb)
    return view_of_task


def _token(kind: str, scope: str, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}|{scope}|{seq}".encode()).decode()


def _after(kind: str, scope: str, token: str) -> int:
    """The sequence number a page token continues after (-1 for the first page)."""
    if not token:
        return -1
    try:
        got_kind, got_scope, seq = base64.urlsafe_b64decode(token.encode()).decode().split("|")
        if got_kind == kind and got_scope == scope:
            return int(seq)
    except (ValueError, UnicodeError, binascii.Error):
        pass
    raise invalid_argument("Invalid page token (it must come from the previous response of the same listing)")


def page_of(
    items: Iterable[tuple[int, T]], *, kind: str, scope: str, page_size: int, max_size: int, page_token: str
) -> tuple[list[T], str]:
    """One page of `(seq, item)` pairs in seq order, and the next page token ("" at the end).

    The token carries the last sequence number returned, so deleting items between calls skips nothing.
    """
    if page_size < 0:
        raise invalid_argument(f"page_size must not be negative, got {page_size}")
    size = min(page_size or max_size, max_size)
    start = _after(kind, scope, page_token)
    remaining: Iterator[tuple[int, T]] = ((seq, item) for seq, item in items if seq > start)
    page: list[tuple[int, T]] = []
    for pair in remaining:
        if len(page) == size:
            return [item for _, item in page], _token(kind, scope, page[-1][0])
        page.append(pair)
    return [item for _, item in page], ""
