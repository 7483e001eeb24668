"""A dead letter holds the task's body byte for byte, or says plainly that it does not (size, sha256, why);
binary task bodies are never parsed as JSON by force; no log entry outgrows what Cloud Logging keeps."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from contract.handler_env import QueueEntry
from contract.outcomes import TaskOutcome
from handler.app import MAX_BODY_BYTES, create_app
from handler.dead_letters import MAX_LOG_ENTRY_BYTES, MemoryDeadLetters
from handler.environment import HandlerSettings
from handler.structured_log import JsonLog
from handler.tasks import BodyKind, PermanentError, TaskContext, TaskRouter

QUEUE = "tasks-dev-default-a1b2c3"
SETTINGS = HandlerSettings(queues={QUEUE: QueueEntry("default", max_attempts=3)}, invoker_emails=frozenset())

received: list[Any] = []
router = TaskRouter()


@router.task("/tasks/json")
async def takes_json(payload: Any, context: TaskContext) -> None:
    received.append(payload)
    raise PermanentError("refused on purpose")


@router.task("/tasks/resize", body=BodyKind.BYTES)
async def takes_bytes(payload: Any, context: TaskContext) -> None:
    received.append(payload)
    raise PermanentError("refused on purpose")


def post(client: TestClient, path: str, body: bytes, task: str = "t1") -> Any:
    headers = {"X-CloudTasks-QueueName": QUEUE, "X-CloudTasks-TaskName": task, "X-CloudTasks-TaskRetryCount": "0"}
    return client.post(path, content=body, headers=headers)


@pytest.fixture
def log() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def logged(log: io.StringIO) -> Iterator[TestClient]:
    """The default sink: dead letters go to the log."""
    received.clear()
    with TestClient(create_app(router, SETTINGS, log=JsonLog(log))) as client:
        yield client


def letters_in(log: io.StringIO) -> list[dict[str, Any]]:
    lines = log.getvalue().splitlines()
    assert all(len(line.encode()) <= MAX_LOG_ENTRY_BYTES for line in lines)
    return [json.loads(line)["deadLetter"] for line in lines if "deadLetter" in json.loads(line)]


def test_a_bytes_task_gets_its_body_as_it_came() -> None:
    letters = MemoryDeadLetters()
    received.clear()
    with TestClient(create_app(router, SETTINGS, dead_letters=letters)) as client:
        response = post(client, "/tasks/resize", b"\x89PNG\r\n\x1a\n\x00\xff")
    assert response.json()["status"] == TaskOutcome.DEAD_LETTERED  # the work refused it, not the parser
    assert received == [b"\x89PNG\r\n\x1a\n\x00\xff"]
    assert letters.letters[0].body == b"\x89PNG\r\n\x1a\n\x00\xff"


def test_bytes_that_are_not_utf8_are_recorded_byte_for_byte(logged: TestClient, log: io.StringIO) -> None:
    body = b"\xff\xfe{\x00binary"
    assert post(logged, "/tasks/json", body).json()["status"] == TaskOutcome.DEAD_LETTERED
    (letter,) = letters_in(log)
    assert base64.b64decode(letter["payloadBase64"]) == body
    assert (letter["size"], letter["sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
    assert "payload" not in letter and "payloadOmitted" not in letter


def test_a_text_body_is_recorded_as_text(logged: TestClient, log: io.StringIO) -> None:
    post(logged, "/tasks/json", b'{"order": 42}')
    (letter,) = letters_in(log)
    assert letter["payload"] == '{"order": 42}' and letter["size"] == 13


def test_a_body_too_big_for_a_log_entry_is_named_by_size_and_hash(logged: TestClient, log: io.StringIO) -> None:
    body = json.dumps({"blob": "x" * 400_000}).encode()  # valid, under the task limit, over a log entry
    post(logged, "/tasks/json", body)
    (letter,) = letters_in(log)
    assert "payload" not in letter and "payloadBase64" not in letter
    assert (letter["size"], letter["sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
    assert "log entry" in letter["payloadOmitted"]


def test_a_body_over_the_task_limit_is_said_to_be_unread(logged: TestClient, log: io.StringIO) -> None:
    post(logged, "/tasks/json", b"x" * (MAX_BODY_BYTES + 1))
    (letter,) = letters_in(log)
    assert "payload" not in letter and "payloadBase64" not in letter and "sha256" not in letter
    assert letter["size"] is None
    assert f"over the {MAX_BODY_BYTES}-byte task limit" in letter["payloadOmitted"]
