"""Stack rule: a task handler's dead-letter queue holds its dead letters; it never dispatches them.

The handler records each task that will not be retried as a task on the queue its `TASKS_DEAD_LETTER_QUEUE`
names (contract.dead_letters). That queue must be held PAUSED: running, it would dispatch each dead letter back
to the service (refused for want of a token, and retried), or run the failed work again unasked; and it must not
be one of the queues the handler serves (`TASKS_QUEUES`), or dead letters would be taken for tasks.

The queue may live in another stack, where the pack cannot see it: then nothing is checked but the path's form.
During preview a new queue's name and the env value are unknown (they derive from a random suffix); an unknown
never makes a violation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

from pulumi_policy import PolicyResource, ReportViolation, StackValidationArgs

from contract.handler_env import DEAD_LETTER_QUEUE, QUEUES
from guardrails import tokens
from guardrails.properties import MISSING, UNKNOWN, elements, read, show
from guardrails.queues import PAUSED

SERVICES = tokens.token_set([tokens.RUN_SERVICE])
_QUEUE_PATH = re.compile(r"projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/queues/(?P<queue>[A-Za-z0-9-]+)")


def validate_stack(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    """Each task handler's dead-letter queue, when this stack declares it, is held PAUSED and is not served.

    Why: Cloud Tasks deletes a task after its last attempt; the dead letter is the only record left, and a
    dead-letter queue that dispatches turns records into retries (pitfalls F2: 4xx answers are retried too)
    or into the failed work running again. Cloud Tasks keeps tasks on a paused queue, so a paused one holds
    them until an operator replays or discards them.
    """
    queues = [r for r in args.resources if tokens.is_one_of(r.resource_type, tokens.QUEUES)]
    for service in (r for r in args.resources if tokens.is_one_of(r.resource_type, SERVICES)):
        path = _env_value(service, DEAD_LETTER_QUEUE)
        if path is MISSING or path is UNKNOWN:
            continue
        match = _QUEUE_PATH.fullmatch(path) if isinstance(path, str) else None
        if match is None:
            report_violation(
                f"{_describe(service)}: env {DEAD_LETTER_QUEUE} is {show(path)}, not a queue's full path, so the "
                "handler refuses to start. Fix: set it to projects/PROJECT/locations/LOCATION/queues/QUEUE_ID, as "
                "the CloudRunTasks component does.",
                service.urn,
            )
            continue
        for queue in _declared(queues, match):
            if read(queue.props, "desiredState") not in (PAUSED, UNKNOWN):
                report_violation(_running_message(queue, service, path), queue.urn)
        if match["queue"] in _served_queue_ids(service):
            report_violation(
                f"{_describe(service)}: env {DEAD_LETTER_QUEUE} names queue {match['queue']}, which {QUEUES} also "
                "lists as a queue the handler serves, so its dead letters would be taken for tasks to run. Fix: "
                "give the handler a dead-letter queue of its own.",
                service.urn,
            )


def _env_value(service: PolicyResource, name: str) -> Any:
    """The plain value of env var `name` on the service's containers: a value, UNKNOWN (not found, and some
    container or variable is unknown yet), or MISSING."""
    unknown = read(service.props, "template.containers") is UNKNOWN
    for container in elements(read(service.props, "template.containers")):
        envs = read(container, "envs") if container is not UNKNOWN else UNKNOWN
        unknown = unknown or envs is UNKNOWN
        for env in elements(envs):
            if env is UNKNOWN:
                unknown = True
            elif read(env, "name") == name:
                return read(env, "value")
    return UNKNOWN if unknown else MISSING


def _declared(queues: Sequence[PolicyResource], path: re.Match[str]) -> Iterator[PolicyResource]:
    """The stack's queues the path names for certain: same id, and no known project or location that differs."""
    for queue in queues:
        name = read(queue.props, "name")
        if not isinstance(name, str) or name.rsplit("/", 1)[-1] != path["queue"]:
            continue
        if all(_may_equal(read(queue.props, field), path[field]) for field in ("project", "location")):
            yield queue


def _may_equal(value: Any, wanted: str) -> bool:
    return not isinstance(value, str) or value == wanted


def _served_queue_ids(service: PolicyResource) -> set[str]:
    """The queue ids in the service's TASKS_QUEUES table (a malformed table is the delivery rule's to report)."""
    value = _env_value(service, QUEUES)
    try:
        table = json.loads(value) if isinstance(value, str) else None
    except json.JSONDecodeError:
        return set()
    return set(table) if isinstance(table, dict) else set()


def _describe(resource: PolicyResource) -> str:
    return tokens.describe(resource.resource_type, resource.name)


def _running_message(queue: PolicyResource, service: PolicyResource, path: str) -> str:
    state = read(queue.props, "desiredState")
    shown = "unset (RUNNING)" if state is MISSING else show(state)
    return (
        f"{_describe(queue)} is the dead-letter queue of {_describe(service)} ({DEAD_LETTER_QUEUE} {path}), but its "
        f"desiredState is {shown}: it would dispatch every dead letter back to the service, refused and retried, "
        f'or run the failed work again. Fix: set desired_state="{PAUSED}" on the queue.'
    )
