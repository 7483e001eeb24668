"""The lean task route (issue 16) answers, logs and refuses exactly as the Starlette Response path did."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from contract.handler_env import QueueEntry
from contract.outcomes import TaskOutcome
from handler import app as app_module
from handler.app import Reply, create_app
from handler.dead_letters import MemoryDeadLetters
from handler.environment import HandlerSettings
from handler.idempotency import Claim, MemoryStore
from handler.structured_log import JsonLog, encode_line, now_text
from handler.tasks import TaskContext, TaskRouter

QUEUE = "tasks-dev-default-a1b2c3"  # no dispatch deadline: work is never cut short
SETTINGS = HandlerSettings(queues={QUEUE: QueueEntry("default", max_attempts=3)}, invoker_emails=frozenset())
router = TaskRouter()


@router.task("/tasks/ok")
async def ok(payload: Any, context: TaskContext) -> None:
    return None


@router.task("/tasks/own-timeout")
async def own_timeout(payload: Any, context: TaskContext) -> None:
    raise TimeoutError("the database did not answer")


def scope(path: str, task: str = "t1", **extra: str) -> dict[str, Any]:
    headers = {"x-cloudtasks-queuename": QUEUE, "x-cloudtasks-taskname": task, "x-cloudtasks-taskretrycount": "0"}
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers | extra).items()]
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": raw,
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8080)}  # fmt: skip


def call(app: Any, request: dict[str, Any], messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The app's ASGI messages for one request whose receive() yields `messages` in turn."""
    sent: list[dict[str, Any]] = []
    incoming = iter(messages)

    async def receive() -> dict[str, Any]:
        return next(incoming)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(request, receive, send))
    return sent


def body(data: bytes = b"{}") -> dict[str, Any]:
    return {"type": "http.request", "body": data, "more_body": False}


def starlette_answer(reply: Reply) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """What the handler sent before: Starlette's Response, built from the reply as Reply.response() built it."""
    content: dict[str, Any] = {"status": reply.outcome}
    if reply.reason:
        content["reason"] = reply.reason
    headers = {"Retry-After": str(max(1, round(reply.retry_after)))} if reply.retry_after else {}
    if reply.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="task handler"'
    if reply.status == 408:
        headers["Connection"] = "close"
    response = Response(
        json.dumps(content, separators=(",", ":")), reply.status, headers=headers, media_type="application/json"
    )
    return list(response.raw_headers), bytes(response.body)


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, TaskOutcome.DONE),
        Reply(200, TaskOutcome.DUPLICATE, "this task was done before"),
        Reply(429, TaskOutcome.RETRY, "slow down", 12.4),
        Reply(429, TaskOutcome.IN_PROGRESS, "another copy of this task is running", 0.2),
        Reply(401, TaskOutcome.REFUSED, "no token"),
        Reply(408, TaskOutcome.REJECTED, "the body did not arrive within 15s"),
        Reply(500, TaskOutcome.FAILED, "RuntimeError: caf\u00e9 \ud800"),  # a lone surrogate: ASCII JSON
    ],
)
def test_a_reply_goes_out_with_the_head_and_body_starlettes_response_gave(reply: Reply) -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(reply.send(send))
    asyncio.run(reply.send(send))  # the encoding is kept: a second answer is the same
    headers, content = starlette_answer(reply)
    for start, end in (sent[0:2], sent[2:4]):
        assert start == {"type": "http.response.start", "status": reply.status, "headers": headers}
        assert end == {"type": "http.response.body", "body": content}


def test_a_done_task_is_answered_and_logged_in_full() -> None:
    log = io.StringIO()
    app = create_app(router, SETTINGS, dead_letters=MemoryDeadLetters(), log=JsonLog(log, project="p"))
    trace = {"x-cloud-trace-context": "105445aa7843bc8bf206b12000100000/1;o=1"}
    sent = call(app, scope("/tasks/ok", **trace), [body()])
    assert sent[0]["status"] == 200 and sent[1]["body"] == b'{"status":"done"}'
    (entry,) = [json.loads(line) for line in log.getvalue().splitlines()]
    assert list(entry) == ["severity", "message", "time", "outcome", "path", "latencyMs", "httpRequest", "queue",
                           "task", "attempt", "logging.googleapis.com/trace"]  # fmt: skip
    assert (entry["severity"], entry["message"], entry["outcome"], entry["path"]) == (
        "INFO", "task done", "done", "/tasks/ok"
    )  # fmt: skip
    assert entry["httpRequest"] | {"latency": None} == {
        "requestMethod": "POST", "requestUrl": "/tasks/ok", "status": 200, "latency": None
    }  # fmt: skip
    assert (entry["queue"], entry["task"], entry["attempt"]) == (QUEUE, "t1", 1)
    assert entry["logging.googleapis.com/trace"] == "projects/p/traces/105445aa7843bc8bf206b12000100000"


def test_a_work_functions_own_timeout_without_a_dispatch_deadline_is_a_retryable_failure() -> None:
    """No deadline means no timer around the work: its own TimeoutError is an ordinary failure, never "outlived"."""
    letters = MemoryDeadLetters()
    app = create_app(router, SETTINGS, dead_letters=letters, log=JsonLog(io.StringIO()))
    sent = call(app, scope("/tasks/own-timeout"), [body()])
    assert (sent[0]["status"], json.loads(sent[1]["body"])) == (
        500, {"status": TaskOutcome.FAILED, "reason": "TimeoutError: the database did not answer"}
    )  # fmt: skip
    assert letters.letters == []


def test_a_body_in_several_messages_is_read_whole() -> None:
    seen: list[Any] = []
    chunked = TaskRouter()

    @chunked.task("/tasks/echo")
    async def echo(payload: Any, context: TaskContext) -> None:
        seen.append(payload)

    app = create_app(chunked, SETTINGS, log=JsonLog(io.StringIO()))
    parts = [{"type": "http.request", "body": part, "more_body": True} for part in (b'{"a"', b"", b":1")]
    sent = call(app, scope("/tasks/echo"), [*parts, body(b"}")])
    assert (sent[0]["status"], seen) == (200, [{"a": 1}])


def test_a_caller_that_hangs_up_during_the_body_holds_no_claim() -> None:
    store = MemoryStore()
    app = create_app(router, SETTINGS, store=store, log=JsonLog(io.StringIO()))
    first = {"type": "http.request", "body": b"{", "more_body": True}
    with pytest.raises(ClientDisconnect):
        call(app, scope("/tasks/ok"), [first, {"type": "http.disconnect"}])
    assert asyncio.run(store.claim(f"{QUEUE}/t1", "retry")) is Claim.NEW


def test_write_and_emit_make_the_same_line() -> None:
    emitted, written = io.StringIO(), io.StringIO()
    fields = {"queue": QUEUE, "attempt": 2, "nested": {"status": 500}, "outcome": TaskOutcome.FAILED}
    JsonLog(emitted, project="p").emit("ERROR", "task failed", trace="abc/1", **fields)
    JsonLog(written, project="p").write("ERROR", "task failed", fields, "abc/1")
    strip = [{k: v for k, v in json.loads(out.getvalue()).items() if k != "time"} for out in (emitted, written)]
    assert strip[0] == strip[1] == {"severity": "ERROR", "message": "task failed", **fields,
                                    "logging.googleapis.com/trace": "projects/p/traces/abc"}  # fmt: skip


class Record:
    """A value neither encoder knows: both write its str(), through default=str."""

    def __str__(self) -> str:
        return "record#7"


@dataclasses.dataclass
class Point:
    x: int


# What the stdlib's encoder wrote for every line before orjson (json.dumps with default=str and no spaces), held to
# the line encode_line writes, character for character.
SAME_AS_STDLIB = {
    "plain": {"severity": "INFO", "latencyMs": 0.123, "status": 200, "ok": True, "none": None, "list": [1, "a"]},
    "nested": {"httpRequest": {"requestMethod": "POST", "status": 500, "latency": "0.000123s"}},
    "str enum": {"outcome": TaskOutcome.DONE},
    "beyond ASCII": {"reason": "café 東京 \U0001f600"},
    "lone surrogate": {"reason": "bad \ud800 text"},
    "int past 64 bits": {"big": 2**70, "negative": -(2**64)},
    "dataclass": {"point": Point(1)},
    "datetime": {"at": datetime(2026, 12, 3, 14, 0, 1, 5, tzinfo=UTC)},
    "unknown type": {"record": Record()},
    "keys not str": {1: "one", None: "none", 2.5: "two and a half", False: "no"},
    "control characters": {"text": 'quote " backslash \\ newline \n tab \t nul \x00'},
}


@pytest.mark.parametrize("entry", SAME_AS_STDLIB.values(), ids=SAME_AS_STDLIB.keys())
def test_a_log_line_is_what_the_stdlib_encoder_wrote(entry: dict[Any, Any]) -> None:
    line = encode_line(entry)
    assert line == json.dumps(entry, default=str, separators=(",", ":")) + "\n"
    assert line.isascii() and line.count("\n") == 1


def test_a_float_the_stdlib_would_write_as_no_json_is_written_as_null() -> None:
    # json.dumps writes NaN and Infinity: a line Cloud Logging cannot parse as JSON, so it loses every field.
    line = encode_line({"latencyMs": math.nan, "wait": math.inf, "x": 1})
    assert json.loads(line) == {"latencyMs": None, "wait": None, "x": 1}


# Bodies orjson reads and bodies it leaves to the stdlib: NaN, integers past 64 bits, a byte-order mark, UTF-16,
# lone surrogates, nesting past 1,024, bodies no parser takes.
BODIES = [b'{"a": [1, 2.5, "x", null, true]}', b'{"a": 1, "a": 2}', b"-0.0", b"1e400", b'"\\u00e9\\ud83d\\ude00"',
          b"[NaN, Infinity, -Infinity]", str(2**70).encode(), str(-(2**63)).encode(), str(2**64 - 1).encode(),
          b'\xef\xbb\xbf{"bom": 1}', '{"utf16": 1}'.encode("utf-16-le"), b'"\\ud800"', b"[" * 2000 + b"]" * 2000,
          b"", b"{", b"\xff", b'{"a": 1} x', b'"\x01"', b" \t\n 7 \r\n"]  # fmt: skip


def stdlib_reading(body: bytes) -> tuple[str, str]:
    """json.loads's value (its repr tells 1 from 1.0 and -0.0 from 0.0), or its error's type."""
    try:
        return "value", repr(json.loads(body))
    except (ValueError, RecursionError) as err:
        return "error", type(err).__name__


def handler_reading(body: bytes) -> tuple[str, str]:
    try:
        return "value", repr(app_module._json(body))
    except (ValueError, RecursionError) as err:
        return "error", type(err).__name__


@pytest.mark.parametrize("body", BODIES)
def test_a_body_is_read_as_json_loads_reads_it(body: bytes) -> None:
    assert handler_reading(body) == stdlib_reading(body)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES, st.booleans())
def test_any_json_text_is_read_as_json_loads_reads_it(value: Any, ascii_only: bool) -> None:
    body = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    assert handler_reading(body) == stdlib_reading(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_any_bytes_are_read_as_json_loads_reads_them(body: bytes) -> None:
    assert handler_reading(body) == stdlib_reading(body)


def test_the_log_time_is_isoformats_in_utc() -> None:
    before = datetime.now(UTC)
    text = now_text()
    after = datetime.now(UTC)
    stamp = datetime.fromisoformat(text)
    assert before <= stamp <= after and text == stamp.isoformat() and stamp.utcoffset() == timedelta(0)


class Owners:
    """A store that records the owner each attempt claims with."""

    def __init__(self) -> None:
        self.owners: list[str] = []

    async def claim(self, key: str, owner: str) -> Claim:
        self.owners.append(owner)
        return Claim.NEW

    async def complete(self, key: str) -> None:
        return None

    async def release(self, key: str, owner: str) -> None:
        return None


def test_every_attempt_claims_with_its_own_owner_across_instances() -> None:
    """Two instances share a Redis store: no attempt's owner is another's, so no release ends another's claim."""
    store = Owners()
    for _ in range(2):  # two instances
        app = create_app(router, SETTINGS, store=store, log=JsonLog(io.StringIO()))
        for _ in range(3):  # the same task, attempted again
            call(app, scope("/tasks/ok"), [body()])
    assert len(store.owners) == len(set(store.owners)) == 6
