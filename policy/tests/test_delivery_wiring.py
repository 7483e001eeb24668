"""The stack rule over whole hand-built resource sets: invokers for each queue's service, deadlines in timeout."""

from __future__ import annotations

import json
from typing import Any

import pytest
from policy_args import UNKNOWN_STRING, Reported, stack_args, stack_resource
from pulumi_policy import PolicyResource

from guardrails import tokens
from guardrails.delivery import validate_stack

URL = "https://tasks-handler-ce0d03a981-ew.a.run.app"
HOST = "tasks-handler-ce0d03a981-ew.a.run.app"
INVOKER = "invoker@p.iam.gserviceaccount.com"
OTHER = "other@p.iam.gserviceaccount.com"


def service(
    name: str = "tasks-handler",
    *,
    uri: str | None = URL,
    timeout: str | None = "600s",
    deadlines: dict[str, float] | None = None,
    queues_env: str | None = None,
    location: str = "europe-west1",
) -> PolicyResource:
    """A Cloud Run service as the program registers it; `deadlines` fills TASKS_QUEUES (queue id -> seconds)."""
    table = {qid: {"key": qid, "maxAttempts": 5, "dispatchDeadlineSeconds": s} for qid, s in (deadlines or {}).items()}
    envs = [{"name": "GOOGLE_CLOUD_PROJECT", "value": "p"},
            {"name": "TASKS_QUEUES", "value": queues_env if queues_env is not None else json.dumps(table)}]  # fmt: skip
    template: dict[str, Any] = {"serviceAccount": "run@p.iam.gserviceaccount.com", "containers": [{"envs": envs}]}
    if timeout is not None:
        template["timeout"] = timeout
    props: dict[str, Any] = {"name": name, "location": location, "project": "p", "template": template}
    if uri is not None:
        props |= {"uri": uri, "urls": [uri]}
    return stack_resource(tokens.RUN_SERVICE, name, props)


def routed_queue(
    name: str = "tasks-emails",
    queue_id: str = "q-emails",
    *,
    host: str = HOST,
    email: str | None = INVOKER,
    computed_from: list[PolicyResource] | None = None,
) -> PolicyResource:
    """A queue with queue-level routing: a fixed host and (unless email is None) the queue's own OIDC token."""
    http_target: dict[str, Any] = {"uriOverride": {"host": host, "scheme": "HTTPS"}}
    if email is not None:
        http_target["oidcToken"] = {"serviceAccountEmail": email, "audience": URL}
    deps = {"httpTarget": computed_from} if computed_from else None
    return stack_resource(tokens.QUEUE, name, {"name": queue_id, "httpTarget": http_target}, deps)


def task_queue(name: str = "tasks-default", queue_id: str = "q-default") -> PolicyResource:
    """A queue with task-level routing: each task names its URL and token."""
    return stack_resource(tokens.QUEUE, name, {"name": queue_id, "location": "europe-west1"})


def invoker(
    on: PolicyResource | str,
    member: str = f"serviceAccount:{INVOKER}",
    role: str = "roles/run.invoker",
    location: str = "europe-west1",
) -> PolicyResource:
    """run.invoker on a service, by name; given the service resource, also with the engine's record that
    `name` came from it, as the program registers it."""
    name = on if isinstance(on, str) else "tasks-handler"
    deps = None if isinstance(on, str) else {"name": [on]}
    props = {"name": name, "location": location, "project": "p", "role": role, "member": member}
    return stack_resource(tokens.RUN_SERVICE_IAM_MEMBER, f"grant-{len(member)}-{role}", props, deps)


def run(*resources: PolicyResource) -> list[tuple[str, str | None]]:
    reported = Reported()
    validate_stack(stack_args(list(resources)), reported)
    return reported.violations


# --- invokers -----------------------------------------------------------------------------------------------


def test_the_program_shape_passes() -> None:
    svc = service(deadlines={"q-emails": 120, "q-default": 600})
    assert run(svc, routed_queue(), task_queue(), invoker(svc)) == []


def test_a_routed_queue_without_its_invoker_is_reported_on_the_queue() -> None:
    svc, queue = service(), routed_queue()
    assert run(svc, queue) == [
        (
            "Cloud Tasks queue 'tasks-emails' sends its tasks to Cloud Run service 'tasks-handler', but "
            f"serviceAccount:{INVOKER} holds no roles/run.invoker on it: every task would be refused (403) and "
            "retried until dropped. Fix: add a gcp.cloudrunv2.ServiceIamMember on the service with role "
            f"roles/run.invoker and member serviceAccount:{INVOKER}.",
            queue.urn,
        )
    ]


@pytest.mark.parametrize(
    "grant",
    [
        pytest.param(lambda svc: invoker(svc, member=f"serviceAccount:{OTHER}"), id="another account"),
        pytest.param(lambda svc: invoker(svc, role="roles/run.viewer"), id="another role"),
        pytest.param(lambda svc: invoker("another-service"), id="on another service"),
        pytest.param(lambda svc: invoker("tasks-handler", location="us-central1"), id="same name, other region"),
    ],
)
def test_only_run_invoker_for_the_queues_token_account_on_that_service_counts(grant: Any) -> None:
    svc, queue = service(), routed_queue()
    violations = run(svc, queue, grant(svc))
    assert [urn for _, urn in violations] == [queue.urn]
    assert f"but serviceAccount:{INVOKER} holds no roles/run.invoker on it" in violations[0][0]


@pytest.mark.parametrize(
    "grant",
    [
        pytest.param(lambda svc: invoker(svc), id="by name, as the program links it"),
        pytest.param(lambda svc: invoker("tasks-handler"), id="by name alone"),
        pytest.param(lambda svc: invoker("projects/p/locations/europe-west1/services/tasks-handler"), id="by full id"),
        pytest.param(lambda svc: invoker(svc, member=UNKNOWN_STRING), id="unknown member"),
        pytest.param(lambda svc: invoker(svc, role=UNKNOWN_STRING), id="unknown role"),
        pytest.param(lambda svc: invoker(UNKNOWN_STRING), id="unknown service name"),
        pytest.param(lambda svc: invoker("tasks-handler", location=UNKNOWN_STRING), id="unknown region"),
    ],
)
def test_a_matching_or_possibly_matching_grant_satisfies_a_routed_queue(grant: Any) -> None:
    svc = service()
    assert run(svc, routed_queue(), grant(svc)) == []


def test_a_queue_routed_to_a_host_outside_the_stack_needs_nothing_here() -> None:
    assert run(service(), routed_queue(host="api.example.com")) == []


def test_during_preview_the_engines_dependencies_name_the_target() -> None:
    # A new service's URL is unknown, and so is the host computed from it, and the token's account.
    svc = service(uri=UNKNOWN_STRING)
    queue = routed_queue(host=UNKNOWN_STRING, email=UNKNOWN_STRING, computed_from=[svc])
    assert run(svc, queue, invoker(svc, member=UNKNOWN_STRING)) == []
    violations = run(svc, queue)
    assert [urn for _, urn in violations] == [queue.urn]
    assert violations[0][0].startswith(
        "Cloud Tasks queue 'tasks-emails' sends its tasks to Cloud Run service 'tasks-handler', but no service "
        "account holds roles/run.invoker on it"
    )


def test_a_routed_queue_with_no_token_of_its_own_needs_some_service_account_invoker() -> None:
    svc = service()
    queue = routed_queue(email=None)
    assert run(svc, queue, invoker(svc, member=f"serviceAccount:{OTHER}")) == []
    violations = run(svc, queue, invoker(svc, member="user:dev@example.com"))
    assert violations == [
        (
            "Cloud Tasks queue 'tasks-emails' sends its tasks to Cloud Run service 'tasks-handler', but no service "
            "account holds roles/run.invoker on it: every task would be refused (403) and retried until dropped. "
            "Fix: add a gcp.cloudrunv2.ServiceIamMember on the service with role roles/run.invoker and member "
            "serviceAccount:<the account in the tasks' OIDC tokens>.",
            queue.urn,
        )
    ]


def test_task_level_routing_needs_a_service_account_invoker_on_every_service() -> None:
    svc, other = service(), service("reports-handler", uri="https://reports-x-ew.a.run.app")
    violations = run(svc, other, task_queue(), task_queue("tasks-bulk", "q-bulk"), invoker(svc))
    assert violations == [
        (
            "Cloud Run service 'reports-handler': each task of queue(s) 'tasks-default', 'tasks-bulk' names its own "
            "URL (task-level routing), but no service account holds roles/run.invoker on this service, so no such "
            "task could call it. Fix: add a gcp.cloudrunv2.ServiceIamMember with role roles/run.invoker and member "
            "serviceAccount:<the account in the tasks' OIDC tokens>.",
            other.urn,
        )
    ]


@pytest.mark.parametrize(
    ("member", "violates"),
    [
        pytest.param(f"serviceAccount:{OTHER}", False, id="any service account"),
        pytest.param(UNKNOWN_STRING, False, id="unknown member"),
        pytest.param("user:dev@example.com", True, id="a person is not a task invoker"),
        pytest.param("group:devs@example.com", True, id="nor a group"),
    ],
)
def test_task_level_invoker_must_be_a_service_account(member: str, violates: bool) -> None:
    svc = service()
    assert len(run(svc, task_queue(), invoker(svc, member=member))) == int(violates)


def test_a_stack_without_queues_or_without_services_has_nothing_to_wire() -> None:
    assert run(service()) == []
    assert run(task_queue(), routed_queue()) == []


def test_a_service_whose_name_is_unknown_may_be_the_one_a_grant_names() -> None:
    svc = service()
    svc.props["name"] = UNKNOWN_STRING  # the proxy writes through to the props it wraps
    assert run(svc, routed_queue(), invoker("tasks-handler")) == []
    assert len(run(svc, routed_queue())) == 1


# --- deadlines ----------------------------------------------------------------------------------------------


def deadline_message(queue: str, queue_id: str, deadline: str, timeout: str) -> str:
    return (
        f"Cloud Tasks queue '{queue}' (id {queue_id}): its dispatch deadline {deadline}s (from TASKS_QUEUES on Cloud "
        f"Run service 'tasks-handler') exceeds the service's request timeout {timeout}s: Cloud Run answers 504 "
        "first, and the task is retried while the first attempt may still be running. Fix: raise the service's "
        f"template.timeout to at least {deadline}s, or lower the queue's dispatch deadline."
    )


def test_a_deadline_above_the_service_timeout_is_reported_on_the_queue() -> None:
    svc = service(timeout="600s", deadlines={"q-default": 900, "q-emails": 600})
    slow, fits = task_queue(), routed_queue()
    assert run(svc, slow, fits, invoker(svc)) == [(deadline_message("tasks-default", "q-default", "900", "600"),
                                                    slow.urn)]  # fmt: skip


def test_an_unset_timeout_is_cloud_runs_default_of_300s() -> None:
    svc = service(timeout=None, deadlines={"q-default": 600})
    queue = task_queue()
    assert run(svc, queue, invoker(svc)) == [(deadline_message("tasks-default", "q-default", "600", "300"), queue.urn)]


@pytest.mark.parametrize(
    "svc",
    [
        pytest.param(service(timeout=UNKNOWN_STRING, deadlines={"q-default": 900}), id="unknown timeout"),
        pytest.param(service(queues_env=UNKNOWN_STRING), id="unknown TASKS_QUEUES (ids from new random suffixes)"),
        pytest.param(service(deadlines={"q-other": 900}), id="queue not in the table"),
        pytest.param(service(deadlines={"q-default": 600}), id="deadline equal to the timeout"),
        pytest.param(service(deadlines={}), id="empty table"),
    ],
)
def test_deadlines_that_fit_or_cannot_be_known_pass(svc: PolicyResource) -> None:
    assert run(svc, task_queue(), invoker(svc)) == []


def test_a_queue_whose_id_is_unknown_passes() -> None:
    svc = service(deadlines={"q-default": 900})
    assert run(svc, task_queue(queue_id=UNKNOWN_STRING), invoker(svc)) == []


@pytest.mark.parametrize(
    ("svc", "problem"),
    [
        pytest.param(service(queues_env="not json"), "env TASKS_QUEUES is not a JSON object", id="bad table"),
        pytest.param(service(queues_env="[]"), "env TASKS_QUEUES is not a JSON object", id="table not an object"),
        pytest.param(
            service(timeout="10m", deadlines={"q-default": 60}),
            'template.timeout: "10m" is not a duration in seconds',
            id="bad timeout",
        ),
    ],
)
def test_what_the_deadline_check_cannot_read_is_reported_on_the_service(svc: PolicyResource, problem: str) -> None:
    violations = run(svc, task_queue(), invoker(svc))
    assert len(violations) == 1
    assert violations[0][0].startswith(f"Cloud Run service 'tasks-handler': {problem}")
    assert "Fix: " in violations[0][0]
    assert violations[0][1] == svc.urn
