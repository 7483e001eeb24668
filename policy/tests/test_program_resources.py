"""Our own program passes the pack: every policy over the dev and prod stacks' resources, zero violations.

And the same policies do bite on those resources once one thing is broken, so a pass is not a pack that
never looked (or a dump that lost what the rules need, such as TASKS_QUEUES or the invoker grant).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from typing import Any

import program_dumps
import pytest
from policy_args import Reported
from pulumi_policy import ResourceValidationPolicy, StackValidationArgs, StackValidationPolicy

from guardrails import tokens
from guardrails.pack import POLICIES

Violations = list[tuple[str, str, str | None]]  # (policy, message, urn)


# Each test loads its stack's dump itself, so a missing dump fails the test (with how to make it).
pytestmark = pytest.mark.parametrize("stack", program_dumps.STACKS)


def run_pack(records: list[dict[str, Any]]) -> Violations:
    """Every resource policy over every resource, then every stack policy over the whole stack."""
    found: Violations = []
    for policy in POLICIES:
        reported = Reported()
        if isinstance(policy, ResourceValidationPolicy):
            for record in records:
                policy.validate(program_dumps.resource_args(record), reported)
        elif isinstance(policy, StackValidationPolicy):
            policy.validate(StackValidationArgs(program_dumps.stack_resources(records)), reported)
        found += [(policy.name, message, urn) for message, urn in reported.violations]
    return found


def test_the_programs_resources_pass_every_policy(stack: str) -> None:
    records = program_dumps.load(stack)
    assert run_pack(records) == []


def test_the_dump_holds_what_the_pack_checks(stack: str) -> None:
    records = program_dumps.load(stack)
    # An empty or truncated dump must not pass for a clean one.
    kinds = Counter(r["type"] for r in records)
    assert kinds[tokens.RUN_SERVICE] == 1
    assert kinds[tokens.RUN_SERVICE_IAM_MEMBER] >= 1
    assert kinds[tokens.QUEUE] >= 3  # two configured, and the dead-letter queue
    assert kinds[tokens.QUEUE_IAM_MEMBER] >= 2
    assert kinds[tokens.PROJECT_API] >= 3  # 4 with Secret Manager (prod)
    assert kinds["gcp:serviceaccount/iAMMember:IAMMember"] >= 2
    assert sum(kinds.values()) >= 20
    routed = [r for r in records if r["type"] == tokens.QUEUE and "httpTarget" in r["inputs"]]
    assert 1 <= len(routed) < kinds[tokens.QUEUE], "each stack has a routed and a task-level queue"
    # Exactly one paused queue, the one the handler records its dead letters on.
    paused = [r for r in records if r["type"] == tokens.QUEUE and r["inputs"].get("desiredState") == "PAUSED"]
    assert [r["name"] for r in paused] == ["tasks-dead-letters"]
    (service,) = [r for r in records if r["type"] == tokens.RUN_SERVICE]
    env = {e["name"]: e.get("value") for e in service["inputs"]["template"]["containers"][0]["envs"]}
    assert env["TASKS_DEAD_LETTER_QUEUE"].endswith("/queues/" + paused[0]["inputs"]["name"])


def is_paused(record: dict[str, Any]) -> bool:
    return bool(record["inputs"].get("desiredState") == "PAUSED")


def by_type(resource_type: str) -> Callable[[dict[str, Any]], bool]:
    return lambda record: record["type"] == resource_type


def edit(records: list[dict[str, Any]], which: Callable[[dict[str, Any]], bool], change: Any) -> list[Any]:
    changed = copy.deepcopy(records)
    for record in changed:
        if which(record):
            change(record["inputs"])
    return changed


def test_a_public_service_on_the_programs_resources_is_refused(stack: str) -> None:
    records = program_dumps.load(stack)
    broken = edit(records, by_type(tokens.RUN_SERVICE), lambda i: i.update(invokerIamDisabled=True))
    assert [(p, m.split(":")[0]) for p, m, _ in run_pack(broken)] == [
        ("cloud-run-invoker-iam-check", "Cloud Run service 'tasks-handler'")
    ]


def test_an_unbounded_queue_on_the_programs_resources_is_refused(stack: str) -> None:
    records = program_dumps.load(stack)
    first_queue = next(r["name"] for r in records if r["type"] == tokens.QUEUE and not is_paused(r))
    broken = edit(
        records,
        lambda r: r["name"] == first_queue and r["type"] == tokens.QUEUE,
        lambda i: i["retryConfig"].update(maxAttempts=-1.0, maxRetryDuration="0s"),
    )
    assert [(p, m.split(":")[0]) for p, m, _ in run_pack(broken)] == [
        ("cloud-tasks-queue-bounded-retry", f"Cloud Tasks queue '{first_queue}'")
    ]


def test_without_the_invoker_grant_every_queue_of_the_program_is_undeliverable(stack: str) -> None:
    records = program_dumps.load(stack)
    broken = [r for r in records if r["type"] != tokens.RUN_SERVICE_IAM_MEMBER]
    violations = run_pack(broken)
    queues = {r["urn"] for r in records if r["type"] == tokens.QUEUE and "httpTarget" in r["inputs"]}
    service = next(r["urn"] for r in records if r["type"] == tokens.RUN_SERVICE)
    assert {p for p, _, _ in violations} == {"cloud-tasks-delivery-wiring"}
    # Each routed queue is told its account lacks run.invoker; the service, that task-level tasks cannot call it.
    assert {urn for _, _, urn in violations} == queues | {service}
    assert len(violations) == len(queues) + 1


def test_a_short_service_timeout_is_caught_for_every_queue_in_tasks_queues(stack: str) -> None:
    records = program_dumps.load(stack)
    broken = edit(records, by_type(tokens.RUN_SERVICE), lambda i: i["template"].update(timeout="10s"))
    violations = run_pack(broken)
    # Every queue the handler serves; the dead-letter queue is not one (no deadline: it dispatches nothing).
    queues = {r["urn"] for r in records if r["type"] == tokens.QUEUE and not is_paused(r)}
    assert {p for p, _, _ in violations} == {"cloud-tasks-delivery-wiring"}
    assert {urn for _, _, urn in violations} == queues
    assert all("exceeds the service's request timeout 10s" in m for _, m, _ in violations)


def test_a_resumed_dead_letter_queue_of_the_program_is_refused(stack: str) -> None:
    records = program_dumps.load(stack)
    dead_letters = next(r for r in records if r["type"] == tokens.QUEUE and is_paused(r))
    broken = edit(records, lambda r: r["urn"] == dead_letters["urn"], lambda i: i.pop("desiredState"))
    # Running, with the unlimited retries that keep its records: both rules speak, each for its reason.
    assert sorted((p, urn) for p, _, urn in run_pack(broken)) == [
        ("cloud-tasks-dead-letter-queue-paused", dead_letters["urn"]),
        ("cloud-tasks-queue-bounded-retry", None),
    ]
