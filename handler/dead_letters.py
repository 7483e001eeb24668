"""Where tasks go that will not be retried: permanent failures, and failures on the final attempt.

Cloud Tasks has no dead-letter queue: after its last attempt a task is deleted without a trace. The
handler records it here first, then acknowledges it. On Cloud Run the stack names its dead-letter queue
(TASKS_DEAD_LETTER_QUEUE) and each dead letter becomes a task there, which `taskclient dead-letters` lists
and replays. Without one, the sink is a structured log entry (severity ERROR, `deadLetter` field). A sink
that raises makes the handler answer 500, so the task is retried rather than lost.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import grpc
from google.api_core.exceptions import AlreadyExists
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport
from starlette.concurrency import run_in_threadpool

from contract.cloud_tasks import MAX_TASK_BYTES
from contract.dead_letters import DeadLetterMeta, dead_letter_task_id
from handler.structured_log import JsonLog

# Cloud Logging keeps an entry of at most 256 KB and drops a larger one whole ("Quotas and limits"). A dead
# letter's payload gets at most this much of its entry, so the entry always fits; a larger body is named by
# its size and sha256 instead.
MAX_LOG_ENTRY_BYTES = 256 * 1000
MAX_PAYLOAD_IN_LOG_BYTES = 192 * 1024
# CreateTask's own default; the task is answered 500 and retried if the queue does not answer in time.
CREATE_TIMEOUT_S: Final = 20.0


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
    headers: Mapping[str, str] = field(default_factory=dict)  # the producer's headers on the task
    # False: the handler could not tell whether Cloud Tasks retries the task, and asked it to (see Finality).
    final: bool = True
    url: str = ""  # the URL the task was sent to: the service's URL, the path, any query

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
            "final": self.final,
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


def dead_letter(
    queue: str,
    task: str,
    path: str,
    attempt: int,
    reason: str,
    body: bytes | None,
    *,
    headers: Mapping[str, str] | None = None,
    final: bool = True,
    url: str = "",
) -> DeadLetter:
    """A dead letter; `body` None when the body was not read because it is over the task size limit."""
    unread = "" if body is not None else f"the body was not read: it is over the {MAX_TASK_BYTES}-byte task limit"
    return DeadLetter(queue, task, path, attempt, reason, body, unread, dict(headers or {}), final, url)


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


class CloudTasksDeadLetters:
    """Each dead letter as a task on the stack's paused dead-letter queue (the format: contract.dead_letters),
    and a log entry that names it. The task holds the body byte for byte, so the entry does not repeat it.

    Creating the task is one blocking gRPC call, made in a worker thread; the client (one channel) is made on
    the first dead letter, so a handler that never records one never looks for credentials.
    """

    def __init__(self, queue_path: str, log: JsonLog, *, emulator_host: str | None = None) -> None:
        self._queue_path = queue_path
        self._log = log
        self._emulator_host = emulator_host
        self._client: tasks_v2.CloudTasksClient | None = None
        self._client_lock = threading.Lock()

    async def record(self, letter: DeadLetter) -> None:
        task = self.task(letter, datetime.now(UTC))
        try:
            await run_in_threadpool(self._create, task)
            stored = "recorded"
        except AlreadyExists:
            # Named after the original task: this task was recorded before (an earlier attempt, a duplicate
            # delivery), and that record stands.
            stored = "already recorded"
        entry = {key: value for key, value in letter.log_record().items() if key not in ("payload", "payloadBase64")}
        self._log.emit(
            "ERROR", f"dead letter: {letter.reason}", deadLetter=entry | {"deadLetterTask": task.name, "stored": stored}
        )

    def task(self, letter: DeadLetter, now: datetime) -> tasks_v2.Task:
        """The dead letter as the task the queue keeps."""
        meta = DeadLetterMeta(
            queue=letter.queue,
            task=letter.task,
            attempt=letter.attempt,
            reason=letter.reason,
            recorded_at=now,
            final=letter.final,
            size=len(letter.body) if letter.body is not None else None,
            sha256=letter.sha256,
            body_omitted=letter.unread_reason,
        )
        headers = {**letter.headers, **meta.headers()}
        body = letter.body or b""
        # A task is at most 1 MiB, URL and headers included: a body that filled the original task may not fit
        # beside the metadata. Then the letter says so; its size and sha256 still name the body.
        overhead = len(letter.url) + sum(len(name) + len(value) for name, value in headers.items())
        if letter.body is not None and len(body) + overhead > MAX_TASK_BYTES:
            omitted = (
                f"the body ({len(body)} bytes) does not fit beside this dead letter's metadata in one"
                f" {MAX_TASK_BYTES}-byte task; its size and sha256 identify it"
            )
            headers = {**letter.headers, **dataclasses.replace(meta, body_omitted=omitted).headers()}
            body = b""
        return tasks_v2.Task(
            name=f"{self._queue_path}/tasks/{dead_letter_task_id(letter.queue, letter.task)}",
            http_request=tasks_v2.HttpRequest(
                url=letter.url, http_method=tasks_v2.HttpMethod.POST, headers=headers, body=body
            ),
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.transport.close()  # type: ignore[no-untyped-call]

    def _create(self, task: tasks_v2.Task) -> None:
        self._connected().create_task(parent=self._queue_path, task=task, timeout=CREATE_TIMEOUT_S)

    def _connected(self) -> tasks_v2.CloudTasksClient:
        with self._client_lock:
            if self._client is None:
                if self._emulator_host:
                    transport = CloudTasksGrpcTransport(channel=grpc.insecure_channel(self._emulator_host))
                    self._client = tasks_v2.CloudTasksClient(transport=transport)
                else:
                    self._client = tasks_v2.CloudTasksClient()  # the service's own account, from the metadata server
            return self._client
