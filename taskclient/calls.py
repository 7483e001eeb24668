"""How taskclient makes its RPCs: transient failures retried with backoff, many calls at a time with a bound.

TaskPublisher and DeadLetters share these, so a retry or a concurrency rule is changed in one place.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from google.api_core import exceptions as gexc

from taskclient.errors import TRANSIENT, TaskValidationError

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
                self.sleep(self.backoff * 2**attempt * (0.5 + random.random()))
        raise AssertionError("unreachable")  # pragma: no cover


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
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise TaskValidationError(f"concurrency: {concurrency} is outside 1..{MAX_CONCURRENCY}")
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
