"""TaskPublisher: create Cloud Tasks HTTP tasks from the stack's exported values.

One client (one gRPC channel) per publisher, reused by every call. Every argument is checked against
the Cloud Tasks limits before any RPC. Server errors come back as messages that say what to change.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypedDict, Unpack

from google.api_core import exceptions as gexc
from google.cloud import tasks_v2

from contract import cloud_tasks as limits
from contract.dead_letters import HEADER_NOT_BEFORE, HEADER_PREFIX
from contract.outputs import OUTPUTS_ENV, QueueOutputs, StackOutputs, StackOutputsError
from taskclient.calls import Backoff, GaveUp, LoopThread, check_concurrency
from taskclient.connection import Connection, connect
from taskclient.errors import PublishError, TaskValidationError, explain

if TYPE_CHECKING:
    from taskclient.aio import AsyncTaskPublisher


# Cloud Tasks limits (contract/cloud_tasks.py has their sources). The CreateTask reference says 100 KB per
# task while the quotas page says 1 MiB: the lower one is safe under both.
MAX_BODY_BYTES = limits.DOCUMENTED_CREATE_TASK_BYTES
MAX_SCHEDULE_AHEAD = timedelta(seconds=limits.MAX_SCHEDULE_AHEAD_S)
MIN_DEADLINE = timedelta(seconds=limits.MIN_DISPATCH_DEADLINE_S)
MAX_DEADLINE = timedelta(seconds=limits.MAX_DISPATCH_DEADLINE_S)
# Setting these is at best ignored: Cloud Tasks computes or replaces them, and the OIDC token is the
# Authorization header.
REFUSED_HEADERS = (*limits.RESERVED_HEADERS, "authorization")
# json.dumps(payload, separators=(",", ":"), allow_nan=False), with its encoder made once: json.dumps makes a new
# one per call when given options, a cost that showed in publish_many's profile.
_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


class Outcome(StrEnum):
    CREATED = "created"
    DUPLICATE = "duplicate"  # a task of that name exists already (or existed recently): nothing new created
    FAILED = "failed"


@dataclass(frozen=True)
class TaskRequest:
    """One task to create; every field but `payload` is optional (see `TaskPublisher.publish`)."""

    payload: Any
    queue: str | None = None
    path: str | None = None
    delay: timedelta | float | None = None
    schedule_at: datetime | None = None
    name: str | None = None
    dedupe_key: str | None = None
    headers: Mapping[str, str] | None = None
    deadline: timedelta | float | None = None


@dataclass(frozen=True)
class PublishResult:
    index: int
    outcome: Outcome
    name: str | None = None  # the task's full name, when created or duplicate
    error: str | None = None  # why, when failed


def task_id_for(dedupe_key: str) -> str:
    """A task id from an idempotency key: hashed, since Google advises against sequential task names."""
    return hashlib.sha256(dedupe_key.encode()).hexdigest()


class PublisherOptions(TypedDict, total=False):
    """The keyword arguments of `TaskPublisher`, which its from_* constructors pass on."""

    connection: Connection | None
    retries: int
    backoff: float
    timeout: float
    now: Callable[[], datetime]
    sleep: Callable[[float], None]


class TaskPublisher:
    """Creates HTTP tasks on the stack's queues, each with the invoker's OIDC token and explicit audience."""

    def __init__(
        self,
        outputs: StackOutputs,
        *,
        connection: Connection | None = None,
        retries: int = 4,
        backoff: float = 0.25,
        timeout: float = 20.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.outputs = outputs
        self._connection = connection or connect()
        self._calls = Backoff(retries, backoff, sleep)
        self._timeout = timeout
        self._now = now
        self._builder = TaskBuilder(outputs, now)
        # publish_many's engine and the loop it runs on, made on first use and kept until close().
        self._engine: tuple[LoopThread, AsyncTaskPublisher] | None = None
        self._engine_lock = threading.Lock()

    # --- construction from the exported values -------------------------------------------------

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], **options: Unpack[PublisherOptions]) -> TaskPublisher:
        """From a dict: `pulumi stack output --json`, parsed, or what a StackReference gives."""
        return cls(StackOutputs.from_mapping(values), **options)

    @classmethod
    def from_file(cls, path: str | Path, **options: Unpack[PublisherOptions]) -> TaskPublisher:
        """From a `pulumi stack output --json` document; "-" reads standard input."""
        return cls.from_mapping(read_outputs_document(path), **options)

    @classmethod
    def from_env(cls, **options: Unpack[PublisherOptions]) -> TaskPublisher:
        """From the JSON document in CLOUDRUN_TASKS_OUTPUTS (how a deployed producer receives it)."""
        return cls.from_mapping(read_outputs_env(), **options)

    def __enter__(self) -> TaskPublisher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        with self._engine_lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            loop, publisher = engine
            loop.close(publisher.close_channel())
        self._connection.close()

    # --- publishing -----------------------------------------------------------------------------

    def publish(
        self,
        payload: Any,
        *,
        queue: str | None = None,
        path: str | None = None,
        delay: timedelta | float | None = None,
        schedule_at: datetime | None = None,
        name: str | None = None,
        dedupe_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        deadline: timedelta | float | None = None,
    ) -> str:
        """Creates one task and returns its full name.

        queue: short name (the default queue when omitted); path: on the service (not for queues that route
        at queue level); delay (seconds or timedelta) or schedule_at (aware datetime); name (task id) or
        dedupe_key (hashed into the id); headers; deadline: the dispatch deadline (the queue's by default).
        A dict, list, str or number payload is sent as JSON with Content-Type application/json; bytes as given.
        A name that exists already returns that name without creating a second task.
        """
        request = TaskRequest(
            payload,
            queue=queue,
            path=path,
            delay=delay,
            schedule_at=schedule_at,
            name=name,
            dedupe_key=dedupe_key,
            headers=headers,
            deadline=deadline,
        )
        return self.create(request)[1]

    def create(self, request: TaskRequest) -> tuple[Outcome, str]:
        """Creates one task: CREATED, or DUPLICATE when a task of that name exists already (nothing new is
        created then, and this request's payload is not enqueued), with the task's full name."""
        parent, task = self.build(request)
        return self._create(parent, task)

    def publish_many(
        self,
        items: Iterable[TaskRequest | Any],
        *,
        concurrency: int = 32,
        on_result: Callable[[PublishResult], None] | None = None,
    ) -> list[PublishResult]:
        """Creates many tasks, at most `concurrency` RPCs at a time over one channel.

        Returns one result per item, in input order: created, duplicate, or failed with the reason.
        `on_result` is called as each finishes, e.g. for a progress bar. `items` is read lazily (a generator of a
        million items is fine; the results list holds one result per item: see AsyncTaskPublisher.publish_each
        to keep none).

        The calls run on taskclient.aio's engine (grpc.aio), on an event loop in a thread this publisher keeps
        (with its channel) until close(): `on_result` is called from that thread, and must not call this publisher
        again. Called from inside a running loop, this blocks that loop until done (a coroutine should await
        AsyncTaskPublisher.publish_many instead).
        """
        check_concurrency(concurrency)
        loop, engine = self._engine_on_its_loop()
        return loop.run(engine.publish_many(items, concurrency=concurrency, on_result=on_result))

    def publish_each(
        self,
        items: Iterable[TaskRequest | Any],
        *,
        on_result: Callable[[PublishResult], None],
        concurrency: int = 32,
    ) -> None:
        """As publish_many, keeping no results: each goes to `on_result` as it finishes (for a stream of any
        length, as `python -m taskclient bulk` reads a file). See AsyncTaskPublisher.publish_each."""
        check_concurrency(concurrency)
        loop, engine = self._engine_on_its_loop()
        loop.run(engine.publish_each(items, on_result=on_result, concurrency=concurrency))

    def _engine_on_its_loop(self) -> tuple[LoopThread, AsyncTaskPublisher]:
        from taskclient.aio import AsyncTaskPublisher  # the engine's module builds on this one's

        with self._engine_lock:
            if self._engine is None:
                engine = AsyncTaskPublisher(
                    self.outputs,
                    connection=self._connection,
                    retries=self._calls.retries,
                    backoff=self._calls.backoff,
                    timeout=self._timeout,
                    now=self._now,
                    sleep=self._async_sleep(),
                )
                self._engine = (LoopThread("taskclient-loop"), engine)
            return self._engine

    def _async_sleep(self) -> Callable[[float], Awaitable[None]]:
        """How the engine waits out a backoff: asyncio.sleep, or the `sleep` given (a test's recorder)."""
        given = self._calls.sleep
        if given is time.sleep:
            return asyncio.sleep

        async def sleep(seconds: float) -> None:
            given(seconds)

        return sleep

    def _create(self, parent: str, task: tasks_v2.Task) -> tuple[Outcome, str]:
        client = self._connection.client

        def create(attempt: int) -> tuple[Outcome, str]:
            try:
                created = client.create_task(parent=parent, task=task, retry=None, timeout=self._timeout)
                return Outcome.CREATED, created.name
            except gexc.AlreadyExists:
                # After a retry, the name is there because our own earlier attempt stored it.
                return (Outcome.CREATED if attempt else Outcome.DUPLICATE), task.name

        try:
            # A task without a name is not retried: after a lost response, a retry would create it twice.
            return self._calls.run(create, retries=None if task.name else 0)
        except (GaveUp, gexc.GoogleAPICallError) as err:
            raise create_failure(
                err, named=bool(task.name), parent=parent, outputs=self.outputs, principal=self._connection.principal
            ) from None

    # --- building a task ------------------------------------------------------------------------

    def build(self, request: TaskRequest) -> tuple[str, tasks_v2.Task]:
        """The queue path and the Task for `request`, or TaskValidationError naming every bad argument."""
        checked = self._builder.check(request)
        return checked.queue.path, checked.task()


@dataclass(frozen=True)
class CheckedTask:
    """A TaskRequest that passed every check, as the values a CreateTask request carries."""

    queue: QueueOutputs
    url: str
    body: bytes
    headers: dict[str, str]
    name: str  # the full task name; "" when the server names it
    deadline: timedelta
    schedule: datetime | None
    oidc_token: tasks_v2.OidcToken | None  # None on a queue with queue-level routing: the queue sets its own

    def task(self) -> tasks_v2.Task:
        """The Task message (proto-plus)."""
        http_request = tasks_v2.HttpRequest(
            url=self.url, http_method=tasks_v2.HttpMethod.POST, headers=self.headers, body=self.body
        )
        if self.oidc_token is not None:
            http_request.oidc_token = self.oidc_token
        task = tasks_v2.Task(http_request=http_request, name=self.name, dispatch_deadline=self.deadline)
        if self.schedule is not None:
            task.schedule_time = self.schedule
        return task


class TaskBuilder:
    """Checks a TaskRequest against the stack's outputs and the Cloud Tasks limits: the one set of rules that
    the synchronous and the asyncio publisher share."""

    def __init__(self, outputs: StackOutputs, now: Callable[[], datetime]) -> None:
        self.outputs = outputs
        self._now = now
        # Explicit audience: left empty, Cloud Tasks would use the full task URL, which Cloud Run refuses.
        self._oidc_token = tasks_v2.OidcToken(
            service_account_email=outputs.invoker_email, audience=outputs.oidc_audience
        )

    def check(self, request: TaskRequest) -> CheckedTask:
        """The checked values for `request`, or TaskValidationError naming every bad argument."""
        problems: list[str] = []
        now = self._now()
        queue = self._queue(request.queue, problems)
        body, content_type = _body(request.payload, problems)
        schedule = self._schedule(request.delay, request.schedule_at, now, problems)
        headers = _headers(request.headers, content_type, not_before(max(now, schedule or now)), problems)
        url = self._url(queue, request.path, problems)
        name = self._task_name(queue, request.name, request.dedupe_key, problems)
        deadline = _deadline(request.deadline, queue, problems)
        if problems or queue is None:
            raise TaskValidationError("; ".join(problems))
        oidc_token = None if queue.queue_level_routing else self._oidc_token
        return CheckedTask(queue, url, body, headers, name, deadline, schedule, oidc_token)

    def _queue(self, key: str | None, problems: list[str]) -> QueueOutputs | None:
        key = key or self.outputs.default_queue
        queue = self.outputs.queues.get(key)
        if queue is None:
            problems.append(f"queue: {key!r} is not one of the stack's queues ({', '.join(self.outputs.queues)})")
        return queue

    def _url(self, queue: QueueOutputs | None, path: str | None, problems: list[str]) -> str:
        if queue is None or path is None:
            url = queue.task_url if queue else ""
        elif queue.queue_level_routing:
            problems.append(f"path: queue {queue.key!r} routes every task to its own path at queue level; drop path")
            return ""
        elif not path.startswith("/"):
            problems.append(f"path: {path!r} must start with '/'")
            return ""
        else:
            url = self.outputs.service_url.rstrip("/") + path
        if len(url) > limits.MAX_URL_LENGTH:
            problems.append(
                f"path: the task URL is {len(url)} characters, above the Cloud Tasks limit of {limits.MAX_URL_LENGTH}"
            )
        return url

    def _task_name(self, queue: QueueOutputs | None, name: str | None, key: str | None, problems: list[str]) -> str:
        if name is not None and key is not None:
            problems.append("name, dedupe_key: give one or the other (dedupe_key derives the name)")
            return ""
        task_id = task_id_for(key) if key is not None else name
        if task_id is None or queue is None:
            return ""
        if not limits.TASK_ID.fullmatch(task_id):
            problems.append(f"name: {task_id!r} is not a task id (1-500 letters, digits, '-' or '_')")
            return ""
        return f"{queue.path}/tasks/{task_id}"

    def _schedule(
        self, delay: timedelta | float | None, at: datetime | None, now: datetime, problems: list[str]
    ) -> datetime | None:
        if delay is not None and at is not None:
            problems.append("delay, schedule_at: give one or the other")
            return None
        if delay is not None:
            delta = delay if isinstance(delay, timedelta) else timedelta(seconds=delay)
            if delta < timedelta(0) or delta > MAX_SCHEDULE_AHEAD:
                problems.append(f"delay: {delta} is outside 0..30 days (Cloud Tasks schedules at most 30 days ahead)")
                return None
            return now + delta
        if at is not None:
            if at.tzinfo is None:
                problems.append(f"schedule_at: {at.isoformat()} has no time zone; pass an aware datetime")
            elif at - now > MAX_SCHEDULE_AHEAD:
                problems.append(f"schedule_at: {at.isoformat()} is more than 30 days ahead (the Cloud Tasks limit)")
            else:
                return at
        return None


def create_failure(
    err: GaveUp | gexc.GoogleAPICallError, *, named: bool, parent: str, outputs: StackOutputs, principal: str
) -> PublishError:
    """A failed CreateTask call as the message to act on (both publishers): the explained server error, with
    why it was not retried (no name) or how often it was tried."""
    if isinstance(err, GaveUp):
        if not named:
            note = (
                " (not retried: a task without a name could be created twice;"
                " pass name= or dedupe_key= to make retries safe)"
            )
        else:
            note = f" (after {err.attempts} attempts)"
        err = err.error
    else:
        note = ""
    error = explain(
        err, queue_path=parent, invoker_email=outputs.invoker_email, principal=principal, location=outputs.location
    )
    return PublishError(f"{error}{note}", error.code)


def _body(payload: Any, problems: list[str]) -> tuple[bytes, str | None]:
    if isinstance(payload, bytes | bytearray | memoryview):
        body, content_type = bytes(payload), None
    else:
        try:
            body = _JSON.encode(payload).encode()
        except (TypeError, ValueError) as err:
            problems.append(f"payload: not JSON-serialisable ({err}); pass bytes to send it as it is")
            return b"", None
        # Cloud Tasks sets no Content-Type for HTTP tasks, and sources disagree on a default: always set it.
        content_type = "application/json"
    if len(body) > MAX_BODY_BYTES:
        problems.append(
            f"payload: {len(body):,} bytes is above the {MAX_BODY_BYTES:,}-byte task limit;"
            " store the data elsewhere and send its id"
        )
    return body, content_type


def not_before(at: datetime) -> str:
    """The X-Tasks-Not-Before value for `at`: seconds since the epoch, to the millisecond."""
    return f"{at.timestamp():.3f}"


def _headers(
    headers: Mapping[str, str] | None, content_type: str | None, earliest: str, problems: list[str]
) -> dict[str, str]:
    given = dict(headers or {})
    result = {}
    # A Content-Type the caller gives wins over the one derived from the payload.
    if content_type and not any(key.lower() == "content-type" for key in given):
        result["Content-Type"] = content_type
    for key, value in given.items():
        lower = key.lower()
        if lower in REFUSED_HEADERS or lower.startswith(limits.RESERVED_HEADER_PREFIXES):
            problems.append(f"headers: {key!r} is set by Cloud Tasks (or the OIDC token); remove it")
        elif lower == HEADER_NOT_BEFORE.lower():
            # Refused, not overwritten: a producer who sets it expects its value to be used, and it is not.
            problems.append(
                f"headers: {key!r} is set by taskclient (the earliest time the first attempt can run:"
                " now, or the schedule time); remove it"
            )
        elif lower.startswith(HEADER_PREFIX.lower()):
            # The handler drops these from a delivery, so a dead letter (and its replay) would lose them.
            problems.append(f"headers: {key!r}: the {HEADER_PREFIX} prefix is kept for dead-letter metadata")
        elif not isinstance(value, str):
            problems.append(f"headers: {key!r} must be a string, got {type(value).__name__}")
        else:
            result[key] = value
    result[HEADER_NOT_BEFORE] = earliest
    size = sum(len(k) + len(v) for k, v in result.items())
    if size >= limits.MAX_HEADERS_BYTES:
        problems.append(f"headers: {size:,} bytes is at or above the Cloud Tasks limit of {limits.MAX_HEADERS_BYTES:,}")
    return result


def _deadline(deadline: timedelta | float | None, queue: QueueOutputs | None, problems: list[str]) -> timedelta:
    if deadline is None:
        return timedelta(seconds=queue.dispatch_deadline_seconds if queue else 600)
    value = deadline if isinstance(deadline, timedelta) else timedelta(seconds=deadline)
    if not MIN_DEADLINE <= value <= MAX_DEADLINE:
        problems.append(f"deadline: {value.total_seconds():g}s is outside 15s..1800s (Cloud Tasks HTTP task range)")
    return value


def read_outputs_env() -> dict[str, Any]:
    """The JSON document in CLOUDRUN_TASKS_OUTPUTS."""
    text = os.environ.get(OUTPUTS_ENV)
    if not text:
        raise StackOutputsError(f"{OUTPUTS_ENV} is not set")
    return _parse_json(text, OUTPUTS_ENV)


def read_outputs_document(path: str | Path, stdin: IO[str] | None = None) -> dict[str, Any]:
    """The JSON document of `pulumi stack output --json`, from a file or ("-") standard input."""
    if str(path) == "-":
        return _parse_json((stdin or sys.stdin).read(), "standard input")
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise StackOutputsError(f"outputs file {path}: {err.strerror}") from None
    # Bytes, so json detects UTF-16 and UTF-32 too (PowerShell 5's `>` writes UTF-16).
    return _parse_json(data, f"outputs file {path}")


def _parse_json(text: str | bytes, where: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise StackOutputsError(f"{where}: not JSON ({err}); expected `pulumi stack output --json`") from None
    if not isinstance(document, dict):
        raise StackOutputsError(f"{where}: expected a JSON object of stack outputs, got {type(document).__name__}")
    return document
