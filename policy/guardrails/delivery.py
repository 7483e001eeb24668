"""Stack rule: every queue's tasks can reach the Cloud Run service they target, within its request timeout.

Resource rules see one resource at a time; these need the whole stack: which service a queue targets, who
holds run.invoker on it, and the deadlines the program handed the service in `TASKS_QUEUES`.

Which service a queue targets:
- queue-level routing (`httpTarget.uriOverride.host` set): the services whose URL (`uri`, `urls`) has that
  host. During preview a new service's URL is unknown, and so is the host computed from it; the engine still
  records which resources `httpTarget` was computed from (its property dependencies), and those name it.
- task-level routing (no host on the queue): each task names its URL, so every Cloud Run service in a stack
  with such a queue must be callable by some service account.

Who may call a service: `gcp.cloudrunv2.ServiceIamMember`s (the additive kind the program uses) whose `name`
is the service's name or full id, in its region and project, with role run.invoker. An unknown role, member
or name may be the one needed, so it never makes a violation.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from pulumi_policy import PolicyResource, ReportViolation, StackValidationArgs

from contract.cloud_run import DEFAULT_REQUEST_TIMEOUT_S
from contract.handler_env import QUEUES as TASKS_QUEUES_ENV
from contract.handler_env import QueueTableField
from guardrails import tokens
from guardrails.iam import RUN_INVOKER, SERVICE_ACCOUNT_PREFIX, Grant, is_service_account
from guardrails.properties import (
    MISSING,
    UNKNOWN,
    DurationError,
    duration_seconds,
    elements,
    is_number,
    read,
    show,
)

SERVICES = tokens.token_set([tokens.RUN_SERVICE])
SERVICE_IAM_MEMBERS = tokens.token_set([tokens.RUN_SERVICE_IAM_MEMBER])


def validate_stack(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    """Each queue's target service has the invoker its tasks' tokens name, and a timeout its deadline fits.

    Why: without run.invoker every task is refused with 403 and retried until dropped (pitfalls A4); with a
    dispatch deadline above the service's timeout, Cloud Run answers 504 first and Cloud Tasks retries while
    the first attempt may still be running: duplicates (pitfalls F6).
    """
    services = _of_type(args.resources, SERVICES)
    queues = _of_type(args.resources, tokens.QUEUES)
    if not services or not queues:
        return
    _check_invokers(args.resources, services, queues, report_violation)
    _check_deadlines(services, queues, report_violation)


def _of_type(resources: Sequence[PolicyResource], types: frozenset[str]) -> list[PolicyResource]:
    return [r for r in resources if tokens.is_one_of(r.resource_type, types)]


def _describe(resource: PolicyResource) -> str:
    return tokens.describe(resource.resource_type, resource.name)


# --- invokers ---------------------------------------------------------------------------------------------


def _check_invokers(
    resources: Sequence[PolicyResource],
    services: list[PolicyResource],
    queues: list[PolicyResource],
    report_violation: ReportViolation,
) -> None:
    task_level = [q for q in queues if _targets(q, services) is None]
    for queue in queues:
        for service in _targets(queue, services) or []:
            wanted = _token_member(queue)
            if not any(_may_satisfy(g, wanted) for g in _invoker_grants(resources, service)):
                report_violation(_routed_message(queue, service, wanted), queue.urn)
    if task_level:
        for service in services:
            if not any(_may_satisfy(g, None) for g in _invoker_grants(resources, service)):
                report_violation(_task_level_message(service, task_level), service.urn)


def _targets(queue: PolicyResource, services: list[PolicyResource]) -> list[PolicyResource] | None:
    """The services a queue pins its tasks to; None when each task names its own URL."""
    host = read(queue.props, "httpTarget.uriOverride.host")
    if host is MISSING:
        return None
    if isinstance(host, str):
        by_host = [s for s in services if host.lower() in _url_hosts(s)]
        if by_host:
            return by_host
    computed_from = {d.urn for d in queue.property_dependencies.get("httpTarget", [])}
    return [s for s in services if s.urn in computed_from]


def _url_hosts(service: PolicyResource) -> set[str]:
    urls = [read(service.props, "uri"), *elements(read(service.props, "urls"))]
    return {host.lower() for url in urls if isinstance(url, str) and (host := urlsplit(url).hostname)}


def _token_member(queue: PolicyResource) -> str | None:
    """The member the queue's own OIDC token stands for; None when the tasks bring their own token."""
    email = read(queue.props, "httpTarget.oidcToken.serviceAccountEmail")
    return SERVICE_ACCOUNT_PREFIX + email if isinstance(email, str) else None


def _invoker_grants(resources: Sequence[PolicyResource], service: PolicyResource) -> Iterator[Grant]:
    for member in _of_type(resources, SERVICE_IAM_MEMBERS):
        if _may_target(member, service):
            yield Grant(read(member.props, "role"), read(member.props, "member"))


def _may_target(member: PolicyResource, service: PolicyResource) -> bool:
    """Whether an IAM member is (or, with unknowns, may be) on this service: same name, region and project."""
    name, service_name = read(member.props, "name"), read(service.props, "name")
    if name is UNKNOWN or service_name is UNKNOWN:
        return True
    if not (isinstance(name, str) and isinstance(service_name, str)):
        return False
    # `name` may also be the full id, projects/P/locations/L/services/NAME.
    return name.rsplit("/", 1)[-1] == service_name and all(
        _may_equal(read(member.props, field), read(service.props, field)) for field in ("location", "project")
    )


def _may_equal(left: Any, right: Any) -> bool:
    return not (isinstance(left, str) and isinstance(right, str)) or left == right


def _may_satisfy(grant: Grant, wanted: str | None) -> bool:
    """run.invoker for `wanted` (any service account when None); an unknown role or member may be it."""
    if grant.role is not UNKNOWN and grant.role != RUN_INVOKER:
        return False
    if grant.member is UNKNOWN:
        return True
    return grant.member == wanted if wanted else is_service_account(grant.member)


def _routed_message(queue: PolicyResource, service: PolicyResource, wanted: str | None) -> str:
    missing = f"{wanted} holds no {RUN_INVOKER}" if wanted else f"no service account holds {RUN_INVOKER}"
    member = wanted or "serviceAccount:<the account in the tasks' OIDC tokens>"
    return (
        f"{_describe(queue)} sends its tasks to {_describe(service)}, but {missing} on it: "
        "every task would be refused (403) and retried until dropped. Fix: add a gcp.cloudrunv2.ServiceIamMember "
        f"on the service with role {RUN_INVOKER} and member {member}."
    )


def _task_level_message(service: PolicyResource, task_level: list[PolicyResource]) -> str:
    names = ", ".join(f"'{q.name}'" for q in task_level)
    return (
        f"{_describe(service)}: each task of queue(s) {names} names its own URL (task-level routing), but no "
        f"service account holds {RUN_INVOKER} on this service, so no such task could call it. Fix: add a "
        f"gcp.cloudrunv2.ServiceIamMember with role {RUN_INVOKER} and member serviceAccount:<the account in the "
        "tasks' OIDC tokens>."
    )


# --- deadlines --------------------------------------------------------------------------------------------


def _check_deadlines(
    services: list[PolicyResource], queues: list[PolicyResource], report_violation: ReportViolation
) -> None:
    for service in services:
        table = _queue_table(service, report_violation)
        timeout = _timeout_seconds(service, report_violation) if table else None
        if table is None or timeout is None:
            continue
        for queue in queues:
            deadline = _deadline_seconds(table, queue)
            if deadline is not None and deadline > timeout:
                report_violation(_deadline_message(queue, service, deadline, timeout), queue.urn)


def _deadline_seconds(table: dict[str, Any], queue: PolicyResource) -> float | None:
    """The queue's dispatch deadline from its entry in the table (keyed by queue id), if it has one."""
    queue_id = read(queue.props, "name")
    entry = table.get(queue_id) if isinstance(queue_id, str) else None
    deadline: Any = entry.get(QueueTableField.DISPATCH_DEADLINE_SECONDS) if isinstance(entry, dict) else None
    return float(deadline) if is_number(deadline) else None


def _queue_table(service: PolicyResource, report_violation: ReportViolation) -> dict[str, Any] | None:
    """The service's TASKS_QUEUES table; None when it has none, or it is unknown (preview)."""
    for container in elements(read(service.props, "template.containers")):
        for env in elements(read(container, "envs")):
            if read(env, "name") != TASKS_QUEUES_ENV:
                continue
            value = read(env, "value")
            if not isinstance(value, str):
                return None
            try:
                table = json.loads(value)
            except json.JSONDecodeError:
                table = None
            if isinstance(table, dict):
                return table
            report_violation(
                f"{_describe(service)}: env {TASKS_QUEUES_ENV} is not a JSON object, so neither the handler nor "
                "the pack can read the queues' deadlines. Fix: set it to {queue id: "
                f"{{{QueueTableField.DISPATCH_DEADLINE_SECONDS}, ...}}}} as the CloudRunTasks component does.",
                service.urn,
            )
            return None
    return None


def _timeout_seconds(service: PolicyResource, report_violation: ReportViolation) -> float | None:
    timeout = read(service.props, "template.timeout")
    if timeout is MISSING:
        return DEFAULT_REQUEST_TIMEOUT_S
    if timeout is UNKNOWN:
        return None
    try:
        return duration_seconds(timeout)
    except DurationError as error:
        report_violation(
            f"{_describe(service)}: template.timeout: {error}, so the queues' deadlines cannot be checked against "
            'it. Fix: write it as seconds with an "s", e.g. "900s".',
            service.urn,
        )
        return None


def _deadline_message(queue: PolicyResource, service: PolicyResource, deadline: float, timeout: float) -> str:
    queue_id = read(queue.props, "name")
    return (
        f"{_describe(queue)} (id {queue_id}): its dispatch deadline {show(deadline)}s (from {TASKS_QUEUES_ENV} "
        f"on {_describe(service)}) exceeds the service's request timeout {show(timeout)}s: Cloud Run answers 504 "
        "first, and the task is retried while the first attempt may still be running. Fix: raise the service's "
        f"template.timeout to at least {show(deadline)}s, or lower the queue's dispatch deadline."
    )
