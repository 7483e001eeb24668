"""The one error type of the emulator core: a gRPC status code and a message, as Cloud Tasks answers.

The gRPC server turns it into `context.abort(code, message)`, so the stock client raises the same
`google.api_core.exceptions` class it would raise against Cloud Tasks; the HTTP port answers it as Google's
JSON error. Every message is a constant here. Where Cloud Tasks' own text is on public record it is used word
for word, and its source is named beside it; the others are ours, and say so.

Sources:
- GOLDEN: aertje/cloud-tasks-emulator's conformance golden, recorded by its author running each failing call
  against Cloud Tasks through the official Go client:
  https://github.com/aertje/cloud-tasks-emulator/blob/519e0443fd01be9395a9c44aa91b163f7a94bf29/conformance/golden/realcloud.json
- AERTJE: the texts aertje's emulator answers in internal/server/protohelpers.go (mapErr); its comments say each
  was checked against the cases of its re-recorded golden errors.json, which is not public itself:
  https://github.com/aertje/cloud-tasks-emulator/blob/master/internal/server/protohelpers.go
"""

from __future__ import annotations

import grpc

__all__ = [
    "BACKOFF_ORDER_MESSAGE",
    "BUFFER_NEEDS_ROUTING_MESSAGE",
    "CONCURRENCY_NEGATIVE_MESSAGE",
    "CONCURRENCY_TOO_HIGH_MESSAGE",
    "DEADLINE_RANGE_MESSAGE",
    "MAX_ATTEMPTS_MESSAGE",
    "MAX_DOUBLINGS_NEGATIVE_MESSAGE",
    "MIN_BACKOFF_NEGATIVE_MESSAGE",
    "NOT_FOUND_MESSAGE",
    "PAYLOAD_TYPE_MESSAGE",
    "QUEUE_ALREADY_EXISTS_MESSAGE",
    "QUEUE_MISSING_MESSAGE",
    "QUEUE_NAME_FORMAT_MESSAGE",
    "QUEUE_PARENT_MISMATCH_MESSAGE",
    "QUEUE_TOMBSTONE_MESSAGE",
    "RATE_NEGATIVE_MESSAGE",
    "RATE_TOO_HIGH_MESSAGE",
    "SCHEDULE_TOO_FAR_MESSAGE",
    "TASK_ALREADY_EXISTS_MESSAGE",
    "TASK_ID_MESSAGE",
    "TASK_NAME_TOO_RECENT_MESSAGE",
    "TASK_QUEUE_MISMATCH_MESSAGE",
    "TASK_TOMBSTONE_MESSAGE",
    "TASK_TOO_LARGE_MESSAGE",
    "URL_REQUIRED_MESSAGE",
    "URL_SCHEME_MESSAGE",
    "CloudTasksError",
    "invalid_argument",
]

# --- not found -------------------------------------------------------------------------------------------
# GOLDEN queue/delete/not-found, task/get/not-found, task/delete/not-found, task/run/not-found: DeleteQueue of a
# missing queue, and Get/Delete/RunTask of a task that never existed. ListTasks of a missing queue, and a task
# call on a missing queue: no public record; ours is this same generic text.
NOT_FOUND_MESSAGE = "Requested entity was not found."
# GOLDEN queue/get/not-found, queue/get/recently-deleted, queue/pause|resume|purge/not-found and
# task/create/queue-not-found|queue-recently-deleted: the same text whether the queue never existed or was
# deleted recently.
QUEUE_MISSING_MESSAGE = (
    "Queue does not exist. If you just created the queue, wait at least a minute for the queue to initialize."
)
# GOLDEN task/get/recently-deleted (GetTask). DeleteTask and RunTask of such a task: no public record; ours is
# the same text.
TASK_TOMBSTONE_MESSAGE = (
    "The task no longer exists, though a task with this name existed recently. "
    "The task either successfully completed or was deleted."
)

# --- already exists ----------------------------------------------------------------------------------------
QUEUE_ALREADY_EXISTS_MESSAGE = "Queue already exists"  # GOLDEN queue/create/already-exists (no full stop)
TASK_ALREADY_EXISTS_MESSAGE = "Requested entity already exists"  # GOLDEN task/create/already-exists
# CreateTask of a name whose task completed or was deleted recently (ALREADY_EXISTS, as the CreateTaskRequest
# docs say), as a producer logged it: https://github.com/stackkit/laravel-google-cloud-tasks-queue/pull/130
TASK_NAME_TOO_RECENT_MESSAGE = (
    "The task cannot be created because a task with this name existed too recently. For more information about"
    " task de-duplication see"
    " https://cloud.google.com/tasks/docs/reference/rest/v2/projects.locations.queues.tasks/create#body.request_body.FIELDS.task."
)
# GOLDEN queue/create/recently-deleted (FAILED_PRECONDITION).
QUEUE_TOMBSTONE_MESSAGE = "The queue cannot be created because a queue with this name existed too recently."

# --- names -------------------------------------------------------------------------------------------------
# GOLDEN queue/create/invalid-name (CreateQueue). Every other field holding a queue name is checked by the
# same rule here, so it gets the same text (no public record of those).
QUEUE_NAME_FORMAT_MESSAGE = (
    'Queue name must be formatted: "projects/<PROJECT_ID>/locations/<LOCATION_ID>/queues/<QUEUE_ID>".'
)
# AERTJE mapErrForCreateQueue (its conformance case queue/create/parent-mismatch): CreateQueue of a queue name
# outside the request's parent.
QUEUE_PARENT_MISMATCH_MESSAGE = "{name} must begin with {parent}."
# GOLDEN task/create/invalid-name ("must between" is theirs).
TASK_ID_MESSAGE = (
    'Task ID "{task_id}" can contain only letters ([A-Za-z]), numbers ([0-9]), hyphens (-), or underscores (_).'
    " Task ID must between 1 and 500 characters."
)
# GOLDEN task/create/queue-mismatch.
TASK_QUEUE_MISMATCH_MESSAGE = (
    "The queue name from request ('{parent}') must be the same as the queue name in the named task ('{queue}')."
)

# --- queue settings (AERTJE mapErr, each checked against its golden queue-invalid-config cases) ------------
RATE_NEGATIVE_MESSAGE = "RateLimits.maxDispatchesPerSecond cannot be negative."
RATE_TOO_HIGH_MESSAGE = "RateLimits.maxDispatchesPerSecond must be less than or equal to 500."
CONCURRENCY_NEGATIVE_MESSAGE = "RateLimits.maxConcurrentDispatches cannot be negative."
CONCURRENCY_TOO_HIGH_MESSAGE = "RateLimits.maxConcurrentDispatches must be less than or equal to 5000."
MAX_ATTEMPTS_MESSAGE = "RetryConfig.maxAttempts must be greater or equal to -1."
MAX_DOUBLINGS_NEGATIVE_MESSAGE = "RetryConfig.maxDoublings cannot be negative."
MIN_BACKOFF_NEGATIVE_MESSAGE = "RetryConfig.minBackoff cannot be negative."
BACKOFF_ORDER_MESSAGE = "RetryConfig.minBackoff must be less than or equal to RetryConfig.maxBackoff."
# A negative max_backoff, a NaN rate and a task's own retry_config: no public record; ours (config.py).

# --- tasks -------------------------------------------------------------------------------------------------
# AERTJE mapErr (its golden task-invalid-config cases); also in producers' logs, e.g. "400
# Task.dispatchDeadline must be between [15s, 30m]." for HTTP tasks.
DEADLINE_RANGE_MESSAGE = "Task.dispatchDeadline must be between [15s, 30m]."
# AERTJE mapErrForCreateTask (its golden task/create/schedule-too-far): the requested time in RFC 3339, in US
# Pacific time, as recorded.
SCHEDULE_TOO_FAR_MESSAGE = (
    "The Task.scheduleTime, {time}, is too far in the future. Schedule time must be no more than 720h in the future."
)
# INVALID_ARGUMENT as a producer logged it: https://github.com/googleapis/repo-automation-bots/issues/893
TASK_TOO_LARGE_MESSAGE = "Task size too large"
URL_REQUIRED_MESSAGE = "HttpRequest.url is required."  # GOLDEN task/create/invalid-url-empty
# GOLDEN task/create/invalid-url-no-scheme and invalid-url-non-http-scheme ("HttpTarget" is theirs).
URL_SCHEME_MESSAGE = "HttpTarget.url must start with 'http://' or 'https://'."
# A task with neither http_request nor app_engine_http_request, as v2 callers met it:
# https://github.com/googleapis/nodejs-tasks/issues/417
PAYLOAD_TYPE_MESSAGE = "Task.payload_type is not set."

# --- BufferTask (REST only; http.py) -----------------------------------------------------------------------
# A queue without queue-level routing: "The queue must have HTTP target" (the tasks.buffer reference) and "If
# the output includes a line for uriOverride with a host specified, your queue has queue-level routing"
# (choose-task-creation-method). The code and the text Cloud Tasks answers: no public record; ours.
BUFFER_NEEDS_ROUTING_MESSAGE = (
    "Queue {queue} has no queue-level routing (an http_target whose uri_override names a host), which BufferTask"
    " needs: a buffered task carries no URL of its own."
)


class CloudTasksError(Exception):
    """An RPC failure: `code` is a `grpc.StatusCode`, `message` the text the client sees."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def invalid_argument(message: str) -> CloudTasksError:
    return CloudTasksError(grpc.StatusCode.INVALID_ARGUMENT, message)
