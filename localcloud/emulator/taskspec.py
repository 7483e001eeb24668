"""CreateTask input checks, and the parts of a task that dispatch reads, parsed once at creation.

Limits (task.py, target.py, quotas page): schedule_time at most 30 days ahead (unset or past = now, truncated
to microseconds); dispatch_deadline for HTTP tasks in [15 s, 30 min], default 10 min, truncated to
milliseconds; task size at most 1 MiB (the quotas page; the CreateTask docstring still says 100 KB).

A created HTTP task reports what Cloud Tasks fills in: http_method POST when unset (target.py: "The default is
POST"), and User-Agent: Google-Cloud-Tasks among its headers in every view, replacing any User-Agent the creator
set (target.py HttpRequest.headers lists it among the headers "ignored or replaced": "This will be set to
"Google-Cloud-Tasks""; aertje's golden headers.json shows it stored, in FULL and BASIC views:
https://github.com/aertje/cloud-tasks-emulator/blob/5c064da472d66e549164bb45cc5bfbd803048367/conformance/golden/headers.json).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import grpc
from google.cloud import tasks_v2

from contract import cloud_tasks as limits
from contract.retry import RetryPolicy
from localcloud.emulator.config import normalize_retry_config
from localcloud.emulator.errors import (
    DEADLINE_RANGE_MESSAGE,
    PAYLOAD_TYPE_MESSAGE,
    SCHEDULE_TOO_FAR_MESSAGE,
    TASK_TOO_LARGE_MESSAGE,
    CloudTasksError,
    invalid_argument,
)
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
    if strict and not limits.MIN_DISPATCH_DEADLINE_S <= seconds <= limits.MAX_DISPATCH_DEADLINE_S:
        raise invalid_argument(DEADLINE_RANGE_MESSAGE)
    if not strict and not 0.001 <= seconds <= limits.MAX_DISPATCH_DEADLINE_S:  # tests' relaxed range: ours
        raise invalid_argument(
            f"Task.dispatchDeadline must be between [1ms, 30m] (strict deadlines off), got {seconds:g} seconds"
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
        raise invalid_argument(SCHEDULE_TOO_FAR_MESSAGE.format(time=_as_recorded(stamp.seconds)))
    return max(requested, now)


def _pacific() -> timezone | ZoneInfo:
    try:
        return ZoneInfo("America/Los_Angeles")
    except ZoneInfoNotFoundError:  # no time zone data here: the winter offset the golden recorded
        return timezone(timedelta(hours=-8))


def _as_recorded(seconds: int) -> str:
    """A schedule time as Cloud Tasks' text shows it: RFC 3339 to the second, in US Pacific time."""
    return datetime.fromtimestamp(seconds, UTC).astimezone(_pacific()).isoformat(timespec="seconds")


def _fill_in_defaults(task: tasks_v2.Task) -> None:
    """What Cloud Tasks reports for a created HTTP task (see the module docstring): POST, its User-Agent."""
    pb = tasks_v2.Task.pb(task).http_request
    if not pb.http_method:
        pb.http_method = int(tasks_v2.HttpMethod.POST)
    for key in [key for key in pb.headers if key.lower() == "user-agent"]:
        del pb.headers[key]
    pb.headers["User-Agent"] = limits.USER_AGENT


def parse_task(task: tasks_v2.Task, *, now: float, url_optional: bool, strict_deadlines: bool) -> TaskSpec:
    """Validate a CreateTask task (INVALID_ARGUMENT on bad input), fill in Cloud Tasks' defaults in place, and
    parse what dispatch needs."""
    pb = tasks_v2.Task.pb(task)
    if pb.HasField("app_engine_http_request"):
        raise CloudTasksError(
            grpc.StatusCode.UNIMPLEMENTED, "App Engine tasks are not supported by the local emulator; use http_request"
        )
    if not pb.HasField("http_request"):
        raise invalid_argument(PAYLOAD_TYPE_MESSAGE)
    size = pb.ByteSize()
    if size > limits.MAX_TASK_BYTES:
        raise invalid_argument(TASK_TOO_LARGE_MESSAGE)
    request = parse_task_request(task.http_request, url_optional=url_optional)
    _fill_in_defaults(task)
    retry = normalize_retry_config(pb.retry_config, "Task.retry_config") if pb.HasField("retry_config") else None
    return TaskSpec(request, _dispatch_deadline(task, strict_deadlines), retry, _schedule(task, now))
