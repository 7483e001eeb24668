"""What the local stack makes of the program: the queues, the service and its invokers, the outputs."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from google.cloud import tasks_v2

from contract.outputs import StackOutputs
from localcloud.stack import _create_queues, _handler_env, plan, stack_config

PORT = 18080
URL = f"http://127.0.0.1:{PORT}"
# The audience Cloud Run accepts and the program puts in every token, locally as in the cloud.
AUDIENCE = "https://tasks-dev-handler-123456789012.europe-west1.run.app"
EMULATOR = "127.0.0.1:8123"


def dev_plan():  # type: ignore[no-untyped-def]
    return plan(stack_config("dev"), "dev", PORT)


def test_outputs_point_at_the_local_service() -> None:
    outputs = StackOutputs.from_mapping(dev_plan().outputs)
    assert (outputs.service_url, outputs.oidc_audience) == (URL, AUDIENCE)
    assert outputs.queues["emails"].task_url == f"{URL}/tasks/send-email"


def test_queues_carry_the_configured_rate_retry_and_routing() -> None:
    local = dev_plan()
    outputs = StackOutputs.from_mapping(local.outputs)
    queues = {q.name: q for q in local.queues}
    emails = queues[outputs.queues["emails"].path]
    assert emails.rate_limits.max_dispatches_per_second == 5
    assert emails.rate_limits.max_concurrent_dispatches == 20
    assert emails.retry_config.max_attempts == 10
    assert emails.retry_config.max_retry_duration == timedelta(hours=1)
    override = emails.http_target.uri_override
    assert (override.scheme, override.host, override.port) == (tasks_v2.UriOverride.Scheme.HTTP, "127.0.0.1", PORT)
    assert override.path_override.path == "/tasks/send-email"
    assert override.uri_override_enforce_mode == tasks_v2.UriOverride.UriOverrideEnforceMode.ALWAYS
    assert emails.http_target.oidc_token.service_account_email == outputs.invoker_email
    assert emails.http_target.oidc_token.audience == AUDIENCE
    default = queues[outputs.queues["default"].path]
    assert default.retry_config.min_backoff == timedelta(seconds=1)
    assert default.retry_config.max_doublings == 3
    assert "http_target" not in default


def test_the_service_runs_with_the_declared_env_and_cloud_runs_checks() -> None:
    local = dev_plan()
    outputs = StackOutputs.from_mapping(local.outputs)
    assert local.service.invokers == {outputs.invoker_email}
    env = _handler_env(local.service, "http://127.0.0.1:9/oauth2/v1/certs", EMULATOR)
    assert env["TASKS_QUEUES"] == local.service.env["TASKS_QUEUES"]
    assert env["TASKS_VERIFY_OIDC"] == "true"
    assert env["TASKS_OIDC_AUDIENCE"] == AUDIENCE
    assert env["TASKS_INVOKER_EMAILS"] == outputs.invoker_email
    assert env["TASKS_OIDC_CERTS_URL"] == "http://127.0.0.1:9/oauth2/v1/certs"
    # The dead-letter sink records on the emulator, in the queue the program declares.
    assert env["CLOUD_TASKS_EMULATOR_HOST"] == EMULATOR
    assert env["TASKS_DEAD_LETTER_QUEUE"] == outputs.dead_letter_queue == local.service.env["TASKS_DEAD_LETTER_QUEUE"]


def test_the_dead_letter_queue_is_held_paused_and_the_others_run() -> None:
    local = dev_plan()
    outputs = StackOutputs.from_mapping(local.outputs)
    states = {q.name: q.state for q in local.queues}
    assert states == {
        outputs.dead_letter_queue: tasks_v2.Queue.State.PAUSED,
        outputs.queues["default"].path: tasks_v2.Queue.State.RUNNING,
        outputs.queues["emails"].path: tasks_v2.Queue.State.RUNNING,
    }
    dead_letters = next(q for q in local.queues if q.name == outputs.dead_letter_queue)
    assert dead_letters.retry_config.max_attempts == -1
    assert dead_letters.retry_config.max_retry_duration == timedelta(0)
    assert dead_letters.rate_limits.max_concurrent_dispatches == 1
    assert "http_target" not in dead_letters


def test_the_emulator_holds_the_dead_letter_queue_paused_after_creation() -> None:
    """CreateQueue takes state as output only, as Cloud Tasks does: the local stack creates, then pauses."""
    from emulator_support import LoopbackEmulator

    local = dev_plan()
    outputs = StackOutputs.from_mapping(local.outputs)
    with LoopbackEmulator() as emulator:
        _create_queues(emulator.address, local.queues)
        states = {q.name: emulator.core.get_queue(tasks_v2.GetQueueRequest(name=q.name)).state for q in local.queues}
    assert states[outputs.dead_letter_queue] == tasks_v2.Queue.State.PAUSED
    assert states[outputs.queues["default"].path] == tasks_v2.Queue.State.RUNNING


def test_secrets_come_from_this_machines_environment_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """Local mode has no Secret Manager: a secret env var takes the value of the same name here, if any."""
    config = {**stack_config("dev"), "cloudrun-tasks:service": json.dumps({"secretEnv": {"DB_PASSWORD": "db"}})}
    local = plan(config, "dev", PORT)
    assert local.service.secret_env == ("DB_PASSWORD",)
    assert "DB_PASSWORD" not in local.service.env
    assert "DB_PASSWORD" not in _handler_env(local.service, "http://127.0.0.1:9/certs", EMULATOR)
    monkeypatch.setenv("DB_PASSWORD", "local-only")
    assert _handler_env(local.service, "http://127.0.0.1:9/certs", EMULATOR)["DB_PASSWORD"] == "local-only"
