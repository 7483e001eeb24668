"""The stack's exported values: their names, defined once, and a typed view of them.

The Pulumi program exports under these names and every consumer (the task client, another stack's
StackReference, the local stack) reads them through `StackOutputs`, so the two sides cannot drift.
Standard library only: producers install `taskclient` (and this package) without Pulumi.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final


class OutputName:
    """Stack output names. Changing one is a breaking change for every consumer."""

    PROJECT: Final = "project"
    LOCATION: Final = "location"
    SERVICE_NAME: Final = "service_name"
    SERVICE_URL: Final = "service_url"
    OIDC_AUDIENCE: Final = "oidc_audience"
    INVOKER_EMAIL: Final = "invoker_email"
    RUNTIME_EMAIL: Final = "runtime_email"
    QUEUES: Final = "queues"
    DEFAULT_QUEUE: Final = "default_queue"
    DEFAULT_QUEUE_PATH: Final = "default_queue_path"
    # The dead-letter queue's full path: where the handler records tasks that will not be retried.
    DEAD_LETTER_QUEUE: Final = "dead_letter_queue"
    CREATE_TASK_COMMAND: Final = "create_task_command"


# How a deployed producer receives the outputs: the whole document as JSON in one environment variable.
OUTPUTS_ENV: Final = "CLOUDRUN_TASKS_OUTPUTS"


class QueueField:
    """Keys of each entry in the `queues` output (short queue key -> these fields)."""

    ID: Final = "id"
    PATH: Final = "path"
    LOCATION: Final = "location"
    TASK_URL: Final = "task_url"
    MAX_ATTEMPTS: Final = "max_attempts"
    DISPATCH_DEADLINE_SECONDS: Final = "dispatch_deadline_seconds"
    QUEUE_LEVEL_ROUTING: Final = "queue_level_routing"


class StackOutputsError(ValueError):
    """The exported values are missing a name or hold a value of the wrong shape."""


@dataclass(frozen=True)
class QueueOutputs:
    """One queue, as the stack exports it: what a producer needs to create tasks on it."""

    key: str
    id: str
    path: str
    location: str
    task_url: str
    max_attempts: int
    dispatch_deadline_seconds: float
    queue_level_routing: bool


@dataclass(frozen=True)
class StackOutputs:
    """Every value the stack exports, read back and checked: what producers and other stacks consume."""

    project: str
    location: str
    service_name: str
    service_url: str
    oidc_audience: str
    invoker_email: str
    runtime_email: str
    queues: Mapping[str, QueueOutputs]
    default_queue: str
    default_queue_path: str
    dead_letter_queue: str
    create_task_command: str

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> StackOutputs:
        """Reads `pulumi stack output --json`, a StackReference's outputs, or the local stack's file."""
        problems: list[str] = []
        text = {name: _text(values, name, problems) for name in _TEXT_OUTPUTS}
        queues = _queues(values.get(OutputName.QUEUES), problems)
        if queues and text[OutputName.DEFAULT_QUEUE] not in queues:
            problems.append(
                f"{OutputName.DEFAULT_QUEUE}: {text[OutputName.DEFAULT_QUEUE]!r} is not in {OutputName.QUEUES}"
            )
        if problems:
            raise StackOutputsError("stack outputs: " + "; ".join(problems))
        return cls(queues=queues, **text)


_TEXT_OUTPUTS = (
    OutputName.PROJECT,
    OutputName.LOCATION,
    OutputName.SERVICE_NAME,
    OutputName.SERVICE_URL,
    OutputName.OIDC_AUDIENCE,
    OutputName.INVOKER_EMAIL,
    OutputName.RUNTIME_EMAIL,
    OutputName.DEFAULT_QUEUE,
    OutputName.DEFAULT_QUEUE_PATH,
    OutputName.DEAD_LETTER_QUEUE,
    OutputName.CREATE_TASK_COMMAND,
)


def _text(values: Mapping[str, Any], name: str, problems: list[str]) -> str:
    value = values.get(name)
    if not isinstance(value, str) or not value:
        problems.append(f"{name}: expected a non-empty string, got {value!r}")
        return ""
    return value


def _queues(value: Any, problems: list[str]) -> dict[str, QueueOutputs]:
    if not isinstance(value, Mapping) or not value:
        problems.append(f"{OutputName.QUEUES}: expected a non-empty object, got {value!r}")
        return {}
    queues = {}
    for key, entry in value.items():
        where = f"{OutputName.QUEUES}.{key}"
        if not isinstance(entry, Mapping):
            problems.append(f"{where}: expected an object, got {entry!r}")
            continue
        try:
            queues[key] = QueueOutputs(
                key=key,
                id=_typed(entry, QueueField.ID, str),
                path=_typed(entry, QueueField.PATH, str),
                location=_typed(entry, QueueField.LOCATION, str),
                task_url=_typed(entry, QueueField.TASK_URL, str),
                max_attempts=_whole(entry, QueueField.MAX_ATTEMPTS),
                dispatch_deadline_seconds=_seconds(entry, QueueField.DISPATCH_DEADLINE_SECONDS),
                queue_level_routing=_typed(entry, QueueField.QUEUE_LEVEL_ROUTING, bool),
            )
        except StackOutputsError as err:
            problems.append(f"{where}.{err}")
    return queues


def _whole(entry: Mapping[str, Any], field: str) -> int:
    # Numbers cross the Pulumi engine as doubles: a StackReference hands back 5 as 5.0.
    value = _typed(entry, field, (int, float))
    if isinstance(value, float) and not value.is_integer():
        raise StackOutputsError(f"{field}: expected a whole number, got {value!r}")
    return int(value)


def _seconds(entry: Mapping[str, Any], field: str) -> float:
    value = _typed(entry, field, (int, float))
    try:
        seconds = float(value)
    except OverflowError:  # a whole number too large for a float
        seconds = math.inf
    if not 0 < seconds < math.inf:
        raise StackOutputsError(f"{field}: expected a positive number of seconds, got {value!r}")
    return seconds


def _typed(entry: Mapping[str, Any], field: str, kind: Any) -> Any:
    value = entry.get(field)
    # bool is an int in Python; a flag is never a count.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise StackOutputsError(f"{field}: expected {getattr(kind, '__name__', 'a number')}, got {value!r}")
    return value
