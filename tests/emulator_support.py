"""Shared helpers for the emulator tests: building queues and tasks on a core, a fake token minter, and a
loopback HTTP server that records what the dispatcher sends."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.cloud import tasks_v2

from localcloud.emulator.clock import ManualClock
from localcloud.emulator.core import CloudTasksCore

LOCATION = "projects/p/locations/l"
T0 = 1_800_000_000.0


class FakeMinter:
    """Returns a readable token and remembers every (email, audience) it was asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def mint(self, service_account_email: str, audience: str) -> str:
        self.calls.append((service_account_email, audience))
        return f"token-for:{service_account_email}:{audience}"


def new_core(**options: Any) -> tuple[CloudTasksCore, ManualClock, FakeMinter]:
    clock = ManualClock(T0)
    minter = FakeMinter()
    return CloudTasksCore(clock, minter=minter, **options), clock, minter


def queue_path(queue_id: str) -> str:
    return f"{LOCATION}/queues/{queue_id}"


def add_queue(core: CloudTasksCore, queue_id: str = "q", **fields: Any) -> str:
    """Create a queue with the given Queue fields (dicts are fine); returns its name."""
    name = queue_path(queue_id)
    core.create_queue(tasks_v2.CreateQueueRequest(parent=LOCATION, queue=tasks_v2.Queue(name=name, **fields)))
    return name


def add_task(
    core: CloudTasksCore,
    queue: str,
    task_id: str | None = None,
    *,
    url: str = "http://worker.local/work",
    **fields: Any,
) -> tasks_v2.Task:
    """Create an HTTP task; `http_request` in fields replaces the default request entirely."""
    request = fields.pop("http_request", {"url": url})
    task = tasks_v2.Task(http_request=request, **fields)
    if task_id is not None:
        task.name = f"{queue}/tasks/{task_id}"
    return core.create_task(tasks_v2.CreateTaskRequest(parent=queue, task=task))


def retry(min_backoff: float, max_backoff: float, *, max_attempts: int = 0, **more: Any) -> dict[str, Any]:
    return {"min_backoff": f"{min_backoff}s", "max_backoff": f"{max_backoff}s", "max_attempts": max_attempts, **more}


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # wall-clock arrival time


Reply = Callable[[Received, int], int | None]  # (request, index) -> status, or None to hang until released


class RecordingServer:
    """A loopback HTTP server that records requests; `reply(request, index)` picks each status.

    A reply of None makes the handler hang until `release()` (or the server stops): a worker that never answers.
    """

    def __init__(self, reply: Reply | None = None) -> None:
        self.requests: list[Received] = []
        self._reply: Reply = reply or (lambda request, index: 200)
        self._changed = threading.Condition()
        self._release = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> RecordingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def release(self) -> None:
        self._release.set()

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Received]:
        """Block until `count` requests arrived (AssertionError after `timeout` seconds)."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"expected {count} requests within {timeout}s, got {len(self.requests)}")
            return list(self.requests)

    def _record(self, received: Received) -> int | None:
        with self._changed:
            index = len(self.requests)
            self.requests.append(received)
            self._changed.notify_all()
        return self._reply(received, index)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                received = Received(self.command, self.path, dict(self.headers.items()), body, time.time())
                status = server._record(received)
                if status is None:
                    server._release.wait(30)
                    return
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
