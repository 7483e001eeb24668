"""Cloud Tasks' defaults and limits: the one place each is written, with where it comes from.

Sources: the proto docstrings shipped in google-cloud-tasks 2.26 (queue.py, task.py, target.py, cloudtasks.py)
and Google's quotas, creating-queues and configuring-queues pages. Where they disagree, both are named and the
value chosen says why.
"""

from __future__ import annotations

import re
from typing import Final

# --- rate limits (queue.py RateLimits) ---------------------------------------------------------------
# "The maximum allowed value is 500", and the quotas page's fixed 500 dispatches/s per queue.
MAX_DISPATCHES_PER_SECOND: Final = 500.0
# No lower bound is documented (the field is a double, with no step either). queue.yaml's `rate`, which
# "has the same meaning", is written N/s, N/m, N/h or N/d; this stack takes one dispatch a day (1/d) as the
# slowest rate, and passes any rate from there to 500 as written. Below it a queue is better paused.
MIN_DISPATCHES_PER_SECOND: Final = 1 / 86400
MIN_DISPATCHES_PER_SECOND_TEXT: Final = "1/86400 (one dispatch a day)"
# What a queue created without settings reports (creating-queues `describe` output).
DEFAULT_DISPATCHES_PER_SECOND: Final = 500.0
MAX_CONCURRENT_DISPATCHES: Final = 5000  # "The maximum allowed value is 5,000."
DEFAULT_CONCURRENT_DISPATCHES: Final = 1000
# max_burst_size is output only; the default queue (500/s) reports 100.
MAX_BURST_SIZE: Final = 100

# --- retry (queue.py RetryConfig; defaults from the creating-queues `describe` output) ----------------
UNLIMITED_ATTEMPTS: Final = -1  # max_attempts -1: no limit on attempts
DEFAULT_MAX_ATTEMPTS: Final = 100  # attempts including the first
UNLIMITED_RETRY_DURATION_S: Final = 0.0  # max_retry_duration 0: no limit on time
DEFAULT_MAX_RETRY_DURATION_S: Final = 0.0
# The docs say backoffs are truncated to whole seconds, yet the default is 0.1 s.
DEFAULT_MIN_BACKOFF_S: Final = 0.1
DEFAULT_MAX_BACKOFF_S: Final = 3600.0
DEFAULT_MAX_DOUBLINGS: Final = 16
MAX_INT32: Final = 2**31 - 1  # max_attempts and max_doublings are int32

# --- tasks (task.py, target.py, quotas page) ---------------------------------------------------------
TASK_RETENTION_S: Final = 31 * 24 * 3600.0  # "Maximum task retention: 31 days", dispatched or not
MAX_SCHEDULE_AHEAD_S: Final = 30 * 24 * 3600.0  # schedule_time at most 30 days ahead
# HTTP tasks: default 10 minutes, allowed [15 s, 30 min].
DEFAULT_DISPATCH_DEADLINE_S: Final = 600.0
MIN_DISPATCH_DEADLINE_S: Final = 15.0
MAX_DISPATCH_DEADLINE_S: Final = 1800.0
# The quotas page allows 1 MiB a task; the CreateTask docstring still says 100 KB. The emulator and the
# handler accept what the service accepts; the task client keeps producers under both.
MAX_TASK_BYTES: Final = 1024 * 1024
DOCUMENTED_CREATE_TASK_BYTES: Final = 100_000
MAX_URL_LENGTH: Final = 2083  # after encoding
MAX_HEADERS_BYTES: Final = 80 * 1024
# Headers Cloud Tasks computes, reserves or replaces on an HTTP task.
RESERVED_HEADERS: Final = ("host", "content-length", "user-agent")
RESERVED_HEADER_PREFIXES: Final = ("x-google-", "x-appengine-", "x-cloudtasks-")
USER_AGENT: Final = "Google-Cloud-Tasks"

# --- emulators ------------------------------------------------------------------------------------------
# host:port of a local emulator. The Python client has no emulator switch of its own
# (googleapis/python-tasks#333): the task client and the handler's dead-letter sink read this one.
EMULATOR_HOST_ENV: Final = "CLOUD_TASKS_EMULATOR_HOST"
# http://host:port of a local emulator's HTTP port. BufferTask is REST only, so it is served there, not on the
# gRPC port above; `taskclient buffer` reads this one, and `localcloud up` prints both.
EMULATOR_HTTP_ENV: Final = "CLOUD_TASKS_EMULATOR_HTTP"

# --- REST (BufferTask has no gRPC method) -----------------------------------------------------------------
# The tasks.buffer reference: POST https://cloudtasks.googleapis.com/v2/{queue}/tasks:buffer, or
# .../tasks/{taskId}:buffer to choose the task id.
REST_ENDPOINT: Final = "https://cloudtasks.googleapis.com"

# --- names (queue.py Queue.name, task.py Task.name) --------------------------------------------------
MAX_QUEUE_ID_LENGTH: Final = 100
MAX_TASK_ID_LENGTH: Final = 500
QUEUE_ID: Final = re.compile(r"[A-Za-z0-9-]{1,100}")
TASK_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,500}")
# A deleted queue's id stays blocked: the quotas page says 7 days, the DeleteQueue docstring "up to 3 days".
# Plan for the longer.
QUEUE_REUSE_BLOCKED_S: Final = 7 * 24 * 3600.0

# --- logging (queue.py StackdriverLoggingConfig) -----------------------------------------------------
# A fraction in [0, 1]; unset, Cloud Tasks logs nothing (0.0).
DEFAULT_LOG_SAMPLING_RATIO: Final = 0.0

# --- headers on every HTTP task attempt (creating-http-target-tasks); HTTP header names ignore case ----
HEADER_QUEUE_NAME: Final = "X-CloudTasks-QueueName"
HEADER_TASK_NAME: Final = "X-CloudTasks-TaskName"
HEADER_RETRY_COUNT: Final = "X-CloudTasks-TaskRetryCount"
HEADER_EXECUTION_COUNT: Final = "X-CloudTasks-TaskExecutionCount"
HEADER_ETA: Final = "X-CloudTasks-TaskETA"
HEADER_PREVIOUS_RESPONSE: Final = "X-CloudTasks-TaskPreviousResponse"
HEADER_RETRY_REASON: Final = "X-CloudTasks-TaskRetryReason"
