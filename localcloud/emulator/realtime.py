"""The real-time dispatcher: sends the engine's attempts over HTTP with aiohttp, on an asyncio loop.

One shared `aiohttp.ClientSession` (connection pooling; redirects not followed, since Cloud Tasks counts a 3xx
as a failed attempt and retries it; no proxies from the environment: targets are local; no Content-Type or
other headers of its own, since Cloud Tasks adds none to HTTP targets). aiohttp rather than httpx: httpx's
pool checks every open connection on each request, which measured at a few hundred dispatches/s with a
hundred connections open (benchmarks/dispatch.py). Each attempt gets
its dispatch_deadline as a total timeout; no response in time, or a connection error, is reported to the engine
as "no response" (the next attempt then carries X-CloudTasks-TaskPreviousResponse: 504).

The loop sleeps until the engine's next wakeup or until the core reports a change (a task created, a queue
resumed...). `take_due` runs in a worker thread because it may sign OIDC tokens; the core lock itself is only
held for dictionary work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import aiohttp

from localcloud.emulator.core import CloudTasksCore
from localcloud.emulator.engine import Attempt

__all__ = ["AsyncDispatcher", "DispatchResult"]

_LOG = logging.getLogger(__name__)

# When the engine says "now" but hands out nothing (it cannot, by construction), don't spin: look again soon.
_MIN_IDLE_SLEEP = 0.001
# aiohttp would add these itself; Cloud Tasks sends no Content-Type of its own for HTTP targets.
_NO_AUTO_HEADERS = frozenset({"Content-Type", "User-Agent", "Accept", "Accept-Encoding"})


@dataclass(frozen=True)
class DispatchResult:
    """The outcome of one attempt, as logged."""

    attempt: Attempt
    status: int | None  # None: no response
    latency_ms: float
    error: str = ""

    def line(self) -> str:
        status = str(self.status) if self.status is not None else f"none ({self.error})"
        return (
            f"dispatch queue={self.attempt.queue_name.rsplit('/', 1)[-1]} "
            f"task={self.attempt.task_name.rsplit('/', 1)[-1]} attempt={self.attempt.number} "
            f"status={status} latency_ms={self.latency_ms:.1f}"
        )


def _log_result(result: DispatchResult) -> None:
    _LOG.info("%s", result.line())


class AsyncDispatcher:
    """Drives `core` with real time and real HTTP. `await run()` in your loop, or `start()` a thread for it."""

    def __init__(
        self,
        core: CloudTasksCore,
        *,
        on_result: Callable[[DispatchResult], None] = _log_result,
        max_connections: int = 1000,
    ) -> None:
        self.core = core
        self._on_result = on_result
        self._max_connections = max_connections
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stop_requested = threading.Event()
        self._thread: threading.Thread | None = None
        self._running = threading.Event()

    # ----- thread mode -----

    def start(self) -> AsyncDispatcher:
        """Run the dispatcher in a daemon thread with its own event loop."""
        if self._thread is not None:
            raise RuntimeError("AsyncDispatcher already started")
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self.run()), name="cloud-tasks-dispatcher", daemon=True
        )
        self._thread.start()
        if not self._running.wait(timeout=30):
            raise RuntimeError("the dispatcher thread did not start")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop dispatching; attempts in flight are cut and reported as "no response"."""
        self._stop_requested.set()
        self._poke()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> AsyncDispatcher:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    # ----- the loop -----

    async def run(self) -> None:
        """Dispatch until `stop()` is called."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        unsubscribe = self.core.subscribe(self._poke)
        sends: set[asyncio.Task[None]] = set()
        client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0),
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
            trust_env=False,
            skip_auto_headers=_NO_AUTO_HEADERS,
        )
        self._running.set()
        try:
            async with client:
                while not self._stop_requested.is_set():
                    self._wake.clear()
                    attempts = await asyncio.to_thread(self.core.take_due, self.core.clock.now())
                    for attempt in attempts:
                        send = asyncio.create_task(self._send(client, attempt))
                        sends.add(send)
                        send.add_done_callback(sends.discard)
                    await self._sleep(took_any=bool(attempts))
                for send in list(sends):
                    send.cancel()
                await asyncio.gather(*sends, return_exceptions=True)
        finally:
            unsubscribe()
            self._loop = None

    def _poke(self) -> None:
        """Wake the loop (from any thread)."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(wake.set)

    async def _sleep(self, *, took_any: bool) -> None:
        assert self._wake is not None
        wakeup = self.core.next_wakeup(self.core.clock.now())
        timeout = None if wakeup is None else max(0.0, wakeup - self.core.clock.now())
        if timeout is not None and not took_any:
            timeout = max(timeout, _MIN_IDLE_SLEEP)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _send(self, client: aiohttp.ClientSession, attempt: Attempt) -> None:
        started = time.perf_counter()
        status: int | None = None
        error = ""
        try:
            async with (
                asyncio.timeout(attempt.timeout),
                client.request(
                    attempt.method, attempt.url, headers=attempt.headers, data=attempt.body, allow_redirects=False
                ) as response,
            ):
                await response.read()  # the body is not used, but the connection must be free for reuse
                status = response.status
        except TimeoutError:
            error = f"no response within the {attempt.timeout:g}s dispatch deadline"
        except asyncio.CancelledError:
            self._finish(attempt, None, started, "cancelled: the dispatcher stopped")
            raise
        except Exception as exc:  # connection refused, invalid URL...: the attempt failed without a response
            error = f"{type(exc).__name__}: {exc}"
        self._finish(attempt, status, started, error)

    def _finish(self, attempt: Attempt, status: int | None, started: float, error: str) -> None:
        self.core.complete(attempt, status, self.core.clock.now())
        result = DispatchResult(attempt, status, (time.perf_counter() - started) * 1000, error)
        try:
            self._on_result(result)
        except Exception:
            _LOG.exception("the dispatch result callback failed")
        if self._wake is not None:
            self._wake.set()  # a concurrency slot is free, or a retry may be due
