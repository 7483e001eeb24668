"""Dead letters as tasks: the stack's dead-letter queue, what a dead letter holds, and how it is named.

Cloud Tasks keeps no trace of a task after its last attempt. The handler records such a task first, as a task
on the stack's dead-letter queue, which is held paused so nothing is ever dispatched from it:

- its body is the original body, byte for byte (or, when that cannot be kept, no body and a header saying why);
- its URL is the original task's URL, path included;
- its headers are the headers the producer gave the original task, plus the `X-Dead-Letter-*` metadata below;
- its id is derived from the original queue and task (`dead_letter_task_id`), so recording the same task twice
  makes one dead letter, not two.

`taskclient dead-letters` lists them and replays one by creating a task named `replay_task_id(...)` in the
original queue, then deleting the dead letter: a replay that is interrupted and run again finds the new task
already exists (ALREADY_EXISTS), so it loses nothing and creates nothing twice.

Tasks on the dead-letter queue are kept at most 31 days (Cloud Tasks' task retention, dispatched or not).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
from urllib.parse import quote, unquote

from contract import cloud_tasks

# The dead-letter queue's id: `<namePrefix>-dead-letters-<6 hex>`, the hex kept in the stack's state.
QUEUE_KEY: Final = "dead-letters"

# --- a producer's header, read by the handler's final-attempt rule --------------------------------------
# Seconds since the epoch before which no attempt of the task runs: when the producer created it, or its
# schedule time if later. taskclient sets it; the handler takes it as the earliest the first attempt can
# have been, so it can tell when a queue's max_retry_duration is not yet used up (Cloud Tasks sends no header
# with the first attempt's time).
HEADER_NOT_BEFORE: Final = "X-Tasks-Not-Before"
# How far the producer's clock may run ahead of the handler's before a "not yet" from that header is wrong.
CLOCK_SKEW_ALLOWANCE_S: Final = 300.0

# --- metadata headers on a dead letter --------------------------------------------------------------------
HEADER_PREFIX: Final = "X-Dead-Letter-"
HEADER_QUEUE: Final = "X-Dead-Letter-Queue"  # the original queue's id
HEADER_TASK: Final = "X-Dead-Letter-Task"  # the original task's id
HEADER_ATTEMPT: Final = "X-Dead-Letter-Attempt"  # the attempt that recorded it, 1-based
HEADER_REASON: Final = "X-Dead-Letter-Reason"  # percent-encoded UTF-8 (header values are ASCII)
HEADER_RECORDED_AT: Final = "X-Dead-Letter-Recorded-At"  # RFC 3339, UTC
# "true": Cloud Tasks makes no further attempt. "false": the handler could not tell whether it would (a queue
# with max_retry_duration), so it recorded the task and asked for a retry: a later attempt may yet succeed.
HEADER_FINAL: Final = "X-Dead-Letter-Final"
HEADER_SIZE: Final = "X-Dead-Letter-Size"  # the original body's size in bytes, when known
HEADER_SHA256: Final = "X-Dead-Letter-Sha256"  # of the original body, when it was read
# Present only when the dead letter holds no body: why (never read: over the task limit; or too big to fit
# beside the metadata in one task).
HEADER_BODY_OMITTED: Final = "X-Dead-Letter-Body-Omitted"

MAX_REASON_CHARS: Final = 1000

# Request headers that are not the producer's: Cloud Tasks, Cloud Run and HTTP itself set them on delivery.
# The rest of a delivery's headers were the task's, and a dead letter keeps them for its replay.
DELIVERY_HEADERS: Final = frozenset(
    {
        *cloud_tasks.RESERVED_HEADERS,
        "authorization",
        "x-cloud-trace-context",
        "traceparent",
        "tracestate",
        "forwarded",
        "via",
        "connection",
        "accept-encoding",
        "te",
        "transfer-encoding",
        "expect",
        HEADER_NOT_BEFORE.lower(),
    }
)
DELIVERY_HEADER_PREFIXES: Final = (*cloud_tasks.RESERVED_HEADER_PREFIXES, "x-forwarded-", HEADER_PREFIX.lower())


def producer_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers of a delivery that the producer gave the task (names as they came)."""
    return {
        name: value
        for name, value in headers.items()
        if name.lower() not in DELIVERY_HEADERS and not name.lower().startswith(DELIVERY_HEADER_PREFIXES)
    }


def dead_letter_task_id(queue: str, task: str) -> str:
    """The dead letter's task id for task `task` of queue `queue`: `<queue>_<task>`, which no other pair gives
    (queue ids have no `_`). Over the 500-character limit, the task part is cut and a hash of it appended."""
    task_id = f"{queue}_{task}"
    if cloud_tasks.TASK_ID.fullmatch(task_id):
        return task_id
    digest = hashlib.sha256(task.encode()).hexdigest()[:32]
    kept = "".join(c if c.isascii() and (c.isalnum() or c in "_-") else "-" for c in task)
    return f"{queue}_{kept[: 500 - len(queue) - 2 - len(digest)]}-{digest}"


def replay_task_id(original_task: str, dead_letter_name: str, recorded_at: str) -> str:
    """The id of the task a replay creates: the original id, `-replay-`, and a hash of the dead letter's full
    name and the time it was recorded. The same dead letter always replays under the same id; a later dead
    letter of the same task (recorded at another time) under a new one."""
    digest = hashlib.sha256(f"{dead_letter_name}\n{recorded_at}".encode()).hexdigest()[:16]
    suffix = f"-replay-{digest}"
    kept = "".join(c if c.isascii() and (c.isalnum() or c in "_-") else "-" for c in original_task)
    return kept[: 500 - len(suffix)] + suffix


@dataclass(frozen=True)
class DeadLetterMeta:
    """The metadata a dead letter carries in its headers."""

    queue: str
    task: str
    attempt: int
    reason: str
    recorded_at: datetime
    final: bool = True
    size: int | None = None
    sha256: str | None = None
    body_omitted: str = ""  # empty when the dead letter holds the body

    def headers(self) -> dict[str, str]:
        reason = self.reason
        if len(reason) > MAX_REASON_CHARS:
            reason = f"{reason[:MAX_REASON_CHARS]}... [cut at {MAX_REASON_CHARS} of {len(self.reason)} characters]"
        headers = {
            HEADER_QUEUE: self.queue,
            HEADER_TASK: self.task,
            HEADER_ATTEMPT: str(self.attempt),
            HEADER_REASON: quote(reason, safe=" !$&'()*+,/:;=?@[]~<>{}|^`\"#"),
            HEADER_RECORDED_AT: self.recorded_at.astimezone(UTC).isoformat(timespec="milliseconds"),
            HEADER_FINAL: "true" if self.final else "false",
        }
        if self.size is not None:
            headers[HEADER_SIZE] = str(self.size)
        if self.sha256 is not None:
            headers[HEADER_SHA256] = self.sha256
        if self.body_omitted:
            headers[HEADER_BODY_OMITTED] = quote(self.body_omitted, safe=" !$&'()*+,/:;=?@[]~")
        return headers

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> DeadLetterMeta:
        """The metadata in a dead letter's headers (names in any case); ValueError naming what is missing."""
        lower = {name.lower(): value for name, value in headers.items()}

        def get(name: str, default: str | None = None) -> str:
            value = lower.get(name.lower(), default)
            if value is None:
                raise ValueError(f"not a dead letter: no {name} header")
            return value

        size, sha = lower.get(HEADER_SIZE.lower()), lower.get(HEADER_SHA256.lower())
        return cls(
            queue=get(HEADER_QUEUE),
            task=get(HEADER_TASK),
            attempt=int(get(HEADER_ATTEMPT)),
            reason=unquote(get(HEADER_REASON, "")),
            recorded_at=datetime.fromisoformat(get(HEADER_RECORDED_AT)),
            final=get(HEADER_FINAL, "true") == "true",
            size=int(size) if size is not None else None,
            sha256=sha,
            body_omitted=unquote(lower.get(HEADER_BODY_OMITTED.lower(), "")),
        )


def without_metadata(headers: Mapping[str, str]) -> dict[str, str]:
    """A dead letter's headers less its metadata: the headers the original task had, for its replay."""
    return {name: value for name, value in headers.items() if not name.lower().startswith(HEADER_PREFIX.lower())}
