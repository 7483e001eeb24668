"""The real AsyncDispatcher: tasks created through the gRPC API reach a loopback HTTP server, with retries,
deadlines and redirects handled as Cloud Tasks does; and the `python -m localcloud emulator` command."""

from __future__ import annotations

import datetime
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx2
import pytest
from emulator_support import LOCATION, FakeMinter, RecordingServer, queue_path, start_emulator_command
from google.api_core import exceptions
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from localcloud.emulator.core import CloudTasksCore
from localcloud.emulator.realtime import AsyncDispatcher, DispatchResult
from localcloud.emulator.server import EmulatorServer
from localcloud.stack import free_port

PROJECT_DIR = Path(__file__).resolve().parent.parent
SA = "invoker@p.iam.gserviceaccount.com"


class LocalCloudTasks:
    """Core + gRPC server + real dispatcher on loopback, recording every dispatch result."""

    def __init__(self, **options: Any) -> None:
        self.minter = FakeMinter()
        self.core = CloudTasksCore(minter=self.minter, **options)
        self.results: list[DispatchResult] = []
        self._changed = threading.Condition()
        self.dispatcher = AsyncDispatcher(self.core, on_result=self._record).start()
        self.server = EmulatorServer(self.core).start()
        self.channel = grpc.insecure_channel(self.server.address)
        self.client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=self.channel))

    def _record(self, result: DispatchResult) -> None:
        with self._changed:
            self.results.append(result)
            self._changed.notify_all()

    def wait_results(self, count: int, timeout: float = 15.0) -> list[DispatchResult]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.results) >= count, timeout):
                raise AssertionError(f"expected {count} dispatch results within {timeout}s, got {self.results}")
            return list(self.results)

    def close(self) -> None:
        self.channel.close()
        self.server.stop()
        self.dispatcher.stop()

    def queue(self, queue_id: str, **fields: Any) -> str:
        name = queue_path(queue_id)
        self.client.create_queue(parent=LOCATION, queue=tasks_v2.Queue(name=name, **fields))
        return name


@pytest.fixture
def local() -> Iterator[LocalCloudTasks]:
    running = LocalCloudTasks()
    yield running
    running.close()


@pytest.fixture
def worker() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


FAST_RETRY = {"min_backoff": "0.05s", "max_backoff": "0.05s"}


def test_a_task_created_through_grpc_arrives_with_cloud_tasks_headers_and_body(
    local: LocalCloudTasks, worker: RecordingServer
) -> None:
    queue_name = local.queue("orders")
    request = {
        "url": worker.url + "/work?x=1",
        "http_method": tasks_v2.HttpMethod.PUT,
        "headers": {"Content-Type": "application/json", "X-Trace": "abc"},
        "body": b'{"k": 1}',
        "oidc_token": {"service_account_email": SA, "audience": "https://aud.example"},
    }
    task = local.client.create_task(
        parent=queue_name, task={"name": f"{queue_name}/tasks/t-1", "http_request": request}
    )
    (received,) = worker.wait_for(1)
    assert (received.method, received.path, received.body) == ("PUT", "/work?x=1", b'{"k": 1}')
    headers = received.headers
    assert headers["User-Agent"] == "Google-Cloud-Tasks"
    assert headers["X-CloudTasks-QueueName"] == "orders"
    assert headers["X-CloudTasks-TaskName"] == "t-1"
    assert headers["X-CloudTasks-TaskRetryCount"] == "0"
    assert headers["X-CloudTasks-TaskExecutionCount"] == "0"
    assert float(headers["X-CloudTasks-TaskETA"]) == pytest.approx(task.schedule_time.timestamp(), abs=1e-6)
    assert headers["Authorization"] == f"Bearer token-for:{SA}:https://aud.example"
    assert (headers["Content-Type"], headers["X-Trace"]) == ("application/json", "abc")
    assert "X-CloudTasks-TaskPreviousResponse" not in headers
    (result,) = local.wait_results(1)
    assert result.status == 200
    assert "status=200" in result.line() and "task=t-1" in result.line()
    with pytest.raises(exceptions.NotFound, match="existed recently"):
        local.client.get_task(name=task.name)


def test_a_failed_attempt_is_retried_after_the_backoff(local: LocalCloudTasks) -> None:
    with RecordingServer(lambda request, index: 500 if index == 0 else 200) as worker:
        queue_name = local.queue("retries", retry_config=FAST_RETRY)
        local.client.create_task(parent=queue_name, task={"http_request": {"url": worker.url + "/"}})
        first, second = worker.wait_for(2)
        assert second.headers["X-CloudTasks-TaskRetryCount"] == "1"
        assert second.headers["X-CloudTasks-TaskExecutionCount"] == "0"
        assert second.headers["X-CloudTasks-TaskPreviousResponse"] == "500"
        assert second.headers["X-CloudTasks-TaskRetryReason"] == ""
        eta_gap = float(second.headers["X-CloudTasks-TaskETA"]) - float(first.headers["X-CloudTasks-TaskETA"])
        assert eta_gap >= 0.05  # scheduled at the first attempt's completion + min_backoff
        assert [r.status for r in local.wait_results(2)] == [500, 200]


def test_a_worker_that_hangs_past_the_deadline_is_cut_and_retried_with_504() -> None:
    local = LocalCloudTasks(strict_deadlines=False)
    try:
        with RecordingServer(lambda request, index: None if index == 0 else 200) as worker:
            queue_name = local.queue("slow", retry_config=FAST_RETRY)
            task = {"http_request": {"url": worker.url + "/slow"}, "dispatch_deadline": "0.2s"}
            local.client.create_task(parent=queue_name, task=task)
            _, second = worker.wait_for(2)
            assert second.headers["X-CloudTasks-TaskPreviousResponse"] == "504"
            first_result, second_result = local.wait_results(2)
            assert first_result.status is None
            assert "0.2s dispatch deadline" in first_result.error
            assert second_result.status == 200
    finally:
        local.close()


def test_redirects_are_not_followed_and_count_as_failures(local: LocalCloudTasks) -> None:
    with RecordingServer(lambda request, index: 302 if index == 0 else 200) as worker:
        queue_name = local.queue("redirects", retry_config=FAST_RETRY)
        local.client.create_task(parent=queue_name, task={"http_request": {"url": worker.url + "/here"}})
        assert [r.status for r in local.wait_results(2)] == [302, 200]
        assert [r.path for r in worker.requests] == ["/here", "/here"]
        assert worker.requests[1].headers["X-CloudTasks-TaskPreviousResponse"] == "302"


def test_a_refused_connection_is_no_response(local: LocalCloudTasks) -> None:
    queue_name = local.queue("refused", retry_config={**FAST_RETRY, "max_attempts": 2})
    url = f"http://127.0.0.1:{free_port()}/nobody"
    local.client.create_task(parent=queue_name, task={"http_request": {"url": url}})
    first, second = local.wait_results(2)
    assert (first.status, second.status) == (None, None)
    assert second.attempt.headers["X-CloudTasks-TaskPreviousResponse"] == "504"


def test_a_scheduled_task_is_not_sent_before_its_schedule_time(local: LocalCloudTasks, worker: RecordingServer) -> None:
    queue_name = local.queue("later")
    eta = datetime.datetime.fromtimestamp(local.core.clock.now() + 0.3, tz=datetime.UTC)
    task = {"http_request": {"url": worker.url + "/"}, "schedule_time": eta}
    created = local.client.create_task(parent=queue_name, task=task)
    (received,) = worker.wait_for(1)
    assert received.at >= created.schedule_time.timestamp()


# ----- the command line -----


def stop_command(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return process.returncode, stderr


def test_the_emulator_command_serves_until_sigterm() -> None:
    port = free_port()
    process, line = start_emulator_command("--port", str(port), "--task-tombstone-ttl", "0")
    try:
        assert line == f"emulator ready grpc=127.0.0.1:{port}\n"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
            created = client.create_queue(parent=LOCATION, queue={"name": queue_path("cli")})
            assert created.state == tasks_v2.Queue.State.RUNNING
    finally:
        code, stderr = stop_command(process)
    assert code == 0
    assert "Traceback" not in stderr


def test_the_emulator_command_serves_the_oidc_keys_with_http_port() -> None:
    port, http_port = free_port(), free_port()
    process, line = start_emulator_command("--port", str(port), "--http-port", str(http_port))
    try:
        assert line == f"emulator ready grpc=127.0.0.1:{port} http=http://127.0.0.1:{http_port}\n"
        certs = httpx2.get(f"http://127.0.0.1:{http_port}/oauth2/v1/certs", timeout=10)
        assert certs.status_code == 200 and certs.json()
    finally:
        code, stderr = stop_command(process)
    assert code == 0
    assert "Traceback" not in stderr
