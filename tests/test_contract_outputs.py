"""StackOutputs: the typed view consumers get of the exported values, and its errors."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from contract.outputs import OutputName, QueueField, StackOutputs, StackOutputsError
from harness import dev_run


def changed(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    document = copy.deepcopy(dict(dev_run().outputs))
    target = document
    for key in path[:-1]:
        target = target[key]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return document


def test_reads_the_programs_outputs() -> None:
    outputs = StackOutputs.from_mapping(dict(dev_run().outputs))
    assert set(outputs.queues) == {"default", "emails"}
    assert outputs.queues["default"].key == "default"
    assert outputs.dead_letter_queue.startswith(
        "projects/my-tasks-dev/locations/europe-west1/queues/tasks-dev-dead-letters-"
    )


def test_whole_numbers_that_crossed_the_engine_as_doubles_are_accepted() -> None:
    outputs = StackOutputs.from_mapping(changed((OutputName.QUEUES, "emails", QueueField.MAX_ATTEMPTS), 10.0))
    assert outputs.queues["emails"].max_attempts == 10


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ((OutputName.SERVICE_URL,), None, "service_url: expected a non-empty string, got None"),
        ((OutputName.INVOKER_EMAIL,), "", "invoker_email: expected a non-empty string, got ''"),
        ((OutputName.QUEUES,), {}, "queues: expected a non-empty object"),
        ((OutputName.QUEUES, "emails"), "x", "queues.emails: expected an object, got 'x'"),
        ((OutputName.QUEUES, "emails", QueueField.MAX_ATTEMPTS), 2.5, "queues.emails.max_attempts: expected a whole"),
        ((OutputName.QUEUES, "emails", QueueField.MAX_ATTEMPTS), True, "queues.emails.max_attempts: expected"),
        ((OutputName.QUEUES, "emails", QueueField.PATH), None, "queues.emails.path: expected str, got None"),
        ((OutputName.QUEUES, "emails", QueueField.QUEUE_LEVEL_ROUTING), 1, "queue_level_routing: expected bool"),
        ((OutputName.DEFAULT_QUEUE,), "nope", "default_queue: 'nope' is not in queues"),
        ((OutputName.DEAD_LETTER_QUEUE,), None, "dead_letter_queue: expected a non-empty string, got None"),
    ],
)
def test_a_wrong_document_is_refused_naming_the_output(path: tuple[str, ...], value: Any, message: str) -> None:
    with pytest.raises(StackOutputsError) as raised:
        StackOutputs.from_mapping(changed(path, value))
    assert message in str(raised.value)


def test_every_problem_is_reported_together() -> None:
    document = changed((OutputName.SERVICE_URL,), None)
    del document[OutputName.PROJECT]
    with pytest.raises(StackOutputsError) as raised:
        StackOutputs.from_mapping(document)
    assert "project:" in str(raised.value) and "service_url:" in str(raised.value)
