"""Dead letters end to end: the emulator dispatches for real, the handler (a real uvicorn server on loopback)
fails, and each task that will not be retried ends up on the paused dead-letter queue, byte for byte.

The four combinations of retry limits (issue 13, path 2) run here as Cloud Tasks runs them: the emulator's
engine applies the retry law from contract/, and the handler decides from the headers alone.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
import uvicorn
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from contract.dead_letters import HEADER_NOT_BEFORE, DeadLetterMeta, dead_letter_task_id, without_metadata
from contract.handler_env import QueueEntry
from handler.app import create_app
from handler.dead_letters import CloudTasksDeadLetters, dead_letter
from handler.environment import HandlerSettings
from handler.structured_log import JsonLog
from handler.tasks import BodyKind, PermanentError, TaskContext, TaskRouter
from localcloud.emulator.faults import Fault
from localcloud.emulator.service import CloudTasksEmulator
from localcloud.stack import free_port

LOCATION = "projects/p/locations/l"
DEAD_LETTERS = f"{LOCATION}/queues/app-dead-letters-abc123"
WAIT_S = 30.0  # bounds a wait that ends in a few seconds; reached only on failure
BACKOFF = {"min_backoff": "0.1s", "max_backoff": "0.1s", "max_doublings": 0}

router = TaskRouter()


@router.task("/fail", body=BodyKind.BYTES)
async def fail(payload: bytes, context: TaskContext) -> None:
    raise RuntimeError("downstream down")


@router.task("/permanent", body=BodyKind.BYTES)
async def permanent(payload: bytes, context: TaskContext) -> None:
    raise PermanentError("never valid")


@dataclass(frozen=True)
class Limits:
    max_attempts: int
    max_retry_duration: float

    def queue(self, queue_id: str) -> tasks_v2.Queue:
        retry = {"max_attempts": self.max_attempts, "max_retry_duration": f"{self.max_retry_duration}s", **BACKOFF}
        return tasks_v2.Queue(name=f"{LOCATION}/queues/{queue_id}", retry_config=retry)

    def entry(self, key: str) -> QueueEntry:
        return QueueEntry(
            key,
            self.max_attempts,
            dispatch_deadline_seconds=15.0,
            max_retry_duration_seconds=self.max_retry_duration,
            min_backoff_seconds=0.1,
            max_backoff_seconds=0.1,
            max_doublings=0,
        )


COMBINATIONS = {
    "attempts-only": Limits(max_attempts=3, max_retry_duration=0),
    "both": Limits(max_attempts=2, max_retry_duration=1.5),
    "duration-only": Limits(max_attempts=-1, max_retry_duration=1.0),
    "unlimited": Limits(max_attempts=-1, max_retry_duration=0),
}


class Stack:
    """An emulator with a queue per combination and the paused dead-letter queue, and the handler serving."""

    def __init__(self, emulator: CloudTasksEmulator, port: int, client: tasks_v2.CloudTasksClient) -> None:
        self.emulator = emulator
        self.url = f"http://127.0.0.1:{port}"
        self.client = client
        self.log = io.StringIO()

    def create(self, key: str, task_id: str, body: bytes, path: str = "/fail", **headers: str) -> tasks_v2.Task:
        request = tasks_v2.HttpRequest(url=self.url + path, body=body, headers=headers)
        task = tasks_v2.Task(name=f"{LOCATION}/queues/{key}/tasks/{task_id}", http_request=request)
        return self.client.create_task(parent=f"{LOCATION}/queues/{key}", task=task)

    def dead_letters(self) -> list[tasks_v2.Task]:
        view = tasks_v2.Task.View.FULL
        return list(self.client.list_tasks(tasks_v2.ListTasksRequest(parent=DEAD_LETTERS, response_view=view)))

    def task_in_queue(self, name: str) -> tasks_v2.Task | None:
        try:
            return self.client.get_task(name=name)
        except Exception:
            return None

    def wait(self, condition: Callable[[], Any], what: str) -> Any:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if value := condition():
                return value
            time.sleep(0.02)
        raise AssertionError(f"not within {WAIT_S:g}s: {what}")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with CloudTasksEmulator(port=0) as emulator:
        emulator.faults.recording = True
        for key, limits in COMBINATIONS.items():
            emulator.core.create_queue(tasks_v2.CreateQueueRequest(parent=LOCATION, queue=limits.queue(key)))
        emulator.core.create_queue(
            tasks_v2.CreateQueueRequest(parent=LOCATION, queue=tasks_v2.Queue(name=DEAD_LETTERS))
        )
        emulator.core.pause_queue(tasks_v2.PauseQueueRequest(name=DEAD_LETTERS))
        settings = HandlerSettings(
            queues={key: limits.entry(key) for key, limits in COMBINATIONS.items()},
            invoker_emails=frozenset(),
            dead_letter_queue=DEAD_LETTERS,
            emulator_host=emulator.address,
        )
        log = io.StringIO()
        app = create_app(router, settings, log=JsonLog(log))
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        channel = grpc.insecure_channel(emulator.address)
        client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
        running = Stack(emulator, port, client)
        running.log = log
        running.wait(lambda: server.started, "the handler started")
        try:
            yield running
        finally:
            server.should_exit = True
            thread.join(WAIT_S)
            channel.close()


def letter_of(stack: Stack, key: str, task_id: str) -> tasks_v2.Task | None:
    name = f"{DEAD_LETTERS}/tasks/{dead_letter_task_id(key, task_id)}"
    return next((t for t in stack.dead_letters() if t.name == name), None)


BINARY = bytes(range(256)) * 3 + b"\xff\xfe not utf-8"


def test_attempts_only_the_last_attempt_is_one_final_dead_letter_byte_for_byte(stack: Stack) -> None:
    task = stack.create("attempts-only", "t1", BINARY, **{"Content-Type": "image/png", "X-Tenant": "acme"})
    letter = stack.wait(lambda: letter_of(stack, "attempts-only", "t1"), "a dead letter")
    stack.wait(lambda: stack.task_in_queue(task.name) is None, "the task acknowledged")
    meta = DeadLetterMeta.from_headers(letter.http_request.headers)
    assert (meta.queue, meta.task, meta.attempt, meta.final) == ("attempts-only", "t1", 3, True)
    assert meta.reason == "final attempt (3 of 3): RuntimeError: downstream down"
    assert letter.http_request.body == BINARY
    assert (meta.size, meta.sha256) == (len(BINARY), hashlib.sha256(BINARY).hexdigest())
    assert letter.http_request.url == f"{stack.url}/fail"
    # Names as the handler's server hands them over (lower case: HTTP header names ignore case).
    headers = {name.lower(): value for name, value in without_metadata(letter.http_request.headers).items()}
    assert headers["content-type"] == "image/png" and headers["x-tenant"] == "acme"
    assert not any(name.lower().startswith("x-cloudtasks-") for name in headers)
    assert (
        "Authorization" not in letter.http_request.headers and not letter.http_request.oidc_token.service_account_email
    )


@pytest.mark.parametrize("key", ["both", "duration-only"])
def test_a_duration_limit_is_retried_past_the_attempt_limit_and_recorded_once(stack: Stack, key: str) -> None:
    """Cloud Tasks goes on retrying until the duration is used up too. The handler cannot see the first
    attempt's time: it records the task provisionally on the first attempt that may be the last, answers 500
    so the retries go on, and the record stays one dead letter however many attempts follow."""
    task = stack.create(key, "t1", b'{"n": 1}', **{HEADER_NOT_BEFORE: f"{time.time():.3f}"})
    stack.wait(lambda: stack.task_in_queue(task.name) is None, "Cloud Tasks stopped retrying")
    records = [
        call for call in stack.emulator.faults.calls("CreateTask") if call.request.parent == DEAD_LETTERS
    ]  # every record the handler made of this task
    records = [call for call in records if f"{key}_t1" in call.request.task.name]
    (letter,) = [t for t in stack.dead_letters() if DeadLetterMeta.from_headers(t.http_request.headers).queue == key]
    meta = DeadLetterMeta.from_headers(letter.http_request.headers)
    assert not meta.final and meta.reason.startswith("maybe the final attempt")
    assert letter.http_request.body == b'{"n": 1}'
    assert len(records) >= 2, "retried past the attempt limit, each failure recorded (as one dead letter)"


def test_no_limits_a_task_of_known_age_is_retried_and_never_recorded(stack: Stack) -> None:
    task = stack.create("unlimited", "young", b"{}", **{HEADER_NOT_BEFORE: f"{time.time():.3f}"})
    stack.wait(lambda: (t := stack.task_in_queue(task.name)) is not None and t.dispatch_count >= 5, "five attempts")
    assert letter_of(stack, "unlimited", "young") is None
    stack.client.delete_task(name=task.name)


def test_no_limits_a_task_of_unknown_age_is_recorded_provisionally_and_retried(stack: Stack) -> None:
    task = stack.create("unlimited", "ageless", b"{}")
    letter = stack.wait(lambda: letter_of(stack, "unlimited", "ageless"), "a provisional dead letter")
    assert not DeadLetterMeta.from_headers(letter.http_request.headers).final
    stack.wait(lambda: (t := stack.task_in_queue(task.name)) is not None and t.dispatch_count >= 3, "retries go on")
    stack.client.delete_task(name=task.name)


def test_a_permanent_failure_is_a_final_dead_letter_and_its_log_entry_names_it(stack: Stack) -> None:
    stack.create("attempts-only", "p1", b"payload", path="/permanent")
    letter = stack.wait(lambda: letter_of(stack, "attempts-only", "p1"), "a dead letter")
    meta = DeadLetterMeta.from_headers(letter.http_request.headers)
    assert meta.final and meta.attempt == 1 and meta.reason == "permanent failure: never valid"
    entry = stack.wait(
        lambda: next((line for line in stack.log.getvalue().splitlines() if letter.name in line), None), "a log entry"
    )
    record = json.loads(entry)["deadLetter"]
    assert record["stored"] == "recorded" and record["sha256"] == hashlib.sha256(b"payload").hexdigest()
    # The queue holds the body: the entry names it and does not repeat it.
    assert "payload" not in record and "payloadBase64" not in record


def test_a_body_that_cannot_fit_beside_the_metadata_is_named_not_altered() -> None:
    sink = CloudTasksDeadLetters(DEAD_LETTERS, JsonLog(io.StringIO()))
    body = b"x" * (1024 * 1024 - 10)
    task = sink.task(dead_letter("q", "t", "/p", 1, "why", body, url="https://s.run.app/p"), datetime.now(UTC))
    meta = DeadLetterMeta.from_headers(task.http_request.headers)
    assert task.http_request.body == b""
    assert (meta.size, meta.sha256) == (len(body), hashlib.sha256(body).hexdigest())
    assert "does not fit beside this dead letter's metadata" in meta.body_omitted
    small = sink.task(dead_letter("q", "t", "/p", 1, "why", b"ok", url="https://s.run.app/p"), datetime.now(UTC))
    assert small.http_request.body == b"ok" and not DeadLetterMeta.from_headers(small.http_request.headers).body_omitted


def test_the_dead_letter_queue_refusing_the_record_is_answered_500_and_retried(stack: Stack) -> None:
    refused: list[str] = []

    def once(request: Any) -> Fault | None:
        if "sink-down" in request.task.name and request.parent == DEAD_LETTERS and not refused:
            refused.append(request.task.name)
            return Fault(grpc.StatusCode.UNAVAILABLE, "dead-letter queue unavailable")
        return None

    stack.emulator.faults.fail_when("CreateTask", once)
    task = stack.create("attempts-only", "sink-down", b"{}", path="/permanent")
    letter = stack.wait(lambda: letter_of(stack, "attempts-only", "sink-down"), "a dead letter on the retry")
    assert refused and DeadLetterMeta.from_headers(letter.http_request.headers).attempt == 2
    stack.wait(lambda: stack.task_in_queue(task.name) is None, "acknowledged once recorded")
