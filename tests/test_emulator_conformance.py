"""The emulator's gRPC API through the STOCK google-cloud-tasks client: every core RPC, paging, views, update
masks, tombstones and the status code (with message) of every rejected request."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from emulator_support import LOCATION, T0, add_task, new_core, queue_path
from google.api_core import exceptions
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from localcloud.emulator.clock import ManualClock
from localcloud.emulator.core import CloudTasksCore
from localcloud.emulator.server import SERVICE, EmulatorServer

Invalid = exceptions.InvalidArgument
TASK_TTL = 3600.0
QUEUE_TTL = 7 * 24 * 3600.0
URL = "http://worker.local/work"


class Emulator:
    """A core on a manual clock, served over gRPC, and a stock client talking to it."""

    def __init__(self, **options: Any) -> None:
        self.core, self.clock, _ = new_core(**options)
        self.server = EmulatorServer(self.core).start()
        self.channel = grpc.insecure_channel(self.server.address)
        self.client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=self.channel))

    def close(self) -> None:
        self.channel.close()
        self.server.stop()

    def queue(self, queue_id: str = "q", **fields: Any) -> tasks_v2.Queue:
        return self.client.create_queue(parent=LOCATION, queue=tasks_v2.Queue(name=queue_path(queue_id), **fields))

    def task(self, queue: str, task_id: str | None = None, **fields: Any) -> tasks_v2.Task:
        fields.setdefault("http_request", {"url": URL})
        task = tasks_v2.Task(**fields)
        if task_id is not None:
            task.name = f"{queue}/tasks/{task_id}"
        return self.client.create_task(parent=queue, task=task)


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    running = Emulator(task_tombstone_ttl=TASK_TTL, queue_tombstone_ttl=QUEUE_TTL)
    yield running
    running.close()


@pytest.fixture
def no_tombstones() -> Iterator[Emulator]:
    running = Emulator(task_tombstone_ttl=0, queue_tombstone_ttl=0)
    yield running
    running.close()


def at(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(T0 + seconds, tz=datetime.UTC)


# ----- queues -----


def test_queue_lifecycle(emulator: Emulator) -> None:
    client, name = emulator.client, queue_path("life")
    created = emulator.queue("life")
    assert created.state == tasks_v2.Queue.State.RUNNING
    assert client.get_queue(name=name) == created
    assert [q.name for q in client.list_queues(parent=LOCATION)] == [name]
    assert client.pause_queue(name=name).state == tasks_v2.Queue.State.PAUSED
    assert client.get_queue(name=name).state == tasks_v2.Queue.State.PAUSED
    assert client.resume_queue(name=name).state == tasks_v2.Queue.State.RUNNING
    client.delete_queue(name=name)
    with pytest.raises(exceptions.NotFound, match="Queue does not exist"):
        client.get_queue(name=name)
    assert list(client.list_queues(parent=LOCATION)) == []


def test_create_queue_fills_in_cloud_tasks_defaults_and_ignores_output_only_fields(emulator: Emulator) -> None:
    queue = emulator.queue(rate_limits={"max_burst_size": 7}, state=tasks_v2.Queue.State.PAUSED, purge_time=at(-5))
    assert queue.state == tasks_v2.Queue.State.RUNNING
    assert "purge_time" not in queue
    assert queue.rate_limits.max_dispatches_per_second == 500
    assert queue.rate_limits.max_burst_size == 100
    assert queue.rate_limits.max_concurrent_dispatches == 1000
    retry = queue.retry_config
    assert retry.max_attempts == 100
    assert retry.min_backoff == datetime.timedelta(seconds=0.1)
    assert retry.max_backoff == datetime.timedelta(seconds=3600)
    assert retry.max_doublings == 16


@pytest.mark.parametrize(("rate", "burst"), [(500, 100), (100, 100), (50, 50), (7.5, 8), (0.5, 1)])
def test_max_burst_size_is_derived_from_the_rate(emulator: Emulator, rate: float, burst: int) -> None:
    queue = emulator.queue(rate_limits={"max_dispatches_per_second": rate, "max_burst_size": 3})
    assert queue.rate_limits.max_burst_size == burst


def test_list_queues_pages_through_the_stock_pager(emulator: Emulator) -> None:
    names = [emulator.queue(f"q-{k}").name for k in range(5)]
    emulator.client.create_queue(
        parent="projects/p/locations/other", queue={"name": "projects/p/locations/other/queues/q-x"}
    )
    pager = emulator.client.list_queues(request={"parent": LOCATION, "page_size": 1})
    pages = list(pager.pages)
    assert [len(page.queues) for page in pages] == [1, 1, 1, 1, 1]
    assert [page.queues[0].name for page in pages] == names


def test_list_queues_filters_by_state(emulator: Emulator) -> None:
    emulator.queue("a")
    emulator.queue("b")
    emulator.client.pause_queue(name=queue_path("b"))
    paused = emulator.client.list_queues(request={"parent": LOCATION, "filter": "state: PAUSED"})
    assert [q.name for q in paused] == [queue_path("b")]
    with pytest.raises(Invalid, match="Unsupported filter"):
        list(emulator.client.list_queues(request={"parent": LOCATION, "filter": "name > a"}))


def test_update_queue_changes_only_the_masked_fields(emulator: Emulator) -> None:
    emulator.queue(rate_limits={"max_dispatches_per_second": 10, "max_concurrent_dispatches": 7})
    update = tasks_v2.Queue(
        name=queue_path("q"), rate_limits={"max_dispatches_per_second": 20, "max_concurrent_dispatches": 99}
    )
    updated = emulator.client.update_queue(
        queue=update, update_mask={"paths": ["rate_limits.max_dispatches_per_second"]}
    )
    assert updated.rate_limits.max_dispatches_per_second == 20
    assert updated.rate_limits.max_burst_size == 20
    assert updated.rate_limits.max_concurrent_dispatches == 7
    camel = tasks_v2.Queue(name=queue_path("q"), retry_config={"max_attempts": 5})
    updated = emulator.client.update_queue(queue=camel, update_mask={"paths": ["retryConfig.maxAttempts"]})
    assert updated.retry_config.max_attempts == 5
    assert updated.retry_config.max_doublings == 16
    assert emulator.client.get_queue(name=queue_path("q")) == updated


def test_update_queue_with_an_empty_mask_replaces_every_field(emulator: Emulator) -> None:
    emulator.queue(rate_limits={"max_dispatches_per_second": 10}, retry_config={"max_attempts": 3})
    emulator.client.pause_queue(name=queue_path("q"))
    updated = emulator.client.update_queue(queue=tasks_v2.Queue(name=queue_path("q"), retry_config={"max_attempts": 9}))
    assert updated.rate_limits.max_dispatches_per_second == 500  # unset in the update: back to the default
    assert updated.retry_config.max_attempts == 9
    assert updated.state == tasks_v2.Queue.State.PAUSED  # state cannot change through UpdateQueue


def test_update_queue_creates_a_missing_queue(emulator: Emulator) -> None:
    created = emulator.client.update_queue(
        queue=tasks_v2.Queue(name=queue_path("new"), retry_config={"max_attempts": 2})
    )
    assert created.state == tasks_v2.Queue.State.RUNNING
    assert emulator.client.get_queue(name=queue_path("new")).retry_config.max_attempts == 2


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("state", "cannot be changed by UpdateQueue"),
        ("name", "cannot be changed by UpdateQueue"),
        ("purge_time", "cannot be changed by UpdateQueue"),
        ("rate_limits.nope", "does not name a field"),
        ("colour", "does not name a field"),
        ("rate_limits.max_dispatches_per_second.x", "does not name a field"),
    ],
)
def test_update_queue_rejects_immutable_and_unknown_mask_paths(emulator: Emulator, path: str, fragment: str) -> None:
    emulator.queue()
    with pytest.raises(Invalid, match=fragment):
        emulator.client.update_queue(queue=tasks_v2.Queue(name=queue_path("q")), update_mask={"paths": [path]})


def test_an_invalid_update_changes_nothing(emulator: Emulator) -> None:
    before = emulator.queue(rate_limits={"max_dispatches_per_second": 10})
    bad = tasks_v2.Queue(name=queue_path("q"), rate_limits={"max_dispatches_per_second": 900})
    with pytest.raises(Invalid, match="maxDispatchesPerSecond"):
        emulator.client.update_queue(queue=bad, update_mask={"paths": ["rate_limits"]})
    assert emulator.client.get_queue(name=queue_path("q")) == before


def test_purge_queue_deletes_the_tasks_created_before_it(emulator: Emulator) -> None:
    queue = emulator.queue().name
    old = [emulator.task(queue, f"old-{k}") for k in range(3)]
    emulator.clock.advance(2)
    purged = emulator.client.purge_queue(name=queue)
    assert purged.purge_time.timestamp() == T0 + 2
    new = emulator.task(queue, "new")
    assert [t.name for t in emulator.client.list_tasks(parent=queue)] == [new.name]
    with pytest.raises(exceptions.NotFound, match="existed recently"):
        emulator.client.get_task(name=old[0].name)


def test_delete_queue_reserves_its_name_for_the_queue_tombstone_ttl(emulator: Emulator) -> None:
    emulator.queue()
    emulator.client.delete_queue(name=queue_path("q"))
    with pytest.raises(exceptions.FailedPrecondition, match="existed too recently"):
        emulator.queue()
    emulator.clock.advance(QUEUE_TTL)
    assert emulator.queue().name == queue_path("q")


def test_a_queue_name_is_free_at_once_with_a_zero_ttl(no_tombstones: Emulator) -> None:
    no_tombstones.queue()
    no_tombstones.client.delete_queue(name=queue_path("q"))
    assert no_tombstones.queue().name == queue_path("q")


# ----- tasks -----


def test_create_task_fills_in_the_server_owned_fields(emulator: Emulator) -> None:
    queue = emulator.queue().name
    emulator.clock.advance(0.75)
    task = emulator.task(queue, dispatch_deadline=datetime.timedelta(seconds=30), dispatch_count=9)
    task_id = task.name.rsplit("/", 1)[1]
    assert task.name.startswith(queue + "/tasks/")
    assert len(task_id) == 19 and task_id.isdigit()
    assert task.create_time.timestamp() == T0  # truncated to the second
    assert task.schedule_time.timestamp() == T0 + 0.75
    assert task.dispatch_deadline == datetime.timedelta(seconds=30)
    assert (task.dispatch_count, task.response_count) == (0, 0)
    assert "first_attempt" not in task and "last_attempt" not in task
    named = emulator.task(queue, "my-task_1", schedule_time=at(60))
    assert named.name == f"{queue}/tasks/my-task_1"
    assert named.schedule_time.timestamp() == T0 + 60


def test_response_view_basic_omits_the_body_and_full_includes_it(emulator: Emulator) -> None:
    queue = emulator.queue().name
    request = {"url": URL, "body": b"secret", "headers": {"Content-Type": "text/plain"}}
    basic = emulator.task(queue, "t", http_request=request)
    assert basic.view == tasks_v2.Task.View.BASIC
    assert basic.http_request.body == b""
    assert basic.http_request.headers == {"Content-Type": "text/plain", "User-Agent": "Google-Cloud-Tasks"}
    client, name = emulator.client, basic.name
    assert client.get_task(name=name).http_request.body == b""
    full = client.get_task(request={"name": name, "response_view": tasks_v2.Task.View.FULL})
    assert (full.view, full.http_request.body) == (tasks_v2.Task.View.FULL, b"secret")
    listed = client.list_tasks(request={"parent": queue, "response_view": tasks_v2.Task.View.FULL})
    assert [t.http_request.body for t in listed] == [b"secret"]
    created_full = client.create_task(
        request={"parent": queue, "task": {"http_request": request}, "response_view": tasks_v2.Task.View.FULL}
    )
    assert created_full.http_request.body == b"secret"


# ----- defaults as Cloud Tasks reports them -----

VIEWS = (tasks_v2.Task.View.BASIC, tasks_v2.Task.View.FULL)


def every_view(emulator: Emulator, name: str) -> list[tasks_v2.Task]:
    """The task as GetTask and ListTasks return it, in each view."""
    client, parent = emulator.client, name.rsplit("/tasks/", 1)[0]
    got = [client.get_task(request={"name": name, "response_view": view}) for view in VIEWS]
    listed = [list(client.list_tasks(request={"parent": parent, "response_view": view})) for view in VIEWS]
    return [*got, *(task for tasks in listed for task in tasks if task.name == name)]


def test_an_http_task_reports_post_and_the_cloud_tasks_user_agent_when_unset(emulator: Emulator) -> None:
    # aertje's golden headers.json (recorded on Cloud Tasks): a created HTTP task's headers hold
    # User-Agent: Google-Cloud-Tasks in FULL and BASIC views; the creator's names keep their case.
    queue = emulator.queue().name
    sent = {"X-Mixed-Case": "preserve-me", "content-type": "application/json"}
    created = emulator.task(queue, "t", http_request={"url": URL, "headers": sent, "body": b"{}"})
    for task in [created, *every_view(emulator, created.name)]:
        assert task.http_request.http_method == tasks_v2.HttpMethod.POST
        assert task.http_request.headers == {**sent, "User-Agent": "Google-Cloud-Tasks"}


@pytest.mark.parametrize("name", ["User-Agent", "user-agent", "USER-AGENT"])
def test_a_user_agent_the_creator_set_is_replaced_in_the_task_and_on_dispatch(emulator: Emulator, name: str) -> None:
    # target.py HttpRequest.headers: "User-Agent: This will be set to "Google-Cloud-Tasks"" (a header that is
    # "ignored or replaced"), whatever the creator wrote.
    queue = emulator.queue().name
    created = emulator.task(queue, "t", http_request={"url": URL, "headers": {name: "curl/8.0", "X-A": "1"}})
    for task in [created, *every_view(emulator, created.name)]:
        assert task.http_request.headers == {"User-Agent": "Google-Cloud-Tasks", "X-A": "1"}
    (attempt,) = emulator.core.take_due(T0)
    assert {k: v for k, v in attempt.headers.items() if k.lower() == "user-agent"} == {
        "User-Agent": "Google-Cloud-Tasks"
    }


def test_a_method_the_creator_set_is_kept(emulator: Emulator) -> None:
    queue = emulator.queue().name
    created = emulator.task(queue, "t", http_request={"url": URL, "http_method": tasks_v2.HttpMethod.PUT})
    assert all(t.http_request.http_method == tasks_v2.HttpMethod.PUT for t in every_view(emulator, created.name))


def test_list_tasks_pages_through_the_stock_pager_and_survives_deletes(emulator: Emulator) -> None:
    queue = emulator.queue().name
    names = [emulator.task(queue, f"t{k}").name for k in range(6)]
    pages = emulator.client.list_tasks(request={"parent": queue, "page_size": 2}).pages
    first = next(pages)
    assert [t.name for t in first.tasks] == names[:2]
    emulator.client.delete_task(name=names[1])  # already listed
    emulator.client.delete_task(name=names[2])  # not listed yet
    assert [[t.name for t in page.tasks] for page in pages] == [names[3:5], names[5:]]
    singles = emulator.client.list_tasks(request={"parent": queue, "page_size": 1})
    assert [t.name for t in singles] == [names[0], *names[3:]]


def test_get_delete_and_run_task(emulator: Emulator) -> None:
    queue = emulator.queue().name
    task = emulator.task(queue, "t")
    assert emulator.client.get_task(name=task.name).name == task.name
    emulator.client.pause_queue(name=queue)
    ran = emulator.client.run_task(name=task.name)
    assert ran.dispatch_count == 1
    assert ran.last_attempt.dispatch_time.timestamp() == T0
    (attempt,) = emulator.core.take_due(T0)  # dispatched although the queue is paused
    assert attempt.task_name == task.name
    emulator.client.delete_task(name=task.name)
    with pytest.raises(exceptions.NotFound, match="existed recently"):
        emulator.client.get_task(name=task.name)


def test_task_tombstones_expire_after_the_ttl(emulator: Emulator) -> None:
    queue = emulator.queue().name
    task = emulator.task(queue, "dedupe-me")
    with pytest.raises(exceptions.AlreadyExists, match="already exists"):
        emulator.task(queue, "dedupe-me")
    emulator.client.delete_task(name=task.name)
    for call in (emulator.client.get_task, emulator.client.delete_task, emulator.client.run_task):
        with pytest.raises(exceptions.NotFound, match="a task with this name existed recently"):
            call(name=task.name)
    with pytest.raises(exceptions.AlreadyExists):
        emulator.task(queue, "dedupe-me")
    emulator.clock.advance(TASK_TTL)
    with pytest.raises(exceptions.NotFound, match="Requested entity was not found"):
        emulator.client.get_task(name=task.name)
    assert emulator.task(queue, "dedupe-me").name == task.name


def test_a_completed_task_is_a_tombstone(emulator: Emulator) -> None:
    queue = emulator.queue().name
    task = emulator.task(queue, "done")
    (attempt,) = emulator.core.take_due(T0)
    emulator.core.complete(attempt, 200, T0)
    with pytest.raises(exceptions.NotFound, match="existed recently"):
        emulator.client.run_task(name=task.name)
    with pytest.raises(exceptions.AlreadyExists):
        emulator.task(queue, "done")


def test_a_task_name_is_free_at_once_with_a_zero_ttl(no_tombstones: Emulator) -> None:
    queue = no_tombstones.queue().name
    task = no_tombstones.task(queue, "again")
    no_tombstones.client.delete_task(name=task.name)
    with pytest.raises(exceptions.NotFound, match="Requested entity was not found"):
        no_tombstones.client.get_task(name=task.name)
    assert no_tombstones.task(queue, "again").name == task.name


# ----- rejected requests: status code and message -----

Q = queue_path("q")


def create_queue(queue: dict[str, Any], parent: str = LOCATION) -> Any:
    return lambda client: client.create_queue(parent=parent, queue={"name": Q, **queue})


def create_task(task: dict[str, Any], parent: str = Q) -> Any:
    task.setdefault("http_request", {"url": URL})
    return lambda client: client.create_task(parent=parent, task=task)


def http(**request: Any) -> dict[str, Any]:
    return {"http_request": {"url": URL, **request}}


BAD_REQUESTS = {
    "location": (lambda c: c.list_queues(parent="projects/p"), Invalid, "projects/<PROJECT_ID>"),
    "queue id chars": (lambda c: c.get_queue(name=Q + "_x"), Invalid, "Queue name must be formatted"),
    "queue id length": (lambda c: c.get_queue(name=queue_path("q" * 101)), Invalid, "Queue name must be formatted"),
    "queue without name": (
        lambda c: c.create_queue(parent=LOCATION, queue={}),
        Invalid,
        "queue.name is required",
    ),
    "sampling ratio": (
        create_queue({"stackdriver_logging_config": {"sampling_ratio": 1.5}}),
        Invalid,
        "sampling_ratio",
    ),
    "empty override host": (
        create_queue({"http_target": {"uri_override": {"host": ""}}}),
        Invalid,
        "host cannot be an empty string",
    ),
    "queue oidc without audience": (
        create_queue({"http_target": {"oidc_token": {"service_account_email": "a@b"}}}),
        Invalid,
        "audience is required",
    ),
    "NaN rate": (create_queue({"rate_limits": {"max_dispatches_per_second": float("nan")}}), Invalid, "a number"),
    "negative max_backoff": (
        create_queue({"retry_config": {"max_backoff": "-1s"}}),
        Invalid,
        "retry_config.max_backoff must not be negative, got -1s",
    ),
    "tasks of a missing queue": (
        lambda c: list(c.list_tasks(parent=queue_path("none"))),
        exceptions.NotFound,
        "Requested entity was not found.",
    ),
    "task id length": (create_task({"name": Q + "/tasks/" + "a" * 501}), Invalid, "between 1 and 500 characters"),
    "task name format": (create_task({"name": "tasks/t"}), Invalid, "must be"),
    "long url": (create_task(http(url="http://h/" + "a" * 2100)), Invalid, "2083"),
    "body with GET": (
        create_task(http(http_method="GET", body=b"x")),
        Invalid,
        "POST, PUT or PATCH",
    ),
    "body with DELETE": (create_task(http(http_method="DELETE", body=b"x")), Invalid, "DELETE"),
    "bad header name": (create_task(http(headers={"bad name": "v"})), Invalid, "header name"),
    "task retry config": (
        create_task({"retry_config": {"max_attempts": -5}}),
        Invalid,
        "Task.retry_config.max_attempts",
    ),
    "app engine task": (
        create_task({"app_engine_http_request": {"relative_uri": "/x"}, "http_request": None}),
        exceptions.MethodNotImplemented,
        "App Engine",
    ),
    "negative page size": (
        lambda c: list(c.list_tasks(request={"parent": Q, "page_size": -1})),
        Invalid,
        "page_size",
    ),
    "garbage page token": (
        lambda c: list(c.list_tasks(request={"parent": Q, "page_token": "!!"})),
        Invalid,
        "page token",
    ),
    "foreign page token": (
        lambda c: list(c.list_queues(request={"parent": LOCATION, "page_token": "dGFza3N8eHwx"})),
        Invalid,
        "page token",
    ),
}


@pytest.mark.parametrize(("call", "error", "fragment"), BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_rejected_requests_get_the_cloud_tasks_status(emulator: Emulator, call: Any, error: Any, fragment: str) -> None:
    emulator.queue()
    with pytest.raises(error) as caught:
        call(emulator.client)
    assert fragment in caught.value.message


# ----- texts on public record, word for word -----
# Each text below was recorded on Cloud Tasks by someone else; the source is beside the constant in
# localcloud/emulator/errors.py. The emulator must answer them exactly, through the stock client.

QUEUE_MISSING = (
    "Queue does not exist. If you just created the queue, wait at least a minute for the queue to initialize."
)
NOT_FOUND = "Requested entity was not found."
NotFound, AlreadyExists, FailedPrecondition = (
    exceptions.NotFound,
    exceptions.AlreadyExists,
    exceptions.FailedPrecondition,
)
OTHER = queue_path("q-other")


def deleted_queue(c: tasks_v2.CloudTasksClient) -> None:
    c.create_queue(parent=LOCATION, queue={"name": queue_path("gone")})
    c.delete_queue(name=queue_path("gone"))


def deleted_task(c: tasks_v2.CloudTasksClient) -> None:
    c.create_task(parent=Q, task={"name": Q + "/tasks/gone", "http_request": {"url": URL}})
    c.delete_task(name=Q + "/tasks/gone")


def existing_task(c: tasks_v2.CloudTasksClient) -> None:
    c.create_task(parent=Q, task={"name": Q + "/tasks/t", "http_request": {"url": URL}})


def nothing(c: tasks_v2.CloudTasksClient) -> None:
    pass


GONE = queue_path("gone")
RECORDED = {
    # (setup, call, error, message)
    "get missing queue": (nothing, lambda c: c.get_queue(name=queue_path("none")), NotFound, QUEUE_MISSING),
    "get deleted queue": (deleted_queue, lambda c: c.get_queue(name=GONE), NotFound, QUEUE_MISSING),
    "pause missing queue": (nothing, lambda c: c.pause_queue(name=queue_path("none")), NotFound, QUEUE_MISSING),
    "resume missing queue": (nothing, lambda c: c.resume_queue(name=queue_path("none")), NotFound, QUEUE_MISSING),
    "purge missing queue": (nothing, lambda c: c.purge_queue(name=queue_path("none")), NotFound, QUEUE_MISSING),
    "delete missing queue": (nothing, lambda c: c.delete_queue(name=queue_path("none")), NotFound, NOT_FOUND),
    "create existing queue": (nothing, create_queue({}), AlreadyExists, "Queue already exists"),
    "create deleted queue": (
        deleted_queue,
        lambda c: c.create_queue(parent=LOCATION, queue={"name": GONE}),
        FailedPrecondition,
        "The queue cannot be created because a queue with this name existed too recently.",
    ),
    "queue name format": (
        nothing,
        lambda c: c.create_queue(parent=LOCATION, queue={"name": "not-a-valid-queue-name"}),
        Invalid,
        'Queue name must be formatted: "projects/<PROJECT_ID>/locations/<LOCATION_ID>/queues/<QUEUE_ID>".',
    ),
    "queue outside its parent": (
        nothing,
        create_queue({}, "projects/p/locations/x"),
        Invalid,
        f"{Q} must begin with projects/p/locations/x.",
    ),
    "negative rate": (
        nothing,
        create_queue({"name": OTHER, "rate_limits": {"max_dispatches_per_second": -1}}),
        Invalid,
        "RateLimits.maxDispatchesPerSecond cannot be negative.",
    ),
    "rate above 500": (
        nothing,
        create_queue({"name": OTHER, "rate_limits": {"max_dispatches_per_second": 501}}),
        Invalid,
        "RateLimits.maxDispatchesPerSecond must be less than or equal to 500.",
    ),
    "negative concurrency": (
        nothing,
        create_queue({"name": OTHER, "rate_limits": {"max_concurrent_dispatches": -1}}),
        Invalid,
        "RateLimits.maxConcurrentDispatches cannot be negative.",
    ),
    "concurrency above 5000": (
        nothing,
        create_queue({"name": OTHER, "rate_limits": {"max_concurrent_dispatches": 5001}}),
        Invalid,
        "RateLimits.maxConcurrentDispatches must be less than or equal to 5000.",
    ),
    "max_attempts below -1": (
        nothing,
        create_queue({"name": OTHER, "retry_config": {"max_attempts": -2}}),
        Invalid,
        "RetryConfig.maxAttempts must be greater or equal to -1.",
    ),
    "negative doublings": (
        nothing,
        create_queue({"name": OTHER, "retry_config": {"max_doublings": -1}}),
        Invalid,
        "RetryConfig.maxDoublings cannot be negative.",
    ),
    "negative min_backoff": (
        nothing,
        create_queue({"name": OTHER, "retry_config": {"min_backoff": "-1s"}}),
        Invalid,
        "RetryConfig.minBackoff cannot be negative.",
    ),
    "min_backoff above max_backoff": (
        nothing,
        create_queue({"name": OTHER, "retry_config": {"min_backoff": "10s", "max_backoff": "5s"}}),
        Invalid,
        "RetryConfig.minBackoff must be less than or equal to RetryConfig.maxBackoff.",
    ),
    "task on a missing queue": (nothing, create_task({}, queue_path("none")), NotFound, QUEUE_MISSING),
    "task on a deleted queue": (deleted_queue, create_task({}, GONE), NotFound, QUEUE_MISSING),
    "existing task": (
        existing_task,
        create_task({"name": Q + "/tasks/t"}),
        AlreadyExists,
        "Requested entity already exists",
    ),
    "task name used too recently": (
        deleted_task,
        create_task({"name": Q + "/tasks/gone"}),
        AlreadyExists,
        "The task cannot be created because a task with this name existed too recently. For more information about"
        " task de-duplication see https://cloud.google.com/tasks/docs/reference/rest/v2/projects.locations.queues"
        ".tasks/create#body.request_body.FIELDS.task.",
    ),
    "task in another queue": (
        nothing,
        create_task({"name": OTHER + "/tasks/t"}),
        Invalid,
        f"The queue name from request ('{Q}') must be the same as the queue name in the named task ('{OTHER}').",
    ),
    "task id": (
        nothing,
        create_task({"name": Q + "/tasks/not a valid id"}),
        Invalid,
        'Task ID "not a valid id" can contain only letters ([A-Za-z]), numbers ([0-9]), hyphens (-), or'
        " underscores (_). Task ID must between 1 and 500 characters.",
    ),
    "empty url": (nothing, create_task({"http_request": {"url": ""}}), Invalid, "HttpRequest.url is required."),
    "url without a scheme": (
        nothing,
        create_task({"http_request": {"url": "example.com/path"}}),
        Invalid,
        "HttpTarget.url must start with 'http://' or 'https://'.",
    ),
    "ftp url": (
        nothing,
        create_task({"http_request": {"url": "ftp://example.com/"}}),
        Invalid,
        "HttpTarget.url must start with 'http://' or 'https://'.",
    ),
    "deadline too short": (
        nothing,
        create_task({"dispatch_deadline": "5s"}),
        Invalid,
        "Task.dispatchDeadline must be between [15s, 30m].",
    ),
    "deadline too long": (
        nothing,
        create_task({"dispatch_deadline": "1860s"}),
        Invalid,
        "Task.dispatchDeadline must be between [15s, 30m].",
    ),
    "schedule too far": (
        nothing,
        create_task({"schedule_time": datetime.datetime(2100, 1, 1, tzinfo=datetime.UTC)}),
        Invalid,
        "The Task.scheduleTime, 2099-12-31T16:00:00-08:00, is too far in the future. Schedule time must be no more"
        " than 720h in the future.",
    ),
    "task too big": (nothing, create_task(http(body=b"x" * (1024 * 1024 + 1))), Invalid, "Task size too large"),
    "no http_request": (nothing, create_task({"http_request": None}), Invalid, "Task.payload_type is not set."),
    "get missing task": (nothing, lambda c: c.get_task(name=Q + "/tasks/none"), NotFound, NOT_FOUND),
    "delete missing task": (nothing, lambda c: c.delete_task(name=Q + "/tasks/none"), NotFound, NOT_FOUND),
    "run missing task": (nothing, lambda c: c.run_task(name=Q + "/tasks/none"), NotFound, NOT_FOUND),
    "get deleted task": (
        deleted_task,
        lambda c: c.get_task(name=Q + "/tasks/gone"),
        NotFound,
        "The task no longer exists, though a task with this name existed recently. The task either successfully"
        " completed or was deleted.",
    ),
}


@pytest.mark.parametrize(("setup", "call", "error", "message"), RECORDED.values(), ids=RECORDED.keys())
def test_texts_on_public_record_are_answered_word_for_word(
    emulator: Emulator, setup: Any, call: Any, error: Any, message: str
) -> None:
    emulator.queue()
    setup(emulator.client)
    with pytest.raises(error) as caught:
        call(emulator.client)
    assert caught.value.message == message


def test_a_url_with_a_bad_escape_is_accepted_as_cloud_tasks_does(emulator: Emulator) -> None:
    # aertje's golden realcloud.json, task/create/invalid-url-bad-escape: Cloud Tasks answers OK.
    queue = emulator.queue().name
    assert emulator.task(queue, http_request={"url": "http://example.com/%zz"}).http_request.url.endswith("%zz")


def test_deadlines_outside_the_range_pass_when_strict_deadlines_is_off() -> None:
    relaxed = Emulator(strict_deadlines=False)
    try:
        queue = relaxed.queue().name
        assert relaxed.task(queue, dispatch_deadline="0.2s").dispatch_deadline == datetime.timedelta(seconds=0.2)
    finally:
        relaxed.close()


@pytest.mark.parametrize(
    "method",
    [
        "CreateQueue", "GetQueue", "ListQueues", "UpdateQueue", "DeleteQueue", "PauseQueue", "ResumeQueue",
        "PurgeQueue", "CreateTask", "GetTask", "ListTasks", "DeleteTask", "RunTask",
    ],
)  # fmt: skip
@pytest.mark.parametrize("payload", [b"\xff\xff\xff", b"\x0a\x02\xc3\x28"], ids=["not-protobuf", "bad-utf8"])
def test_a_malformed_request_is_invalid_argument_never_unknown(emulator: Emulator, method: str, payload: bytes) -> None:
    call = emulator.channel.unary_unary(f"/{SERVICE}/{method}")
    with pytest.raises(grpc.RpcError) as caught:
        call(payload, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Invalid request message" in caught.value.details()


def test_methods_beyond_the_core_13_are_unimplemented(emulator: Emulator) -> None:
    with pytest.raises(exceptions.MethodNotImplemented):
        emulator.client.get_iam_policy(resource=Q)


def test_an_emulator_bug_is_internal_with_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    core = CloudTasksCore(ManualClock(T0))

    def broken(request: tasks_v2.GetQueueRequest) -> tasks_v2.Queue:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(core, "get_queue", broken)
    with EmulatorServer(core) as server, grpc.insecure_channel(server.address) as channel:
        client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
        with pytest.raises(exceptions.InternalServerError, match="boom"):
            client.get_queue(name=Q)


def test_the_core_works_without_the_server() -> None:
    core, _, _ = new_core()
    core.create_queue(tasks_v2.CreateQueueRequest(parent=LOCATION, queue={"name": Q}))
    task = add_task(core, Q, "direct")
    assert core.get_task(tasks_v2.GetTaskRequest(name=task.name)).name == task.name
