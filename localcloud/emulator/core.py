"""An in-memory Cloud Tasks: the 13 core RPCs as plain methods on proto-plus messages, plus the dispatch engine.

Every method takes the RPC's request message and returns its response message (None for Empty), raising
`CloudTasksError(code, message)` with the status Cloud Tasks would answer. One re-entrant lock guards all state
and is held only for dictionary work, so gRPC threads and a dispatcher can share one core.

Names of deleted, purged, completed or permanently failed tasks stay reserved for `task_tombstone_ttl`
seconds (CreateTask: ALREADY_EXISTS; Get/Delete/RunTask: NOT_FOUND "...existed recently"); a deleted queue's
name for `queue_tombstone_ttl` (CreateQueue: FAILED_PRECONDITION). The quotas page gives about an hour for
tasks (up to 24 h nowadays) and 7 days for queues; 0 disables a tombstone, which tests like.

Given a `store` (store.SqliteStore), the core starts from what it holds, and every mutating RPC commits its
change there before it answers; see store.py for what is kept and what a crash can cost.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc
from google.cloud import tasks_v2

from localcloud.emulator.clock import Clock, SystemClock, epoch_micros
from localcloud.emulator.config import QueueSettings, apply_update_mask, normalize_queue
from localcloud.emulator.console.reads import (
    FinishedView,
    QueueView,
    TaskDetail,
    TaskPage,
    TaskRow,
    TaskState,
    finished_view,
    queue_view,
    task_detail,
    task_row,
    task_state,
)
from localcloud.emulator.engine import Attempt, DispatchEngine, TokenMinter
from localcloud.emulator.errors import (
    BUFFER_NEEDS_ROUTING_MESSAGE,
    NOT_FOUND_MESSAGE,
    QUEUE_ALREADY_EXISTS_MESSAGE,
    QUEUE_MISSING_MESSAGE,
    QUEUE_PARENT_MISMATCH_MESSAGE,
    QUEUE_TOMBSTONE_MESSAGE,
    TASK_ALREADY_EXISTS_MESSAGE,
    TASK_NAME_TOO_RECENT_MESSAGE,
    TASK_TOMBSTONE_MESSAGE,
    CloudTasksError,
    invalid_argument,
)
from localcloud.emulator.names import check_location, check_queue_name, check_task_name, generated_task_id
from localcloud.emulator.state import EmulatorState, Ending, QueueRecord, TaskRecord, page_of, task_view
from localcloud.emulator.taskspec import parse_task

if TYPE_CHECKING:
    from localcloud.emulator.store import SqliteStore

__all__ = ["CloudTasksCore", "CloudTasksError"]

_LOG = logging.getLogger(__name__)

MAX_QUEUES_PAGE = 9800  # ListQueuesRequest.page_size: "The maximum page size is 9800."
MAX_TASKS_PAGE = 1000  # ListTasksRequest.page_size: "The maximum page size is 1000."
_TASK_OUTPUT_ONLY = (
    "create_time",
    "schedule_time",
    "dispatch_count",
    "response_count",
    "first_attempt",
    "last_attempt",
    "view",
)
_STATE_FILTER_RE = re.compile(r"\s*state\s*[:=]\s*(\w+)\s*")
_RUNNING = int(tasks_v2.Queue.State.RUNNING)
_PAUSED = int(tasks_v2.Queue.State.PAUSED)


def _not_found(message: str = NOT_FOUND_MESSAGE) -> CloudTasksError:
    return CloudTasksError(grpc.StatusCode.NOT_FOUND, message)


def _state_filter(text: str) -> Callable[[QueueRecord], bool]:
    """ListQueues `filter`: only "state: NAME" (or "state = NAME") is understood; empty matches everything."""
    if not text.strip():
        return lambda queue: True
    match = _STATE_FILTER_RE.fullmatch(text)
    states = {"RUNNING": _RUNNING, "PAUSED": _PAUSED, "DISABLED": int(tasks_v2.Queue.State.DISABLED)}
    if match is None or match[1].upper() not in states:
        raise invalid_argument(
            f'Unsupported filter "{text[:120]}": the emulator understands only "state: NAME" (e.g. "state: PAUSED")'
        )
    wanted = states[match[1].upper()]
    return lambda queue: bool(queue.queue.state == wanted)


class CloudTasksCore:
    """Queues, tasks and their dispatch, in memory. See the module docstring."""

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        minter: TokenMinter | None = None,
        task_tombstone_ttl: float = 3600.0,
        queue_tombstone_ttl: float = 7 * 24 * 3600.0,
        strict_deadlines: bool = True,
        store: SqliteStore | None = None,
    ) -> None:
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.strict_deadlines = strict_deadlines
        self._state = EmulatorState(
            task_tombstone_ttl=task_tombstone_ttl, queue_tombstone_ttl=queue_tombstone_ttl, journal=store
        )
        self._engine = DispatchEngine(self._state, minter)
        self._listeners: list[Callable[[], None]] = []
        self._queue_uids = itertools.count(1)
        if store is not None:
            with self._state.lock:
                self._queue_uids = itertools.count(store.restore(self._state, self.clock) + 1)
                for queue in self._state.queues.values():
                    for record in queue.tasks.values():
                        self._engine.enqueue(queue, record)

    # ----- dispatch (see engine.py) -----

    def take_due(self, now: float) -> list[Attempt]:
        return self._engine.take_due(now)

    def complete(self, attempt: Attempt, status: int | None, now: float) -> None:
        self._engine.complete(attempt, status, now)

    def next_wakeup(self, now: float) -> float | None:
        return self._engine.next_wakeup(now)

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` (from the mutating thread, after the lock is released) whenever work may have
        appeared: a task created or run, a queue created, updated, resumed or purged. Returns an unsubscribe."""
        with self._state.lock:
            self._listeners.append(callback)

        def unsubscribe() -> None:
            with self._state.lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return unsubscribe

    def reset(self) -> None:
        """Forget every queue, task and tombstone (for tests); attempts in flight are then ignored."""
        with self._state.lock:
            self._state.reset()
            self._engine.reset()
        self._state.journal.commit()
        self._notify()

    # ----- queues -----

    def create_queue(self, request: tasks_v2.CreateQueueRequest) -> tasks_v2.Queue:
        check_location(request.parent)
        queue = tasks_v2.Queue(request.queue)
        if not queue.name:
            raise invalid_argument("queue.name is required")
        if check_queue_name(queue.name, "queue.name") != request.parent:
            raise invalid_argument(QUEUE_PARENT_MISMATCH_MESSAGE.format(name=queue.name, parent=request.parent))
        settings = normalize_queue(queue)  # arguments are checked before existence, as Cloud Tasks does
        now = self.clock.now()
        with self._state.lock:
            if queue.name in self._state.queues:
                raise CloudTasksError(grpc.StatusCode.ALREADY_EXISTS, QUEUE_ALREADY_EXISTS_MESSAGE)
            self._add_queue(queue, settings, now)
            result = tasks_v2.Queue(queue)
        self._state.journal.commit()
        self._notify()
        return result

    def get_queue(self, request: tasks_v2.GetQueueRequest) -> tasks_v2.Queue:
        check_queue_name(request.name)
        with self._state.lock:
            return tasks_v2.Queue(self._queue(request.name).queue)

    def list_queues(self, request: tasks_v2.ListQueuesRequest) -> tasks_v2.ListQueuesResponse:
        check_location(request.parent)
        keep = _state_filter(request.filter)
        prefix = request.parent + "/queues/"
        with self._state.lock:
            matching = [(q.seq, q) for name, q in self._state.queues.items() if name.startswith(prefix) and keep(q)]
            page, token = page_of(
                matching,
                kind="queues",
                scope=request.parent + "?" + request.filter,
                page_size=request.page_size,
                max_size=MAX_QUEUES_PAGE,
                page_token=request.page_token,
            )
            queues = [tasks_v2.Queue(q.queue) for q in page]
        return tasks_v2.ListQueuesResponse(queues=queues, next_page_token=token)

    def update_queue(self, request: tasks_v2.UpdateQueueRequest) -> tasks_v2.Queue:
        """Update the masked fields (all when the mask is empty); creates the queue if it does not exist."""
        name = request.queue.name
        if not name:
            raise invalid_argument("queue.name is required")
        check_queue_name(name, "queue.name")
        paths = list(request.update_mask.paths) if "update_mask" in request else []
        now = self.clock.now()
        with self._state.lock:
            existing = self._state.queues.get(name)
            base = existing.queue if existing is not None else tasks_v2.Queue(name=name)
            updated = apply_update_mask(base, request.queue, paths)
            settings = normalize_queue(updated)
            if existing is None:
                self._add_queue(updated, settings, now)
            else:
                self._engine.retune(existing, settings, now)
                existing.queue = updated
                self._state.journal.queue_saved(existing)
            result = tasks_v2.Queue(updated)
        self._state.journal.commit()
        self._notify()
        return result

    def delete_queue(self, request: tasks_v2.DeleteQueueRequest) -> None:
        check_queue_name(request.name)
        now = self.clock.now()
        with self._state.lock:
            self._state.drop_queue(self._queue(request.name, NOT_FOUND_MESSAGE), now)
        self._state.journal.commit()

    def pause_queue(self, request: tasks_v2.PauseQueueRequest) -> tasks_v2.Queue:
        return self._set_state(request.name, _PAUSED)

    def resume_queue(self, request: tasks_v2.ResumeQueueRequest) -> tasks_v2.Queue:
        return self._set_state(request.name, _RUNNING)

    def purge_queue(self, request: tasks_v2.PurgeQueueRequest) -> tasks_v2.Queue:
        """Delete every task created before the call (all of them: the purge takes effect at once here)."""
        check_queue_name(request.name)
        now = self.clock.now()
        with self._state.lock:
            queue = self._queue(request.name)
            self._state.drop_all_tasks(queue, now)
            queue.heap.clear()
            tasks_v2.Queue.pb(queue.queue).purge_time.FromMicroseconds(epoch_micros(now))
            self._state.journal.queue_saved(queue)
            result = tasks_v2.Queue(queue.queue)
        self._state.journal.commit()
        self._notify()
        return result

    # ----- tasks -----

    def create_task(self, request: tasks_v2.CreateTaskRequest) -> tasks_v2.Task:
        parent = request.parent
        check_queue_name(parent, "parent")
        stored = tasks_v2.Task.pb()()
        stored.CopyFrom(tasks_v2.Task.pb(request.task))
        if stored.name:
            check_task_name(stored.name, parent)
        now = self.clock.now()
        with self._state.lock:
            queue = self._state.queues.get(parent)
            if queue is None:
                raise _not_found(QUEUE_MISSING_MESSAGE)
            target = queue.settings.target
            url_optional = target is not None and target.uri is not None
            spec = parse_task(
                tasks_v2.Task.wrap(stored), now=now, url_optional=url_optional, strict_deadlines=self.strict_deadlines
            )
            stored.name = self._task_name(queue, stored.name, now)
            for field in _TASK_OUTPUT_ONLY:
                stored.ClearField(field)
            record = TaskRecord(stored.name, self._state.next_seq(), stored, spec, created=now, schedule=spec.schedule)
            queue.tasks[record.name] = record
            self._engine.enqueue(queue, record)
            self._state.journal.task_created(queue, record)
            result = task_view(record, request.response_view)
        self._state.journal.commit()
        self._notify()
        return result

    def get_task(self, request: tasks_v2.GetTaskRequest) -> tasks_v2.Task:
        check_task_name(request.name)
        with self._state.lock:
            _, record = self._task(request.name, self.clock.now())
            return task_view(record, request.response_view)

    def list_tasks(self, request: tasks_v2.ListTasksRequest) -> tasks_v2.ListTasksResponse:
        check_queue_name(request.parent, "parent")
        with self._state.lock:
            queue = self._queue(request.parent, NOT_FOUND_MESSAGE)
            page, token = page_of(
                ((r.seq, r) for r in queue.tasks.values()),
                kind="tasks",
                scope=request.parent,
                page_size=request.page_size,
                max_size=MAX_TASKS_PAGE,
                page_token=request.page_token,
            )
            tasks = [task_view(r, request.response_view) for r in page]
        return tasks_v2.ListTasksResponse(tasks=tasks, next_page_token=token)

    def delete_task(self, request: tasks_v2.DeleteTaskRequest) -> None:
        """Delete a scheduled or running task (an attempt in flight is then ignored when it finishes)."""
        check_task_name(request.name)
        now = self.clock.now()
        with self._state.lock:
            queue, record = self._task(request.name, now)
            self._state.drop_task(queue, record, now, Ending.DELETED)
        self._state.journal.commit()

    def run_task(self, request: tasks_v2.RunTaskRequest) -> tasks_v2.Task:
        """Dispatch now, even if the queue is PAUSED or rate-limited; returns the task as dispatched."""
        check_task_name(request.name)
        now = self.clock.now()
        with self._state.lock:
            queue, record = self._task(request.name, now)
            self._engine.force(queue, record, now)
            result = task_view(record, request.response_view)
        self._notify()
        return result

    def buffer_task(self, queue_name: str, task_id: str, body: bytes, content_type: str | None) -> tasks_v2.Task:
        """BufferTask (REST only; see http.py): a task made of an HTTP body alone, on a queue with queue-level
        routing, which decides where it goes at dispatch. It is created by create_task, under every rule of it.
        `task_id` "" lets the emulator choose one; the task is returned in BASIC view."""
        check_queue_name(queue_name, "queue")
        with self._state.lock:
            target = self._queue(queue_name).settings.target
            if target is None or target.uri is None or not target.uri.host:
                raise CloudTasksError(
                    grpc.StatusCode.FAILED_PRECONDITION, BUFFER_NEEDS_ROUTING_MESSAGE.format(queue=queue_name)
                )
        headers = {"Content-Type": content_type} if content_type else {}
        task = tasks_v2.Task(http_request=tasks_v2.HttpRequest(headers=headers, body=body))
        if task_id:
            task.name = f"{queue_name}/tasks/{task_id}"
        return self.create_task(tasks_v2.CreateTaskRequest(parent=queue_name, task=task))

    # ----- internals (callers hold the lock) -----

    def _queue(self, name: str, missing: str = QUEUE_MISSING_MESSAGE) -> QueueRecord:
        queue = self._state.queues.get(name)
        if queue is None:
            raise _not_found(missing)
        return queue

    def _task(self, name: str, now: float) -> tuple[QueueRecord, TaskRecord]:
        queue = self._state.queues.get(name.rsplit("/tasks/", 1)[0])
        record = queue.tasks.get(name) if queue is not None else None
        if queue is None or record is None:
            if self._state.task_tombstones.holds(name, now):
                raise _not_found(TASK_TOMBSTONE_MESSAGE)
            raise _not_found()
        return queue, record

    def _task_name(self, queue: QueueRecord, requested: str, now: float) -> str:
        """The requested name if free (named tasks de-duplicate), else ALREADY_EXISTS; a fresh id when empty."""
        if requested:
            if requested in queue.tasks:
                raise CloudTasksError(grpc.StatusCode.ALREADY_EXISTS, TASK_ALREADY_EXISTS_MESSAGE)
            if self._state.task_tombstones.holds(requested, now):
                raise CloudTasksError(grpc.StatusCode.ALREADY_EXISTS, TASK_NAME_TOO_RECENT_MESSAGE)
            return requested
        while True:
            name = f"{queue.name}/tasks/{generated_task_id()}"
            if name not in queue.tasks and not self._state.task_tombstones.holds(name, now):
                return name

    def _add_queue(self, queue: tasks_v2.Queue, settings: QueueSettings, now: float) -> None:
        """Store a new, normalized queue: RUNNING, its token bucket full."""
        if self._state.queue_tombstones.holds(queue.name, now):
            raise CloudTasksError(grpc.StatusCode.FAILED_PRECONDITION, QUEUE_TOMBSTONE_MESSAGE)
        pb = tasks_v2.Queue.pb(queue)
        pb.state = _RUNNING
        pb.ClearField("purge_time")
        record = QueueRecord(
            name=queue.name,
            uid=next(self._queue_uids),
            seq=self._state.next_seq(),
            queue=queue,
            settings=settings,
            tat=now,  # the bucket starts full
        )
        self._state.queues[queue.name] = record
        self._state.journal.queue_saved(record)

    def _set_state(self, name: str, state: int) -> tasks_v2.Queue:
        check_queue_name(name)
        with self._state.lock:
            queue = self._queue(name)
            tasks_v2.Queue.pb(queue.queue).state = state
            self._state.journal.queue_saved(queue)
            result = tasks_v2.Queue(queue.queue)
        self._state.journal.commit()
        self._notify()
        return result

    def _notify(self) -> None:
        with self._state.lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener()
            except Exception:  # a broken listener must not fail the RPC that triggered it
                _LOG.exception("a Cloud Tasks emulator change listener failed")

    # ----- console reads -----
    # Read-only views for the web console (localcloud/emulator/console/). The lock is held only while plain
    # values are copied out of the records (console/reads.py); the console serializes them after it is released.

    def console_queues(self) -> list[QueueView]:
        now = self.clock.now()
        with self._state.lock:
            return [queue_view(queue, now) for queue in self._state.queues.values()]

    def console_tasks(
        self, queue_name: str, *, after: int = -1, limit: int = 100, state: TaskState | None = None
    ) -> TaskPage | None:
        """One page of a queue's tasks (of `state`, when given) in creation order: the first `limit` whose
        sequence number is above `after`. None when there is no such queue."""
        now = self.clock.now()
        with self._state.lock:
            queue = self._state.queues.get(queue_name)
            if queue is None:
                return None
            page: list[TaskRow] = []
            total, before, more = 0, 0, False
            for record in queue.tasks.values():  # creation order, so sequence order
                if state is not None and task_state(record, now) is not state:
                    continue
                total += 1
                if record.seq <= after:
                    before += 1
                elif len(page) < limit:
                    page.append(task_row(record, now))
                else:
                    more = True
        return TaskPage(page, total, before, page[-1].seq if more and page else None)

    def console_task(self, name: str) -> TaskDetail | None:
        """The task `name` in its queue, or else the latest finished task of that name; None if neither."""
        now = self.clock.now()
        with self._state.lock:
            queue = self._state.queues.get(name.rsplit("/tasks/", 1)[0])
            record = queue.tasks.get(name) if queue is not None else None
            if queue is not None and record is not None:
                return task_detail(queue, record, now, None)
            finished = next((f for f in reversed(self._state.finished) if f.record.name == name), None)
            if finished is None:
                return None
            return task_detail(self._state.queues.get(finished.queue_name), finished.record, now, finished)

    def console_finished(self, queue_name: str | None = None, limit: int = 100) -> list[FinishedView]:
        """The tasks that left their queue lately (those of `queue_name`, when given), newest first."""
        with self._state.lock:
            latest = (f for f in reversed(self._state.finished) if queue_name is None or f.queue_name == queue_name)
            return [finished_view(finished) for finished in itertools.islice(latest, limit)]
