"""taskclient against the project's own emulator: the same calls a producer makes, real name tombstones."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.cloud import tasks_v2

from harness import dev_run
from localcloud.emulator.core import CloudTasksCore
from localcloud.emulator.server import EmulatorServer
from localcloud.stack import queue_from_inputs
from taskclient.connection import connect
from taskclient.publisher import Outcome, TaskPublisher, TaskRequest


@pytest.fixture
def publisher() -> Iterator[tuple[TaskPublisher, CloudTasksCore]]:
    core = CloudTasksCore()  # no dispatcher: tasks stay in their queues, to be counted
    with EmulatorServer(core) as server:
        for registration in dev_run().of_type("gcp:cloudtasks/queue:Queue"):
            queue = queue_from_inputs(registration.inputs)
            core.create_queue(tasks_v2.CreateQueueRequest(parent=queue.name.rsplit("/queues/", 1)[0], queue=queue))
        with TaskPublisher.from_mapping(dev_run().outputs, connection=connect(server.address)) as created:
            yield created, core


def test_bulk_of_1000_lands_in_the_queue_and_dedupe_keys_are_refused_twice(
    publisher: tuple[TaskPublisher, CloudTasksCore],
) -> None:
    tasks, core = publisher
    results = tasks.publish_many(
        [TaskRequest({"n": n}, dedupe_key=f"order-{n % 900}") for n in range(1000)], concurrency=16
    )
    outcomes = [r.outcome for r in results]
    assert outcomes.count(Outcome.CREATED) == 900 and outcomes.count(Outcome.DUPLICATE) == 100
    default = dev_run().outputs["queues"]["default"]["path"]
    listed = core.list_tasks(tasks_v2.ListTasksRequest(parent=default, page_size=1000))
    assert len(listed.tasks) == 900
    assert {t.name for t in listed.tasks} == {r.name for r in results if r.outcome is Outcome.CREATED}
