"""The local stack end to end: emulator and handler processes, tasks through the task client, real tokens."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from contract.outcomes import TaskOutcome
from contract.outputs import StackOutputs
from localcloud.demo import Ledger
from localcloud.program import PROJECT_DIR
from localcloud.stack import RunningStack, running
from taskclient.connection import connect
from taskclient.publisher import Outcome, TaskPublisher, TaskRequest

SETTLE_TIMEOUT_S = 60


class Watched:
    """The running stack, and every line its processes print (with a condition to wait on)."""

    def __init__(self) -> None:
        self.ledger = Ledger()
        self.lines: list[tuple[str, str]] = []
        self.printed = threading.Condition()

    def on_line(self, source: str, line: str) -> None:
        with self.printed:
            self.lines.append((source, line))
            self.printed.notify_all()
        if source == "handler":
            self.ledger.observe(line)

    def wait_for_line(self, source: str, fragment: str) -> str:
        with self.printed:
            found = self.printed.wait_for(
                lambda: next((line for s, line in self.lines if s == source and fragment in line), None),
                timeout=SETTLE_TIMEOUT_S,
            )
        assert found, f"{source} never printed {fragment!r}"
        return found

    def start(self, local: RunningStack) -> None:
        self.local = local
        self.outputs = StackOutputs.from_mapping(local.plan.outputs)


@pytest.fixture(scope="module")
def stack() -> Iterator[Watched]:
    watched = Watched()
    with running("dev", on_line=watched.on_line) as local:
        watched.start(local)
        yield watched


def key(name: str) -> tuple[str, str]:
    parts = name.split("/")
    return parts[5], parts[7]


def settle(stack: Watched, names: list[str]) -> None:
    keys = [key(n) for n in names]
    for k in keys:
        stack.ledger.published(k, time.time())
    stack.ledger.wait_until_settled(keys, SETTLE_TIMEOUT_S)


def test_tasks_go_through_queue_retry_and_routing_to_the_handler(stack: Watched) -> None:
    requests = (
        [TaskRequest({"n": n}) for n in range(60)]
        + [TaskRequest({"fail_attempts": 2}, dedupe_key=f"flaky-{n}") for n in range(5)]
        + [TaskRequest({"permanent": "no such order"})]
        + [TaskRequest({"to": f"u{n}@example.com"}, queue="emails") for n in range(5)]
    )
    with TaskPublisher(stack.outputs, connection=connect(stack.local.emulator_host)) as publisher:
        results = publisher.publish_many(requests, concurrency=8)
    assert {r.outcome for r in results} == {Outcome.CREATED}
    names = [r.name for r in results if r.name]
    settle(stack, names)
    fates = [stack.ledger.fates[key(n)] for n in names]
    assert [f.outcome for f in fates[:60]] == ["delivered"] * 60
    assert [(f.outcome, f.failed_attempts) for f in fates[60:65]] == [("delivered", 2)] * 5
    assert fates[65].outcome == "dead-lettered"
    assert [f.outcome for f in fates[66:]] == ["delivered"] * 5
    # Every task once, the flaky ones twice more (the emulator logs an attempt once its answer is in).
    dispatched = {f"task={key(n)[1]} " for n in names}

    def attempts() -> int:
        return sum(1 for s, line in stack.lines if s == "emulator" and any(d in line for d in dispatched))

    with stack.printed:
        assert stack.printed.wait_for(lambda: attempts() >= 71 + 10, timeout=SETTLE_TIMEOUT_S), attempts()


def raw_client(stack: Watched) -> tasks_v2.CloudTasksClient:
    channel = grpc.insecure_channel(stack.local.emulator_host)
    return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))


@pytest.mark.parametrize(
    ("email", "audience", "status"),
    [
        ("someone-else@my-tasks-dev.iam.gserviceaccount.com", None, 403),  # no run.invoker on the service
        (None, "https://not-the-service.example", 401),  # the invoker, but the wrong audience
    ],
)
def test_cloud_run_iam_is_enforced_locally(
    stack: Watched, email: str | None, audience: str | None, status: int
) -> None:
    queue = stack.outputs.queues["default"]
    token = tasks_v2.OidcToken(
        service_account_email=email or stack.outputs.invoker_email, audience=audience or stack.outputs.oidc_audience
    )
    task = tasks_v2.Task(
        http_request=tasks_v2.HttpRequest(url=queue.task_url, body=b"{}", oidc_token=token),
        name=f"{queue.path}/tasks/iam-{status}",
    )
    raw_client(stack).create_task(parent=queue.path, task=task)
    stack.wait_for_line("emulator", f"task=iam-{status} attempt=1 status={status}")
    refused = json.loads(stack.wait_for_line("handler", f'"task":"iam-{status}"'))
    assert (refused["outcome"], refused["httpRequest"]["status"]) == (TaskOutcome.REFUSED, status)


def test_the_demo_delivers_everything_and_loses_nothing() -> None:
    # The demo writes its own outputs file: a running `localcloud up`'s outputs.json is never overwritten.
    up_outputs = PROJECT_DIR / ".localcloud" / "outputs.json"
    before = up_outputs.read_bytes() if up_outputs.exists() else None
    done = subprocess.run(
        [sys.executable, "-m", "localcloud", "demo"],
        cwd=PROJECT_DIR,
        env={**os.environ, "PYTHONPATH": str(PROJECT_DIR)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = next(line for line in done.stdout.splitlines() if line.startswith("published "))
    assert "lost 0, unexpected 0" in summary
    assert "dead-lettered 8" in summary and "retried 20" in summary
    # Then: one dead letter per dead-lettered task, and the one whose cause has gone replayed to delivered.
    assert re.search(r"^dead letters \(tasks-dev-dead-letters-[0-9a-f]{6}\): 8$", done.stdout, re.MULTILINE)
    assert re.search(
        r"^replayed tasks-dev-default-\w+_\d+ \(its record has arrived\) as \S+: delivered$", done.stdout, re.M
    )
    assert "7 dead letters left" in done.stdout
    # What became of each kind of task, against what was expected of it.
    assert "  fails, then succeeds            delivered 20  (expected: delivered)" in done.stdout
    assert "  invalid email                   dead-lettered 3  (expected: dead-lettered)" in done.stdout
    written = json.loads((PROJECT_DIR / ".localcloud" / "demo-outputs.json").read_text())
    assert StackOutputs.from_mapping(written).service_url.startswith("http://127.0.0.1:")
    assert (up_outputs.read_bytes() if up_outputs.exists() else None) == before


def test_a_dead_letter_is_held_on_the_paused_dead_letter_queue_of_the_emulator(stack: Watched) -> None:
    """The handler's sink reaches the emulator (CLOUD_TASKS_EMULATOR_HOST) and records in the queue the program
    declares (TASKS_DEAD_LETTER_QUEUE), which the local stack holds paused: the dead letter stays there."""
    with TaskPublisher(stack.outputs, connection=connect(stack.local.emulator_host)) as publisher:
        (result,) = publisher.publish_many([TaskRequest({"permanent": "kept locally"}, dedupe_key="local-dead-letter")])
    assert result.name
    settle(stack, [result.name])
    assert stack.ledger.fates[key(result.name)].outcome == "dead-lettered"
    client = raw_client(stack)
    dead_letter_queue = stack.outputs.dead_letter_queue
    assert client.get_queue(name=dead_letter_queue).state == tasks_v2.Queue.State.PAUSED
    letters = [
        task
        for task in client.list_tasks(
            request=tasks_v2.ListTasksRequest(parent=dead_letter_queue, response_view=tasks_v2.Task.View.FULL)
        )
        if {n.lower(): v for n, v in task.http_request.headers.items()}.get("x-dead-letter-task") == key(result.name)[1]
    ]
    assert len(letters) == 1
    assert json.loads(letters[0].http_request.body) == {"permanent": "kept locally"}
    assert letters[0].dispatch_count == 0
