"""Shared helpers for the emulator tests: building queues and tasks on a core, a fake token minter, a
loopback HTTP server that records what the dispatcher sends, and a loopback gRPC emulator without a
dispatcher for tests that look at what a client created."""

from __future__ import annotations

import os
import queue as thread_queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.cloud import tasks_v2

from localcloud.emulator.clock import ManualClock
from localcloud.emulator.core import CloudTasksCore
from localcloud.emulator.faults import FaultInjector
from localcloud.emulator.server import EmulatorServer
from localcloud.program import PROJECT_DIR, ProgramRun
from localcloud.stack import QUEUE, queue_from_inputs

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


# ----- a gRPC emulator without a dispatcher -----


def stack_queues(run: ProgramRun) -> list[tasks_v2.Queue]:
    """The queues a program run declares, as Cloud Tasks would hold them (rates, retry, queue-level routing)."""
    return [queue_from_inputs(registration.inputs) for registration in run.of_type(QUEUE)]


class LoopbackEmulator:
    """A CloudTasksCore (system clock) served on 127.0.0.1, a free port, with these queues and no dispatcher,
    so every task a client creates stays in its queue to be listed. Calls are recorded (`faults.calls()`)
    from the start; `faults` injects failures and latency. Context manager."""

    def __init__(self, queues: Iterable[tasks_v2.Queue | str] = (), *, workers: int = 16, **core_options: Any) -> None:
        self.core = CloudTasksCore(**core_options)
        self.server = EmulatorServer(self.core, workers=workers)
        self.queues: list[str] = [self.add_queue(queue) for queue in queues]
        self.faults.recording = True

    @property
    def faults(self) -> FaultInjector:
        return self.server.faults

    @property
    def address(self) -> str:
        return self.server.address

    def __enter__(self) -> LoopbackEmulator:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def add_queue(self, queue: tasks_v2.Queue | str) -> str:
        """Create a queue (a Queue message, or just its path) on the core, unrecorded; returns its name."""
        message = tasks_v2.Queue(name=queue) if isinstance(queue, str) else queue
        parent = message.name.rsplit("/queues/", 1)[0]
        return self.core.create_queue(tasks_v2.CreateQueueRequest(parent=parent, queue=message)).name

    def pause(self, queue: str) -> None:
        self.core.pause_queue(tasks_v2.PauseQueueRequest(name=queue))

    def tasks(self, *queues: str) -> list[tasks_v2.Task]:
        """The tasks in `queues` (default: every queue added here) in FULL view, each queue in creation order."""
        found: list[tasks_v2.Task] = []
        for queue in queues or self.queues:
            token = ""
            while True:
                request = tasks_v2.ListTasksRequest(
                    parent=queue, response_view=tasks_v2.Task.View.FULL, page_size=1000, page_token=token
                )
                page = self.core.list_tasks(request)
                found.extend(page.tasks)
                token = page.next_page_token
                if not token:
                    break
        return found

    def create_calls(self) -> int:
        """CreateTask calls that reached the server, whatever their answer."""
        return len(self.faults.calls("CreateTask"))


def start_emulator_command(*arguments: str) -> tuple[subprocess.Popen[str], str]:
    """`python -m localcloud emulator ARGUMENTS` in a child process, and the first line it prints."""
    process = subprocess.Popen(
        [sys.executable, "-m", "localcloud", "emulator", *arguments],
        cwd=PROJECT_DIR,
        env={**os.environ, "PYTHONPATH": str(PROJECT_DIR)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: thread_queue.Queue[str] = thread_queue.Queue()
    threading.Thread(target=lambda: lines.put(process.stdout.readline() if process.stdout else ""), daemon=True).start()
    try:
        return process, lines.get(timeout=60)
    except thread_queue.Empty:
        process.kill()
        raise AssertionError("the emulator printed no ready line within 60 s") from None


# ----- a durable emulator process, killed and restarted -----


class EmulatorProcess:
    """`python -m localcloud emulator ARGUMENTS` on fixed ports, its stderr (the dispatch log) collected line by
    line to wait on. `kill()` is SIGKILL; `restart()` starts the same command again (same ports, same data dir).
    Context manager: killed on exit."""

    def __init__(self, *arguments: str) -> None:
        self.arguments = arguments
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process, self.ready = self._start()

    def _start(self) -> tuple[subprocess.Popen[str], str]:
        process, ready = start_emulator_command(*self.arguments)
        if not ready.startswith("emulator ready"):
            _, stderr = process.communicate(timeout=30)
            raise AssertionError(f"the emulator did not start: {ready}{stderr}")
        stream = process.stderr

        def collect() -> None:
            for line in stream or ():
                with self._changed:
                    self.lines.append(line.rstrip("\n"))
                    self._changed.notify_all()

        threading.Thread(target=collect, daemon=True, name=f"emulator-{process.pid}-stderr").start()
        return process, ready

    @property
    def address(self) -> str:
        return self.ready.split("grpc=", 1)[1].split()[0]

    def wait_for_lines(self, predicate: Callable[[list[str]], bool], what: str, timeout: float = 30.0) -> None:
        """Block until `predicate(lines so far)` holds (AssertionError after `timeout` seconds)."""
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self.lines), timeout):
                tail = "\n".join(self.lines[-10:])
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last lines:\n{tail}")

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is flushed or closed."""
        self.process.kill()
        self.process.wait(timeout=30)

    def restart(self) -> None:
        """Start the same command again, after `kill()` (the same ports: they must be given, not 0)."""
        self.process, self.ready = self._start()

    def stop(self) -> tuple[int, str]:
        """SIGTERM; (exit status, what was left on stderr)."""
        self.process.terminate()
        self.process.wait(timeout=30)
        return self.process.returncode, "\n".join(self.lines)

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.kill()
