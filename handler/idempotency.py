"""Which tasks are done: a duplicate delivery is acknowledged without running the work again.

Cloud Tasks delivers at least once, so the same task can arrive twice, even at the same time. Keys are
"<queue>/<task>" (task ids are unique within a queue).

`MemoryStore` is per process: right for one instance and for tests. In production, where Cloud Run runs
several instances and replaces them at will, use a shared store with an atomic create-if-absent and a
TTL, e.g. Memorystore for Redis (`SET key in-progress NX EX <deadline>`, then `SET key done EX 86400`) or
Firestore (`create()` fails when the document exists; a TTL policy deletes old ones). The TTL must cover
the queue's retry window, and the in-progress lease the dispatch deadline, so a crashed attempt's claim
expires and the retry can run.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from enum import StrEnum
from typing import Protocol


class Claim(StrEnum):
    NEW = "new"  # first delivery: run the work
    DONE = "done"  # finished before: acknowledge, do not run again
    IN_PROGRESS = "in-progress"  # another copy is running now: ask Cloud Tasks to come back later


class IdempotencyStore(Protocol):
    async def claim(self, key: str) -> Claim: ...

    async def complete(self, key: str) -> None: ...

    async def release(self, key: str) -> None: ...


class MemoryStore:
    """In-process store. Claims are atomic because the event loop runs one coroutine step at a time and
    `claim` does not await between the check and the write."""

    def __init__(
        self, *, ttl_seconds: float = 24 * 3600, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._clock = clock
        self._done: OrderedDict[str, float] = OrderedDict()  # key -> expiry, oldest first
        self._in_progress: set[str] = set()

    async def claim(self, key: str) -> Claim:
        self._expire()
        if key in self._done:
            return Claim.DONE
        if key in self._in_progress:
            return Claim.IN_PROGRESS
        self._in_progress.add(key)
        return Claim.NEW

    async def complete(self, key: str) -> None:
        self._in_progress.discard(key)
        self._done[key] = self._clock() + self._ttl
        self._done.move_to_end(key)
        while len(self._done) > self._max_entries:
            self._done.popitem(last=False)

    async def release(self, key: str) -> None:
        self._in_progress.discard(key)

    def _expire(self) -> None:
        now = self._clock()
        while self._done and next(iter(self._done.values())) <= now:
            self._done.popitem(last=False)
