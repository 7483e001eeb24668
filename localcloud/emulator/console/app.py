"""The console's HTTP face: a JSON API under /api and the static page, as one Starlette app.

GET  /api/queues                                   every queue: config, state, depth, in flight, dispatch rate
GET  /api/projects/P/locations/L/queues/Q/tasks    a page of its tasks (?cursor=&limit=1..1000, default 100;
                                                   ?state=running|retrying|waiting|scheduled)
GET  /api/projects/P/locations/L/queues/Q/tasks/T  one task: its attempt timeline, request, headers, body
GET  /api/finished                                 tasks that left their queue lately (?queue=NAME&limit=)
GET  /api/dead-letters                             a page of the stack's dead letters (?cursor=&limit=)
POST /api/projects/P/locations/L/queues/Q/{pause,resume,purge}
POST /api/projects/P/locations/L/queues/Q/tasks/T/{run,delete}
POST /api/dead-letters/ID/{replay,discard}

Reads come from the core's console reads; actions go through the core's own RPC methods (PauseQueue, RunTask...),
so they behave exactly as the same calls over gRPC. Every error is its status and one line of JSON,
{"error": "..."}.

A web page elsewhere must not be able to purge a developer's queues, nor read their task bodies: every request
must name this console as its Host (127.0.0.1 or localhost: a DNS-rebound name is refused), and a POST from a
browser must come from this console's own page (Sec-Fetch-Site, else Origin). CORS is never granted, and the
page may not be framed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.cloud import tasks_v2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.retry import RetryPolicy, retry_window
from localcloud.emulator.console.dead_letters import ConsoleDeadLetters
from localcloud.emulator.console.rates import DispatchRates
from localcloud.emulator.console.reads import (
    AttemptRow,
    FinishedView,
    QueueView,
    TaskDetail,
    TaskRow,
    TaskState,
    backoff_schedule,
    timeline,
)
from localcloud.emulator.core import CloudTasksCore
from localcloud.emulator.errors import CloudTasksError
from localcloud.emulator.routing import OAuthAuth, OidcAuth, route
from localcloud.emulator.state import AttemptLog
from taskclient.errors import TaskClientError

__all__ = ["ALLOWED_HOSTS", "DEFAULT_PAGE", "MAX_PAGE", "create_app"]

STATIC = Path(__file__).parent / "static"
ALLOWED_HOSTS = ("127.0.0.1", "localhost")
DEFAULT_PAGE = 100
MAX_PAGE = 1000
BODY_TEXT_LIMIT = 64 * 1024  # characters of a body shown as text; the rest is cut (its size is always shown)
BODY_HEX_HEAD = 64  # bytes of a binary body shown in hex
UPCOMING_ATTEMPTS = 5  # next backoffs shown on a retrying task's timeline
_QUEUE = "/api/projects/{project}/locations/{location}/queues/{queue}"
_TASK = _QUEUE + "/tasks/{task}"
_HTTP_FOR_RPC = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
}
_HTTP_FOR_LETTER = {"NOT_FOUND": 404, "REFUSED": 409, "INVALID_ARGUMENT": 400}


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def create_app(core: CloudTasksCore, dead_letters: ConsoleDeadLetters, *, port: int) -> Starlette:
    """The console for `core`, served at http://127.0.0.1:`port`/ (the port its POSTs must come from)."""
    api = ConsoleApi(core, dead_letters)
    routes = [
        Route("/", api.index, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        Route("/api/queues", api.queues, methods=["GET"]),
        Route("/api/finished", api.finished, methods=["GET"]),
        Route("/api/dead-letters", api.dead_letter_page, methods=["GET"]),
        Route("/api/dead-letters/{letter}/{action:str}", api.letter_action, methods=["POST"]),
        Route(_QUEUE + "/tasks", api.tasks, methods=["GET"]),
        Route(_TASK, api.task, methods=["GET"]),
        Route(_TASK + "/{action:str}", api.task_action, methods=["POST"]),
        Route(_QUEUE + "/{action:str}", api.queue_action, methods=["POST"]),
        Route("/api/{rest:path}", api.no_endpoint),
    ]
    origins = frozenset(f"http://{host}:{port}" for host in ALLOWED_HOSTS)
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(LocalRequestsOnly, origins=origins),
            Middleware(SecurityHeaders),
        ],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},
    )


class LocalRequestsOnly:
    """Refuses a request for another host name (400), and a state-changing request that a browser sends from
    another site (403), each with one line of JSON.

    The Host check stops DNS rebinding: a page on evil.example whose name is made to resolve to 127.0.0.1 still
    sends `Host: evil.example`. Browsers mark every request with Sec-Fetch-Site and, for a POST, Origin; a page
    elsewhere can forge neither. A POST with neither (curl, a script) is not a browser's, so no site sent it.
    """

    def __init__(self, app: ASGIApp, origins: frozenset[str]) -> None:
        self.app = app
        self.origins = origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        host = headers.get("host", "")
        if host.rsplit(":", 1)[0] not in ALLOWED_HOSTS:
            message = f"Host {host[:100]!r} is not this console: open it as http://127.0.0.1:PORT/ or localhost"
            await _error(400, message)(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            refusal = self._refusal(headers.get("sec-fetch-site"), headers.get("origin"))
            if refusal:
                await _error(403, f"cross-site request refused: {refusal}")(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, fetch_site: str | None, origin: str | None) -> str:
        if fetch_site is not None and fetch_site not in ("same-origin", "none"):
            return f"Sec-Fetch-Site is {fetch_site!r}; actions are taken only from this console's own page"
        if origin is not None and origin not in self.origins:
            return f"Origin {origin!r} is not this console ({' or '.join(sorted(self.origins))})"
        return ""


class SecurityHeaders:
    """Everything the page needs is served from here: the policy lets it load nothing else, nor be framed."""

    POLICY = (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'none';"
        " frame-ancestors 'none'"
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", self.POLICY.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cache-control", b"no-store"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _error(exc.status, exc.message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return _error(405, f"{request.method} is not allowed on {request.url.path}")
    return _error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")


class ConsoleApi:
    def __init__(self, core: CloudTasksCore, dead_letters: ConsoleDeadLetters) -> None:
        self.core = core
        self.dead_letters = dead_letters
        self.rates = DispatchRates()

    # Endpoints that call the core hold its lock only for its reads; those that make gRPC calls (dead letters)
    # are plain functions, which Starlette runs in its thread pool, off the event loop.

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def no_endpoint(self, request: Request) -> Response:
        raise ApiError(404, f"no such endpoint: {request.method} {request.url.path}")

    async def queues(self, request: Request) -> Response:
        views = self.core.console_queues()
        now = self.core.clock.now()
        rates = self.rates.observe(now, {view.name: view.dispatched for view in views})
        dead_letter_queue = self.dead_letters.queue_name(view.name for view in views)
        return JSONResponse(
            {"now": now, "queues": [queue_json(view, rates.get(view.name), dead_letter_queue) for view in views]}
        )

    async def tasks(self, request: Request) -> Response:
        name = _queue_name(request)
        after = _cursor(request)
        limit = _limit(request)
        state = _state(request)
        page = self.core.console_tasks(name, after=after, limit=limit, state=state)
        if page is None:
            raise ApiError(404, f"queue: {name!r} is not a queue on this emulator")
        return JSONResponse(
            {
                "now": self.core.clock.now(),
                "queue": name,
                "state": state.value if state else None,
                "total": page.total,
                "offset": page.before,
                "tasks": [task_row_json(row) for row in page.rows],
                "nextCursor": str(page.next_after) if page.next_after is not None else None,
            }
        )

    async def task(self, request: Request) -> Response:
        name = _queue_name(request) + "/tasks/" + request.path_params["task"]
        detail = self.core.console_task(name)
        if detail is None:
            raise ApiError(404, f"task: {name!r} is neither in its queue nor among the recently finished tasks")
        return JSONResponse({"now": self.core.clock.now(), **task_detail_json(detail)})

    async def finished(self, request: Request) -> Response:
        queue = request.query_params.get("queue") or None
        if queue is not None and queue not in {view.name for view in self.core.console_queues()}:
            raise ApiError(404, f"queue: {queue!r} is not a queue on this emulator")
        views = self.core.console_finished(queue, _limit(request))
        return JSONResponse({"now": self.core.clock.now(), "tasks": [finished_json(view) for view in views]})

    def dead_letter_page(self, request: Request) -> Response:
        page = self.dead_letters.page(_cursor(request), _limit(request))
        return JSONResponse(
            {
                "now": self.core.clock.now(),
                "queue": page.queue,
                "problem": page.problem or None,
                "replay": {"enabled": page.replay.outputs is not None, "reason": page.replay.reason or None},
                "total": page.total,
                "offset": page.before,
                "letters": page.letters,
                "nextCursor": str(page.next_after) if page.next_after is not None else None,
            }
        )

    def letter_action(self, request: Request) -> Response:
        letter, action = request.path_params["letter"], request.path_params["action"]
        actions = {"replay": self.dead_letters.replay, "discard": self.dead_letters.discard}
        if action not in actions:
            raise ApiError(404, f"action: {action!r} is not one of replay, discard")
        try:
            result = actions[action](letter)
        except TaskClientError as err:
            raise ApiError(_HTTP_FOR_LETTER.get(getattr(err, "code", ""), 409), str(err)) from None
        if not result.ok:
            raise ApiError(409, f"{result.name}: {result.detail}")
        return JSONResponse({"result": result.as_json()})

    async def queue_action(self, request: Request) -> Response:
        name = _queue_name(request)
        action = request.path_params["action"]
        calls: dict[str, Callable[[], Any]] = {
            "pause": lambda: self.core.pause_queue(tasks_v2.PauseQueueRequest(name=name)),
            "resume": lambda: self.core.resume_queue(tasks_v2.ResumeQueueRequest(name=name)),
            "purge": lambda: self.core.purge_queue(tasks_v2.PurgeQueueRequest(name=name)),
        }
        return await _act(calls, action, name, "queue")

    async def task_action(self, request: Request) -> Response:
        name = _queue_name(request) + "/tasks/" + request.path_params["task"]
        action = request.path_params["action"]
        calls: dict[str, Callable[[], Any]] = {
            "run": lambda: self.core.run_task(tasks_v2.RunTaskRequest(name=name)),
            "delete": lambda: self.core.delete_task(tasks_v2.DeleteTaskRequest(name=name)),
        }
        return await _act(calls, action, name, "task")


async def _act(calls: dict[str, Callable[[], Any]], action: str, name: str, what: str) -> Response:
    if action not in calls:
        raise ApiError(404, f"action: {action!r} is not one of {', '.join(calls)}")
    try:
        calls[action]()
    except CloudTasksError as err:
        raise ApiError(_HTTP_FOR_RPC.get(err.code, 500), f"{what} {name}: {err.message}") from None
    return JSONResponse({"done": action, what: name})


# ----- request parameters -----


def _queue_name(request: Request) -> str:
    params = request.path_params
    return f"projects/{params['project']}/locations/{params['location']}/queues/{params['queue']}"


def _cursor(request: Request) -> int:
    text = request.query_params.get("cursor", "")
    if not text:
        return -1
    if not text.isascii() or not text.isdigit():
        raise ApiError(400, f"cursor: {text[:80]!r} is not a cursor (use the nextCursor of the previous page)")
    return int(text)


def _limit(request: Request) -> int:
    text = request.query_params.get("limit", "")
    if not text:
        return DEFAULT_PAGE
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_PAGE):
        raise ApiError(400, f"limit: {text[:80]!r} is not a whole number in 1..{MAX_PAGE}")
    return int(text)


def _state(request: Request) -> TaskState | None:
    text = request.query_params.get("state", "")
    if not text:
        return None
    try:
        return TaskState(text)
    except ValueError:
        raise ApiError(400, f"state: {text[:80]!r} is not one of {', '.join(TaskState)}") from None


# ----- JSON -----


def _number(value: float) -> float | None:
    """JSON has no infinity: an unlimited value is null."""
    return value if math.isfinite(value) else None


def policy_json(policy: RetryPolicy) -> dict[str, Any]:
    return {
        "maxAttempts": policy.max_attempts,
        "maxRetryDuration": policy.max_retry_duration,
        "minBackoff": policy.min_backoff,
        "maxBackoff": policy.max_backoff,
        "maxDoublings": policy.max_doublings,
        "backoffSchedule": backoff_schedule(policy),
        "retryWindow": _number(retry_window(policy)),
    }


def queue_json(view: QueueView, rate: float | None, dead_letter_queue: str | None) -> dict[str, Any]:
    settings = view.settings
    target = settings.target
    routing = None
    if target is not None:
        uri = target.uri
        routing = {
            "method": target.method,
            "uri": None
            if uri is None
            else {
                "scheme": uri.scheme,
                "host": uri.host,
                "port": uri.port,
                "path": uri.path,
                "query": uri.query,
                "mode": "IF_NOT_EXISTS" if uri.if_not_exists else "ALWAYS",
            },
            "headers": [list(pair) for pair in target.headers],
            "auth": _auth_json(target.auth),
        }
    return {
        "name": view.name,
        "id": view.name.rsplit("/", 1)[-1],
        "state": view.state,
        "depth": view.depth,
        "inFlight": view.in_flight,
        "dispatched": view.dispatched,
        "rate": rate,
        "counts": view.counts,
        "rateLimits": {
            "maxDispatchesPerSecond": settings.rate,
            "maxBurstSize": settings.burst,
            "maxConcurrentDispatches": settings.max_concurrent,
        },
        "retry": policy_json(settings.retry),
        "routing": routing,
        "purgeTime": view.purge_time,
        "deadLetters": view.name == dead_letter_queue,
    }


def _auth_json(auth: OidcAuth | OAuthAuth | None) -> dict[str, str] | None:
    if isinstance(auth, OidcAuth):
        return {"kind": "OIDC", "account": auth.service_account_email, "audience": auth.audience}
    if isinstance(auth, OAuthAuth):
        return {"kind": "OAuth", "account": auth.service_account_email, "scope": auth.scope}
    return None


def _attempt_json(log: AttemptLog | None) -> dict[str, Any] | None:
    if log is None:
        return None
    return {"schedule": log.schedule, "dispatch": log.dispatch, "response": log.response, "status": log.status}


def task_row_json(row: TaskRow) -> dict[str, Any]:
    return {
        "name": row.name,
        "id": row.name.rsplit("/", 1)[-1],
        "seq": row.seq,
        "state": row.state.value,
        "created": row.created,
        "schedule": row.schedule,
        "attempts": row.dispatch_count,
        "responses": row.response_count,
        "lastAttempt": _attempt_json(row.last_attempt),
    }


def _timeline_json(row: AttemptRow, ended: bool) -> dict[str, Any]:
    return {
        "number": row.number,
        "schedule": row.schedule,
        "dispatch": row.dispatch,
        "response": row.response,
        "status": row.status,
        "outcome": _outcome(row, ended),
        "latency": row.latency,
        "backoff": row.backoff,
        "lawBackoff": row.law_backoff,
    }


def _outcome(row: AttemptRow, ended: bool) -> str:
    if row.response is None:
        return "abandoned" if ended else "in flight"  # a task deleted or purged while its attempt ran
    if row.status is None:
        return "no response"
    return "succeeded" if 200 <= row.status < 300 else "failed"


def body_json(body: bytes) -> dict[str, Any]:
    """A body as text when it is UTF-8 (cut at BODY_TEXT_LIMIT characters), else its size and a hex head."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return {"size": len(body), "text": None, "hex": body[:BODY_HEX_HEAD].hex(" "), "cut": len(body) > BODY_HEX_HEAD}
    return {"size": len(body), "text": text[:BODY_TEXT_LIMIT], "hex": None, "cut": len(text) > BODY_TEXT_LIMIT}


def task_detail_json(detail: TaskDetail) -> dict[str, Any]:
    rows = timeline(detail)
    ended = detail.ending is not None
    target = detail.queue_settings.target if detail.queue_settings is not None else None
    sent = route(detail.request, target)
    row = detail.row
    upcoming: list[dict[str, Any]] = []
    if not ended and row.state is TaskState.RETRYING:
        # The law's backoffs after the next attempt, should it fail too (and retrying not stop first).
        upcoming = [
            {"afterAttempt": row.dispatch_count + 1 + i, "backoff": delay}
            for i, delay in enumerate(
                backoff_schedule(detail.policy, row.dispatch_count + UPCOMING_ATTEMPTS)[row.dispatch_count :]
            )
        ]
    return {
        "task": task_row_json(row),
        "queue": detail.queue_name,
        "ending": detail.ending,
        "endedAt": detail.ended_at,
        "firstDispatch": detail.first_dispatch,
        "deadline": detail.deadline,
        "policy": policy_json(detail.policy),
        "policySource": detail.policy_source,
        "timeline": [_timeline_json(attempt, ended) for attempt in rows],
        "attemptsNotKept": max(0, row.dispatch_count - len(rows)),
        "upcoming": upcoming,
        "request": {
            "method": sent.method,
            "url": sent.url,
            "taskUrl": detail.request.url,
            "headers": [[key, value] for key, value in sent.headers.items()],
            "auth": _auth_json(sent.auth),
            "body": body_json(sent.body),
            "queueOverrides": target is not None,
        },
    }


def finished_json(view: FinishedView) -> dict[str, Any]:
    return {
        "name": view.name,
        "id": view.name.rsplit("/", 1)[-1],
        "queue": view.queue_name,
        "ending": view.ending,
        "at": view.at,
        "created": view.created,
        "attempts": view.dispatch_count,
        "lastAttempt": _attempt_json(view.last_attempt),
    }
