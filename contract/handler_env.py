"""The handler's environment: the variables the stack sets and the handler reads, and the JSON they carry.

The CloudRunTasks component writes them, the handler reads them, local mode sets the ones Cloud Run's own
checks stand for, and the policy pack reads the queue table to check deadlines against the request timeout.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from contract.cloud_tasks import (
    DEFAULT_MAX_BACKOFF_S,
    DEFAULT_MAX_DOUBLINGS,
    DEFAULT_MAX_RETRY_DURATION_S,
    DEFAULT_MIN_BACKOFF_S,
)
from contract.retry import RetryPolicy

# JSON object: physical queue id (what the X-CloudTasks-QueueName header carries) -> a `QueueEntry`.
# The handler reads the retry settings to know the final attempt (dead-letter instead of failing); the
# deadline, to cancel work Cloud Tasks stopped waiting for, and so a policy can check it fits the request timeout.
QUEUES: Final = "TASKS_QUEUES"
# The dead-letter queue's full path (projects/P/locations/L/queues/ID): where the handler records each task
# that will not be retried (contract.dead_letters). Unset: dead letters go to the log only.
DEAD_LETTER_QUEUE: Final = "TASKS_DEAD_LETTER_QUEUE"
# Comma-separated emails whose OIDC tokens the handler accepts when it verifies tokens itself.
INVOKER_EMAILS: Final = "TASKS_INVOKER_EMAILS"
# "true" to verify OIDC tokens in the container (platforms that do not, e.g. Cloud Run for Anthos).
VERIFY_OIDC: Final = "TASKS_VERIFY_OIDC"
# The audience tokens must carry: the service's deterministic URL, which the stack knows before the service
# exists. Required when the handler verifies tokens: never derived from request headers, which a caller writes.
OIDC_AUDIENCE: Final = "TASKS_OIDC_AUDIENCE"
# Where the token signing certs are served ({kid: PEM}); Google's by default, the emulator's locally.
OIDC_CERTS_URL: Final = "TASKS_OIDC_CERTS_URL"
# redis:// (or rediss://, unix://) URL of the shared idempotency store; unset: each instance remembers in memory,
# which is only right for one instance that is never replaced (handler/idempotency.py).
IDEMPOTENCY_REDIS_URL: Final = "TASKS_IDEMPOTENCY_REDIS_URL"
# Project id, for the trace field of log entries (Cloud Logging links them to the request's trace).
PROJECT: Final = "GOOGLE_CLOUD_PROJECT"
# Cloud Run sets PORT (and the K_* names) itself.
PORT: Final = "PORT"
CLOUD_RUN_SET: Final = (PORT, "K_SERVICE", "K_REVISION", "K_CONFIGURATION")
# Every name with this prefix is the stack's, set or not: the handler reads them (one switches token checks
# on, one says where the signing keys are), so a user's `service.env` may set none of them.
STACK_PREFIX: Final = "TASKS_"
# What the stack sets: never taken from a user's `service.env`.
STACK_SET: Final = (QUEUES, DEAD_LETTER_QUEUE, INVOKER_EMAILS, OIDC_AUDIENCE, PROJECT)

GOOGLE_CERTS_URL: Final = "https://www.googleapis.com/oauth2/v1/certs"


class QueueTableField:
    """Keys of each entry in the TASKS_QUEUES table."""

    KEY: Final = "key"
    MAX_ATTEMPTS: Final = "maxAttempts"
    DISPATCH_DEADLINE_SECONDS: Final = "dispatchDeadlineSeconds"
    # The rest of the queue's retry settings; absent, Cloud Tasks' defaults (contract.cloud_tasks).
    MAX_RETRY_DURATION_SECONDS: Final = "maxRetryDurationSeconds"  # 0: unlimited
    MIN_BACKOFF_SECONDS: Final = "minBackoffSeconds"
    MAX_BACKOFF_SECONDS: Final = "maxBackoffSeconds"
    MAX_DOUBLINGS: Final = "maxDoublings"
    # The URL path the queue's tasks go to: the handler warns at start when it has no task type there.
    PATH: Final = "path"


@dataclass(frozen=True)
class QueueEntry:
    """One queue as the handler knows it."""

    key: str  # the queue's key in the stack config
    max_attempts: int  # -1: unlimited
    dispatch_deadline_seconds: float | None = None  # None: not given (then no work is cut short)
    max_retry_duration_seconds: float = DEFAULT_MAX_RETRY_DURATION_S  # 0: unlimited
    min_backoff_seconds: float = DEFAULT_MIN_BACKOFF_S
    max_backoff_seconds: float = DEFAULT_MAX_BACKOFF_S
    max_doublings: int = DEFAULT_MAX_DOUBLINGS
    path: str | None = None  # None: not given (a stack older than its handler image)

    @property
    def retry(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.max_attempts,
            max_retry_duration=self.max_retry_duration_seconds,
            min_backoff=self.min_backoff_seconds,
            max_backoff=self.max_backoff_seconds,
            max_doublings=self.max_doublings,
        )


class QueueTableError(ValueError):
    """TASKS_QUEUES does not hold the table the stack writes; the message names the variable."""


def encode_queue_table(entries: Mapping[str, QueueEntry]) -> str:
    """The TASKS_QUEUES value for physical queue id -> entry."""
    return json.dumps(
        {
            queue_id: {
                QueueTableField.KEY: entry.key,
                QueueTableField.MAX_ATTEMPTS: entry.max_attempts,
                QueueTableField.MAX_RETRY_DURATION_SECONDS: entry.max_retry_duration_seconds,
                QueueTableField.MIN_BACKOFF_SECONDS: entry.min_backoff_seconds,
                QueueTableField.MAX_BACKOFF_SECONDS: entry.max_backoff_seconds,
                QueueTableField.MAX_DOUBLINGS: entry.max_doublings,
                **(
                    {QueueTableField.DISPATCH_DEADLINE_SECONDS: entry.dispatch_deadline_seconds}
                    if entry.dispatch_deadline_seconds is not None
                    else {}
                ),
                **({QueueTableField.PATH: entry.path} if entry.path is not None else {}),
            }
            for queue_id, entry in entries.items()
        },
        sort_keys=True,
    )


def decode_queue_table(text: str) -> dict[str, QueueEntry]:
    """The table in a TASKS_QUEUES value, or QueueTableError naming the variable and the expected shape."""
    try:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise TypeError(f"a JSON {type(raw).__name__}, not an object")
        return {str(queue_id): _entry(entry) for queue_id, entry in raw.items()}
    except (ValueError, TypeError, KeyError, RecursionError) as err:
        raise QueueTableError(
            f'{QUEUES}: expected {{"<queue id>": {{"{QueueTableField.KEY}": str, "{QueueTableField.MAX_ATTEMPTS}": int,'
            f' "{QueueTableField.DISPATCH_DEADLINE_SECONDS}": number, and optionally'
            f" {QueueTableField.MAX_RETRY_DURATION_SECONDS}, {QueueTableField.MIN_BACKOFF_SECONDS},"
            f" {QueueTableField.MAX_BACKOFF_SECONDS} (numbers), {QueueTableField.MAX_DOUBLINGS} (int),"
            f" {QueueTableField.PATH} (a URL path)}}}},"
            f" got {text[:200]!r} ({err})"
        ) from None


def _entry(raw: Any) -> QueueEntry:
    if not isinstance(raw, dict):
        raise TypeError(f"an entry is a JSON {type(raw).__name__}, not an object")
    attempts, deadline = raw[QueueTableField.MAX_ATTEMPTS], raw.get(QueueTableField.DISPATCH_DEADLINE_SECONDS)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < -1:
        raise ValueError(f"{QueueTableField.MAX_ATTEMPTS} {attempts!r} is not a whole number of at least -1")
    if deadline is not None and not is_seconds(deadline):
        raise ValueError(f"{QueueTableField.DISPATCH_DEADLINE_SECONDS} {deadline!r} is not a positive number")
    duration = raw.get(QueueTableField.MAX_RETRY_DURATION_SECONDS, DEFAULT_MAX_RETRY_DURATION_S)
    if duration != 0 and not is_seconds(duration):
        raise ValueError(f"{QueueTableField.MAX_RETRY_DURATION_SECONDS} {duration!r} is not 0 or a positive number")
    min_backoff = raw.get(QueueTableField.MIN_BACKOFF_SECONDS, DEFAULT_MIN_BACKOFF_S)
    max_backoff = raw.get(QueueTableField.MAX_BACKOFF_SECONDS, DEFAULT_MAX_BACKOFF_S)
    for name, value in (
        (QueueTableField.MIN_BACKOFF_SECONDS, min_backoff),
        (QueueTableField.MAX_BACKOFF_SECONDS, max_backoff),
    ):
        if not is_seconds(value):
            raise ValueError(f"{name} {value!r} is not a positive number")
    doublings = raw.get(QueueTableField.MAX_DOUBLINGS, DEFAULT_MAX_DOUBLINGS)
    if isinstance(doublings, bool) or not isinstance(doublings, int) or doublings < 0:
        raise ValueError(f"{QueueTableField.MAX_DOUBLINGS} {doublings!r} is not a whole number of at least 0")
    path = raw.get(QueueTableField.PATH)
    if path is not None and not (isinstance(path, str) and path.startswith("/")):
        raise ValueError(f"{QueueTableField.PATH} {path!r} is not a URL path (starts with '/')")
    return QueueEntry(
        key=str(raw[QueueTableField.KEY]),
        max_attempts=attempts,
        dispatch_deadline_seconds=deadline,
        max_retry_duration_seconds=float(duration),
        min_backoff_seconds=float(min_backoff),
        max_backoff_seconds=float(max_backoff),
        max_doublings=doublings,
        path=path,
    )


def is_seconds(value: Any) -> bool:
    """A positive, finite JSON number (not a boolean)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf
