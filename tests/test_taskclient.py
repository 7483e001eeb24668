"""taskclient against the emulator on loopback gRPC, with the stock google-cloud-tasks client underneath."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from emulator_support import LoopbackEmulator
from google.cloud import tasks_v2
from taskclient_support import outputs_document, stack, stack_emulator

from contract.dead_letters import HEADER_NOT_BEFORE
from localcloud.emulator.faults import Fault
from taskclient.connection import connect
from taskclient.errors import PublishError, TaskValidationError
from taskclient.publisher import Outcome, TaskPublisher, TaskRequest, task_id_for

# The publisher's clock: a fixed instant, ahead of the server's real clock so schedule times stay future.
NOW = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
# Cloud Tasks adds its User-Agent to the headers of every HTTP task it stores.
CLOUD_TASKS_USER_AGENT = {"User-Agent": "Google-Cloud-Tasks"}


@pytest.fixture
def server() -> Iterator[LoopbackEmulator]:
    with stack_emulator() as running:
        yield running


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def publisher(server: LoopbackEmulator, sleeps: list[float]) -> Iterator[TaskPublisher]:
    with TaskPublisher.from_mapping(
        outputs_document(), connection=connect(server.address), now=lambda: NOW, sleep=sleeps.append
    ) as created:
        yield created


def only_task(server: LoopbackEmulator) -> tasks_v2.Task:
    tasks = server.tasks()
    assert len(tasks) == 1
    return tasks[0]


# --- one task -----------------------------------------------------------------------------------


def test_json_task_carries_the_invoker_token_and_explicit_audience(
    publisher: TaskPublisher, server: LoopbackEmulator
) -> None:
    name = publisher.publish({"order": 42})
    task = only_task(server)
    assert name == task.name and name.startswith(stack().queues["default"].path + "/tasks/")
    request = task.http_request
    assert request.url == stack().queues["default"].task_url
    assert request.http_method == tasks_v2.HttpMethod.POST
    assert request.headers["Content-Type"] == "application/json"
    assert request.body == b'{"order":42}'
    assert request.oidc_token.service_account_email == stack().invoker_email
    assert request.oidc_token.audience == stack().oidc_audience != stack().service_url
    assert task.dispatch_deadline == timedelta(seconds=600)
    assert ("x-goog-request-params", f"parent={stack().queues['default'].path}") in server.faults.calls("CreateTask")[
        0
    ].metadata


def test_bytes_are_sent_as_given_without_a_content_type(publisher: TaskPublisher, server: LoopbackEmulator) -> None:
    publisher.publish(b"\x00raw")
    request = only_task(server).http_request
    assert request.body == b"\x00raw"
    assert "Content-Type" not in request.headers


def test_queue_level_routing_leaves_url_and_token_to_the_queue(
    publisher: TaskPublisher, server: LoopbackEmulator
) -> None:
    publisher.publish({"to": "a@example.com"}, queue="emails")
    task = only_task(server)
    assert task.name.startswith(stack().queues["emails"].path + "/tasks/")
    assert task.http_request.url == stack().queues["emails"].task_url
    assert "oidc_token" not in task.http_request
    assert task.dispatch_deadline == timedelta(seconds=120)


def test_path_delay_deadline_and_headers(publisher: TaskPublisher, server: LoopbackEmulator) -> None:
    publisher.publish({}, path="/tasks/resize", delay=90, deadline=timedelta(minutes=20), headers={"X-Tenant": "t1"})
    task = only_task(server)
    assert task.http_request.url == stack().service_url + "/tasks/resize"
    assert task.schedule_time == NOW + timedelta(seconds=90)
    assert task.dispatch_deadline == timedelta(minutes=20)
    assert task.http_request.headers["X-Tenant"] == "t1"


def test_a_name_is_created_once_and_a_repeat_returns_the_same_name(
    publisher: TaskPublisher, server: LoopbackEmulator
) -> None:
    first = publisher.publish({"n": 1}, name="order-42")
    again = publisher.publish({"n": 1}, name="order-42")
    assert first == again == f"{stack().queues['default'].path}/tasks/order-42"
    assert len(server.tasks()) == 1 and server.create_calls() == 2


def test_dedupe_key_derives_a_hashed_name(publisher: TaskPublisher, server: LoopbackEmulator) -> None:
    name = publisher.publish({"n": 1}, dedupe_key="invoice:2026-11:42")
    assert name == f"{stack().queues['default'].path}/tasks/{task_id_for('invoice:2026-11:42')}"
    assert len(task_id_for("invoice:2026-11:42")) == 64


# --- checked before any RPC -----------------------------------------------------------------------

FAR = NOW + timedelta(days=31)


@pytest.mark.parametrize(
    ("payload", "options", "message"),
    [
        (b"x" * 100_001, {}, "payload: 100,001 bytes is above the 100,000-byte task limit"),
        ({"a": float("nan")}, {}, "payload: not JSON-serialisable"),
        ({}, {"delay": timedelta(days=30, seconds=1)}, "delay: 30 days, 0:00:01 is outside 0..30 days"),
        ({}, {"delay": -1}, "delay: -1 day, 23:59:59 is outside 0..30 days"),
        ({}, {"schedule_at": FAR}, f"schedule_at: {FAR.isoformat()} is more than 30 days ahead"),
        ({}, {"schedule_at": datetime(2026, 12, 1)}, "schedule_at: 2026-12-01T00:00:00 has no time zone"),
        ({}, {"delay": 1, "schedule_at": NOW}, "delay, schedule_at: give one or the other"),
        ({}, {"deadline": 14}, "deadline: 14s is outside 15s..1800s"),
        ({}, {"deadline": timedelta(minutes=31)}, "deadline: 1860s is outside 15s..1800s"),
        ({}, {"name": "has space"}, "name: 'has space' is not a task id"),
        ({}, {"name": "x" * 501}, "is not a task id (1-500 letters, digits, '-' or '_')"),
        ({}, {"name": "a", "dedupe_key": "b"}, "name, dedupe_key: give one or the other"),
        ({}, {"path": "/" + "p" * 2100}, "path: the task URL is"),
        ({}, {"path": "tasks/x"}, "path: 'tasks/x' must start with '/'"),
        ({}, {"queue": "emails", "path": "/x"}, "path: queue 'emails' routes every task to its own path"),
        ({}, {"queue": "nope"}, "queue: 'nope' is not one of the stack's queues (default, emails)"),
        ({}, {"headers": {"Authorization": "Bearer x"}}, "headers: 'Authorization' is set by Cloud Tasks"),
        ({}, {"headers": {"X-CloudTasks-TaskName": "x"}}, "headers: 'X-CloudTasks-TaskName' is set by Cloud Tasks"),
        # 82,065 = Content-Type (28) + X-Big (82,005) + X-Tasks-Not-Before (18 + 14: the header taskclient adds)
        ({}, {"headers": {"X-Big": "v" * 82_000}}, "headers: 82,065 bytes is at or above the Cloud Tasks limit"),
        ({}, {"headers": {"x-tasks-not-before": "1"}}, "headers: 'x-tasks-not-before' is set by taskclient"),
        ({}, {"headers": {"X-Dead-Letter-Queue": "q"}}, "headers: 'X-Dead-Letter-Queue': the X-Dead-Letter- prefix"),
    ],
)
def test_bad_arguments_are_refused_before_any_rpc(
    publisher: TaskPublisher, server: LoopbackEmulator, payload: Any, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(TaskValidationError) as raised:
        publisher.publish(payload, **options)
    assert message in str(raised.value)
    assert server.faults.calls() == []


def test_every_bad_argument_is_named_at_once(publisher: TaskPublisher) -> None:
    with pytest.raises(TaskValidationError) as raised:
        publisher.publish(b"x" * 100_001, queue="nope", deadline=1)
    assert str(raised.value).count(": ") >= 3
    assert "queue:" in str(raised.value) and "payload:" in str(raised.value) and "deadline:" in str(raised.value)


def test_emulator_host_must_be_host_and_port() -> None:
    with pytest.raises(TaskValidationError, match="CLOUD_TASKS_EMULATOR_HOST: 'localhost' is not host:port"):
        connect("localhost")


# --- server errors say what to fix ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "detail", "expected"),
    [
        (
            grpc.StatusCode.PERMISSION_DENIED,
            'The principal lacks IAM permission "cloudtasks.tasks.create" for the resource',
            "may not create tasks on {queue}: grant it roles/cloudtasks.enqueuer on the queue",
        ),
        (
            grpc.StatusCode.PERMISSION_DENIED,
            "The principal lacks IAM permission iam.serviceAccounts.actAs for the resource",
            "may not act as the invoker {invoker}: grant it roles/iam.serviceAccountUser on that account",
        ),
        (grpc.StatusCode.NOT_FOUND, "Requested entity was not found.", "queue {queue} not found: it is not deployed"),
        (
            grpc.StatusCode.FAILED_PRECONDITION,
            "Queue is disabled",
            "queue {queue} refused the task in its present state",
        ),
        (grpc.StatusCode.UNAUTHENTICATED, "no token", "no valid credentials"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "quota", "Cloud Tasks answered RESOURCE_EXHAUSTED"),
    ],
)
def test_server_errors_become_actionable_messages(
    publisher: TaskPublisher, server: LoopbackEmulator, code: grpc.StatusCode, detail: str, expected: str
) -> None:
    server.faults.fail_next("CreateTask", code, detail)
    with pytest.raises(PublishError) as raised:
        publisher.publish({}, name="t1")
    message = str(raised.value)
    assert expected.format(queue=stack().queues["default"].path, invoker=stack().invoker_email) in message
    assert f"[{code.name}: {detail}]" in message
    assert raised.value.code == code.name
    if code is grpc.StatusCode.PERMISSION_DENIED:
        assert f"the caller (emulator {server.address})" in message
    assert server.create_calls() == 1  # not retried


def test_a_queue_the_server_does_not_have_is_reported_as_not_deployed() -> None:
    with (
        LoopbackEmulator() as empty,
        TaskPublisher.from_mapping(outputs_document(), connection=connect(empty.address)) as publisher,
        pytest.raises(PublishError) as raised,
    ):
        publisher.publish({})
    assert f"queue {stack().queues['default'].path} not found: it is not deployed" in str(raised.value)
    assert "(they say europe-west1)" in str(raised.value)


def test_a_paused_queue_accepts_tasks(publisher: TaskPublisher, server: LoopbackEmulator) -> None:
    # As in Cloud Tasks: pausing stops dispatch, not creation, so the client must not refuse it either.
    server.pause(stack().queues["default"].path)
    assert publisher.publish({}, name="while-paused") == f"{stack().queues['default'].path}/tasks/while-paused"
    assert [task.name for task in server.tasks()] == [f"{stack().queues['default'].path}/tasks/while-paused"]


# --- transient errors -----------------------------------------------------------------------------


def test_named_task_is_retried_with_backoff_on_transient_errors(
    publisher: TaskPublisher, server: LoopbackEmulator, sleeps: list[float]
) -> None:
    server.faults.fail_next("CreateTask", grpc.StatusCode.UNAVAILABLE, "try again", times=2)
    assert publisher.publish({}, name="t1").endswith("/tasks/t1")
    assert server.create_calls() == 3 and len(server.tasks()) == 1
    assert len(sleeps) == 2 and 0.125 <= sleeps[0] <= 0.375 and 0.25 <= sleeps[1] <= 0.75


def test_already_exists_after_a_lost_response_means_created(publisher: TaskPublisher, server: LoopbackEmulator) -> None:
    server.faults.fail_next("CreateTask", grpc.StatusCode.DEADLINE_EXCEEDED, "response lost", after_effect=True)
    results = publisher.publish_many([TaskRequest({}, name="t1")])
    assert [(r.outcome, r.name) for r in results] == [(Outcome.CREATED, f"{stack().queues['default'].path}/tasks/t1")]
    assert len(server.tasks()) == 1 and server.create_calls() == 2


def test_unnamed_task_is_not_retried(publisher: TaskPublisher, server: LoopbackEmulator, sleeps: list[float]) -> None:
    server.faults.fail_next("CreateTask", grpc.StatusCode.UNAVAILABLE, "try again")
    with pytest.raises(PublishError, match="not retried: a task without a name could be created twice"):
        publisher.publish({})
    assert server.create_calls() == 1 and sleeps == []


def test_retries_give_up_after_the_configured_attempts(
    publisher: TaskPublisher, server: LoopbackEmulator, sleeps: list[float]
) -> None:
    server.faults.fail_next("CreateTask", grpc.StatusCode.UNAVAILABLE, "down", times=10)
    with pytest.raises(PublishError, match=r"after 5 attempts"):
        publisher.publish({}, name="t1")
    assert server.create_calls() == 5 and len(sleeps) == 4


# --- many tasks -------------------------------------------------------------------------------------


def test_bulk_creates_every_task_exactly_once_and_reports_each(
    publisher: TaskPublisher, server: LoopbackEmulator
) -> None:
    seen: list[int] = []
    results = publisher.publish_many(
        ({"n": n} for n in range(1000)), concurrency=16, on_result=lambda r: seen.append(r.index)
    )
    assert [r.index for r in results] == list(range(1000))
    assert {r.outcome for r in results} == {Outcome.CREATED}
    assert sorted(seen) == list(range(1000))
    stored = server.tasks()
    assert len(stored) == 1000 == len({t.name for t in stored})
    assert {r.name for r in results} == {t.name for t in stored}


DENIED = Fault(grpc.StatusCode.PERMISSION_DENIED, "The principal lacks IAM permission cloudtasks.tasks.create")


def test_bulk_accounts_for_duplicates_invalid_items_and_server_failures(
    publisher: TaskPublisher, server: LoopbackEmulator
) -> None:
    publisher.publish({}, dedupe_key="seen-before")
    server.faults.fail_when("CreateTask", lambda request: DENIED if request.task.name.endswith("/denied") else None)
    items = [
        TaskRequest({"ok": 1}),
        TaskRequest({}, dedupe_key="seen-before"),
        TaskRequest({}, queue="nope"),
        TaskRequest({}, name="denied"),
        {"plain": "payload"},
    ]
    results = publisher.publish_many(items, concurrency=3)
    assert [r.outcome for r in results] == [
        Outcome.CREATED,
        Outcome.DUPLICATE,
        Outcome.FAILED,
        Outcome.FAILED,
        Outcome.CREATED,
    ]
    assert results[2].error is not None and "queue: 'nope'" in results[2].error
    assert results[3].error is not None and "roles/cloudtasks.enqueuer" in results[3].error
    assert len(server.tasks()) == 3


def test_bulk_never_has_more_rpcs_in_flight_than_its_concurrency(
    publisher: TaskPublisher, server: LoopbackEmulator
) -> None:
    server.faults.latency = 0.02  # so that calls overlap, and the cap is what stops more of them
    publisher.publish_many([{"n": n} for n in range(60)], concurrency=5)
    assert server.faults.max_in_flight == 5 and len(server.tasks()) == 60


def test_concurrency_must_be_sensible(publisher: TaskPublisher) -> None:
    with pytest.raises(TaskValidationError, match=r"concurrency: 0 is outside 1\.\.1000"):
        publisher.publish_many([{}], concurrency=0)


def test_a_given_content_type_wins_over_the_derived_one(publisher: TaskPublisher, server: LoopbackEmulator) -> None:
    publisher.publish({"a": 1}, headers={"content-type": "application/cloudevents+json"})
    headers = only_task(server).http_request.headers
    assert headers == {
        "content-type": "application/cloudevents+json",
        HEADER_NOT_BEFORE: f"{NOW.timestamp():.3f}",
        **CLOUD_TASKS_USER_AGENT,
    }


# --- X-Tasks-Not-Before: the earliest time the first attempt can run --------------------------------


@pytest.mark.parametrize(
    ("options", "earliest"),
    [
        ({}, NOW),
        ({"delay": 90}, NOW + timedelta(seconds=90)),
        ({"schedule_at": NOW + timedelta(hours=2)}, NOW + timedelta(hours=2)),
        ({"schedule_at": NOW - timedelta(hours=2)}, NOW),  # a time past: the task runs now, not then
    ],
)
def test_every_task_says_when_its_first_attempt_can_run_at_the_earliest(
    publisher: TaskPublisher, server: LoopbackEmulator, options: dict[str, Any], earliest: datetime
) -> None:
    publisher.publish({"n": 1}, **options)
    headers = only_task(server).http_request.headers
    assert headers[HEADER_NOT_BEFORE] == f"{earliest.timestamp():.3f}"
    assert float(headers[HEADER_NOT_BEFORE]) == earliest.timestamp()


def test_bytes_and_queue_level_routed_tasks_say_it_too(publisher: TaskPublisher, server: LoopbackEmulator) -> None:
    publisher.publish_many([TaskRequest(b"raw", name="a"), TaskRequest({}, queue="emails", name="b", delay=5)])
    by_name = {task.name.rsplit("/", 1)[1]: task.http_request.headers for task in server.tasks()}
    assert by_name["a"] == {HEADER_NOT_BEFORE: f"{NOW.timestamp():.3f}", **CLOUD_TASKS_USER_AGENT}
    assert by_name["b"][HEADER_NOT_BEFORE] == f"{(NOW + timedelta(seconds=5)).timestamp():.3f}"
