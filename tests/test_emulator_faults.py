"""The emulator's fault-injection seam (`EmulatorServer.faults`), driven through the stock client over loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from emulator_support import LOCATION, LoopbackEmulator, queue_path, start_emulator_command
from google.api_core import exceptions
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from localcloud.emulator.core import CloudTasksCore
from localcloud.emulator.faults import Fault, FaultInjector
from localcloud.emulator.server import EmulatorServer
from localcloud.program import PROJECT_DIR

QUEUE = queue_path("q")
HTTP = {"url": "https://example.test/work", "body": b"payload"}


def stock_client(address: str) -> tuple[grpc.Channel, tasks_v2.CloudTasksClient]:
    channel = grpc.insecure_channel(address)
    return channel, tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))


@pytest.fixture
def emulator() -> Iterator[LoopbackEmulator]:
    with LoopbackEmulator([QUEUE]) as running:
        yield running


@pytest.fixture
def client(emulator: LoopbackEmulator) -> Iterator[tasks_v2.CloudTasksClient]:
    channel, created = stock_client(emulator.address)
    yield created
    channel.close()


def create(client: tasks_v2.CloudTasksClient, task_id: str | None = None, **request: object) -> tasks_v2.Task:
    task = {"http_request": HTTP} | ({"name": f"{QUEUE}/tasks/{task_id}"} if task_id else {})
    return client.create_task(request={"parent": QUEUE, "task": task, **request}, retry=None)


def names(emulator: LoopbackEmulator) -> list[str]:
    return [task.name for task in emulator.tasks()]


# ----- fail_next -----


def test_fail_next_fails_that_many_calls_then_lets_them_through(
    emulator: LoopbackEmulator, client: tasks_v2.CloudTasksClient
) -> None:
    emulator.faults.fail_next("CreateTask", grpc.StatusCode.UNAVAILABLE, "try again", times=2)
    for _ in range(2):
        with pytest.raises(exceptions.ServiceUnavailable, match="try again"):
            create(client, "t1")
    assert names(emulator) == []
    assert create(client, "t1").name == f"{QUEUE}/tasks/t1"
    assert emulator.create_calls() == 3


def test_fail_next_faults_apply_in_the_order_given(
    emulator: LoopbackEmulator, client: tasks_v2.CloudTasksClient
) -> None:
    emulator.faults.fail_next("CreateTask", grpc.StatusCode.UNAVAILABLE, "first")
    emulator.faults.fail_next("CreateTask", grpc.StatusCode.RESOURCE_EXHAUSTED, "second")
    with pytest.raises(exceptions.ServiceUnavailable, match="first"):
        create(client)
    with pytest.raises(exceptions.ResourceExhausted, match="second"):
        create(client)
    create(client)
    assert len(emulator.tasks()) == 1


def test_a_fault_applies_to_its_rpc_only(emulator: LoopbackEmulator, client: tasks_v2.CloudTasksClient) -> None:
    emulator.faults.fail_next("GetQueue", grpc.StatusCode.PERMISSION_DENIED, "no")
    create(client, "t1")
    with pytest.raises(exceptions.PermissionDenied, match="no"):
        client.get_queue(name=QUEUE, retry=None)
    assert client.get_queue(name=QUEUE).name == QUEUE


def test_after_effect_commits_the_call_then_answers_with_the_fault(
    emulator: LoopbackEmulator, client: tasks_v2.CloudTasksClient
) -> None:
    emulator.faults.fail_next("CreateTask", grpc.StatusCode.DEADLINE_EXCEEDED, "reply lost", after_effect=True)
    with pytest.raises(exceptions.DeadlineExceeded, match="reply lost"):
        create(client, "t1")
    assert names(emulator) == [f"{QUEUE}/tasks/t1"]
    with pytest.raises(exceptions.AlreadyExists):
        create(client, "t1")


def test_after_effect_answers_with_the_calls_own_error_when_it_fails(
    emulator: LoopbackEmulator, client: tasks_v2.CloudTasksClient
) -> None:
    emulator.faults.fail_next("CreateTask", grpc.StatusCode.DEADLINE_EXCEEDED, after_effect=True)
    with pytest.raises(exceptions.InvalidArgument, match="Task ID"):
        create(client, "bad.id")
    create(client, "t1")  # the fault was that call's
    assert names(emulator) == [f"{QUEUE}/tasks/t1"]


# ----- fail_when -----


def test_fail_when_fails_the_matching_requests_until_cleared(
    emulator: LoopbackEmulator, client: tasks_v2.CloudTasksClient
) -> None:
    quota = Fault(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota")
    emulator.faults.fail_when("CreateTask", lambda request: quota if "slow" in request.task.name else None)
    for _ in range(2):
        with pytest.raises(exceptions.ResourceExhausted, match="quota"):
            create(client, "slow-1")
    create(client, "fast-1")
    assert names(emulator) == [f"{QUEUE}/tasks/fast-1"]
    emulator.faults.clear()
    create(client, "slow-1")
    assert names(emulator) == [f"{QUEUE}/tasks/fast-1", f"{QUEUE}/tasks/slow-1"]


def test_a_rule_sees_a_copy_of_the_request(emulator: LoopbackEmulator, client: tasks_v2.CloudTasksClient) -> None:
    def meddle(request: tasks_v2.CreateTaskRequest) -> Fault | None:
        request.task.http_request.body = b"changed"
        return None

    emulator.faults.fail_when("CreateTask", meddle)
    create(client, "t1")
    assert [task.http_request.body for task in emulator.tasks()] == [b"payload"]


def test_rules_are_not_consulted_for_a_call_that_took_a_fail_next_fault(
    emulator: LoopbackEmulator, client: tasks_v2.CloudTasksClient
) -> None:
    seen: list[str] = []
    emulator.faults.fail_when("CreateTask", lambda request: seen.append(request.task.name))
    emulator.faults.fail_next("CreateTask", grpc.StatusCode.UNAVAILABLE, after_effect=True)
    with pytest.raises(exceptions.ServiceUnavailable):
        create(client, "t1")
    create(client, "t2")
    assert seen == [f"{QUEUE}/tasks/t2"]


# ----- recording -----


def test_recorded_calls_hold_the_decoded_request_and_metadata(
    emulator: LoopbackEmulator, client: tasks_v2.CloudTasksClient
) -> None:
    create(client, "t1")
    client.get_queue(name=QUEUE)
    first, second = emulator.faults.calls()
    assert (first.method, second.method) == ("CreateTask", "GetQueue")
    assert isinstance(first.request, tasks_v2.CreateTaskRequest)
    assert first.request.task.name == f"{QUEUE}/tasks/t1" and first.request.task.http_request.body == b"payload"
    assert ("x-goog-request-params", f"parent={QUEUE}") in first.metadata
    assert [call.request.name for call in emulator.faults.calls("GetQueue")] == [QUEUE]


def test_calls_are_recorded_only_when_asked_and_clear_forgets_them(
    emulator: LoopbackEmulator, client: tasks_v2.CloudTasksClient
) -> None:
    create(client)
    emulator.faults.clear()
    assert not emulator.faults.recording and emulator.faults.calls() == []
    create(client)
    assert emulator.faults.calls() == []
    emulator.faults.recording = True
    create(client)
    assert len(emulator.faults.calls("CreateTask")) == 1


def test_an_idle_injector_is_not_called_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    core = CloudTasksCore()
    with EmulatorServer(core) as server:
        channel, client = stock_client(server.address)
        try:
            assert not server.faults.active

            def refuse(*args: object) -> bytes:
                raise AssertionError("intercept called with nothing set")

            monkeypatch.setattr(server.faults, "intercept", refuse)
            client.create_queue(parent=LOCATION, queue={"name": QUEUE})
            monkeypatch.undo()
            server.faults.fail_next("GetQueue", grpc.StatusCode.UNAVAILABLE)
            assert server.faults.active
            with pytest.raises(exceptions.ServiceUnavailable):
                client.get_queue(name=QUEUE, retry=None)
            assert not server.faults.active  # the last fault is spent
        finally:
            channel.close()


# ----- latency and workers -----


def test_latency_delays_every_call_and_slow_calls_overlap() -> None:
    calls, latency = 16, 0.5
    with LoopbackEmulator([QUEUE], workers=calls) as emulator:
        channel, client = stock_client(emulator.address)
        try:
            emulator.faults.latency = latency
            started = time.monotonic()
            client.get_queue(name=QUEUE)
            assert time.monotonic() - started >= latency
            barrier = threading.Barrier(calls)

            def one(n: int) -> str:
                barrier.wait(timeout=10)
                return create(client, f"c{n}").name

            started = time.monotonic()
            with ThreadPoolExecutor(calls) as pool:
                created = list(pool.map(one, range(calls)))
            elapsed = time.monotonic() - started
        finally:
            channel.close()
    assert len(set(created)) == calls == len(emulator.tasks())
    # One after another they would take calls * latency (8 s); overlapping, about one latency.
    assert latency <= elapsed < calls * latency / 2, f"{calls} calls with {latency} s latency took {elapsed:.2f} s"


def test_workers_is_how_many_calls_are_handled_at_once() -> None:
    calls = 24  # more than the default 16 workers
    inside = threading.Barrier(calls, timeout=20)

    def wait_for_all(request: tasks_v2.CreateTaskRequest) -> Fault | None:
        inside.wait()  # breaks (INTERNAL) unless every call is being handled at the same time
        return None

    with LoopbackEmulator([QUEUE], workers=calls) as emulator:
        emulator.faults.fail_when("CreateTask", wait_for_all)
        channel, client = stock_client(emulator.address)
        try:
            with ThreadPoolExecutor(calls) as pool:
                created = list(pool.map(lambda n: create(client, f"w{n}").name, range(calls)))
        finally:
            channel.close()
    assert len(set(created)) == calls
    assert emulator.faults.max_in_flight == calls


# ----- arguments -----


def test_bad_settings_are_refused_at_once(emulator: LoopbackEmulator) -> None:
    faults = emulator.faults
    with pytest.raises(ValueError, match="unknown RPC 'createTask'"):
        faults.fail_next("createTask", grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(ValueError, match="unknown RPC"):
        faults.fail_when("Nope", lambda request: None)
    with pytest.raises(ValueError, match="not a failure"):
        faults.fail_next("CreateTask", grpc.StatusCode.OK)
    with pytest.raises(ValueError, match="times"):
        faults.fail_next("CreateTask", grpc.StatusCode.UNAVAILABLE, times=0)
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="latency"):
            faults.latency = bad
    with pytest.raises(ValueError, match="workers"):
        EmulatorServer(CloudTasksCore(), workers=0)
    assert FaultInjector().active is False


# ----- the command line -----


def test_the_emulator_command_injects_latency() -> None:
    process, line = start_emulator_command("--port", "0", "--latency-ms", "300", "--workers", "4")
    try:
        assert line.startswith("emulator ready grpc=127.0.0.1:"), line
        channel, client = stock_client(line.split("grpc=", 1)[1].split()[0])
        try:
            started = time.monotonic()
            client.create_queue(parent=LOCATION, queue={"name": QUEUE})
            assert time.monotonic() - started >= 0.3
        finally:
            channel.close()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(("option", "value"), [("--workers", "0"), ("--latency-ms", "-1")])
def test_the_emulator_command_refuses_bad_values(option: str, value: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "localcloud", "emulator", "--port", "0", option, value],
        cwd=PROJECT_DIR,
        env={**os.environ, "PYTHONPATH": str(PROJECT_DIR)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"argument {option}:" in done.stderr and "Traceback" not in done.stderr
