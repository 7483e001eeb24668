"""The bounds the handler keeps as a server: header and body sizes, slow clients, and values it cannot read.

Over real sockets against the real handler process (test_handler_server's HandlerProcess), with short timeouts
from the command line so the suite stays fast; in process where only the app's answer is under test.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import selectors
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from starlette.testclient import TestClient
from test_handler_app import SETTINGS, log_entries, task_headers
from test_handler_server import QUEUE, QUEUES, HandlerProcess, handler  # noqa: F401  (handler: a fixture)

from contract.cloud_tasks import MAX_TASK_BYTES, MAX_TASK_ID_LENGTH
from contract.outcomes import TaskOutcome
from handler import app as app_module
from handler.app import create_app
from handler.dead_letters import MemoryDeadLetters
from handler.idempotency import Claim, MemoryStore
from handler.limits import BODY_BUFFERED, MAX_HEAD_BYTES, bounded_protocol
from handler.structured_log import JsonLog
from handler.tasks import MalformedHeaders, PermanentError, RetryLater, TaskContext, TaskRouter
from localcloud.stack import free_port

HEADER_TIMEOUT_S = 0.5  # the test server's; production's is handler.limits.HEADER_TIMEOUT_S
BODY_TIMEOUT_S = 1.0
# How long past a timeout the test waits for the server to act on it before calling it a failure.
SLACK_S = 10.0
MiB = 1024 * 1024


@pytest.fixture
def bounded() -> Iterator[HandlerProcess]:
    """The handler with short header and body timeouts."""
    port = free_port()
    command = [sys.executable, "-m", "handler", "--port", str(port),
               "--header-timeout", str(HEADER_TIMEOUT_S), "--body-timeout", str(BODY_TIMEOUT_S)]  # fmt: skip
    process = HandlerProcess(command, {"TASKS_QUEUES": QUEUES}, port)
    yield process
    process.stop()


def head(task: str, content_length: int, extra: bytes = b"") -> bytes:
    """A Cloud Tasks request's head as bytes on the wire, `extra` holding more header lines."""
    lines = (
        "POST /tasks/default HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"X-CloudTasks-QueueName: {QUEUE}\r\nX-CloudTasks-TaskName: {task}\r\nContent-Length: {content_length}\r\n"
    )
    return lines.encode() + extra + b"\r\n"


def answer(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """The next response on `sock`: its status and JSON body."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, json.loads(response.read())


def exchange(sock: socket.socket, request: bytes) -> tuple[int, dict[str, Any]]:
    sock.sendall(request)
    return answer(sock)


def connect(process: HandlerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", process.port))
    sock.settimeout(SLACK_S + 20)
    return sock


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (the peak resident so far) of a process, in KiB."""
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return {name: int(fields[name].split()[0]) for name in ("VmRSS", "VmHWM")}


# --- heads: what Cloud Tasks sends fits; far more is refused by the server, before the app -----------------


OVERSIZED_HEADS = {
    "a 4 MiB header": b"X-Big: " + b"a" * (4 * MiB) + b"\r\n",
    "200,000 headers": b"".join(b"X-H%d: v\r\n" % n for n in range(200_000)),
    "a 20 MB header": b"X-Big: " + b"a" * 20_000_000 + b"\r\n",
    # Just over the bound, and small enough to arrive in one read: the bound holds whatever the reads' sizes.
    "20,000 tiny headers": b"".join(b"h%d:\r\n" % n for n in range(20_000)),
}


def test_oversized_heads_are_refused_431_by_the_server_and_never_reach_the_app(handler: HandlerProcess) -> None:  # noqa: F811
    # Cloud Tasks allows 80 KiB of a task's own headers: ten of 8 KiB pass, beside its own.
    most = b"".join(b"X-Producer-%d: %s\r\n" % (n, b"p" * 8192) for n in range(10))
    with connect(handler) as sock:
        assert exchange(sock, head("most", 2, most) + b"{}") == (200, {"status": TaskOutcome.DONE})
    # The bound is exact: a head of MAX_HEAD_BYTES passes, one byte more does not.
    for task, pad, status in (("at-the-bound", 0, 200), ("a-byte-over", 1, 431)):
        filler = MAX_HEAD_BYTES - len(head(task, 2, b"X-Pad: \r\n")) + pad
        with connect(handler) as sock:
            assert exchange(sock, head(task, 2, b"X-Pad: " + b"p" * filler + b"\r\n") + b"{}")[0] == status
    answers = {}
    for name, extra in OVERSIZED_HEADS.items():
        with connect(handler) as sock:
            status, body = exchange(sock, head(name.replace(" ", "-"), 2, extra) + b"{}")
            answers[name] = (status, body)
    refused = {"status": TaskOutcome.REJECTED, "reason": f"request head is over {MAX_HEAD_BYTES} bytes"}
    assert answers == {name: (431, refused) for name in OVERSIZED_HEADS}
    app_entries = [e for e in handler.log() if e.get("message", "").startswith("task ")]
    assert [e["task"] for e in app_entries] == ["most", "at-the-bound"]


def test_a_task_name_over_the_cloud_tasks_limit_is_refused_before_any_claim() -> None:
    claimed: list[str] = []

    class Claims(MemoryStore):
        async def claim(self, key: str, owner: str) -> Claim:
            claimed.append(key)
            return await super().claim(key, owner)

    router = TaskRouter()
    runs: list[str] = []

    @router.task("/tasks/ok")
    async def ok(payload: Any, context: TaskContext) -> None:
        runs.append(context.task)

    app = create_app(router, SETTINGS, store=Claims(), dead_letters=MemoryDeadLetters(), log=JsonLog(io.StringIO()))
    longest, too_long = "n" * MAX_TASK_ID_LENGTH, "n" * (MAX_TASK_ID_LENGTH + 1)
    with TestClient(app) as client:
        assert client.post("/tasks/ok", content=b"{}", headers=task_headers(longest)).status_code == 200
        refused = client.post("/tasks/ok", content=b"{}", headers=task_headers(too_long))
    assert refused.status_code == 400
    assert refused.json() == {
        "status": TaskOutcome.REJECTED,
        "reason": f"not a Cloud Tasks request: X-CloudTasks-TaskName: {MAX_TASK_ID_LENGTH + 1} characters,"
        f" over the {MAX_TASK_ID_LENGTH} of a Cloud Tasks task id",
    }
    assert claimed == [f"{QUEUE}/{longest}"] and runs == [longest]


# --- bodies: over the 1 MiB task limit, read to the end but never held, and answered -----------------------


def test_a_body_over_the_task_limit_gets_the_contract_answer_on_a_connection_kept_open(
    handler: HandlerProcess,  # noqa: F811
) -> None:
    with connect(handler) as sock:
        for size in (MAX_TASK_BYTES + 1, 20_000_000):
            status, body = exchange(sock, head(f"big-{size}", size) + b"x" * size)
            assert (status, body["status"]) == (200, TaskOutcome.DEAD_LETTERED)
            assert body["reason"] == f"body is over {MAX_TASK_BYTES} bytes"
        # The whole body was read (and dropped): the same connection carries the next tasks, even two in one write.
        sock.sendall(head("after", 2) + b"{}" + head("after-that", 2) + b"{}")
        replies = b""
        while replies.count(b'{"status":"done"}') < 2 and (chunk := sock.recv(65536)):
            replies += chunk
        assert replies.count(b"HTTP/1.1 200 OK\r\n") == 2


def test_memory_stays_flat_under_oversized_requests(handler: HandlerProcess) -> None:  # noqa: F811
    requests = [*list(OVERSIZED_HEADS.values())[:3], b"", b""]
    bodies = [b"{}", b"{}", b"{}", b"x" * (2 * MiB), b"x" * 20_000_000]
    before = memory_kib(handler.process.pid)
    statuses = set()
    for n in range(60):
        extra, body = requests[n % 5], bodies[n % 5]
        with connect(handler) as sock:
            statuses.add(exchange(sock, head(f"m{n}", len(body), extra) + body)[0])
    after = memory_kib(handler.process.pid)
    print(f"handler memory: VmRSS {before['VmRSS']} KiB -> {after['VmRSS']} KiB, peak {after['VmHWM']} KiB")
    assert after["VmRSS"] - before["VmRSS"] < 50 * 1024
    assert after["VmHWM"] - before["VmRSS"] < 50 * 1024  # the peak too: nothing was buffered whole on the way
    assert statuses == {431, 200}


# --- slow clients ------------------------------------------------------------------------------------------


def test_trickling_heads_are_cut_off_at_the_header_timeout(bounded: HandlerProcess) -> None:
    """200 slowloris connections: each sends its head a byte at a time and never ends it."""
    trickling = [connect(bounded) for _ in range(200)]
    with selectors.DefaultSelector() as selector:
        for sock in trickling:
            sock.sendall(b"POST /tasks/default HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            selector.register(sock, selectors.EVENT_READ)
        still_open = set(trickling)
        give_up = time.monotonic() + HEADER_TIMEOUT_S + SLACK_S
        while still_open and time.monotonic() < give_up:
            for sock in list(still_open):
                try:
                    sock.send(b"X")  # the next byte of a header name that never ends
                except OSError:
                    still_open.discard(sock)
            for key, _ in selector.select(timeout=0.1):  # the trickle's pace: a byte a tenth of a second
                sock = key.fileobj  # type: ignore[assignment]
                try:
                    closed = sock.recv(1024) == b""
                except OSError:
                    closed = True
                if closed:
                    still_open.discard(sock)
                    selector.unregister(sock)
    assert not still_open, f"{len(still_open)} of 200 trickling connections still open"
    assert bounded.post("/tasks/default", task="after-the-trickle").json() == {"status": TaskOutcome.DONE}
    for sock in trickling:
        sock.close()


def test_a_trickled_body_holds_no_claim_and_is_cut_off_at_the_body_timeout(bounded: HandlerProcess) -> None:
    sock = connect(bounded)
    sock.sendall(head("slow", 1000))
    some_sent, stop = threading.Event(), threading.Event()

    def trickle() -> None:
        for n in range(1000):
            try:
                sock.send(b" ")
            except OSError:
                return
            if n == 5:
                some_sent.set()
            stop.wait(0.05)

    threading.Thread(target=trickle, daemon=True).start()
    assert some_sent.wait(SLACK_S)
    # The trickling attempt has claimed nothing: another copy of the task runs now.
    assert bounded.post("/tasks/default", task="slow").json() == {"status": TaskOutcome.DONE}
    status, body = answer(sock)
    assert (status, body["status"]) == (408, TaskOutcome.REJECTED)
    assert body["reason"] == f"the body did not arrive within {BODY_TIMEOUT_S:g}s"
    assert sock.recv(1) == b""  # and the connection is closed
    stop.set()
    sock.close()
    entries = [e for e in bounded.log() if e.get("task") == "slow"]
    assert [(e["outcome"], e["httpRequest"]["status"]) for e in entries] == [
        (TaskOutcome.DONE, 200),
        (TaskOutcome.REJECTED, 408),
    ]


# --- values the handler cannot use -------------------------------------------------------------------------

retry_router = TaskRouter()


@retry_router.task("/tasks/later")
async def later(payload: Any, context: TaskContext) -> None:
    raise RetryLater("downstream busy", after_seconds=payload["after"])


@pytest.mark.parametrize(
    ("after", "retry_after"),
    [
        ("1e400", "3600"),  # inf, as JSON's parser reads it
        ("Infinity", "3600"),
        ("7200", "3600"),
        ("-5", "1"),
        ("-Infinity", "1"),
        ("NaN", "30"),
        ('"x"', "30"),
        ("[]", "30"),
    ],
)
def test_retry_later_with_an_unusable_wait_answers_429_with_a_sane_retry_after(after: str, retry_after: str) -> None:
    log = io.StringIO()
    app = create_app(retry_router, SETTINGS, dead_letters=MemoryDeadLetters(), log=JsonLog(log))
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/tasks/later", content=b'{"after": %s}' % after.encode(), headers=task_headers())
    assert response.status_code == 429, response.text
    assert (response.json()["status"], response.headers["Retry-After"]) == (TaskOutcome.RETRY, retry_after)
    value = repr(json.loads(after))
    warnings = [e for e in log_entries(log) if e["severity"] == "WARNING"]
    assert [e["message"] for e in warnings] == [
        f"RetryLater(after_seconds={value}) is not a wait from 0 to 3600 seconds: Retry-After {retry_after}"
    ]
    assert (warnings[0]["queue"], warnings[0]["task"]) == (QUEUE, "t1")


def test_retry_later_with_a_usable_wait_is_answered_as_asked_without_a_warning() -> None:
    log = io.StringIO()
    app = create_app(retry_router, SETTINGS, dead_letters=MemoryDeadLetters(), log=JsonLog(log))
    with TestClient(app) as client:
        response = client.post("/tasks/later", content=b'{"after": 12.4}', headers=task_headers())
    assert (response.status_code, response.headers["Retry-After"]) == (429, "12")
    assert [e["severity"] for e in log_entries(log)] == ["INFO"]


class Unprintable(PermanentError):
    def __str__(self) -> str:
        raise RuntimeError("__str__ itself fails")


ODD_FAILURES: dict[str, tuple[BaseException, int, TaskOutcome]] = {
    "a lone surrogate in a permanent failure": (PermanentError("bad \ud800 byte"), 200, TaskOutcome.DEAD_LETTERED),
    "a lone surrogate in a retry": (RetryLater("bad \ud800 byte", after_seconds=5), 429, TaskOutcome.RETRY),
    "a lone surrogate in any failure": (ValueError("bad \ud800 byte"), 500, TaskOutcome.FAILED),
    "an exception that cannot be printed": (Unprintable(), 200, TaskOutcome.DEAD_LETTERED),
}


@retry_router.task("/tasks/odd")
async def odd(payload: Any, context: TaskContext) -> None:
    raise ODD_FAILURES[payload["case"]][0]


@pytest.mark.parametrize("case", ODD_FAILURES)
def test_odd_failures_from_work_code_still_get_the_contract_answer(case: str) -> None:
    app = create_app(retry_router, SETTINGS, dead_letters=MemoryDeadLetters(), log=JsonLog(io.StringIO()))
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/tasks/odd", content=json.dumps({"case": case}).encode(), headers=task_headers())
    _, status, outcome = ODD_FAILURES[case]
    assert (response.status_code, response.headers["content-type"]) == (status, "application/json"), response.text
    assert response.json()["status"] == outcome and response.json()["reason"]


def raw(headers: dict[str, str]) -> dict[bytes, bytes]:
    """Headers as the ASGI scope holds them (UTF-8 on the wire, as a client sends text beyond Latin-1)."""
    return {name.encode(): value.encode() for name, value in headers.items()}


NOT_COUNTS = ["1_0", "+1", " 1", "1 ", "\u0661", "\uff11", "\u00b2", "-0", "-1", "0x1", "1e3", "1.0", str(2**31)]


@pytest.mark.parametrize("text", NOT_COUNTS)
def test_a_retry_count_python_would_parse_but_cloud_tasks_never_sends_is_malformed(text: str) -> None:
    headers = {"x-cloudtasks-queuename": QUEUE, "x-cloudtasks-taskname": "t", "x-cloudtasks-taskretrycount": text}
    with pytest.raises(MalformedHeaders, match="is not a count"):
        TaskContext.from_headers(raw(headers), lambda _: None)
    headers = {**headers, "x-cloudtasks-taskretrycount": "0", "x-cloudtasks-taskexecutioncount": text}
    with pytest.raises(MalformedHeaders, match="is not a count"):
        TaskContext.from_headers(raw(headers), lambda _: None)


def test_counts_cloud_tasks_sends_are_read() -> None:
    headers = {
        "x-cloudtasks-queuename": QUEUE,
        "x-cloudtasks-taskname": "t",
        "x-cloudtasks-taskretrycount": "07",
        "x-cloudtasks-taskexecutioncount": str(2**31 - 1),
        "x-cloudtasks-taskpreviousresponse": "5_00",
    }
    context = TaskContext.from_headers(raw(headers), lambda _: None)
    assert (context.retry_count, context.execution_count, context.previous_response) == (7, 2**31 - 1, None)


@pytest.mark.parametrize("text", ["1_0", "+1"])
def test_a_malformed_retry_count_gets_the_contract_answer(text: str) -> None:
    app = create_app(retry_router, SETTINGS, dead_letters=MemoryDeadLetters(), log=JsonLog(io.StringIO()))
    with TestClient(app) as client:
        response = client.post("/tasks/later", content=b"{}", headers=task_headers(**{}) | {
            "X-CloudTasks-TaskRetryCount": text})  # fmt: skip
    assert response.status_code == 400
    assert response.json() == {
        "status": TaskOutcome.REJECTED,
        "reason": f"not a Cloud Tasks request: x-cloudtasks-taskretrycount: {text!r} is not a count",
    }


# --- a body the server already holds ---------------------------------------------------------------------------


@pytest.fixture
def scopes() -> Iterator[tuple[int, list[tuple[bool, threading.Event]]]]:
    """uvicorn with the handler's protocol, serving an app that records, for each request, whether its scope said
    the body was buffered when the app started, and that answers once the test lets it (its event)."""
    seen: list[tuple[bool, threading.Event]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        go = threading.Event()
        seen.append((BODY_BUFFERED in scope.get("extensions", {}), go))
        while not go.is_set():
            await asyncio.sleep(0.01)
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=bounded_protocol(10.0), log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    give_up = time.monotonic() + SLACK_S
    while not server.started and time.monotonic() < give_up:
        time.sleep(0.01)
    yield port, seen
    server.should_exit = True
    thread.join(SLACK_S)


def test_the_server_tells_the_app_when_it_holds_the_whole_body(
    scopes: tuple[int, list[tuple[bool, threading.Event]]],
) -> None:
    """Head and body in one read, as a task nearly always comes: the app reads it with no timer. A body still on
    its way: the scope says nothing, so the app's body timeout applies."""
    port, seen = scopes
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(SLACK_S)
    sock.sendall(head("whole", 2) + b"{}")
    wait_for(lambda: len(seen) == 1)
    seen[0][1].set()
    assert answer_status(sock) == 200
    sock.sendall(head("later", 2))  # the next request on the connection: its body follows once the app runs
    wait_for(lambda: len(seen) == 2)
    sock.sendall(b"{}")
    seen[1][1].set()
    assert answer_status(sock) == 200
    sock.close()
    assert [buffered for buffered, _ in seen] == [True, False]


def wait_for(condition: Any) -> None:
    give_up = time.monotonic() + SLACK_S
    while not condition():
        assert time.monotonic() < give_up, "timed out"
        time.sleep(0.01)


def answer_status(sock: socket.socket) -> int:
    response = http.client.HTTPResponse(sock)
    response.begin()
    response.read()
    return response.status


def test_a_body_the_server_holds_is_read_with_no_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_timer(seconds: float) -> Any:
        raise AssertionError(f"a {seconds:g}s timer was armed")

    def read(scope: dict[str, Any]) -> bytes | None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"{}", "more_body": False}

        return asyncio.run(app_module._body(scope, receive, 1.0))

    monkeypatch.setattr(app_module.asyncio, "timeout", no_timer)
    assert read({"extensions": {BODY_BUFFERED: {}}}) == b"{}"
    with pytest.raises(AssertionError, match="a 1s timer was armed"):  # a scope that does not say so
        read({"extensions": {}})
