"""How taskclient makes its RPCs: transient failures retried with backoff, many calls at a time with a bound.

TaskPublisher and DeadLetters share these, so a retry or a concurrency rule is changed in one place.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from google.api_core import exceptions as gexc

from taskclient.errors import TRANSIENT, TaskClientError, TaskValidationError

T = TypeVar("T")
R = TypeVar("R")

MAX_CONCURRENCY = 1000


class GaveUp(Exception):
    """Every attempt of a call failed with a transient error; `error` is the last one."""

    def __init__(self, error: gexc.GoogleAPICallError, attempts: int) -> None:
        super().__init__(str(error))
        self.error = error
        self.attempts = attempts


@dataclass(frozen=True)
class Backoff:
    """Retries a call on UNAVAILABLE and DEADLINE_EXCEEDED: exponential backoff with jitter, so many workers
    do not retry in step. Only for calls that are safe to repeat (a named task, a read, a delete)."""

    retries: int = 4
    backoff: float = 0.25
    sleep: Callable[[float], None] = field(default=time.sleep)

    def run(self, call: Callable[[int], T], *, retries: int | None = None) -> T:
        """`call(attempt)` (attempt 0, 1, ...) until it returns or raises anything but a transient error.

        The attempt number lets the call read ALREADY_EXISTS or NOT_FOUND on a retry as its own earlier attempt's
        effect. After the last attempt a transient error is raised as GaveUp.
        """
        limit = self.retries if retries is None else retries
        for attempt in range(limit + 1):
            try:
                return call(attempt)
            except TRANSIENT as err:
                if attempt == limit:
                    raise GaveUp(err, attempt + 1) from None
                self.sleep(self.delay(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def run_async(
        self,
        call: Callable[[int], Awaitable[T]],
        *,
        sleep: Callable[[float], Awaitable[None]],
        retries: int | None = None,
    ) -> T:
        """As `run`, for a coroutine: `await call(attempt)`, waiting between attempts with `await sleep(s)`
        (asyncio.sleep: the event loop goes on with the other calls meanwhile)."""
        limit = self.retries if retries is None else retries
        for attempt in range(limit + 1):
            try:
                return await call(attempt)
            except TRANSIENT as err:
                if attempt == limit:
                    raise GaveUp(err, attempt + 1) from None
                await sleep(self.delay(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt `attempt`: exponential, jittered by 0.5x..1.5x."""
        return float(self.backoff * 2**attempt * (0.5 + random.random()))


def check_concurrency(concurrency: int) -> None:
    """Refuses a bound on calls in flight outside 1..MAX_CONCURRENCY."""
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise TaskValidationError(f"concurrency: {concurrency} is outside 1..{MAX_CONCURRENCY}")


def run_bounded(
    items: Iterable[T],
    work: Callable[[int, T], R],
    *,
    concurrency: int,
    on_result: Callable[[R], None] | None = None,
) -> list[R]:
    """`work(index, item)` for every item, at most `concurrency` at a time; the results in input order.

    `work` must not raise (it turns its own failures into results). `on_result` is called as each finishes,
    from a worker thread. Submission is bounded too: a generator of a million items never becomes a million
    queued futures.
    """
    check_concurrency(concurrency)
    window = threading.BoundedSemaphore(concurrency * 2)
    futures: list[Future[R]] = []

    def finished(future: Future[R]) -> None:
        window.release()
        if on_result is not None:
            on_result(future.result())

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="taskclient") as pool:
        for index, item in enumerate(items):
            window.acquire()
            future = pool.submit(work, index, item)
            future.add_done_callback(finished)
            futures.append(future)
    return [future.result() for future in futures]


class LoopThread:
    """An event loop running in a daemon thread of its own, for synchronous code to run coroutines on.

    A publisher keeps one for its lifetime, so what lives on the loop (a grpc.aio channel, which belongs to the loop
    it is made in) is made once and reused by every call, from whichever thread it comes; inside a running loop too
    (sync code called by a coroutine), where `run` blocks that loop as any blocking call does: a coroutine should
    await AsyncTaskPublisher instead.
    """

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Runs `work` on the loop and returns its result; an interrupt of the waiting thread (Ctrl-C) cancels it."""
        if threading.current_thread() is self._thread:
            work.close()
            raise TaskClientError(
                "on_result called back into its own publisher: it runs on the publisher's loop, which is busy"
                " waiting for it; collect what to send and send it after the call"
            )
        future = asyncio.run_coroutine_threadsafe(work, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def close(self, last: Coroutine[Any, Any, None]) -> None:
        """Runs `last` (closing what lives on the loop), then stops the loop and its thread."""
        try:
            self.run(last)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
