"""The idempotency stores' contract, run against both stores: MemoryStore, and RedisStore on a real redis-server.

The Redis server is started here, on 127.0.0.1 and a free port, with no persistence. When `redis-server` is not
installed these tests fail (CI and `make test` install it): a skipped store test would let a lost task through.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import pytest
import redis
import redis.asyncio
from starlette.testclient import TestClient

from contract.cloud_tasks import MAX_DISPATCH_DEADLINE_S
from contract.handler_env import IDEMPOTENCY_REDIS_URL, QueueEntry
from handler.app import create_app
from handler.environment import HandlerConfigError, HandlerSettings
from handler.idempotency import Claim, IdempotencyStore, MemoryStore, RedisStore, lease_seconds
from handler.structured_log import JsonLog
from handler.tasks import TaskContext, TaskRouter

KEY = "tasks-dev-default-336068/order-42"
REDIS_WAIT_S = 10.0  # how long a Redis expiry may take to show, at most (it is due after 1 s)


# --- the real redis-server --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisServer:
    url: str

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not installed, and the RedisStore tests need a real one: `make test` installs it"
            " (apt-get install redis-server)",
            pytrace=False,
        )
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    server = RedisServer(f"redis://127.0.0.1:{port}/0")
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with server.client() as client:
                    client.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stdout.read().decode() if process.stdout and process.poll() is not None else ""
                    pytest.fail(f"redis-server on 127.0.0.1:{port} did not answer PING: {output}", pytrace=False)
                time.sleep(0.02)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()


@pytest.fixture
def redis_db(redis_server: RedisServer) -> Iterator[RedisServer]:
    with redis_server.client() as client:
        client.flushdb()
    yield redis_server


# --- the two stores behind one interface ----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Backend(Protocol):
    def store(self, *, ttl_seconds: float, lease_seconds: float) -> IdempotencyStore: ...

    async def eventually(self, after_seconds: float, condition: Callable[[], Awaitable[bool]]) -> bool:
        """Once `after_seconds` have passed, whether `condition` holds (or comes to hold soon after)."""
        ...

    async def close(self) -> None: ...


class MemoryBackend:
    def __init__(self) -> None:
        self.clock = Clock()

    def store(self, *, ttl_seconds: float, lease_seconds: float) -> IdempotencyStore:
        return MemoryStore(
            ttl_seconds=ttl_seconds, lease_seconds=lease_seconds, clock=self.clock, log=JsonLog(io.StringIO())
        )

    async def eventually(self, after_seconds: float, condition: Callable[[], Awaitable[bool]]) -> bool:
        self.clock.now += after_seconds
        return await condition()

    async def close(self) -> None:
        pass


class RedisBackend:
    def __init__(self, server: RedisServer) -> None:
        self._server = server
        self._stores: list[RedisStore] = []

    def store(self, *, ttl_seconds: float, lease_seconds: float) -> IdempotencyStore:
        store = RedisStore.from_url(self._server.url, ttl_seconds=ttl_seconds, lease_seconds=lease_seconds)
        self._stores.append(store)
        return store

    async def eventually(self, after_seconds: float, condition: Callable[[], Awaitable[bool]]) -> bool:
        # Redis expires keys on its own clock: wait on the condition, with a timeout, instead of a fixed sleep.
        deadline = time.monotonic() + after_seconds + REDIS_WAIT_S
        while not await condition():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def close(self) -> None:
        for store in self._stores:
            await store.aclose()


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "memory":
        return MemoryBackend()
    return RedisBackend(request.getfixturevalue("redis_db"))


def run(backend: Backend, scenario: Callable[[], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        try:
            return await scenario()
        finally:
            await backend.close()

    return asyncio.run(main())


# --- the contract, for both stores ----------------------------------------------------------------------------


def test_the_first_claim_is_new_and_a_second_is_in_progress(backend: Backend) -> None:
    store = backend.store(ttl_seconds=3600, lease_seconds=600)

    async def scenario() -> list[Claim]:
        return [
            await store.claim(KEY, attempt()),
            await store.claim(KEY, attempt()),
            await store.claim(KEY + "-other", attempt()),
        ]

    assert run(backend, scenario) == [Claim.NEW, Claim.IN_PROGRESS, Claim.NEW]


def test_a_completed_task_is_done_for_every_later_claim(backend: Backend) -> None:
    store = backend.store(ttl_seconds=3600, lease_seconds=600)

    async def scenario() -> list[Claim]:
        await store.claim(KEY, attempt())
        await store.complete(KEY)
        return [await store.claim(KEY, attempt()), await store.claim(KEY, attempt())]

    assert run(backend, scenario) == [Claim.DONE, Claim.DONE]


def test_a_released_claim_lets_the_retry_run(backend: Backend) -> None:
    store = backend.store(ttl_seconds=3600, lease_seconds=600)

    async def scenario() -> list[Claim]:
        await store.claim(KEY, "first")
        await store.release(KEY, "first")
        return [await store.claim(KEY, "retry"), await store.claim(KEY, "copy")]

    assert run(backend, scenario) == [Claim.NEW, Claim.IN_PROGRESS]


def test_release_never_forgets_a_done_task(backend: Backend) -> None:
    """A late release (say, of a copy whose lease ran out while another copy finished) must not undo `done`."""
    store = backend.store(ttl_seconds=3600, lease_seconds=600)

    async def scenario() -> Claim:
        await store.claim(KEY, "first")
        await store.complete(KEY)
        await store.release(KEY, "first")
        await store.release("never-claimed", "first")
        return await store.claim(KEY, "late")

    assert run(backend, scenario) is Claim.DONE


def test_a_done_task_is_forgotten_after_its_ttl_and_not_before(backend: Backend) -> None:
    store = backend.store(ttl_seconds=1, lease_seconds=600)

    async def scenario() -> tuple[Claim, bool]:
        await store.claim(KEY, attempt())
        await store.complete(KEY)
        before = await store.claim(KEY, attempt())
        return before, await backend.eventually(1, lambda: _is_new(store))

    assert run(backend, scenario) == (Claim.DONE, True)


def test_the_claim_of_a_crashed_attempt_expires_after_its_lease(backend: Backend) -> None:
    """An instance that dies mid-task never releases its claim: the lease ends it, so the retry can run."""
    store = backend.store(ttl_seconds=3600, lease_seconds=1)

    async def scenario() -> tuple[Claim, bool, Claim]:
        await store.claim(KEY, attempt())  # ... and the instance is gone
        before = await store.claim(KEY, attempt())
        expired = await backend.eventually(1, lambda: _is_new(store))
        return before, expired, await store.claim(KEY, attempt())

    assert run(backend, scenario) == (Claim.IN_PROGRESS, True, Claim.IN_PROGRESS)


def test_a_late_release_by_an_attempt_that_outlived_its_lease_leaves_the_newer_claim(backend: Backend) -> None:
    """Attempt 1 outlives its lease (blocking work cannot be cancelled); attempt 2 claims the task anew; then
    attempt 1 fails and releases: attempt 2's claim must stand, or a third copy would run beside it."""
    store = backend.store(ttl_seconds=3600, lease_seconds=1)

    async def scenario() -> tuple[bool, Claim]:
        await store.claim(KEY, "attempt-1")
        expired = await backend.eventually(1, lambda: _claimed_by(store, "attempt-2"))
        await store.release(KEY, "attempt-1")
        return expired, await store.claim(KEY, "attempt-3")

    assert run(backend, scenario) == (True, Claim.IN_PROGRESS)


def test_a_completed_task_outlives_the_lease(backend: Backend) -> None:
    store = backend.store(ttl_seconds=3600, lease_seconds=1)

    async def scenario() -> Claim:
        await store.claim(KEY, attempt())
        await store.complete(KEY)
        # For Redis there is nothing to wait on (the key must simply stay): the write test below checks that
        # `done` carries the TTL, not the lease.
        await backend.eventually(1.5, _true)
        return await store.claim(KEY, attempt())

    assert run(backend, scenario) is Claim.DONE


@pytest.mark.parametrize("copies", [2, 64])
def test_concurrent_claims_of_one_task_give_exactly_one_new(backend: Backend, copies: int) -> None:
    store = backend.store(ttl_seconds=3600, lease_seconds=600)

    async def scenario() -> list[Claim]:
        return list(await asyncio.gather(*(store.claim(KEY, attempt()) for _ in range(copies))))

    claims = run(backend, scenario)
    assert claims.count(Claim.NEW) == 1
    assert claims.count(Claim.IN_PROGRESS) == copies - 1


def test_two_stores_on_one_backend_share_what_is_done(backend: Backend) -> None:
    """What makes a store fit for several instances. MemoryStore is per process, by design: two instances
    (or an instance and its replacement) both run the work."""
    first, second = (backend.store(ttl_seconds=3600, lease_seconds=600) for _ in range(2))

    async def scenario() -> list[Claim]:
        claims = [await first.claim(KEY, attempt()), await second.claim(KEY, attempt())]
        await first.complete(KEY)
        return [*claims, await second.claim(KEY, attempt())]

    shared = [Claim.NEW, Claim.IN_PROGRESS, Claim.DONE]
    assert run(backend, scenario) == (
        shared if isinstance(backend, RedisBackend) else [Claim.NEW, Claim.NEW, Claim.IN_PROGRESS]
    )


def attempt() -> str:
    """A new attempt's owner token, as the app makes one per request."""
    return uuid.uuid4().hex


async def _is_new(store: IdempotencyStore) -> bool:
    return await store.claim(KEY, attempt()) is Claim.NEW


async def _claimed_by(store: IdempotencyStore, owner: str) -> bool:
    return await store.claim(KEY, owner) is Claim.NEW


async def _true() -> bool:
    return True


# --- MemoryStore: bounded, and never silently ---------------------------------------------------------------------


def memory_store(max_entries: int, log: io.StringIO, clock: Clock, ttl_seconds: float = 3600) -> MemoryStore:
    return MemoryStore(
        ttl_seconds=ttl_seconds, lease_seconds=600, max_entries=max_entries, clock=clock, log=JsonLog(log)
    )


async def claim_and_complete(store: MemoryStore, *keys: str) -> None:
    for key in keys:
        assert await store.claim(key, attempt()) is Claim.NEW
        await store.complete(key)


def test_memory_store_evicting_a_done_task_before_its_ttl_says_so_and_counts_it() -> None:
    log, clock = io.StringIO(), Clock()
    store = memory_store(2, log, clock)

    async def scenario() -> None:
        await claim_and_complete(store, "q/a", "q/b")
        clock.now += 100
        await claim_and_complete(store, "q/c")  # over capacity: q/a goes, 3500 s before its TTL

    asyncio.run(scenario())
    assert store.evicted_early == 1  # the store says so ...
    entries = [json.loads(line) for line in log.getvalue().splitlines()]
    assert asyncio.run(store.claim("q/a", attempt())) is Claim.NEW  # ... that it forgot: the work would run again
    assert len(entries) == 1
    assert entries[0]["severity"] == "WARNING"
    assert entries[0]["key"] == "q/a" and entries[0]["evictedEarly"] == 1 and entries[0]["maxEntries"] == 2
    assert entries[0]["secondsBeforeTtl"] == pytest.approx(3500)
    assert "q/a" in entries[0]["message"] and "max_entries" in entries[0]["message"]


def test_memory_store_forgetting_a_done_task_at_its_ttl_is_not_an_early_eviction() -> None:
    log, clock = io.StringIO(), Clock()
    store = memory_store(2, log, clock, ttl_seconds=60)

    async def scenario() -> None:
        await claim_and_complete(store, "q/a", "q/b")
        clock.now += 60
        await claim_and_complete(store, "q/c", "q/d")  # q/a and q/b had expired: room for both

    asyncio.run(scenario())
    assert store.evicted_early == 0 and log.getvalue() == ""
    assert store.entries == 2


def test_memory_store_making_room_forgets_the_expired_first() -> None:
    """A completion reads no entry, so it expires none, until it needs room: then the expired go before any other."""
    log, clock = io.StringIO(), Clock()
    store = memory_store(2, log, clock, ttl_seconds=60)

    async def scenario() -> None:
        await claim_and_complete(store, "q/a", "q/b")
        clock.now += 60
        await store.complete("q/c")  # with no claim before it: over capacity, and q/a and q/b had expired

    asyncio.run(scenario())
    assert store.evicted_early == 0 and log.getvalue() == ""
    assert store.entries == 1


def test_memory_store_never_holds_more_than_max_entries() -> None:
    log, clock = io.StringIO(), Clock()
    store = memory_store(10, log, clock)

    async def scenario() -> None:
        await claim_and_complete(store, *(f"q/{i}" for i in range(25)))
        for i in range(5):
            await store.claim(f"q/running-{i}", attempt())

    asyncio.run(scenario())
    assert store.entries == 10
    assert store.evicted_early == 20  # 15 done ones for the later done ones, 5 for the running claims
    assert asyncio.run(store.claim("q/running-4", attempt())) is Claim.IN_PROGRESS  # running claims are kept first


def test_memory_store_refuses_a_capacity_it_cannot_hold() -> None:
    with pytest.raises(ValueError, match="max_entries: 0"):
        MemoryStore(max_entries=0)
    with pytest.raises(ValueError, match="lease_seconds: 0"):
        MemoryStore(lease_seconds=0)


# --- RedisStore: what it writes -----------------------------------------------------------------------------------


def test_redis_store_writes_in_progress_with_the_lease_and_done_with_the_ttl(redis_db: RedisServer) -> None:
    prefix = f"test-{uuid.uuid4().hex}/"

    async def scenario() -> None:
        store = RedisStore.from_url(redis_db.url, ttl_seconds=86400, lease_seconds=600, prefix=prefix)
        try:
            await store.claim(KEY, "attempt-1")
            with redis_db.client() as client:
                assert client.get(prefix + KEY) == b"in-progress:attempt-1"
                assert 590 < client.ttl(prefix + KEY) <= 600
            await store.complete(KEY)
            with redis_db.client() as client:
                assert client.get(prefix + KEY) == b"done"
                assert 86390 < client.ttl(prefix + KEY) <= 86400
        finally:
            await store.aclose()

    asyncio.run(scenario())


def test_the_lease_covers_the_longest_dispatch_deadline() -> None:
    assert lease_seconds({"a": QueueEntry("a", 5, 60), "b": QueueEntry("b", 5, 900.5)}) == 901
    # A queue whose deadline the stack did not give may use the longest Cloud Tasks allows.
    assert lease_seconds({"a": QueueEntry("a", 5, 60), "b": QueueEntry("b", 5)}) == MAX_DISPATCH_DEADLINE_S
    assert lease_seconds({}) == MAX_DISPATCH_DEADLINE_S


# --- the handler: Redis when the environment names one ------------------------------------------------------------


def test_the_environment_names_the_redis_store() -> None:
    assert IDEMPOTENCY_REDIS_URL == "TASKS_IDEMPOTENCY_REDIS_URL"
    settings = HandlerSettings.from_environ({IDEMPOTENCY_REDIS_URL: "redis://10.0.0.3:6379/0"})
    assert settings.redis_url == "redis://10.0.0.3:6379/0"
    assert HandlerSettings.from_environ({}).redis_url is None
    assert HandlerSettings.from_environ({IDEMPOTENCY_REDIS_URL: ""}).redis_url is None


@pytest.mark.parametrize("url", ["10.0.0.3:6379", "http://10.0.0.3:6379", "redis//10.0.0.3"])
def test_a_redis_url_that_is_not_one_is_refused_naming_the_variable(url: str) -> None:
    with pytest.raises(HandlerConfigError, match=f"TASKS_IDEMPOTENCY_REDIS_URL: {url!r} is not a redis://"):
        HandlerSettings.from_environ({IDEMPOTENCY_REDIS_URL: url})


def test_the_app_keeps_what_is_done_in_redis_when_the_environment_names_it(redis_db: RedisServer) -> None:
    queue = "tasks-dev-default-336068"
    runs: list[str] = []
    router = TaskRouter()

    @router.task("/tasks/ok")
    async def ok(payload: Any, context: TaskContext) -> None:
        runs.append(context.task)

    settings = HandlerSettings(
        queues={queue: QueueEntry("default", 3, 120)}, invoker_emails=frozenset(), redis_url=redis_db.url
    )
    headers = {
        "X-CloudTasks-QueueName": queue,
        "X-CloudTasks-TaskName": "t1",
        "X-CloudTasks-TaskRetryCount": "0",
        "X-CloudTasks-TaskExecutionCount": "0",
        "X-CloudTasks-TaskETA": "1764331200.5",
    }
    # Two apps: two instances of the service, one Redis.
    for _ in range(2):
        with TestClient(create_app(router, settings, log=JsonLog(io.StringIO()))) as client:
            assert client.post("/tasks/ok", json={}, headers=headers).status_code == 200
    assert runs == ["t1"]
    with redis_db.client() as client:
        keys = client.keys("*")
        assert len(keys) == 1 and keys[0].endswith(f"{queue}/t1".encode())
        assert client.get(keys[0]) == b"done"
