"""The HTTP side of the handler: Cloud Tasks' requests in, the response contract out.

2xx   the work is done, or the task was dead-lettered (permanent failure, or failure on the final
      attempt), or it is a duplicate of a task already done: Cloud Tasks deletes it
429   retry later (RetryLater, or another copy of the task is running now), with Retry-After
500   a retryable failure: Cloud Tasks retries with the queue's backoff
503   the handler cannot check tokens right now (certs unavailable): retried
400   not a Cloud Tasks request (no X-CloudTasks-* headers, or headers Cloud Tasks never sends); 401/403: token
      refused
408   the body did not arrive within the body timeout (handler.limits), and the connection is closed
431   (from the server, before the app: handler.limits) a request head over the bound
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import json
import math
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, cast

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from contract.cloud_tasks import DEFAULT_MAX_BACKOFF_S, MAX_TASK_BYTES, UNLIMITED_ATTEMPTS
from contract.dead_letters import producer_headers
from contract.outcomes import TaskOutcome
from contract.retry import RetryPolicy
from handler.dead_letters import CloudTasksDeadLetters, DeadLetter, DeadLetterSink, LogDeadLetters, dead_letter
from handler.environment import HandlerSettings
from handler.idempotency import Claim, IdempotencyStore, MemoryStore, RedisStore, lease_seconds
from handler.limits import BODY_BUFFERED, BODY_TIMEOUT_S
from handler.oidc import TokenRejected, TokenVerifier, VerifierUnavailable
from handler.structured_log import JsonLog
from handler.tasks import (
    TRACE_HEADER,
    BodyKind,
    Finality,
    MalformedHeaders,
    PermanentError,
    RetryLater,
    TaskContext,
    TaskRouter,
)

MAX_BODY_BYTES = MAX_TASK_BYTES  # anything bigger did not come from Cloud Tasks intact
IN_PROGRESS_RETRY_AFTER_S = 30
CERTS_RETRY_AFTER_S = 5
# RetryLater's wait goes out as Retry-After, at most an hour: Cloud Tasks' default max_backoff, the longest its own
# schedule waits. A wait that is no number at all (or NaN) says nothing: it gets a middle one.
MAX_RETRY_AFTER_S = DEFAULT_MAX_BACKOFF_S
UNREADABLE_RETRY_AFTER_S = 30
# 19 digits in a row: maybe an integer past 64 bits, which orjson would read as a float (handler.app._json).
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


@dataclass(frozen=True)
class Reply:
    status: int
    outcome: TaskOutcome
    reason: str = ""
    retry_after: float | None = None

    @functools.cached_property
    def _encoded(self) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """The head's headers and the body, as Starlette's Response(media_type="application/json") sends them:
        its own headers first, then content-length and content-type."""
        body: dict[str, Any] = {"status": self.outcome}
        if self.reason:
            body["reason"] = self.reason
        headers = [(b"retry-after", b"%d" % max(1, round(self.retry_after)))] if self.retry_after else []
        if self.status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="task handler"'))
        if self.status == 408:
            headers.append((b"connection", b"close"))  # what a trickling caller sends next is not read
        # ASCII JSON: a reason quoting a work function's message may hold a lone surrogate, which UTF-8 cannot encode.
        content = json.dumps(body, separators=(",", ":")).encode()
        headers += [(b"content-length", b"%d" % len(content)), (b"content-type", b"application/json")]
        return headers, content

    async def send(self, send: Send) -> None:
        headers, content = self._encoded
        await send({"type": "http.response.start", "status": self.status, "headers": list(headers)})
        await send({"type": "http.response.body", "body": content})


# The answer to nearly every request, encoded once (Reply caches its encoding).
_DONE = Reply(200, TaskOutcome.DONE)


class TaskService:
    def __init__(
        self,
        router: TaskRouter,
        settings: HandlerSettings,
        store: IdempotencyStore,
        dead_letters: DeadLetterSink,
        verifier: TokenVerifier | None,
        log: JsonLog,
        body_timeout_s: float = BODY_TIMEOUT_S,
    ) -> None:
        self._router = router
        self._settings = settings
        self._store = store
        self._dead_letters = dead_letters
        self._verifier = verifier
        self._log = log
        self._body_timeout = body_timeout_s
        if verifier is not None and not settings.oidc_audience:
            # Never the request's Host or X-Forwarded-Proto: a caller writes those.
            raise ValueError("token checks need settings.oidc_audience, the service's URL")
        self._audience = settings.oidc_audience or ""
        # Each queue's retry policy, built once: QueueEntry.retry builds a new (equal) one on every call.
        self._retries = {queue: entry.retry for queue, entry in settings.queues.items()}
        self._deadlines = {queue: entry.dispatch_deadline_seconds for queue, entry in settings.queues.items()}
        # Claim owners unique across every instance sharing a store: this service's random prefix and a count, as
        # unique as a random token per attempt and without its system call.
        self._owner_prefix = secrets.token_hex(8) + "."
        self._attempts = itertools.count()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Any POST, as a plain ASGI app: no Response object, no per-request wrappers."""
        reply = await self.handle(Request(scope, receive))
        await reply.send(send)

    async def handle(self, request: Request) -> Reply:
        started = time.perf_counter()
        scope = request.scope
        path: str = scope["path"]
        context: TaskContext | None = None
        malformed: MalformedHeaders | None = None
        # The raw headers in a dict (the last of repeated names wins), only the values read decoded: Starlette's
        # Headers scans its list, and decodes every name, on every lookup.
        headers: dict[bytes, bytes] = dict(scope["headers"])
        try:
            context = TaskContext.from_headers(headers, self._retry)
        except MalformedHeaders as err:
            malformed = err
        # The token is checked first, so a caller without one learns nothing else; the context, when the
        # headers parse, still names the task in the log entry of a refusal.
        reply = None if self._verifier is None else await self._refusal(request, self._verifier)
        if reply is None:
            if context is None:
                reply = Reply(400, TaskOutcome.REJECTED, f"not a Cloud Tasks request: {malformed}")
            else:
                reply = await self._deliver(request, path, context)
        trace = context.trace if context is not None else headers.get(TRACE_HEADER, b"").decode("latin-1")
        self._log_request(path, context, reply, time.perf_counter() - started, trace)
        return reply

    def _deadline(self, queue: str) -> float | None:
        return self._deadlines.get(queue)

    def _retry(self, queue: str) -> RetryPolicy | None:
        return self._retries.get(queue)

    async def _refusal(self, request: Request, verifier: TokenVerifier) -> Reply | None:
        """None when the caller's token lets it call; else the refusal."""
        try:
            await run_in_threadpool(verifier.verify, request.headers.get("authorization"), self._audience)
        except TokenRejected as err:
            return Reply(err.status, TaskOutcome.REFUSED, err.reason)
        except VerifierUnavailable as err:
            return Reply(503, TaskOutcome.FAILED, f"cannot check tokens now: {err}", CERTS_RETRY_AFTER_S)
        return None

    async def _deliver(self, request: Request, path: str, context: TaskContext) -> Reply:
        # Read before the claim: a body that trickles in holds no claim, so a retry of the task meanwhile runs.
        try:
            body = await _body(request.scope, request.receive, self._body_timeout)
        except TimeoutError:
            return Reply(408, TaskOutcome.REJECTED, f"the body did not arrive within {self._body_timeout:g}s")
        key = f"{context.queue}/{context.task}"
        owner = f"{self._owner_prefix}{next(self._attempts)}"  # this attempt's: its release ends no later one's claim
        claim = await self._store.claim(key, owner)
        if claim is Claim.DONE:
            return Reply(200, TaskOutcome.DUPLICATE, "this task was done before")
        if claim is Claim.IN_PROGRESS:
            # Answered 429 on the final attempt, Cloud Tasks would delete the task; if the running copy then
            # fails, nothing retries it. Recorded instead, erring toward a record of a task that may yet succeed.
            reply = Reply(
                429, TaskOutcome.IN_PROGRESS, "another copy of this task is running", IN_PROGRESS_RETRY_AFTER_S
            )
            why = "an earlier attempt of this task is still running; if it fails, no retry will come"
            return await self._failed(request, path, body, context, reply, why)
        try:
            reply = await self._run(request, path, body, context)
        except BaseException:
            # Whatever went wrong (a client that hung up, a bug), the claim must not outlive the request:
            # held, it would answer every retry "in progress" until Cloud Tasks gives up on the task.
            await self._store.release(key, owner)
            raise
        if reply.status < 300:
            await self._store.complete(key)
        else:
            await self._store.release(key, owner)
        return reply

    async def _run(self, request: Request, path: str, body: bytes | None, context: TaskContext) -> Reply:
        task_type = self._router.get(path)
        if task_type is None:
            return await self._dead_letter(request, path, body, context, f"no task type is registered at {path}")
        if body is None:
            return await self._dead_letter(request, path, None, context, f"body is over {MAX_BODY_BYTES} bytes")
        function = task_type.function
        payload: Any = body
        if task_type.body is BodyKind.JSON:
            try:
                payload = _json(body)
            except (ValueError, RecursionError) as err:  # RecursionError: nesting deeper than the parser goes
                reason = f"body is not JSON: {type(err).__name__}: {err}"
                return await self._dead_letter(request, path, body, context, reason)
        deadline = self._deadline(context.queue)
        try:
            if task_type.is_async:
                # Cloud Tasks stops waiting at the dispatch deadline: work past it is cancelled, never left
                # running with the task's claim while the retries are answered "in progress".
                # is_async (asked once, at registration) holds: calling the function makes a coroutine.
                work = cast(Awaitable[None], function(payload, context))
                if not await _within(deadline, work):
                    reason = f"outlived the {deadline:g}s dispatch deadline: cancelled (Cloud Tasks stopped waiting)"
                    return await self._failed(request, path, body, context, Reply(504, TaskOutcome.FAILED, reason))
            else:
                # A blocking work function runs in a worker thread, never on the event loop. A thread cannot
                # be cancelled: it keeps the claim until it ends (a final attempt meanwhile is recorded).
                await run_in_threadpool(function, payload, context)
        except PermanentError as err:
            return await self._dead_letter(request, path, body, context, f"permanent failure: {_message(err)}")
        except RetryLater as err:
            reply = Reply(429, TaskOutcome.RETRY, _message(err), self._retry_after(err.after_seconds, context))
            return await self._failed(request, path, body, context, reply, f"retry later: {_message(err)}")
        except Exception as err:
            return await self._failed(request, path, body, context, Reply(500, TaskOutcome.FAILED, _describe(err)))
        return _DONE

    def _retry_after(self, asked: object, context: TaskContext) -> float | None:
        """RetryLater's wait as the reply's Retry-After: one out of bounds, or no number, is replaced and logged."""
        if asked is None:
            return None
        if isinstance(asked, bool) or not isinstance(asked, int | float) or math.isnan(asked):
            wait: float = UNREADABLE_RETRY_AFTER_S
        elif 0 <= asked <= MAX_RETRY_AFTER_S:
            return asked
        else:
            wait = min(max(asked, 1), MAX_RETRY_AFTER_S)
        self._log.emit(
            "WARNING",
            f"RetryLater(after_seconds={asked!r}) is not a wait from 0 to {MAX_RETRY_AFTER_S:g} seconds:"
            f" Retry-After {wait:g}",
            queue=context.queue,
            task=context.task,
        )
        return wait

    async def _failed(
        self, request: Request, path: str, body: bytes | None, context: TaskContext, reply: Reply, why: str = ""
    ) -> Reply:
        """`reply` for a failed attempt, unless no retry follows it: then the task is recorded and acknowledged.
        When the handler cannot tell, it records the task provisionally and still answers `reply`."""
        why = why or reply.reason
        finality = context.finality(time.time())
        if finality is Finality.FINAL:
            return await self._dead_letter(request, path, body, context, f"final attempt ({_attempts(context)}): {why}")
        if finality is Finality.NOT_FINAL:
            return reply
        reason = f"maybe the final attempt ({_attempts(context)}, {_duration_unknown(context)}): {why}"
        letter = self._letter(request, path, body, context, reason, final=False)
        try:
            await self._dead_letters.record(letter)
        except Exception as err:
            note = f"; could not record it provisionally ({_describe(err)})"
        else:
            note = "; recorded as a provisional dead letter, in case no retry comes"
        return dataclasses.replace(reply, reason=reply.reason + note)

    async def _dead_letter(
        self, request: Request, path: str, body: bytes | None, context: TaskContext, reason: str
    ) -> Reply:
        try:
            await self._dead_letters.record(self._letter(request, path, body, context, reason, final=True))
        except Exception as err:
            return Reply(500, TaskOutcome.FAILED, f"dead-letter sink failed ({_describe(err)}); {reason}")
        return Reply(200, TaskOutcome.DEAD_LETTERED, reason)

    def _letter(
        self, request: Request, path: str, body: bytes | None, context: TaskContext, reason: str, *, final: bool
    ) -> DeadLetter:
        return dead_letter(
            context.queue,
            context.task,
            path,
            context.attempt,
            reason,
            body,
            headers=producer_headers(request.headers),
            final=final,
            url=self._task_url(request, path),
        )

    def _task_url(self, request: Request, path: str) -> str:
        """The URL the task was sent to: the service's own (https, the stack's deterministic URL) when known,
        else as this request arrived."""
        base = (self._settings.oidc_audience or f"{request.url.scheme}://{request.url.netloc}").rstrip("/")
        query = request.url.query
        return f"{base}{path}?{query}" if query else f"{base}{path}"

    def _log_request(
        self, path: str, context: TaskContext | None, reply: Reply, seconds: float, trace: str | None
    ) -> None:
        severity = "INFO" if reply.status < 400 or reply.status == 429 else "WARNING"
        if reply.outcome in (TaskOutcome.DEAD_LETTERED, TaskOutcome.FAILED):
            severity = "ERROR"
        fields: dict[str, Any] = {
            "outcome": reply.outcome,
            "path": path,
            "latencyMs": round(seconds * 1e6) / 1000,  # to the microsecond: round(x, 3) costs a tenth of the line
            "httpRequest": {
                "requestMethod": "POST",
                "requestUrl": path,
                "status": reply.status,
                "latency": f"{seconds:.6f}s",
            },
        }
        if reply.reason:
            fields["reason"] = reply.reason
        if context is not None:
            fields["queue"] = context.queue
            fields["task"] = context.task
            fields["attempt"] = context.attempt
            message = "task " + reply.outcome  # its value: str's + is cheaper than an enum's format()
        else:
            message = "request " + reply.outcome
        self._log.write(severity, message, fields, trace)


async def _within(deadline: float | None, work: Awaitable[Any]) -> bool:
    """Runs `work`; False when the deadline cut it short. A TimeoutError of the work's own passes through."""
    if deadline is None:  # no deadline to keep: a scope that never expires would only cost a timer's bookkeeping
        await work
        return True
    scope = asyncio.timeout(deadline)
    try:
        async with scope:
            await work
    except TimeoutError:
        if scope.expired():
            return False
        raise
    return True


def _attempts(context: TaskContext) -> str:
    limit = context.max_attempts
    return f"{context.attempt} of {limit}" if limit not in (None, UNLIMITED_ATTEMPTS) else f"attempt {context.attempt}"


def _duration_unknown(context: TaskContext) -> str:
    retry = context.retry
    if retry is not None and retry.max_retry_duration > 0:
        return f"max_retry_duration {retry.max_retry_duration:g}s may be used up"
    return "the 31-day task retention may be reached"


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {_message(err)}"


def _message(err: BaseException) -> str:
    try:
        return str(err)
    except Exception:  # a work function's exception whose __str__ fails: the answer must not
        return f"(its message cannot be read: {type(err).__name__}.__str__ failed)"


def _json(body: bytes) -> Any:
    """json.loads(body), read by orjson when it gives the same value (nearly always, at a fiftieth of the cost).
    What orjson refuses (NaN, a byte-order mark, UTF-16, lone surrogates, nesting past 1,024), and any run of 19
    digits (orjson reads an integer past 64 bits as a float), goes to the stdlib, which takes it or raises its own
    error: either way the work gets the value, or the error, json.loads gives."""
    if _LONG_DIGITS.search(body) is None:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    return json.loads(body)


async def _body(scope: Scope, receive: Receive, timeout_s: float) -> bytes | None:
    """The body, or None when it is over the limit; TimeoutError when it has not all arrived within `timeout_s`.
    A body the server already holds whole (handler.limits marks its scope) is read without a timer: nothing is
    left to wait for, and a timer is the dearest step of a task's read."""
    if BODY_BUFFERED in scope.get("extensions", ()):
        return await _read_body(receive)
    async with asyncio.timeout(timeout_s):
        return await _read_body(receive)


async def _read_body(receive: Receive) -> bytes | None:
    """Past the limit the rest is read and dropped, never held: the caller then reads the answer rather than a reset
    connection, and the connection carries the next request. A caller that hangs up meanwhile: ClientDisconnect,
    as Starlette's Request.stream() raises. Read from ASGI `receive` itself: the stream's async generator costs
    more than the one message a task's body nearly always is."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        if message["type"] != "http.request":
            continue
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= MAX_BODY_BYTES:
            chunks.append(chunk)
        elif chunks:
            chunks.clear()
        if not message.get("more_body", False):
            break
    if size > MAX_BODY_BYTES:
        return None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def health(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


def create_app(
    router: TaskRouter,
    settings: HandlerSettings,
    *,
    store: IdempotencyStore | None = None,
    dead_letters: DeadLetterSink | None = None,
    verifier: TokenVerifier | None = None,
    log: JsonLog | None = None,
    body_timeout_s: float = BODY_TIMEOUT_S,
) -> PostsToTasks:
    """The ASGI app. Defaults: idempotency in Redis when `settings.redis_url`, else in memory; dead letters to
    `settings.dead_letter_queue` when set, else to the log; token checks only when `settings.verify_oidc`
    (then against `settings.certs_url`, accepting `settings.invoker_emails`); a body must arrive within
    `body_timeout_s`."""
    log = log or JsonLog(project=settings.project)
    if verifier is None and settings.verify_oidc:
        verifier = TokenVerifier(allowed_emails=settings.invoker_emails, certs_url=settings.certs_url)
    owned_store = None
    if store is None:
        store = owned_store = _idempotency_store(settings, log)
    owned_sink = None
    if dead_letters is None:
        dead_letters = owned_sink = _dead_letter_sink(settings, log)
    service = TaskService(router, settings, store, dead_letters, verifier, log, body_timeout_s)
    for queue_id, entry in settings.queues.items():
        warning = entry.path and router.no_task_type_warning(entry.key, entry.path)
        if warning:
            log.emit("WARNING", warning, queue=queue_id)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if isinstance(owned_store, RedisStore):
                await owned_store.aclose()
            if isinstance(owned_sink, CloudTasksDeadLetters):
                owned_sink.close()

    # Cloud Run reserves paths ending in "z" (such as /healthz), hence /health.
    routes = Starlette(
        routes=[Route("/health", health, methods=["GET"]), Route("/{path:path}", service, methods=["POST"])],
        lifespan=lifespan,
    )
    return PostsToTasks(service, routes)


class PostsToTasks:
    """The app: every POST goes straight to the task service, everything else (GET /health, the 405s, the
    lifespan) to Starlette. Starlette's task route takes a POST to any path, so it would hand each one to the
    service too, after its two middlewares, a regex per route and a copy of the scope: the task's dearest step
    after the service itself. The server (handler.__main__) sets no root path, so a POST's path is the task's."""

    def __init__(self, tasks: ASGIApp, routes: Starlette) -> None:
        self.tasks = tasks
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            await self.tasks(scope, receive, send)
        else:
            await self.routes(scope, receive, send)


def _dead_letter_sink(settings: HandlerSettings, log: JsonLog) -> DeadLetterSink:
    """The stack's dead-letter queue when the environment names one, else the log."""
    if settings.dead_letter_queue:
        return CloudTasksDeadLetters(settings.dead_letter_queue, log, emulator_host=settings.emulator_host)
    return LogDeadLetters(log)


def _idempotency_store(settings: HandlerSettings, log: JsonLog) -> MemoryStore | RedisStore:
    """Redis when the environment names one (shared by every instance), else this process's memory."""
    lease = lease_seconds(settings.queues)
    if settings.redis_url:
        return RedisStore.from_url(settings.redis_url, lease_seconds=lease)
    return MemoryStore(lease_seconds=lease, log=log)
