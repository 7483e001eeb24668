"""Benchmark-only servers for `benchmarks/handler.py --breakdown`: the handler with one step of a no-op task
stubbed out, to attribute its cost. Never a product path: the handler itself has no such switches.

    python benchmarks/handler_contenders.py STEP PORT     STEP: full, no-request-log, no-claim, no-service, server-only
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from handler.__main__ import serve
from handler.app import _DONE, PostsToTasks, create_app, health
from handler.environment import HandlerSettings
from handler.idempotency import Claim
from handler.structured_log import JsonLog
from handler.task_types import router

STEPS = ("full", "no-request-log", "no-claim", "no-service", "server-only")


class NoRequestLog(JsonLog):
    """Drops the per-request entry (the only `write` caller); other entries go out as ever."""

    def write(self, severity: str, message: str, fields: Any, trace: str | None = None) -> None:
        if "httpRequest" not in fields:
            super().write(severity, message, fields, trace)


class NoClaims:
    async def claim(self, key: str, owner: str) -> Claim:
        return Claim.NEW

    async def complete(self, key: str) -> None:
        return None

    async def release(self, key: str, owner: str) -> None:
        return None


class Done:
    """The task's answer with nothing behind it: the app's dispatch and the server's HTTP only."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass
        await _DONE.send(send)


class AnswerEverything(Done):
    """Every request, GET /health or a task, answered at once with no Starlette: what is left is the server's
    own work (uvicorn with the handler's protocol), so its bare and task figures differ by what the task
    request's shape (its headers, its body) costs the server."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":  # no lifespan to run
            await super().__call__(scope, receive, send)


def app(step: str) -> PostsToTasks | AnswerEverything:
    settings = HandlerSettings.from_environ(os.environ)
    if step == "full":
        return create_app(router, settings)
    if step == "no-request-log":
        return create_app(router, settings, log=NoRequestLog(project=settings.project))
    if step == "no-claim":
        return create_app(router, settings, store=NoClaims())
    if step == "no-service":
        done = Done()
        routes = [Route("/health", health, methods=["GET"]), Route("/{path:path}", done, methods=["POST"])]
        return PostsToTasks(done, Starlette(routes=routes))
    if step == "server-only":
        return AnswerEverything()
    raise SystemExit(f"step: {step!r} is not one of {', '.join(STEPS)}")


if __name__ == "__main__":
    step, port = sys.argv[1], int(sys.argv[2])
    serve(app(step), "127.0.0.1", port)
