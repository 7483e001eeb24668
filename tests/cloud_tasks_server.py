"""A small, honest stand-in for the Cloud Tasks gRPC service (`google.cloud.tasks.v2.CloudTasks`) on loopback.

Tests point the STOCK client at it::

    channel = grpc.insecure_channel(server.address)
    client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))

It serves CreateTask, GetTask, ListTasks, DeleteTask, GetQueue, ListQueues and CreateQueue (every other method gets
gRPC's default UNIMPLEMENTED), with fault injection (`fail_next`, `fail_when`) and a per-RPC latency (`delay`).
The server is a `grpc.aio` server on its own event loop in a daemon thread, so the injected delay is an
`asyncio.sleep` and many slow calls proceed in parallel without tying up worker threads.

Behaviour follows real Cloud Tasks where it matters to a producer (status codes and messages, named-task
de-duplication with tombstones, generated numeric ids, BASIC/FULL views, schedule_time and dispatch_deadline
rules). Deliberate simplifications:

* `pause()` makes CreateTask fail with FAILED_PRECONDITION "Queue is paused" (real Cloud Tasks accepts tasks into a
  paused queue and only stops dispatching them); nothing is ever dispatched here.
* A created name stays a tombstone for the server's lifetime (real: about an hour after deletion, days after
  execution), so re-creating it always gets ALREADY_EXISTS.
* Queues keep exactly the fields given (no default rate limits / retry config filled in); ListQueues ignores
  `read_mask` and rejects a non-empty `filter` with UNIMPLEMENTED.
* Requests and responses cross the wire as raw bytes and are (de)serialized inside the handlers, so undecodable
  input gets INVALID_ARGUMENT instead of grpc's UNKNOWN; an unexpected bug in this module answers INTERNAL.

Command line (for benchmarks)::

    python tests/cloud_tasks_server.py --port 0 --delay-ms 20 --queue projects/p/locations/l/queues/q

prints one line `listening on 127.0.0.1:PORT` and serves until SIGTERM/SIGINT (exit status 0).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import re
import secrets
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

import grpc
from google.cloud import tasks_v2
from google.protobuf import empty_pb2, timestamp_pb2
from google.protobuf.message import DecodeError

__all__ = ["CloudTasksServer", "FakeCloudTasks", "Fault"]

_LOG = logging.getLogger(__name__)

SERVICE = "google.cloud.tasks.v2.CloudTasks"

NOT_FOUND_MESSAGE = "Requested entity was not found."
ALREADY_EXISTS_MESSAGE = "Requested entity already exists"

_LOCATION_RE = re.compile(r"projects/[^/]+/locations/[^/]+")
_QUEUE_ID = r"[A-Za-z0-9-]{1,100}"
_QUEUE_RE = re.compile(rf"(?P<parent>{_LOCATION_RE.pattern})/queues/{_QUEUE_ID}")
_TASK_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,500}")
_TASK_NAME_RE = re.compile(rf"(?P<queue>{_QUEUE_RE.pattern})/tasks/(?P<id>[^/]*)")
_TASK_NAME_FORMAT = "projects/<PROJECT_ID>/locations/<LOCATION_ID>/queues/<QUEUE_ID>/tasks/<TASK_ID>"

MAX_PAGE_SIZE = 1000
MAX_TASK_BYTES = 1024 * 1024  # "Maximum task size: 1 MB"
MIN_DISPATCH_DEADLINE_S = 15
MAX_DISPATCH_DEADLINE_S = 30 * 60
MAX_SCHEDULE_AHEAD_S = 30 * 24 * 3600

# Raw protobuf classes behind the proto-plus wrappers: the handlers work on these.
_TaskPb: Any = tasks_v2.Task.pb()
_QueuePb: Any = tasks_v2.Queue.pb()
_BASIC = int(tasks_v2.Task.View.BASIC)
_FULL = int(tasks_v2.Task.View.FULL)


@dataclass(frozen=True)
class Fault:
    """One injected failure: the RPC is aborted with `code` and `message`."""

    code: grpc.StatusCode
    message: str


@dataclass
class _PendingFault:
    fault: Fault
    remaining: int
    after_create: bool


class _RpcError(Exception):
    """Raised inside a handler; the dispatcher turns it into `context.abort(code, message)`."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _now() -> Any:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _decode(message_class: Any, raw: bytes) -> Any:
    try:
        return message_class.FromString(raw)
    except (DecodeError, ValueError, TypeError) as error:
        raise _RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"Invalid request message: {error}") from None


def _page_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"after:{seq}".encode()).decode()


def _page_start(token: str) -> int:
    """The sequence number a page token continues after (-1 for the first page)."""
    if not token:
        return -1
    try:
        kind, _, value = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if kind == "after" and value.isdigit():
            return int(value)
    except (ValueError, UnicodeError):
        pass
    raise _RpcError(grpc.StatusCode.INVALID_ARGUMENT, "Invalid page token")


def _page(items: list[tuple[int, Any]], page_size: int, page_token: str) -> tuple[list[Any], str]:
    """One page of `(seq, item)` pairs (sorted by seq) and the token for the next one ("" when none is left)."""
    if page_size < 0:
        raise _RpcError(grpc.StatusCode.INVALID_ARGUMENT, "page_size must not be negative")
    size = min(page_size or MAX_PAGE_SIZE, MAX_PAGE_SIZE)
    start = _page_start(page_token)
    rest = [(seq, item) for seq, item in items if seq > start]
    page = rest[:size]
    token = _page_token(page[-1][0]) if len(rest) > size else ""
    return [item for _, item in page], token


def _check_location(parent: str) -> None:
    if not _LOCATION_RE.fullmatch(parent):
        raise _RpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f'Invalid resource field value in the request: parent "{_short(parent)}" '
            'must be formatted "projects/<PROJECT_ID>/locations/<LOCATION_ID>"',
        )


def _check_queue_name(name: str, field: str = "parent") -> None:
    if not _QUEUE_RE.fullmatch(name):
        raise _RpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f'Invalid resource field value in the request: {field} "{_short(name)}" must be formatted '
            '"projects/<PROJECT_ID>/locations/<LOCATION_ID>/queues/<QUEUE_ID>" (QUEUE_ID: letters, digits, '
            "hyphens; at most 100 characters)",
        )


def _check_task_name(name: str, parent: str | None = None) -> None:
    match = _TASK_NAME_RE.fullmatch(name)
    if match is None:
        raise _RpcError(grpc.StatusCode.INVALID_ARGUMENT, f'Task name must be formatted: "{_TASK_NAME_FORMAT}"')
    if parent is not None and match["queue"] != parent:
        raise _RpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f'Task name "{_short(name)}" is not in the request\'s parent queue "{_short(parent)}"',
        )
    if not _TASK_ID_RE.fullmatch(match["id"]):
        raise _RpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f'Invalid task ID "{_short(match["id"])}": a task ID must contain only letters ([A-Za-z]), numbers '
            "([0-9]), hyphens (-), or underscores (_), and be 1 to 500 characters long",
        )


def _check_task_body(task: Any) -> None:
    if not task.HasField("http_request") and not task.HasField("app_engine_http_request"):
        raise _RpcError(
            grpc.StatusCode.INVALID_ARGUMENT, "Task must have either http_request or app_engine_http_request set"
        )
    if task.HasField("http_request"):
        url = task.http_request.url
        if not url:
            raise _RpcError(grpc.StatusCode.INVALID_ARGUMENT, "HttpRequest.url is required")
        if not url.startswith(("http://", "https://")) or len(url) > 2083:
            raise _RpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f'HttpRequest.url "{_short(url)}" must be an http:// or https:// URL of at most 2083 characters',
            )
    if task.ByteSize() > MAX_TASK_BYTES:
        raise _RpcError(
            grpc.StatusCode.INVALID_ARGUMENT, f"Task size too large: {task.ByteSize()} bytes (max {MAX_TASK_BYTES})"
        )
    if task.HasField("dispatch_deadline"):
        seconds = task.dispatch_deadline.seconds + task.dispatch_deadline.nanos / 1e9
        if not MIN_DISPATCH_DEADLINE_S <= seconds <= MAX_DISPATCH_DEADLINE_S:
            raise _RpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"dispatch_deadline must be between {MIN_DISPATCH_DEADLINE_S} seconds and "
                f"{MAX_DISPATCH_DEADLINE_S // 60} minutes, got {seconds:g} seconds",
            )


def _view(task: Any, response_view: int) -> Any:
    """A copy of a stored task as returned under `response_view` (BASIC, the default, drops request bodies)."""
    out = _TaskPb()
    out.CopyFrom(task)
    view = _FULL if response_view == _FULL else _BASIC
    out.view = view
    if view == _BASIC:
        for request_field in ("http_request", "app_engine_http_request"):
            if out.HasField(request_field):
                getattr(out, request_field).ClearField("body")
    return out


def _metadata_tuple(context: grpc.aio.ServicerContext[Any, Any]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for key, value in context.invocation_metadata() or ():
        text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)
        pairs.append((str(key), text))
    return tuple(pairs)


class FakeCloudTasks:
    """State + servicer. Thread-safe (a threading.Lock around state): tests read it from the main thread."""

    def __init__(self, *, delay: float = 0.0) -> None:
        self.delay = delay  # seconds slept in every RPC before answering
        self.create_calls = 0
        self.max_in_flight = 0  # most CreateTask calls ever being handled at once (extra, for concurrency limits)
        self._in_flight = 0
        self.metadata: list[tuple[tuple[str, str], ...]] = []
        self._lock = threading.Lock()
        self._seq = 0
        self._queues: dict[str, tuple[int, Any]] = {}  # name -> (seq, Queue pb)
        self._tasks: dict[str, tuple[int, Any]] = {}  # live tasks: name -> (seq, Task pb as stored)
        self._tombstones: set[str] = set()  # every task name ever created here
        self._faults: list[_PendingFault] = []
        self._rules: list[Callable[[tasks_v2.CreateTaskRequest], Fault | None]] = []

    # ----- test-facing setup and inspection -----

    def add_queue(self, path: str) -> None:
        """Add a RUNNING queue "projects/P/locations/L/queues/Q" (no-op if it exists)."""
        if not _QUEUE_RE.fullmatch(path):
            raise ValueError(f"not a queue path: {path!r}")
        with self._lock:
            if path not in self._queues:
                self._queues[path] = (self._next_seq(), _QueuePb(name=path, state=_QueuePb.State.RUNNING))

    def pause(self, path: str) -> None:
        """Pause a queue: CreateTask on it then fails with FAILED_PRECONDITION "Queue is paused" (simplification)."""
        with self._lock:
            self._queues[path][1].state = _QueuePb.State.PAUSED

    def fail_next(
        self, code: grpc.StatusCode, message: str = "", *, times: int = 1, after_create: bool = False
    ) -> None:
        """The next `times` CreateTask calls fail with `code`.

        after_create=True: the task is validated and stored first and THEN the error is returned (a response lost
        after the server committed); if validation fails, that validation error is returned instead.
        """
        if code is grpc.StatusCode.OK:
            raise ValueError("cannot inject StatusCode.OK as a failure")
        if times < 1:
            raise ValueError("times must be >= 1")
        with self._lock:
            self._faults.append(_PendingFault(Fault(code, message), times, after_create))

    def fail_when(self, predicate: Callable[[tasks_v2.CreateTaskRequest], Fault | None]) -> None:
        """Add a lasting per-request rule: CreateTask fails with the Fault the predicate returns (None: no fault).

        Rules are consulted in order, only when no `fail_next` fault applies to the call, before validation.
        """
        with self._lock:
            self._rules.append(predicate)

    @property
    def tasks(self) -> list[tasks_v2.Task]:
        """Tasks currently stored (deleted ones excluded), in creation order, as full copies."""
        with self._lock:
            stored = sorted(self._tasks.values(), key=lambda pair: pair[0])
            copies = []
            for _, task in stored:
                copy = _TaskPb()
                copy.CopyFrom(task)
                copies.append(copy)
        return [tasks_v2.Task.wrap(copy) for copy in copies]

    # ----- gRPC plumbing -----

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler serving this state as `google.cloud.tasks.v2.CloudTasks`."""
        methods: dict[str, Callable[[bytes, Any], Awaitable[bytes]]] = {
            "CreateTask": self._create_task,
            "GetTask": self._get_task,
            "ListTasks": self._list_tasks,
            "DeleteTask": self._delete_task,
            "GetQueue": self._get_queue,
            "ListQueues": self._list_queues,
            "CreateQueue": self._create_queue,
        }
        return grpc.method_handlers_generic_handler(
            SERVICE, {name: grpc.unary_unary_rpc_method_handler(self._dispatch(fn)) for name, fn in methods.items()}
        )

    def _dispatch(
        self, fn: Callable[[bytes, Any], Awaitable[bytes]]
    ) -> Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[bytes]]:
        async def rpc(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            try:
                return await fn(raw, context)
            except _RpcError as error:
                failure = error
            except Exception as error:  # a bug here must not surface as UNKNOWN
                _LOG.exception("fake Cloud Tasks handler failed")
                failure = _RpcError(grpc.StatusCode.INTERNAL, f"fake Cloud Tasks server error: {error!r}")
            await context.abort(failure.code, failure.message)
            raise AssertionError("unreachable: context.abort raises")

        return rpc

    async def _sleep(self) -> None:
        delay = self.delay
        if delay > 0:
            await asyncio.sleep(delay)

    def _next_seq(self) -> int:  # caller holds the lock
        self._seq += 1
        return self._seq

    def _queue_exists(self, name: str) -> Any:  # caller holds the lock
        if name not in self._queues:
            raise _RpcError(grpc.StatusCode.NOT_FOUND, NOT_FOUND_MESSAGE)
        return self._queues[name][1]

    # ----- RPCs -----

    async def _create_task(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        with self._lock:
            self.create_calls += 1
            self.metadata.append(_metadata_tuple(context))
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            pending = None
            if self._faults:
                head = self._faults[0]
                pending = _PendingFault(head.fault, 1, head.after_create)
                head.remaining -= 1
                if head.remaining == 0:
                    self._faults.pop(0)
            rules = list(self._rules)
        try:
            return await self._create_task_after_arrival(raw, pending, rules)
        finally:
            with self._lock:
                self._in_flight -= 1

    async def _create_task_after_arrival(
        self,
        raw: bytes,
        pending: _PendingFault | None,
        rules: list[Callable[[tasks_v2.CreateTaskRequest], Fault | None]],
    ) -> bytes:
        await self._sleep()
        if pending is not None and not pending.after_create:
            raise _RpcError(pending.fault.code, pending.fault.message)
        request = _decode(tasks_v2.CreateTaskRequest.pb(), raw)
        if pending is None:
            for rule in rules:
                copy = tasks_v2.CreateTaskRequest.pb()()
                copy.CopyFrom(request)
                fault = rule(tasks_v2.CreateTaskRequest.wrap(copy))
                if fault is not None:
                    raise _RpcError(fault.code, fault.message)
        response = self._store(request)
        if pending is not None:  # after_create: committed, then the answer is "lost"
            raise _RpcError(pending.fault.code, pending.fault.message)
        return response

    def _store(self, request: Any) -> bytes:
        parent = request.parent
        _check_queue_name(parent)
        task = _TaskPb()
        task.CopyFrom(request.task)
        if task.name:
            _check_task_name(task.name, parent)
        _check_task_body(task)
        now = _now()
        if task.HasField("schedule_time"):
            ahead = task.schedule_time.ToNanoseconds() - now.ToNanoseconds()
            if ahead > MAX_SCHEDULE_AHEAD_S * 10**9:
                raise _RpcError(
                    grpc.StatusCode.INVALID_ARGUMENT, "The Task.scheduleTime must not be more than 720h in the future"
                )
            if ahead < 0:
                task.schedule_time.CopyFrom(now)
        else:
            task.schedule_time.CopyFrom(now)
        task.create_time.CopyFrom(now)
        for output_only in ("dispatch_count", "response_count", "first_attempt", "last_attempt", "view"):
            task.ClearField(output_only)
        with self._lock:
            queue = self._queue_exists(parent)
            if queue.state == _QueuePb.State.PAUSED:
                raise _RpcError(grpc.StatusCode.FAILED_PRECONDITION, "Queue is paused")
            if task.name:
                if task.name in self._tombstones:
                    raise _RpcError(grpc.StatusCode.ALREADY_EXISTS, ALREADY_EXISTS_MESSAGE)
            else:
                task.name = f"{parent}/tasks/{secrets.randbelow(9 * 10**18) + 10**18}"
                while task.name in self._tombstones:
                    task.name = f"{parent}/tasks/{secrets.randbelow(9 * 10**18) + 10**18}"
            self._tombstones.add(task.name)
            self._tasks[task.name] = (self._next_seq(), task)
        return _view(task, request.response_view).SerializeToString()

    async def _get_task(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await self._sleep()
        request = _decode(tasks_v2.GetTaskRequest.pb(), raw)
        _check_task_name(request.name)
        with self._lock:
            if request.name not in self._tasks:
                raise _RpcError(grpc.StatusCode.NOT_FOUND, NOT_FOUND_MESSAGE)
            task = self._tasks[request.name][1]
            response = _view(task, request.response_view)
        return response.SerializeToString()

    async def _list_tasks(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await self._sleep()
        request = _decode(tasks_v2.ListTasksRequest.pb(), raw)
        _check_queue_name(request.parent)
        prefix = request.parent + "/tasks/"
        with self._lock:
            self._queue_exists(request.parent)
            items = sorted((pair for name, pair in self._tasks.items() if name.startswith(prefix)), key=_first)
            page, token = _page(items, request.page_size, request.page_token)
            response = tasks_v2.ListTasksResponse.pb()(
                tasks=[_view(task, request.response_view) for task in page], next_page_token=token
            )
        return response.SerializeToString()

    async def _delete_task(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await self._sleep()
        request = _decode(tasks_v2.DeleteTaskRequest.pb(), raw)
        _check_task_name(request.name)
        with self._lock:
            if self._tasks.pop(request.name, None) is None:
                raise _RpcError(grpc.StatusCode.NOT_FOUND, NOT_FOUND_MESSAGE)
        return empty_pb2.Empty().SerializeToString()

    async def _get_queue(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await self._sleep()
        request = _decode(tasks_v2.GetQueueRequest.pb(), raw)
        _check_queue_name(request.name, "name")
        with self._lock:
            return bytes(self._queue_exists(request.name).SerializeToString())

    async def _list_queues(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await self._sleep()
        request = _decode(tasks_v2.ListQueuesRequest.pb(), raw)
        _check_location(request.parent)
        if request.filter:
            raise _RpcError(grpc.StatusCode.UNIMPLEMENTED, "ListQueues filter is not supported by this fake")
        prefix = request.parent + "/queues/"
        with self._lock:
            items = sorted((pair for name, pair in self._queues.items() if name.startswith(prefix)), key=_first)
            page, token = _page(items, request.page_size, request.page_token)
            response = tasks_v2.ListQueuesResponse.pb()(queues=page, next_page_token=token)
        return response.SerializeToString()

    async def _create_queue(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await self._sleep()
        request = _decode(tasks_v2.CreateQueueRequest.pb(), raw)
        _check_location(request.parent)
        _check_queue_name(request.queue.name, "queue.name")
        if not request.queue.name.startswith(request.parent + "/queues/"):
            raise _RpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f'Queue name "{_short(request.queue.name)}" is not under parent "{_short(request.parent)}"',
            )
        queue = _QueuePb()
        queue.CopyFrom(request.queue)
        queue.state = _QueuePb.State.RUNNING
        queue.ClearField("purge_time")  # output only
        with self._lock:
            if queue.name in self._queues:
                raise _RpcError(grpc.StatusCode.ALREADY_EXISTS, ALREADY_EXISTS_MESSAGE)
            self._queues[queue.name] = (self._next_seq(), queue)
            return bytes(queue.SerializeToString())


def _first(pair: tuple[int, Any]) -> int:
    return pair[0]


class CloudTasksServer:
    """Runs a FakeCloudTasks on 127.0.0.1:<port> (0 = free port) in a background thread. Context manager."""

    def __init__(self, state: FakeCloudTasks | None = None, port: int = 0) -> None:
        self.state = state if state is not None else FakeCloudTasks()
        self.address = ""
        self._port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> CloudTasksServer:
        if self._thread is not None:
            raise RuntimeError("server already started")
        self._thread = threading.Thread(target=self._run, name="fake-cloud-tasks", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=30):
            raise RuntimeError("fake Cloud Tasks server did not start within 30 s")
        if self._error is not None:
            self._thread.join()
            raise RuntimeError(f"fake Cloud Tasks server failed to start: {self._error}") from self._error
        return self

    def stop(self) -> None:
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None or not thread.is_alive() or loop is None or stop_event is None:
            return
        loop.call_soon_threadsafe(stop_event.set)
        thread.join(timeout=30)

    def __enter__(self) -> CloudTasksServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:  # reported to start() if it happened while starting
            if not self._ready.is_set():
                self._error = error
                self._ready.set()
            else:
                _LOG.exception("fake Cloud Tasks server thread failed")

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((self.state.handler(),))
        port = server.add_insecure_port(f"127.0.0.1:{self._port}")
        if not port:
            raise RuntimeError(f"could not bind 127.0.0.1:{self._port}")
        await server.start()
        self.address = f"127.0.0.1:{port}"
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await server.stop(grace=0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake Cloud Tasks gRPC server on 127.0.0.1 (for benchmarks).")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="latency added to every RPC, in milliseconds")
    parser.add_argument("--queue", action="append", default=[], help="queue path to create (repeatable)")
    args = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    state = FakeCloudTasks(delay=args.delay_ms / 1000)
    for queue in args.queue:
        try:
            state.add_queue(queue)
        except ValueError as error:
            parser.error(str(error))
    with CloudTasksServer(state, port=args.port) as server:
        print(f"listening on {server.address}", flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
