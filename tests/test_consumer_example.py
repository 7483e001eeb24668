"""The StackReference consumer example, evaluated against the dev stack's own (mocked) outputs."""

from __future__ import annotations

import json

import pytest

from contract.outputs import OUTPUTS_ENV, OutputName
from harness import run_stack
from localcloud.program import PROJECT_DIR, ProgramRun, SimulatedGcp, evaluate

CONSUMER = PROJECT_DIR / "examples" / "consumer" / "__main__.py"
TASKS_STACK = "my-org/cloudrun-tasks/dev"


def run_consumer(tasks_outputs: dict[str, object]) -> ProgramRun:
    config = {
        "tasks-consumer:tasksStack": TASKS_STACK,
        "tasks-consumer:producerImage": "europe-west1-docker.pkg.dev/my-tasks-dev/api/api:1",
        "tasks-consumer:producerServiceAccount": "api-dev@my-tasks-dev.iam.gserviceaccount.com",
    }
    cloud = SimulatedGcp(stack_outputs={TASKS_STACK: tasks_outputs})
    return evaluate(config, program=CONSUMER, project="tasks-consumer", cloud=cloud)


def test_consumer_hands_the_tasks_stack_outputs_to_its_producer() -> None:
    tasks = dict(run_stack("dev").outputs)
    consumer = run_consumer(tasks)
    producer = consumer.of_type("gcp:cloudrunv2/service:Service")[0].inputs
    assert (producer["project"], producer["location"]) == ("my-tasks-dev", "europe-west1")
    env = {e["name"]: e["value"] for e in producer["template"]["containers"][0]["envs"]}
    assert json.loads(env[OUTPUTS_ENV]) == tasks
    assert consumer.outputs["default_queue_path"] == tasks[OutputName.DEFAULT_QUEUE_PATH]


def test_consumer_fails_at_preview_when_an_output_it_needs_is_gone() -> None:
    tasks = dict(run_stack("dev").outputs)
    del tasks[OutputName.OIDC_AUDIENCE]
    # Pulumi wraps the error while resolving the producer's inputs; the message still names the output.
    with pytest.raises(ValueError, match="oidc_audience: expected a non-empty string"):
        run_consumer(tasks)
