"""The fake Cloud Tasks server, driven through the stock google-cloud-tasks client over loopback gRPC."""

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from cloud_tasks_server import CloudTasksServer, FakeCloudTasks
from google.api_core import exceptions
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

QUEUE = "projects/p/locations/l/queues/q"
HTTP = {"url": "https://example.test/work", "body": b"payload"}


@pytest.fixture
def server() -> Iterator[CloudTasksServer]:
    with CloudTasksServer(FakeCloudTasks()) as running:
        running.state.add_queue(QUEUE)
        yield running


def make_client(address: str) -> tuple[grpc.Channel, tasks_v2.CloudTasksClient]:
    channel = grpc.insecure_channel(address)
    return channel, tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))


@pytest.fixture
def client(server: CloudTasksServer) -> Iterator[tasks_v2.CloudTasksClient]:
    channel, stock_client = make_client(server.address)
    yield stock_client
    channel.close()


def create(client: tasks_v2.CloudTasksClient, task_id: str | None = None, **request: object) -> tasks_v2.Task:
    task = {"http_request": HTTP} | ({"name": f"{QUEUE}/tasks/{task_id}"} if task_id else {})
    return client.create_task(request={"parent": QUEUE, "task": task, **request})


def test_named_and_unnamed_tasks_are_stored(server: CloudTasksServer, client: tasks_v2.CloudTasksClient) -> None:
    named = create(client, "order-1")
    unnamed = create(client)
    assert named.name == f"{QUEUE}/tasks/order-1"
    generated = unnamed.name.removeprefix(f"{QUEUE}/tasks/")
    assert generated.isdigit() and len(generated) == 19
    assert named.create_time and named.schedule_time
    assert [task.name for task in server.state.tasks] == [named.name, unnamed.name]
    assert server.state.tasks[0].http_request.body == b"payload"
    assert server.state.create_calls == 2
    assert ("x-goog-request-params", "parent=projects/p/locations/l/queues/q") in server.state.metadata[0]


def test_status_codes_map_to_api_core_exceptions(server: CloudTasksServer, client: tasks_v2.CloudTasksClient) -> None:
    create(client, "dup")
    client.delete_task(name=f"{QUEUE}/tasks/dup")
    with pytest.raises(exceptions.AlreadyExists, match="Requested entity already exists"):
        create(client, "dup")  # a deleted name is a tombstone
    with pytest.raises(exceptions.NotFound, match="Requested entity was not found"):
        client.create_task(request={"parent": QUEUE + "x", "task": {"http_request": HTTP}})
    with pytest.raises(exceptions.InvalidArgument, match="task ID"):
        create(client, "bad.id")
    with pytest.raises(exceptions.InvalidArgument, match="http_request"):
        client.create_task(request={"parent": QUEUE, "task": {}})
    server.state.pause(QUEUE)
    with pytest.raises(exceptions.FailedPrecondition, match="Queue is paused"):
        create(client)


def test_fail_next_then_success(server: CloudTasksServer, client: tasks_v2.CloudTasksClient) -> None:
    server.state.fail_next(grpc.StatusCode.UNAVAILABLE, "try again")
    with pytest.raises(exceptions.ServiceUnavailable, match="try again"):
        create(client, "t1")
    assert server.state.tasks == []
    assert create(client, "t1").name.endswith("/t1")
    assert server.state.create_calls == 2


def test_after_create_stores_then_fails(server: CloudTasksServer, client: tasks_v2.CloudTasksClient) -> None:
    server.state.fail_next(grpc.StatusCode.DEADLINE_EXCEEDED, "lost", after_create=True)
    with pytest.raises(exceptions.DeadlineExceeded):
        create(client, "t1")
    assert [task.name for task in server.state.tasks] == [f"{QUEUE}/tasks/t1"]
    with pytest.raises(exceptions.AlreadyExists):
        create(client, "t1")


def test_fail_when_rule(server: CloudTasksServer, client: tasks_v2.CloudTasksClient) -> None:
    from cloud_tasks_server import Fault

    server.state.fail_when(
        lambda request: Fault(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota") if "slow" in request.task.name else None
    )
    with pytest.raises(exceptions.ResourceExhausted, match="quota"):
        create(client, "slow-1")
    create(client, "fast-1")
    assert len(server.state.tasks) == 1


def test_basic_and_full_views(client: tasks_v2.CloudTasksClient) -> None:
    basic = create(client, "basic")
    full = create(client, "full", response_view=tasks_v2.Task.View.FULL)
    assert basic.http_request.url == HTTP["url"] and basic.http_request.body == b""
    assert basic.view == tasks_v2.Task.View.BASIC
    assert full.http_request.body == b"payload" and full.view == tasks_v2.Task.View.FULL
    fetched = client.get_task(request={"name": basic.name, "response_view": tasks_v2.Task.View.FULL})
    assert fetched.http_request.body == b"payload"


def test_list_tasks_pages(client: tasks_v2.CloudTasksClient) -> None:
    names = [create(client, f"t{i}").name for i in range(3)]
    pager = client.list_tasks(request={"parent": QUEUE, "page_size": 1})
    pages = list(pager.pages)
    assert [[task.name for task in page.tasks] for page in pages] == [[name] for name in names]
    with pytest.raises(exceptions.NotFound):
        list(client.list_tasks(parent=QUEUE + "x"))


def test_queues(client: tasks_v2.CloudTasksClient) -> None:
    other = "projects/p/locations/l/queues/other"
    created = client.create_queue(parent="projects/p/locations/l", queue={"name": other})
    assert created.state == tasks_v2.Queue.State.RUNNING
    with pytest.raises(exceptions.AlreadyExists):
        client.create_queue(parent="projects/p/locations/l", queue={"name": other})
    assert [queue.name for queue in client.list_queues(parent="projects/p/locations/l")] == [QUEUE, other]
    assert client.get_queue(name=other).name == other


def test_delay_runs_concurrently(server: CloudTasksServer, client: tasks_v2.CloudTasksClient) -> None:
    server.state.delay = 0.2
    barrier = threading.Barrier(64)

    def one(i: int) -> str:
        barrier.wait(timeout=10)
        return create(client, f"c{i}").name

    started = time.monotonic()
    with ThreadPoolExecutor(64) as pool:
        names = list(pool.map(one, range(64)))
    elapsed = time.monotonic() - started
    assert len(set(names)) == 64 and len(server.state.tasks) == 64
    assert server.state.max_in_flight > 32  # the calls overlapped on the server
    assert elapsed < 3, f"64 calls with a 0.2 s delay took {elapsed:.2f} s: the delay is not concurrent"


def test_cli_serves_until_sigterm() -> None:
    script = Path(__file__).with_name("cloud_tasks_server.py")
    command = [sys.executable, str(script), "--port", "0", "--delay-ms", "20", "--queue", QUEUE]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        try:
            line = process.stdout.readline().strip() if process.stdout else ""
            assert line.startswith("listening on 127.0.0.1:"), line
            channel, cli_client = make_client(line.removeprefix("listening on "))
            try:
                assert create(cli_client, "via-cli").name.endswith("/via-cli")
            finally:
                channel.close()
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=15)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
