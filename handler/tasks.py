"""Task types: a path on the service maps to one work function, which gets the payload and a TaskContext.

A work function returns when the work is done. It raises PermanentError when retrying cannot help (the
task is dead-lettered and acknowledged), RetryLater to be retried after a given time, and anything
else for an ordinary retryable failure.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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
        """True when Cloud Tasks will not try again after a failure. Counts TaskRetryCount, which includes
        attempts that never reached us; TaskExecutionCount would miss those."""
        return self.max_attempts is not None and self.max_attempts != -1 and self.attempt >= self.max_attempts

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], max_attempts_of: Callable[[str], int | None]) -> TaskContext:
        queue = headers.get("x-cloudtasks-queuename", "")
        task = headers.get("x-cloudtasks-taskname", "")
        if not queue or not task:
            raise MalformedHeaders("missing X-CloudTasks-QueueName or X-CloudTasks-TaskName")
        return cls(
            queue=queue,
            task=task,
            retry_count=_count(headers, "x-cloudtasks-taskretrycount"),
            execution_count=_count(headers, "x-cloudtasks-taskexecutioncount"),
            eta=_eta(headers.get("x-cloudtasks-tasketa")),
            previous_response=_optional_int(headers.get("x-cloudtasks-taskpreviousresponse")),
            retry_reason=headers.get("x-cloudtasks-taskretryreason") or None,
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
        raise MalformedHeaders(f"x-cloudtasks-tasketa: {text!r} is not seconds since the epoch") from None


class TaskRouter:
    """Path -> work function. `@router.task("/tasks/resize")` registers one."""

    def __init__(self) -> None:
        self._functions: dict[str, TaskFunction] = {}

    def task(self, path: str) -> Callable[[TaskFunction], TaskFunction]:
        if not path.startswith("/"):
            raise ValueError(f"task path {path!r} must start with '/'")

        def register(function: TaskFunction) -> TaskFunction:
            if path in self._functions:
                raise ValueError(f"task path {path!r} is registered twice")
            self._functions[path] = function
            return function

        return register

    def get(self, path: str) -> TaskFunction | None:
        return self._functions.get(path)

    @property
    def paths(self) -> list[str]:
        return sorted(self._functions)
