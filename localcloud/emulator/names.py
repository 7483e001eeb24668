"""Resource names of Cloud Tasks: `projects/P/locations/L`, `.../queues/Q`, `.../queues/Q/tasks/T`.

Rules from the API docs (queue.py / task.py): PROJECT_ID letters, digits, hyphens, colons, periods; QUEUE_ID
and TASK_ID as contract.cloud_tasks has them.
A malformed name is INVALID_ARGUMENT, never NOT_FOUND: Cloud Tasks checks the format before looking anything up.
The texts are errors.py's: Cloud Tasks' own where they are on record (queue names, task ids, a task in another
queue), ours for locations and task-name formats.
"""

from __future__ import annotations

import re
import secrets

from contract import cloud_tasks
from localcloud.emulator.errors import (
    QUEUE_NAME_FORMAT_MESSAGE,
    TASK_ID_MESSAGE,
    TASK_QUEUE_MISMATCH_MESSAGE,
    invalid_argument,
)

__all__ = [
    "check_location",
    "check_queue_name",
    "check_task_name",
    "generated_task_id",
    "short_id",
]

_LOCATION = r"projects/[A-Za-z0-9.:-]{1,100}/locations/[A-Za-z0-9_-]{1,100}"
_LOCATION_RE = re.compile(_LOCATION)
_QUEUE_RE = re.compile(rf"(?P<parent>{_LOCATION})/queues/(?P<id>{cloud_tasks.QUEUE_ID.pattern})")
_TASK_NAME_RE = re.compile(rf"(?P<queue>{_LOCATION}/queues/[^/]*)/tasks/(?P<id>[^/]*)")
_TASK_ID_RE = cloud_tasks.TASK_ID

_LOCATION_FORMAT = "projects/<PROJECT_ID>/locations/<LOCATION_ID>"
_QUEUE_FORMAT = _LOCATION_FORMAT + "/queues/<QUEUE_ID>"
_TASK_FORMAT = _QUEUE_FORMAT + "/tasks/<TASK_ID>"


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def check_location(parent: str, field: str = "parent") -> None:
    # Cloud Tasks answers a malformed parent with PERMISSION_DENIED "Permission denied on resource project
    # not-a-valid-parent." (aertje's golden, queue/create/invalid-parent): it reads the text as a project it may
    # not touch. The emulator checks no permissions, so it keeps INVALID_ARGUMENT with our text, which opens with
    # Google's generic one ("Invalid resource field value in the request.", googleapis/nodejs-tasks#394).
    if not _LOCATION_RE.fullmatch(parent):
        raise invalid_argument(
            f'Invalid resource field value in the request: {field} "{_clip(parent)}" must be "{_LOCATION_FORMAT}"'
        )


def check_queue_name(name: str, field: str = "name") -> str:
    """Validate a queue name and return its parent location. `field` is the request field that holds it: Cloud
    Tasks' text names no field, so neither does this one; callers still say which they check."""
    match = _QUEUE_RE.fullmatch(name)
    if match is None:
        raise invalid_argument(QUEUE_NAME_FORMAT_MESSAGE)
    return match["parent"]


def check_task_name(name: str, parent: str | None = None) -> str:
    """Validate a task name (and, given `parent`, that it lies in that queue); return its queue name."""
    match = _TASK_NAME_RE.fullmatch(name)
    if match is None:
        raise invalid_argument(
            f'Invalid resource field value in the request: task name "{_clip(name)}" must be "{_TASK_FORMAT}"'
        )
    check_queue_name(match["queue"], "task name")
    if not _TASK_ID_RE.fullmatch(match["id"]):
        raise invalid_argument(TASK_ID_MESSAGE.format(task_id=match["id"]))
    if parent is not None and match["queue"] != parent:
        raise invalid_argument(TASK_QUEUE_MISMATCH_MESSAGE.format(parent=parent, queue=match["queue"]))
    return match["queue"]


def short_id(name: str) -> str:
    """The last segment of a resource name: what X-CloudTasks-QueueName / -TaskName carry."""
    return name.rsplit("/", 1)[-1]


def generated_task_id() -> str:
    """A server-chosen task id: Cloud Tasks generates 19 decimal digits (e.g. 1234567890123456789)."""
    return str(10**18 + secrets.randbelow(9 * 10**18))
