"""The dead-letter rule over hand-built stacks: the handler's dead-letter queue is a path, held paused, not served."""

from __future__ import annotations

import json
from typing import Any

import pytest
from policy_args import UNKNOWN_ARRAY, UNKNOWN_STRING, Reported, stack_args, stack_resource
from pulumi_policy import PolicyResource

from guardrails import tokens
from guardrails.dead_letters import validate_stack

PATH = "projects/p/locations/europe-west1/queues/tasks-dead-letters-5a873b"


def service(dead_letter_queue: Any = PATH, served: tuple[str, ...] = ("tasks-default-336068",)) -> PolicyResource:
    """The handler as the program registers it: TASKS_QUEUES, and TASKS_DEAD_LETTER_QUEUE unless None."""
    table = {qid: {"key": qid, "maxAttempts": 5, "dispatchDeadlineSeconds": 600.0} for qid in served}
    envs: list[dict[str, Any]] = [{"name": "TASKS_QUEUES", "value": json.dumps(table)}]
    if dead_letter_queue is not None:
        envs.append({"name": "TASKS_DEAD_LETTER_QUEUE", "value": dead_letter_queue})
    props = {
        "name": "tasks-handler",
        "location": "europe-west1",
        "project": "p",
        "template": {"containers": [{"envs": envs}]},
    }
    return stack_resource(tokens.RUN_SERVICE, "tasks-handler", props)


def queue(
    queue_id: str = "tasks-dead-letters-5a873b", state: Any = "PAUSED", *, location: str = "europe-west1"
) -> PolicyResource:
    props: dict[str, Any] = {"name": queue_id, "project": "p", "location": location}
    if state is not None:
        props["desiredState"] = state
    return stack_resource(tokens.QUEUE, f"q-{queue_id}-{state}", props)


def run(*resources: PolicyResource) -> list[tuple[str, str | None]]:
    reported = Reported()
    validate_stack(stack_args(list(resources)), reported)
    return reported.violations


def test_the_program_shape_passes() -> None:
    assert run(service(), queue(), queue("tasks-default-336068", None)) == []


@pytest.mark.parametrize(
    ("state", "shown"),
    [pytest.param(None, "unset (RUNNING)", id="unset"), pytest.param("RUNNING", '"RUNNING"', id="running")],
)
def test_a_dead_letter_queue_that_would_dispatch_is_reported_on_the_queue(state: Any, shown: str) -> None:
    dlq = queue(state=state)
    assert run(service(), dlq) == [
        (
            f"Cloud Tasks queue '{dlq.name}' is the dead-letter queue of Cloud Run service 'tasks-handler' "
            f"(TASKS_DEAD_LETTER_QUEUE {PATH}), but its desiredState is {shown}: it would dispatch every dead letter "
            'back to the service, refused and retried, or run the failed work again. Fix: set desired_state="PAUSED" '
            "on the queue.",
            dlq.urn,
        )
    ]


def test_other_queues_may_run_and_only_the_named_one_is_checked() -> None:
    assert run(service(), queue(), queue("tasks-default-336068", "RUNNING"), queue("tasks-other-000000", None)) == []
    # The same id in another location is another queue.
    assert run(service(), queue(), queue(location="us-central1", state=None)) == []


def test_a_served_dead_letter_queue_is_reported_on_the_service() -> None:
    svc = service(served=("tasks-default-336068", "tasks-dead-letters-5a873b"))
    [(message, urn)] = run(svc, queue())
    assert urn == svc.urn
    assert (
        "names queue tasks-dead-letters-5a873b, which TASKS_QUEUES also lists as a queue the handler serves" in message
    )


def test_a_value_that_is_not_a_queue_path_is_reported() -> None:
    svc = service(dead_letter_queue="tasks-dead-letters-5a873b")
    [(message, urn)] = run(svc, queue())
    assert urn == svc.urn
    assert message.startswith(
        "Cloud Run service 'tasks-handler': env TASKS_DEAD_LETTER_QUEUE is \"tasks-dead-letters-5a873b\", not a "
        "queue's full path, so the handler refuses to start."
    )


@pytest.mark.parametrize(
    "resources",
    [
        pytest.param(lambda: [service(dead_letter_queue=None), queue(state=None)], id="no dead-letter queue set"),
        pytest.param(lambda: [service(dead_letter_queue=UNKNOWN_STRING), queue(state=None)], id="unknown path"),
        pytest.param(lambda: [service(), queue(UNKNOWN_STRING, None)], id="unknown queue name"),
        pytest.param(lambda: [service(), queue(state=UNKNOWN_STRING)], id="unknown state"),
        pytest.param(lambda: [service()], id="the queue is in another stack"),
        pytest.param(
            lambda: [
                stack_resource(tokens.RUN_SERVICE, "h", {"name": "h", "template": {"containers": UNKNOWN_ARRAY}}),
                queue(state=None),
            ],
            id="unknown containers",
        ),
    ],
)
def test_what_the_pack_cannot_see_is_never_a_violation(resources: Any) -> None:
    assert run(*resources()) == []
