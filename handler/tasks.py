"""Task types: a path on the service maps to one work function, which gets the payload and a TaskContext.

A work function returns when the work is done. It raises PermanentError when retrying cannot help (the
task is dead-lettered and acknowledged), RetryLater to be retried after a given time, and anything
else for an ordinary retryable failure.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum, StrEnum
from typing import Any

from contract import cloud_tasks
from contract.dead_letters import CLOCK_SKEW_ALLOWANCE_S, HEADER_NOT_BEFORE
from contract.retry import RetryPolicy, retry_window, retrying_stops, time_of_attempt

# Header names as the ASGI scope holds them: lower-cased bytes. Only the values read are decoded.
_QUEUE_NAME = cloud_tasks.HEADER_QUEUE_NAME.lower().encode()
_TASK_NAME = cloud_tasks.HEADER_TASK_NAME.lower().encode()
_RETRY_COUNT = cloud_tasks.HEADER_RETRY_COUNT.lower().encode()
_EXECUTION_COUNT = cloud_tasks.HEADER_EXECUTION_COUNT.lower().encode()
_ETA = cloud_tasks.HEADER_ETA.lower().encode()
_PREVIOUS_RESPONSE = cloud_tasks.HEADER_PREVIOUS_RESPONSE.lower().encode()
_RETRY_REASON = cloud_tasks.HEADER_RETRY_REASON.lower().encode()
_NOT_BEFORE = HEADER_NOT_BEFORE.lower().encode()
TRACE_HEADER = b"x-cloud-trace-context"  # Cloud Run's front end sets it: the request's trace, for the logs
_MAX_COUNT_DIGITS = len(str(cloud_tasks.MAX_INT32))
# The retention (31 days from creation) deletes a task whatever its retry limits say. A day short of it
# covers the wait before a next attempt (at most max_backoff, an hour by default, or a Retry-After).
RETENTION_HORIZON_S = cloud_tasks.TASK_RETENTION_S - 86400.0

TaskFunction = Callable[[Any, "TaskContext"], Awaitable[None] | None]


class PermanentError(Exception):
    """The task can never succeed (bad payload, missing record): dead-letter it, do not retry."""


class RetryLater(Exception):
    """A transient refusal (overload, rate limit downstream): answered 429 with Retry-After."""

    def __init__(self, reason: str, after_seconds: float | None = None) -> None:
        super().__init__(reason)
        self.after_seconds = after_seconds


class Finality(Enum):
    """Whether Cloud Tasks makes another attempt if this one fails."""

    NOT_FINAL = "not final"  # it does: a failure is answered as one, and retried
    FINAL = "final"  # it does not: a failure is recorded as a dead letter, then acknowledged
    UNSURE = "unsure"  # the headers cannot tell: a failure is recorded provisionally and answered as one


class MalformedHeaders(ValueError):
    """The request lacks the Cloud Tasks headers, or they do not parse: it did not come from Cloud Tasks."""


@dataclass(frozen=True)
class TaskContext:
    """What Cloud Tasks says about this delivery, from its X-CloudTasks-* headers."""

    queue: str  # short queue id
    task: str  # short task id
    retry_count: int  # earlier attempts, including those that failed before reaching the handler
    execution_count: int  # earlier attempts that got a response other than 5xx
    eta: datetime | None
    previous_response: int | None
    retry_reason: str | None
    retry: RetryPolicy | None = None  # the queue's, from the stack: None when the queue is unknown to it
    trace: str | None = None  # X-Cloud-Trace-Context, for logs
    # X-Tasks-Not-Before (seconds since the epoch): no attempt ran before it. Producers using taskclient set it.
    not_before: float | None = None

    @property
    def attempt(self) -> int:
        return self.retry_count + 1

    @property
    def max_attempts(self) -> int | None:
        return self.retry.max_attempts if self.retry else None

    def finality(self, now: float) -> Finality:
        """Whether a failure of this attempt, at `now`, is the last one, by the retry law (contract.retry).

        TaskRetryCount counts attempts that never reached us too, so the attempt limit is known exactly. The
        time since the first attempt is not: it is at least the backoff schedule's (`time_of_attempt`), and,
        when the producer set X-Tasks-Not-Before, at most the task's age plus an allowance for its clock.
        """
        policy = self.retry
        if policy is None:
            return Finality.NOT_FINAL
        attempts = self.attempt
        least = time_of_attempt(policy, attempts)
        most = None if self.not_before is None else max(0.0, now - self.not_before) + CLOCK_SKEW_ALLOWANCE_S
        if least >= RETENTION_HORIZON_S or retrying_stops(policy, attempts=attempts, retried_for=least):
            return Finality.FINAL
        # `most` None counts the duration as used up: only a known age can rule the limits out.
        limits_go_on = not retrying_stops(policy, attempts=attempts, retried_for=most)
        # A queue whose limits end retrying well before the retention leaves the retention out of it.
        retention_far = retry_window(policy) < RETENTION_HORIZON_S or (most is not None and most < RETENTION_HORIZON_S)
        return Finality.NOT_FINAL if limits_go_on and retention_far else Finality.UNSURE

    @classmethod
    def from_headers(cls, headers: Mapping[bytes, bytes], retry_of: Callable[[str], RetryPolicy | None]) -> TaskContext:
        """From the request's headers as `dict(scope["headers"])` holds them: lower-cased names, bytes, the last of
        repeated names. Text is decoded as Latin-1 (as Starlette does), numbers are read from the bytes."""
        queue = headers.get(_QUEUE_NAME, b"").decode("latin-1")
        task = headers.get(_TASK_NAME, b"").decode("latin-1")
        if not queue or not task:
            raise MalformedHeaders(f"missing {cloud_tasks.HEADER_QUEUE_NAME} or {cloud_tasks.HEADER_TASK_NAME}")
        _check_length(cloud_tasks.HEADER_QUEUE_NAME, queue, cloud_tasks.MAX_QUEUE_ID_LENGTH, "queue id")
        _check_length(cloud_tasks.HEADER_TASK_NAME, task, cloud_tasks.MAX_TASK_ID_LENGTH, "task id")
        return cls(
            queue=queue,
            task=task,
            retry_count=_count(headers, _RETRY_COUNT),
            execution_count=_count(headers, _EXECUTION_COUNT),
            eta=_eta(headers.get(_ETA)),
            previous_response=_decimal(headers.get(_PREVIOUS_RESPONSE)),
            retry_reason=_text(headers.get(_RETRY_REASON)) or None,
            retry=retry_of(queue),
            trace=_text(headers.get(TRACE_HEADER)),
            not_before=_not_before(headers.get(_NOT_BEFORE)),
        )


def _check_length(header: str, value: str, limit: int, what: str) -> None:
    """Cloud Tasks never sends a longer id; the handler keeps none (an idempotency key, a log field) either."""
    if len(value) > limit:
        raise MalformedHeaders(f"{header}: {len(value)} characters, over the {limit} of a Cloud Tasks {what}")


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _count(headers: Mapping[bytes, bytes], name: bytes) -> int:
    text = headers.get(name)
    if text is None:
        return 0
    value = _decimal(text)
    if value is None:
        raise MalformedHeaders(f"{name.decode()}: {text.decode('latin-1')!r} is not a count")
    return value


def _decimal(text: bytes | None) -> int | None:
    """A number as Cloud Tasks writes one: ASCII digits only, at most an int32 (its counts' type); else None.
    int() alone would also take "1_0", "+1", " 1" and other scripts' digits (U+0661, Arabic-Indic one)."""
    if not text or len(text) > _MAX_COUNT_DIGITS or not text.isdigit():  # bytes.isdigit(): ASCII digits only
        return None
    value = int(text)
    return value if value <= cloud_tasks.MAX_INT32 else None


def _not_before(text: bytes | None) -> float | None:
    """The producer's header, or None when absent or unreadable: an age the handler cannot read is unknown,
    which only makes it record more, never less."""
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _eta(text: bytes | None) -> datetime | None:
    try:
        return datetime.fromtimestamp(float(text), UTC) if text else None
    except (ValueError, OverflowError, OSError):
        raise MalformedHeaders(f"{_ETA.decode()}: {_text(text)!r} is not seconds since the epoch") from None


class BodyKind(StrEnum):
    """What a task type takes: its body parsed as JSON, or the bytes as they came (images, protobufs)."""

    JSON = "json"
    BYTES = "bytes"


@dataclass(frozen=True)
class TaskType:
    function: TaskFunction
    body: BodyKind
    # Asked once, at registration: a coroutine function runs on the event loop, any other in a worker thread.
    is_async: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.function))


class TaskRouter:
    """Path -> task type. `@router.task("/tasks/report")` registers a function taking JSON;
    `@router.task("/tasks/resize", body=BodyKind.BYTES)` one taking the body's bytes, never parsed."""

    def __init__(self) -> None:
        self._types: dict[str, TaskType] = {}

    def task(self, path: str, *, body: BodyKind = BodyKind.JSON) -> Callable[[TaskFunction], TaskFunction]:
        if not path.startswith("/"):
            raise ValueError(f"task path {path!r} must start with '/'")

        def register(function: TaskFunction) -> TaskFunction:
            if path in self._types:
                raise ValueError(f"task path {path!r} is registered twice")
            self._types[path] = TaskType(function, body)
            return function

        return register

    def get(self, path: str) -> TaskType | None:
        return self._types.get(path)

    @property
    def paths(self) -> list[str]:
        return sorted(self._types)

    def no_task_type_warning(self, queue_key: str, path: str) -> str | None:
        """What to tell the operator of a queue whose tasks go to `path` when no task type is there: each of
        them would be dead-lettered at its first attempt. None when one is."""
        if path in self._types:
            return None
        return (
            f"queue {queue_key!r} sends its tasks to {path}, where the handler has no task type"
            f" (it has {', '.join(self.paths) or 'none'}): each would be dead-lettered. Add one in"
            f" handler/task_types.py, or set queues.{queue_key}.path"
        )
