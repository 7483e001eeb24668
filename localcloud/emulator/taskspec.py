"""CreateTask input checks, and the parts of a task that dispatch reads, parsed once at creation.

Limits (task.py, target.py, quotas page): schedule_time at most 30 days ahead (unset or past = now, truncated
to microseconds); dispatch_deadline for HTTP tasks in [15 s, 30 min], default 10 min, truncated to
milliseconds; task size at most 1 MiB (the quotas page; the CreateTask docstring still says 100 KB).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.cloud import tasks_v2

from contract import cloud_tasks as limits
from contract.retry import RetryPolicy
from localcloud.emulator.config import normalize_retry_config
from localcloud.emulator.errors import CloudTasksError, invalid_argument
from localcloud.emulator.routing import TaskRequest, parse_task_request

__all__ = ["TaskSpec", "parse_task"]


@dataclass(frozen=True)
class TaskSpec:
    """What a task asks for: its request, deadline (= the attempt timeout) and task-level retry override."""

    request: TaskRequest
    deadline: float
    retry: RetryPolicy | None
    schedule: float  # the requested schedule time, already moved up to `now` when unset or past


def _dispatch_deadline(task: tasks_v2.Task, strict: bool) -> float:
    pb = tasks_v2.Task.pb(task)
    if not pb.HasField("dispatch_deadline"):
        return limits.DEFAULT_DISPATCH_DEADLINE_S
    seconds = float(pb.dispatch_deadline.ToMilliseconds() / 1000.0)
    if seconds == 0:  # a zero Duration is how most clients say "unset"
        return limits.DEFAULT_DISPATCH_DEADLINE_S
    low = limits.MIN_DISPATCH_DEADLINE_S if strict else 0.001
    if not low <= seconds <= limits.MAX_DISPATCH_DEADLINE_S:
        raise invalid_argument(
            f"dispatch_deadline must be between {low:g} seconds and {limits.MAX_DISPATCH_DEADLINE_S / 60:g} minutes "
            f"for HTTP tasks, got {seconds:g} seconds"
        )
    return seconds


def _schedule(task: tasks_v2.Task, now: float) -> float:
    pb = tasks_v2.Task.pb(task)
    if not pb.HasField("schedule_time"):
        return now
    stamp = pb.schedule_time
    # A Timestamp is valid from year 1 to 9999 with nanos in [0, 1e9); protobuf raises on anything else.
    if not (0 <= stamp.nanos < 1_000_000_000 and -62_135_596_800 <= stamp.seconds <= 253_402_300_799):
        raise invalid_argument(
            f"Task.schedule_time is not a valid timestamp (seconds {stamp.seconds}, nanos {stamp.nanos})"
        )
    requested = float(stamp.ToMicroseconds() / 1e6)
    if requested - now > limits.MAX_SCHEDULE_AHEAD_S:
        raise invalid_argument("The Task.scheduleTime must not be more than 720h (30 days) in the future")
    return max(requested, now)


def parse_task(task: tasks_v2.Task, *, now: float, url_optional: bool, strict_deadlines: bool) -> TaskSpec:
    """Validate a CreateTask task (INVALID_ARGUMENT on bad input) and parse what dispatch needs."""
    pb = tasks_v2.Task.pb(task)
    if pb.HasField("app_engine_http_request"):
        raise CloudTasksError(
            grpc.StatusCode.UNIMPLEMENTED, "App Engine tasks are not supported by the local emulator; use http_request"
        )
    if not pb.HasField("http_request"):
        raise invalid_argument("Task.http_request is required")
    size = pb.ByteSize()
    if size > limits.MAX_TASK_BYTES:
        raise invalid_argument(
            f"Task size too large: {size} bytes; the maximum task size is {limits.MAX_TASK_BYTES} bytes"
        )
    request = parse_task_request(task.http_request, url_optional=url_optional)
    retry = normalize_retry_config(pb.retry_config, "Task.retry_config") if pb.HasField("retry_config") else None
    return TaskSpec(request, _dispatch_deadline(task, strict_deadlines), retry, _schedule(task, now))
