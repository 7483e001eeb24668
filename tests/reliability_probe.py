"""A handler process for the reliability suite: the real app (`create_app` served by `handler.__main__.serve`),
with task types whose behaviour the tests decide.

`python tests/reliability_probe.py --port P` serves, with the settings from the environment as the real handler
reads them (so token checks are on when the local stack turns them on). Routes:

/tasks/default     the work is announced: "started <task> pid=<pid>" before and "worked <task> pid=<pid>" after,
                   on stdout; payload {"seconds": S} takes S seconds; {"hold": "before"} or {"hold": "after"}
                   blocks (before or after the work) in the first process generation (PROBE_GENERATION unset
                   or 1), so a test knows exactly which tasks are in flight when it kills the process.
/tasks/send-email  the reference task type, unchanged.
/tasks/faulty      what each attempt does is `decide(task id, attempt)`: done, 500, 429 with Retry-After, or a
                   hang that only ends when the caller (Cloud Tasks) gives up and closes the connection.
/tasks/flaky       prints "arrived <task> attempt=<n> at=<epoch seconds>" on arrival, then fails (500) the first
                   payload["fail_attempts"] attempts.
/tasks/ledger      takes bytes: a body whose first byte is 0 is the "broken" kind, refused for good (dead-lettered)
                   in the first process generation and done from generation 2 on (the fix deployed). Each done
                   task prints "ledger <task> sha256=<hex of its body>".

Importable without side effects: the tests use `decide` and `Fault` to know what each attempt must get.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import hashlib
import os
import sys
import time
from enum import StrEnum
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from handler.__main__ import serve
from handler.app import create_app
from handler.environment import HandlerSettings
from handler.task_types import send_email
from handler.tasks import BodyKind, PermanentError, RetryLater, TaskContext, TaskRouter

GENERATION = int(os.environ.get("PROBE_GENERATION", "1"))
HOLD_S = 120  # longer than any test: a held task only ends when the process is killed
HANG_CAP_S = 30  # a hang that outlives this means the caller never gave up: fail loudly, don't hang the test
THROTTLE_RETRY_AFTER_S = 1
BROKEN = b"\x00"  # the first byte of a /tasks/ledger body that generation 1 refuses


class Fault(StrEnum):
    OK = "ok"
    ERROR = "error"  # 500
    THROTTLE = "throttle"  # 429 + Retry-After
    HANG = "hang"  # no answer until the dispatch deadline has passed and the caller hung up


def decide(task: str, attempt: int) -> Fault:
    """What attempt `attempt` of `task` gets: a fixed function of both, ~30 % failures (10 % of each kind)."""
    roll = int.from_bytes(hashlib.sha256(f"{task}#{attempt}".encode()).digest()[:4], "big") % 100
    if roll < 10:
        return Fault.ERROR
    if roll < 20:
        return Fault.THROTTLE
    if roll < 30:
        return Fault.HANG
    return Fault.OK


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


router = TaskRouter()
router.task("/tasks/send-email")(send_email)
_receive: contextvars.ContextVar[Receive] = contextvars.ContextVar("receive")


async def _caller_hung_up() -> None:
    """Wait until the client closes the connection (the body was read already, so the next message is the
    disconnect)."""
    receive = _receive.get()
    while (await receive())["type"] != "http.disconnect":
        pass


@router.task("/tasks/default")
async def announced(payload: Any, context: TaskContext) -> None:
    hold = payload.get("hold") if isinstance(payload, dict) and GENERATION == 1 else None
    say(f"started {context.task} pid={os.getpid()}")
    if hold == "before":
        await asyncio.sleep(HOLD_S)
    if isinstance(payload, dict):
        await asyncio.sleep(float(payload.get("seconds", 0)))
    say(f"worked {context.task} pid={os.getpid()}")
    if hold == "after":
        await asyncio.sleep(HOLD_S)


@router.task("/tasks/faulty")
async def faulty(payload: Any, context: TaskContext) -> None:
    fault = decide(context.task, context.attempt)
    if fault is Fault.ERROR:
        raise RuntimeError(f"injected error on attempt {context.attempt}")
    if fault is Fault.THROTTLE:
        raise RetryLater(f"injected throttle on attempt {context.attempt}", after_seconds=THROTTLE_RETRY_AFTER_S)
    if fault is Fault.HANG:
        await asyncio.wait_for(_caller_hung_up(), HANG_CAP_S)
        raise RuntimeError(f"injected hang on attempt {context.attempt}: the caller hung up")
    say(f"worked {context.task} pid={os.getpid()}")


@router.task("/tasks/flaky")
async def flaky(payload: Any, context: TaskContext) -> None:
    say(f"arrived {context.task} attempt={context.attempt} at={time.time():.6f}")
    if context.attempt <= int(payload.get("fail_attempts", 0)):
        raise RuntimeError(f"failing attempt {context.attempt} on purpose")


@router.task("/tasks/ledger", body=BodyKind.BYTES)
async def ledger(body: bytes, context: TaskContext) -> None:
    if body[:1] == BROKEN and GENERATION < 2:
        raise PermanentError("this kind of body is not handled yet (fixed in generation 2)")
    say(f"ledger {context.task} sha256={hashlib.sha256(body).hexdigest()}")


def with_receive(app: ASGIApp) -> ASGIApp:
    """Makes each request's raw `receive` reachable from its work function (to notice a hang-up)."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        token = _receive.set(receive)
        try:
            await app(scope, receive, send)
        finally:
            _receive.reset(token)

    return wrapped


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    say(f"probe generation={GENERATION} pid={os.getpid()}")
    serve(with_receive(create_app(router, HandlerSettings.from_environ(os.environ))), "127.0.0.1", args.port)
