"""Which tasks are done: a duplicate delivery is acknowledged without running the work again.

Cloud Tasks delivers at least once, so the same task can arrive twice, even at the same time. Keys are
"<queue>/<task>" (task ids are unique within a queue). Each key is either

- in progress: claimed by a running attempt, for at most a lease that covers the dispatch deadline, so the
  claim of an attempt whose instance died expires and the retry can run; or
- done: finished, remembered for a TTL that should cover the queue's retry window (24 h by default).

`MemoryStore` is per process: right for one instance that is never replaced, and for tests. `RedisStore` is
shared: what production uses whenever Cloud Run may run more than one instance or replace one (always, with
maxInstances > 1), e.g. on Memorystore for Redis. Both keep the same contract (tests/test_idempotency.py).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, Protocol

import redis.asyncio

from contract.cloud_tasks import MAX_DISPATCH_DEADLINE_S
from contract.handler_env import QueueEntry
from handler.structured_log import JsonLog

# A day: longer than most queues' retry window (max_backoff is an hour by default). A queue that retries for
# longer needs a longer TTL, or a task done on an early attempt can run again on a late duplicate.
DEFAULT_TTL_S = 24 * 3600.0
# Measured (tracemalloc): 100,000 entries take about 23 MB with 36-character task ids, 70 MB with 500-character
# ones (the longest Cloud Tasks allows), well inside a 512 MiB instance.
DEFAULT_MAX_ENTRIES = 100_000
# Redis commands that take longer than this fail (a 500: Cloud Tasks retries) rather than hold the request.
REDIS_TIMEOUT_S = 5.0


class Claim(StrEnum):
    NEW = "new"  # first delivery: run the work
    DONE = "done"  # finished before: acknowledge, do not run again
    IN_PROGRESS = "in-progress"  # another copy is running now: ask Cloud Tasks to come back later


class IdempotencyStore(Protocol):
    """`owner` is the attempt's own token (one per request): a release only ends the claim that attempt holds,
    never a newer attempt's claim taken after its lease ran out."""

    async def claim(self, key: str, owner: str) -> Claim: ...

    async def complete(self, key: str) -> None: ...

    async def release(self, key: str, owner: str) -> None: ...


def lease_seconds(queues: Mapping[str, QueueEntry]) -> float:
    """The in-progress lease for these queues: their longest dispatch deadline, or Cloud Tasks' longest (30 min)
    when a queue's is not known. Shorter, and a second copy could start while the first still runs."""
    deadlines = [queue.dispatch_deadline_seconds for queue in queues.values()]
    if not deadlines or any(deadline is None for deadline in deadlines):
        return MAX_DISPATCH_DEADLINE_S
    return float(math.ceil(max(d for d in deadlines if d is not None)))


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name}: {value} is not a positive number")


class MemoryStore:
    """In-process store, bounded by time (TTL, lease) and by memory (`max_entries`, done and in progress).

    When it is full, it forgets the oldest done task before its TTL (a duplicate of that task would run again):
    each such early eviction is logged (a WARNING naming the key) and counted in `evicted_early`, never silent.
    Claims in progress are never evicted (there are at most as many as requests in flight); they expire with
    their lease. Claims are atomic because the event loop runs one coroutine step at a time and no method
    awaits between its check and its write."""

    def __init__(
        self,
        *,
        ttl_seconds: float = DEFAULT_TTL_S,
        lease_seconds: float = MAX_DISPATCH_DEADLINE_S,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        log: JsonLog | None = None,
    ) -> None:
        _check_positive(ttl_seconds=ttl_seconds, lease_seconds=lease_seconds, max_entries=max_entries)
        self._ttl = ttl_seconds
        self._lease = lease_seconds
        self._max_entries = max_entries
        self._clock = clock
        self._log = log or JsonLog()
        # key -> when it expires, oldest first (one TTL, one lease: insertion order is expiry order); a claim also
        # holds its owner
        self._done: OrderedDict[str, float] = OrderedDict()
        self._in_progress: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self.evicted_early = 0  # done tasks forgotten before their TTL, for lack of room

    @property
    def entries(self) -> int:
        return len(self._done) + len(self._in_progress)

    async def claim(self, key: str, owner: str) -> Claim:
        now = self._clock()
        self._expire(now)
        if key in self._done:
            return Claim.DONE
        if key in self._in_progress:
            return Claim.IN_PROGRESS
        self._in_progress[key] = (now + self._lease, owner)
        self._make_room(now)
        return Claim.NEW

    async def complete(self, key: str) -> None:
        now = self._clock()  # nothing to expire first: only a claim reads the entries, and it expires them
        self._in_progress.pop(key, None)
        self._done[key] = now + self._ttl
        self._done.move_to_end(key)
        self._make_room(now)

    async def release(self, key: str, owner: str) -> None:
        held = self._in_progress.get(key)
        if held is not None and held[1] == owner:
            del self._in_progress[key]

    def _expire(self, now: float) -> None:
        while self._done and next(iter(self._done.values())) <= now:
            self._done.popitem(last=False)
        while self._in_progress and next(iter(self._in_progress.values()))[0] <= now:
            self._in_progress.popitem(last=False)

    def _make_room(self, now: float) -> None:
        if self.entries > self._max_entries:
            self._expire(now)  # the expired go first: forgetting them is no loss
        while self.entries > self._max_entries and self._done:
            key, expiry = self._done.popitem(last=False)
            self.evicted_early += 1
            early = expiry - now
            self._log.emit(
                "WARNING",
                f"idempotency store full (max_entries {self._max_entries}): forgot done task {key} {early:.0f} s"
                " before its TTL, so a duplicate of it would run again; raise max_entries or use RedisStore",
                key=key,
                secondsBeforeTtl=early,
                evictedEarly=self.evicted_early,
                maxEntries=self._max_entries,
            )


# Delete the key only while it holds this owner's claim: a late release must never forget a task that is done,
# nor end the claim of a newer attempt.
_RELEASE_CLAIM = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
_IN_PROGRESS = "in-progress:"  # + the owner
_DONE = "done"


class RedisStore:
    """Shared store on Redis: `SET key in-progress:<owner> NX EX <lease>` claims, `SET key done EX <ttl>`
    completes, release deletes the key only while that owner's claim holds it (one Lua script, atomic). Redis
    bounds it by the same TTL and lease; its memory is the Redis instance's (give it a `volatile-*` or
    `noeviction` policy: an `allkeys-*` eviction forgets done tasks early, as MemoryStore would when full)."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        ttl_seconds: float = DEFAULT_TTL_S,
        lease_seconds: float = MAX_DISPATCH_DEADLINE_S,
        prefix: str = "tasks-idempotency/",
    ) -> None:
        _check_positive(ttl_seconds=ttl_seconds, lease_seconds=lease_seconds)
        self._client = client
        self._ttl = math.ceil(ttl_seconds)  # EX takes whole seconds: round up, never shorten
        self._lease = math.ceil(lease_seconds)
        self._prefix = prefix
        self._release = client.register_script(_RELEASE_CLAIM)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        """A store on the Redis at `url` (redis://host:port/db; options in the URL win over the timeouts)."""
        client = redis.asyncio.Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
        )
        return cls(client, **options)

    async def claim(self, key: str, owner: str) -> Claim:
        name = self._prefix + key
        for _ in range(3):
            if await self._client.set(name, _IN_PROGRESS + owner, nx=True, ex=self._lease):
                return Claim.NEW
            value = await self._client.get(name)
            if isinstance(value, bytes):
                value = value.decode()
            if value == _DONE:
                return Claim.DONE
            if value is not None:
                return Claim.IN_PROGRESS
            # It expired between SET and GET: claim again.
        return Claim.IN_PROGRESS  # come back later

    async def complete(self, key: str) -> None:
        await self._client.set(self._prefix + key, _DONE, ex=self._ttl)

    async def release(self, key: str, owner: str) -> None:
        await self._release(keys=[self._prefix + key], args=[_IN_PROGRESS + owner])

    async def aclose(self) -> None:
        await self._client.aclose()
