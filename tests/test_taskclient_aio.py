"""AsyncTaskPublisher (taskclient.aio) and the synchronous publish_many that runs it, against the emulator on
loopback gRPC: the same requests, retries, duplicates, errors and order as the synchronous calls."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from emulator_support import LoopbackEmulator
from google.cloud import tasks_v2
from taskclient_support import outputs_document, service_account_key, stack, stack_emulator

from contract import cloud_tasks
from localcloud.emulator.faults import Fault
from taskclient.aio import AsyncTaskPublisher, RequestTemplates
from taskclient.connection import CLOUD_TASKS_TARGET, Connection, connect
from taskclient.errors import PublishError, TaskClientError, TaskValidationError
from taskclient.publisher import Outcome, PublishResult, TaskBuilder, TaskPublisher, TaskRequest

T = TypeVar("T")
NOW = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
DEFAULT = stack().queues["default"].path


@pytest.fixture
def server() -> Iterator[LoopbackEmulator]:
    with stack_emulator() as running:
        yield running


@pytest.fixture
def sleeps() -> list[float]:
    return []


def on_a_loop(
    server: LoopbackEmulator, sleeps: list[float], work: Callable[[AsyncTaskPublisher], Awaitable[T]], **options: Any
) -> T:
    async def record(seconds: float) -> None:
        sleeps.append(seconds)

    async def main() -> T:
        async with AsyncTaskPublisher.from_mapping(
            outputs_document(), connection=connect(server.address), now=lambda: NOW, sleep=record, **options
        ) as publisher:
            return await work(publisher)

    return asyncio.run(main())


# --- the same request as the synchronous path ----------------------------------------------------------------

REQUESTS = [
    TaskRequest({"n": 1}),
    TaskRequest(b"\x00raw", name="raw-1"),
    TaskRequest({"to": "a"}, queue="emails", dedupe_key="k", delay=30),
    TaskRequest({}, path="/tasks/resize", deadline=timedelta(minutes=20), headers={"X-Tenant": "t1"}),
    TaskRequest({}, schedule_at=NOW + timedelta(hours=2, microseconds=123456), headers={"content-type": "text/x"}),
    TaskRequest({"n": 2}),  # the same shape as the first: its template, reused
]


def test_each_raw_request_equals_the_one_the_synchronous_publisher_builds() -> None:
    builder = TaskBuilder(stack(), lambda: NOW)
    templates = RequestTemplates()
    for request in REQUESTS:
        checked = builder.check(request)
        expected = tasks_v2.CreateTaskRequest(parent=checked.queue.path, task=checked.task())
        assert templates.request(checked) == tasks_v2.CreateTaskRequest.pb(expected), request


def stored(task: tasks_v2.Task) -> tuple[Any, ...]:
    """What a stored task carries from its request (a task with no schedule time gets the server's clock)."""
    request = task.http_request
    return (
        task.name.rsplit("/", 1)[1] if "raw" in task.name else "",
        request.body,
        request.url,
        sorted(request.headers.items()),
        request.oidc_token.audience,
        task.dispatch_deadline.total_seconds(),
    )


def test_tasks_stored_are_those_the_synchronous_publisher_stores(server: LoopbackEmulator, sleeps: list[float]) -> None:
    results = on_a_loop(server, sleeps, lambda publisher: publisher.publish_many(REQUESTS, concurrency=3))
    assert [r.outcome for r in results] == [Outcome.CREATED] * len(REQUESTS)
    created_async = sorted(stored(task) for task in server.tasks())
    calls_async = [call.metadata for call in server.faults.calls("CreateTask")]
    with (
        stack_emulator() as other,
        TaskPublisher.from_mapping(outputs_document(), connection=connect(other.address), now=lambda: NOW) as publisher,
    ):
        for request in REQUESTS:
            publisher.create(request)
        assert created_async == sorted(stored(task) for task in other.tasks())
        calls_sync = [call.metadata for call in other.faults.calls("CreateTask")]
    # The routing header and the client library's x-goog-api-client, as the client library sends them.
    assert {key for metadata in calls_async for key, _ in metadata} >= {"x-goog-request-params", "x-goog-api-client"}
    assert sorted(dict(m)["x-goog-request-params"] for m in calls_async) == sorted(
        dict(m)["x-goog-request-params"] for m in calls_sync
    )
    assert {dict(m)["x-goog-api-client"] for m in calls_async} == {dict(m)["x-goog-api-client"] for m in calls_sync}


# --- retries, duplicates and errors ---------------------------------------------------------------------------


def test_a_named_task_is_retried_with_backoff_without_blocking(server: LoopbackEmulator, sleeps: list[float]) -> None:
    server.faults.fail_next("CreateTask", grpc.StatusCode.UNAVAILABLE, "try again", times=2)
    outcome = on_a_loop(server, sleeps, lambda p: p.create(TaskRequest({}, name="t1")))
    assert outcome == (Outcome.CREATED, f"{DEFAULT}/tasks/t1")
    assert server.create_calls() == 3 and len(server.tasks()) == 1
    assert len(sleeps) == 2 and 0.125 <= sleeps[0] <= 0.375 and 0.25 <= sleeps[1] <= 0.75


def test_deadline_exceeded_is_retried_too_and_the_lost_reply_reads_as_created(
    server: LoopbackEmulator, sleeps: list[float]
) -> None:
    server.faults.fail_next("CreateTask", grpc.StatusCode.DEADLINE_EXCEEDED, "response lost", after_effect=True)
    results = on_a_loop(server, sleeps, lambda p: p.publish_many([TaskRequest({}, name="t1")]))
    assert [(r.outcome, r.name) for r in results] == [(Outcome.CREATED, f"{DEFAULT}/tasks/t1")]
    assert server.create_calls() == 2 and len(sleeps) == 1


def test_an_existing_name_on_the_first_attempt_is_a_duplicate(server: LoopbackEmulator, sleeps: list[float]) -> None:
    async def twice(publisher: AsyncTaskPublisher) -> list[tuple[Outcome, str]]:
        return [await publisher.create(TaskRequest({}, name="t1")) for _ in range(2)]

    assert [o for o, _ in on_a_loop(server, sleeps, twice)] == [Outcome.CREATED, Outcome.DUPLICATE]
    assert len(server.tasks()) == 1


def test_an_unnamed_task_is_not_retried(server: LoopbackEmulator, sleeps: list[float]) -> None:
    server.faults.fail_next("CreateTask", grpc.StatusCode.UNAVAILABLE, "try again")
    with pytest.raises(PublishError, match="not retried: a task without a name could be created twice"):
        on_a_loop(server, sleeps, lambda p: p.create(TaskRequest({})))
    assert server.create_calls() == 1 and sleeps == []


def test_retries_give_up_after_the_configured_attempts(server: LoopbackEmulator, sleeps: list[float]) -> None:
    server.faults.fail_next("CreateTask", grpc.StatusCode.UNAVAILABLE, "down", times=10)
    with pytest.raises(PublishError, match=r"after 3 attempts"):
        on_a_loop(server, sleeps, lambda p: p.create(TaskRequest({}, name="t1")), retries=2)
    assert server.create_calls() == 3 and len(sleeps) == 2


def test_the_per_call_timeout_is_a_deadline_exceeded_that_named_tasks_retry(
    server: LoopbackEmulator, sleeps: list[float]
) -> None:
    server.faults.latency = 0.3
    with pytest.raises(PublishError, match=r"Cloud Tasks answered DEADLINE_EXCEEDED .*\(after 2 attempts\)"):
        on_a_loop(server, sleeps, lambda p: p.create(TaskRequest({}, name="t1")), retries=1, timeout=0.05)
    assert len(sleeps) == 1


@pytest.mark.parametrize(
    ("code", "detail"),
    [
        (grpc.StatusCode.PERMISSION_DENIED, 'The principal lacks IAM permission "cloudtasks.tasks.create"'),
        (grpc.StatusCode.PERMISSION_DENIED, "The principal lacks IAM permission iam.serviceAccounts.actAs"),
        (grpc.StatusCode.NOT_FOUND, "Requested entity was not found."),
        (grpc.StatusCode.FAILED_PRECONDITION, "Queue is disabled"),
        (grpc.StatusCode.UNAUTHENTICATED, "no token"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "quota"),
    ],
)
def test_server_errors_read_word_for_word_as_the_synchronous_ones(
    server: LoopbackEmulator, sleeps: list[float], code: grpc.StatusCode, detail: str
) -> None:
    server.faults.fail_next("CreateTask", code, detail)
    with pytest.raises(PublishError) as from_async:
        on_a_loop(server, sleeps, lambda p: p.create(TaskRequest({}, name="t1")))
    server.faults.fail_next("CreateTask", code, detail)
    with (
        TaskPublisher.from_mapping(outputs_document(), connection=connect(server.address)) as publisher,
        pytest.raises(PublishError) as from_sync,
    ):
        publisher.create(TaskRequest({}, name="t1"))
    assert str(from_async.value) == str(from_sync.value) and from_async.value.code == from_sync.value.code == code.name


def test_bad_arguments_are_refused_with_the_same_message_before_any_rpc(
    server: LoopbackEmulator, sleeps: list[float]
) -> None:
    with pytest.raises(TaskValidationError) as raised:
        on_a_loop(server, sleeps, lambda p: p.create(TaskRequest(b"x" * 100_001, queue="nope", deadline=1)))
    message = str(raised.value)
    assert "queue: 'nope'" in message and "payload: 100,001 bytes" in message and "deadline: 1s" in message
    assert server.faults.calls() == []


# --- many at a time -----------------------------------------------------------------------------------------

DENIED = Fault(grpc.StatusCode.PERMISSION_DENIED, "The principal lacks IAM permission cloudtasks.tasks.create")


def test_results_come_in_input_order_with_each_outcome(server: LoopbackEmulator, sleeps: list[float]) -> None:
    server.faults.fail_when("CreateTask", lambda request: DENIED if request.task.name.endswith("/denied") else None)
    seen: list[int] = []
    items = [TaskRequest({}, name="denied"), TaskRequest({}, queue="nope"), *({"n": n} for n in range(200))]
    results = on_a_loop(
        server, sleeps, lambda p: p.publish_many(items, concurrency=7, on_result=lambda r: seen.append(r.index))
    )
    assert [r.index for r in results] == list(range(202)) and sorted(seen) == list(range(202))
    assert [r.outcome for r in results[:2]] == [Outcome.FAILED, Outcome.FAILED]
    assert results[0].error and "roles/cloudtasks.enqueuer" in results[0].error
    assert results[1].error and "queue: 'nope'" in results[1].error
    assert {r.outcome for r in results[2:]} == {Outcome.CREATED} and len(server.tasks()) == 200


def test_never_more_calls_in_flight_than_the_concurrency(server: LoopbackEmulator, sleeps: list[float]) -> None:
    server.faults.latency = 0.02  # so that calls overlap, and the cap is what stops more of them
    on_a_loop(server, sleeps, lambda p: p.publish_many([{"n": n} for n in range(60)], concurrency=5))
    assert server.faults.max_in_flight == 5 and len(server.tasks()) == 60


def test_items_are_taken_lazily_at_most_concurrency_ahead_of_their_results(
    server: LoopbackEmulator, sleeps: list[float]
) -> None:
    taken = 0
    finished = 0
    ahead: list[int] = []

    def items() -> Iterator[dict[str, int]]:
        nonlocal taken
        for n in range(300):
            taken += 1
            ahead.append(taken - finished)
            yield {"n": n}

    def count(_: PublishResult) -> None:
        nonlocal finished
        finished += 1

    on_a_loop(server, sleeps, lambda p: p.publish_each(items(), on_result=count, concurrency=4))
    assert finished == 300 and max(ahead) == 4


def test_an_error_reading_the_items_lets_the_calls_in_flight_finish_then_is_raised(
    server: LoopbackEmulator, sleeps: list[float]
) -> None:
    def items() -> Iterator[dict[str, int]]:
        yield from ({"n": n} for n in range(10))
        raise OSError("disk gone")

    results: list[PublishResult] = []
    with pytest.raises(OSError, match="disk gone"):
        on_a_loop(server, sleeps, lambda p: p.publish_each(items(), on_result=results.append, concurrency=4))
    assert len(results) == 10 == len(server.tasks())


# --- the synchronous API on the engine -------------------------------------------------------------------------


@pytest.fixture
def publisher(server: LoopbackEmulator, sleeps: list[float]) -> Iterator[TaskPublisher]:
    with TaskPublisher.from_mapping(
        outputs_document(), connection=connect(server.address), now=lambda: NOW, sleep=sleeps.append
    ) as created:
        yield created


def test_publish_many_works_from_a_thread(publisher: TaskPublisher, server: LoopbackEmulator) -> None:
    done: list[list[PublishResult]] = []
    worker = threading.Thread(target=lambda: done.append(publisher.publish_many([{"n": n} for n in range(50)])))
    worker.start()
    worker.join(timeout=60)
    assert [r.outcome for r in done[0]] == [Outcome.CREATED] * 50 and len(server.tasks()) == 50


def test_publish_many_inside_a_running_loop_runs_on_a_loop_of_its_own(
    publisher: TaskPublisher, server: LoopbackEmulator
) -> None:
    async def caller() -> list[PublishResult]:
        return publisher.publish_many([{"n": n} for n in range(20)])

    assert len(asyncio.run(caller())) == 20 == len(server.tasks())


def test_publish_many_twice_on_one_publisher_and_publish_between(
    publisher: TaskPublisher, server: LoopbackEmulator, sleeps: list[float]
) -> None:
    server.faults.fail_next("CreateTask", grpc.StatusCode.UNAVAILABLE, times=1)
    publisher.publish_many([TaskRequest({}, name="a")])
    publisher.publish({}, name="b")
    publisher.publish_many([TaskRequest({}, name="c")])
    assert len(server.tasks()) == 3 and len(sleeps) == 1  # the injected sleep, used by the engine too


def test_a_publisher_makes_one_channel_for_every_publish_many_it_runs(
    publisher: TaskPublisher, server: LoopbackEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A channel per call would be a TLS handshake per call in the cloud: the engine's channel lives as long as
    the publisher, on a loop of its own, whichever thread calls."""
    made: list[object] = []
    aio_channel = Connection.aio_channel

    def counted(connection: Connection) -> grpc.aio.Channel:
        made.append(connection)
        return aio_channel(connection)

    monkeypatch.setattr(Connection, "aio_channel", counted)
    publisher.publish_many([{"n": n} for n in range(5)])
    publisher.publish_each([{"n": n} for n in range(5)], on_result=lambda _: None)
    worker = threading.Thread(target=lambda: publisher.publish_many([{"n": n} for n in range(5)]))
    worker.start()
    worker.join(timeout=60)
    assert len(server.tasks()) == 15 and len(made) == 1


def test_on_result_may_not_call_back_into_its_publisher(publisher: TaskPublisher) -> None:
    def again(_: PublishResult) -> None:
        publisher.publish_many([{"n": 0}])

    with pytest.raises(TaskClientError, match="on_result"):
        publisher.publish_many([{"n": 1}], on_result=again)


# --- the Cloud Tasks path ---------------------------------------------------------------------------------------


def test_the_cloud_path_makes_an_authorized_tls_channel_to_cloud_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Construction only: no call leaves this machine (a real project is what proves the call itself)."""
    key = service_account_key(tmp_path / "key.json", token_uri="http://127.0.0.1:9/token")  # never reached
    monkeypatch.delenv(cloud_tasks.EMULATOR_HOST_ENV, raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    connection = connect()
    assert connection.emulator_host is None and connection.credentials is not None
    assert connection.principal == "serviceAccount:api-dev@my-tasks-dev.iam.gserviceaccount.com"
    assert CLOUD_TASKS_TARGET == "cloudtasks.googleapis.com:443"

    async def make() -> str:
        channel = connection.aio_channel()
        try:
            return type(channel).__module__
        finally:
            await channel.close()

    assert asyncio.run(make()).startswith("grpc.aio")
    connection.close()
