"""Where tasks go that will not be retried: permanent failures, and failures on the final attempt.

Cloud Tasks has no dead-letter queue: after its last attempt a task is deleted without a trace. The
handler records it here first, then acknowledges it. The default sink writes a structured log entry
(severity ERROR, `deadLetter` field), which a log-based metric or a log sink to BigQuery or Pub/Sub can
pick up. A sink that raises makes the handler answer 500, so the task is retried rather than lost.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol

from handler.structured_log import JsonLog

MAX_PAYLOAD_IN_RECORD = 64 * 1024


@dataclass(frozen=True)
class DeadLetter:
    queue: str
    task: str
    path: str
    attempt: int
    reason: str
    payload: str  # the body as text (undecodable bytes replaced), cut at 64 KiB
    truncated: bool


class DeadLetterSink(Protocol):
    async def record(self, letter: DeadLetter) -> None: ...


def dead_letter(queue: str, task: str, path: str, attempt: int, reason: str, body: bytes) -> DeadLetter:
    return DeadLetter(
        queue=queue,
        task=task,
        path=path,
        attempt=attempt,
        reason=reason,
        payload=body[:MAX_PAYLOAD_IN_RECORD].decode("utf-8", errors="replace"),
        truncated=len(body) > MAX_PAYLOAD_IN_RECORD,
    )


class LogDeadLetters:
    """The default sink: one structured log entry per dead letter."""

    def __init__(self, log: JsonLog) -> None:
        self._log = log

    async def record(self, letter: DeadLetter) -> None:
        self._log.emit("ERROR", f"dead letter: {letter.reason}", deadLetter=asdict(letter))


class MemoryDeadLetters:
    """Keeps dead letters in a list: for tests and the local stack's summary."""

    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    async def record(self, letter: DeadLetter) -> None:
        self.letters.append(letter)
