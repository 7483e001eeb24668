"""Where tasks go that will not be retried: permanent failures, and failures on the final attempt.

Cloud Tasks has no dead-letter queue: after its last attempt a task is deleted without a trace. The
handler records it here first, then acknowledges it. The default sink writes a structured log entry
(severity ERROR, `deadLetter` field), which a log-based metric or a log sink to BigQuery or Pub/Sub can
pick up. A sink that raises makes the handler answer 500, so the task is retried rather than lost.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Protocol

from contract.cloud_tasks import MAX_TASK_BYTES
from handler.structured_log import JsonLog

# Cloud Logging keeps an entry of at most 256 KB and drops a larger one whole ("Quotas and limits"). A dead
# letter's payload gets at most this much of its entry, so the entry always fits; a larger body is named by
# its size and sha256 instead.
MAX_LOG_ENTRY_BYTES = 256 * 1000
MAX_PAYLOAD_IN_LOG_BYTES = 192 * 1024


@dataclass(frozen=True)
class DeadLetter:
    queue: str
    task: str
    path: str
    attempt: int
    reason: str
    # The task's body byte for byte, or None when it was not read (over the task size limit).
    body: bytes | None
    unread_reason: str = ""  # why `body` is None

    @property
    def sha256(self) -> str | None:
        return hashlib.sha256(self.body).hexdigest() if self.body is not None else None

    def log_record(self) -> dict[str, Any]:
        """The letter for a log entry: the payload as text when it is UTF-8, else as base64, and when it
        would not fit in the entry, its size and sha256 and why it is left out. Never a payload altered."""
        record: dict[str, Any] = {
            "queue": self.queue,
            "task": self.task,
            "path": self.path,
            "attempt": self.attempt,
            "reason": self.reason,
            "size": len(self.body) if self.body is not None else None,
        }
        if self.body is None:
            return record | {"payloadOmitted": self.unread_reason}
        record["sha256"] = self.sha256
        try:
            text: str | None = self.body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        field, value = (
            ("payload", text) if text is not None else ("payloadBase64", base64.b64encode(self.body).decode())
        )
        # As the log entry holds it: JSON escapes can make text longer than its bytes.
        encoded = len(json.dumps(value))
        if encoded <= MAX_PAYLOAD_IN_LOG_BYTES:
            return record | {field: value}
        return record | {
            "payloadOmitted": f"the body ({len(self.body)} bytes) does not fit in a log entry (at most"
            f" {MAX_PAYLOAD_IN_LOG_BYTES} bytes of it for the payload); size and sha256 identify it"
        }


class DeadLetterSink(Protocol):
    async def record(self, letter: DeadLetter) -> None: ...


def dead_letter(queue: str, task: str, path: str, attempt: int, reason: str, body: bytes | None) -> DeadLetter:
    """A dead letter; `body` None when the body was not read because it is over the task size limit."""
    unread = "" if body is not None else f"the body was not read: it is over the {MAX_TASK_BYTES}-byte task limit"
    return DeadLetter(queue, task, path, attempt, reason, body, unread)


class LogDeadLetters:
    """The default sink: one structured log entry per dead letter."""

    def __init__(self, log: JsonLog) -> None:
        self._log = log

    async def record(self, letter: DeadLetter) -> None:
        self._log.emit("ERROR", f"dead letter: {letter.reason}", deadLetter=letter.log_record())


class MemoryDeadLetters:
    """Keeps dead letters in a list: for tests and the local stack's summary."""

    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    async def record(self, letter: DeadLetter) -> None:
        self.letters.append(letter)
