"""Task types: a path on the service maps to one work function, which gets the payload and a TaskContext.

A work function returns when the work is done. It raises PermanentError when retrying cannot help (the
task is dead-lettered and acknowledged), RetryLater to be retried after a given time, and anything
else for an ordinary retryable failure.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from contract import cloud_tasks
from contract.retry import RetryPolicy, retrying_stops

# Header names as they arrive: Starlette hands them over lower-cased.
_QUEUE_NAME = cloud_tasks.HEADER_QUEUE_NAME.lower()
_TASK_NAME = cloud_tasks.HEADER_TASK_NAME.lower()
_RETRY_COUNT = cloud_tasks.HEADER_RETRY_COUNT.lower()
_EXECUTION_COUNT = cloud_tasks.HEADER_EXECUTION_COUNT.lower()
_ETA = cloud_tasks.HEADER_ETA.lower()
_PREVIOUS_RESPONSE = cloud_tasks.HEADER_PREVIOUS_RESPONSE.lower()
_RETRY_REASON = cloud_tasks.HEADER_RETRY_REASON.lower()

TaskFunction = Callable[[Any, "TaskContext"], Awaitable[None] | None]


class PermanentError(Exception):
    """The task can never succeed (bad payload, missing record): dead-letter it, do not retry."""


class RetryLater(Exception):
    """A transient refusal (overload, rate limit downstream): answered 429 with Retry-After."""

    def __init__(self, reason: str, after_seconds: float | None = None) -> None:
        super().__init__(reason)
        self.after_seconds = after_seconds


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
    max_attempts: int | None = None  # from the stack: None when the queue is unknown to this service
    trace: str | None = None  # X-Cloud-Trace-Context, for logs

    @property
    def attempt(self) -> int:
        return self.retry_count + 1

    @property
    def is_final_attempt(self) -> bool:
        """True when Cloud Tasks will not try again after a failure, by the retry law. Counts TaskRetryCount,
        which includes attempts that never reached us; TaskExecutionCount would miss those."""
        if self.max_attempts is None:
            return False
        # The stack hands the handler each queue's attempt limit, not its retry duration: with no duration
        # limit, the law stops on attempts alone.
        policy = RetryPolicy(max_attempts=self.max_attempts, max_retry_duration=cloud_tasks.UNLIMITED_RETRY_DURATION_S)
        return retrying_stops(policy, attempts=self.attempt, retried_for=None)

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], max_attempts_of: Callable[[str], int | None]) -> TaskContext:
        queue = headers.get(_QUEUE_NAME, "")
        task = headers.get(_TASK_NAME, "")
        if not queue or not task:
            raise MalformedHeaders(f"missing {cloud_tasks.HEADER_QUEUE_NAME} or {cloud_tasks.HEADER_TASK_NAME}")
        return cls(
            queue=queue,
            task=task,
            retry_count=_count(headers, _RETRY_COUNT),
            execution_count=_count(headers, _EXECUTION_COUNT),
            eta=_eta(headers.get(_ETA)),
            previous_response=_optional_int(headers.get(_PREVIOUS_RESPONSE)),
            retry_reason=headers.get(_RETRY_REASON) or None,
            max_attempts=max_attempts_of(queue),
            trace=headers.get("x-cloud-trace-context"),
        )


def _count(headers: Mapping[str, str], name: str) -> int:
    value = _optional_int(headers.get(name, "0"))
    if value is None or value < 0:
        raise MalformedHeaders(f"{name}: {headers.get(name)!r} is not a count")
    return value


def _optional_int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def _eta(text: str | None) -> datetime | None:
    try:
        return datetime.fromtimestamp(float(text), UTC) if text else None
    except (ValueError, OverflowError, OSError):
        raise MalformedHeaders(f"{_ETA}: {text!r} is not seconds since the epoch") from None


class BodyKind(StrEnum):
    """What a task type takes: its body parsed as JSON, or the bytes as they came (images, protobufs)."""

    JSON = "json"
    BYTES = "bytes"


@dataclass(frozen=True)
class TaskType:
    function: TaskFunction
    body: BodyKind


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
