"""TaskBuffer: create tasks with Cloud Tasks' BufferTask, on the stack's queues with queue-level routing.

BufferTask takes a bare HTTP body and makes it a task; the queue's http_target says where it goes and with which
token. It is REST only (the v2 gRPC client has no such call): POST {endpoint}/v2/{queue}/tasks:buffer, or
.../tasks/{task_id}:buffer to name the task (the tasks.buffer reference). The body is sent as it is with its
Content-Type, as Google's samples do, so the task's body is these bytes whatever Cloud Tasks makes of the
reference's JSON form.

Where it goes: the emulator's HTTP port when CLOUD_TASKS_EMULATOR_HTTP is set (http://host:port, printed by
`localcloud up`), else Cloud Tasks, through google-auth's AuthorizedSession with application default credentials.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

import google.auth
import google.auth.exceptions
import grpc
import requests
from google.api_core import exceptions as gexc
from google.auth.transport.requests import AuthorizedSession

from contract import cloud_tasks as limits
from contract.outputs import QueueOutputs, StackOutputs
from taskclient.errors import (
    NO_CREDENTIALS_OR_EMULATOR_HTTP,
    PublishError,
    TaskClientError,
    TaskValidationError,
    explain,
    status,
)
from taskclient.publisher import MAX_BODY_BYTES, Outcome, read_outputs_document

__all__ = ["BufferOptions", "BufferSession", "TaskBuffer", "buffer_session"]

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
_EMULATOR_HTTP = re.compile(r"http://(?:\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}/?")


@dataclass(frozen=True)
class BufferSession:
    """Where BufferTask calls go, how they are authorised, and who makes them (for error messages)."""

    session: requests.Session
    endpoint: str  # scheme://host[:port], no trailing slash
    principal: str


def buffer_session(endpoint: str = limits.REST_ENDPOINT) -> BufferSession:
    """The emulator's HTTP port when CLOUD_TASKS_EMULATOR_HTTP is set, else `endpoint` (Cloud Tasks; another one
    only in tests) with application default credentials."""
    emulator = os.environ.get(limits.EMULATOR_HTTP_ENV, "")
    if emulator:
        if not _EMULATOR_HTTP.fullmatch(emulator):
            raise TaskValidationError(
                f"{limits.EMULATOR_HTTP_ENV}: {emulator!r} is not http://host:port (e.g. http://127.0.0.1:8124)"
            )
        return BufferSession(requests.Session(), emulator.rstrip("/"), f"the caller (emulator {emulator})")
    if os.environ.get(limits.EMULATOR_HOST_ENV):
        # Local mode, half set up: going on would send the task to Cloud Tasks instead.
        raise TaskClientError(
            f"{limits.EMULATOR_HOST_ENV} is set but {limits.EMULATOR_HTTP_ENV} is not: BufferTask is REST only, so"
            " it goes to the emulator's HTTP port (its --http-port); set"
            f" {limits.EMULATOR_HTTP_ENV}=http://127.0.0.1:8124 (`localcloud up` prints the line to export)"
        )
    try:
        credentials, _ = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
    except google.auth.exceptions.DefaultCredentialsError as err:
        message = NO_CREDENTIALS_OR_EMULATOR_HTTP.format(emulator_env=limits.EMULATOR_HTTP_ENV)
        raise TaskClientError(f"{message} ({err})") from None
    email = getattr(credentials, "service_account_email", None)
    principal = (
        f"serviceAccount:{email}" if email and email != "default" else "the caller (application default credentials)"
    )
    session = AuthorizedSession(credentials)  # type: ignore[no-untyped-call]
    return BufferSession(session, endpoint.rstrip("/"), principal)


class BufferOptions(TypedDict, total=False):
    """The keyword arguments of `TaskBuffer`, which its from_* constructors pass on."""

    session: BufferSession | None
    timeout: float


class TaskBuffer:
    """Buffers tasks on the stack's queues that route at queue level. Context manager (closes its session)."""

    def __init__(self, outputs: StackOutputs, *, session: BufferSession | None = None, timeout: float = 20.0) -> None:
        self.outputs = outputs
        self._session = session or buffer_session()
        self._timeout = timeout

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], **options: Unpack[BufferOptions]) -> TaskBuffer:
        """From a dict: `pulumi stack output --json`, parsed, or what a StackReference gives."""
        return cls(StackOutputs.from_mapping(values), **options)

    @classmethod
    def from_file(cls, path: str, **options: Unpack[BufferOptions]) -> TaskBuffer:
        """From a `pulumi stack output --json` document; "-" reads standard input."""
        return cls.from_mapping(read_outputs_document(path), **options)

    def __enter__(self) -> TaskBuffer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._session.session.close()

    def buffer(self, payload: Any, *, queue: str | None = None, task_id: str | None = None) -> tuple[Outcome, str]:
        """Buffers one task: CREATED with its full name, or DUPLICATE when `task_id` is taken (or was, recently;
        nothing new is created then, and this payload is not enqueued).

        queue: short name (the default queue when omitted), one with queue-level routing; task_id: Cloud Tasks
        chooses one when omitted. A dict, list, str or number payload is sent as JSON (Content-Type
        application/json); bytes as they are, with no Content-Type.
        """
        problems: list[str] = []
        target = self._queue(queue, problems)
        body, content_type = _body(payload, problems)
        if task_id is not None and not limits.TASK_ID.fullmatch(task_id):
            problems.append(f"task_id: {task_id!r} is not a task id (1-500 letters, digits, '-' or '_')")
        if problems or target is None:
            raise TaskValidationError("; ".join(problems))
        response = self._post(target, task_id, body, content_type)
        if response.status_code == 200:
            name: str = response.json()["task"]["name"]
            return Outcome.CREATED, name
        error = _api_error(response)
        if isinstance(error, gexc.AlreadyExists) and task_id is not None:
            return Outcome.DUPLICATE, f"{target.path}/tasks/{task_id}"
        raise self._explain(error, target)

    def _queue(self, key: str | None, problems: list[str]) -> QueueOutputs | None:
        key = key or self.outputs.default_queue
        queue = self.outputs.queues.get(key)
        if queue is None:
            problems.append(f"queue: {key!r} is not one of the stack's queues ({', '.join(self.outputs.queues)})")
        elif not queue.queue_level_routing:
            problems.append(
                f"queue: {key!r} has no queue-level routing, which BufferTask needs (a buffered task carries no URL;"
                f" its queue routes it): set queues.{key}.queueLevelRouting: true in the stack's config and deploy,"
                " or create the task with `send`"
            )
            return None
        return queue

    def _post(
        self, queue: QueueOutputs, task_id: str | None, body: bytes, content_type: str | None
    ) -> requests.Response:
        tasks = f"tasks/{urllib.parse.quote(task_id, safe='')}" if task_id is not None else "tasks"
        url = f"{self._session.endpoint}/v2/{queue.path}/{tasks}:buffer"
        headers = {"Content-Type": content_type} if content_type else {}
        try:
            return self._session.session.post(url, data=body, headers=headers, timeout=self._timeout)
        except requests.RequestException as err:
            raise PublishError(f"cannot reach {self._session.endpoint}: {err}", "UNAVAILABLE") from None

    def _explain(self, error: gexc.GoogleAPICallError, queue: QueueOutputs) -> PublishError:
        if isinstance(error, gexc.FailedPrecondition):
            code, detail = status(error)
            message = (
                f"queue {queue.path} refused BufferTask: the stack outputs say it routes at queue level, the deployed"
                f" queue does not; deploy the stack (queues.{queue.key}.queueLevelRouting)"
            )
            return PublishError(f"{message} [{code}: {detail}]", code)
        return explain(
            error,
            queue_path=queue.path,
            invoker_email=self.outputs.invoker_email,
            principal=self._session.principal,
            location=self.outputs.location,
        )


def _body(payload: Any, problems: list[str]) -> tuple[bytes, str | None]:
    if isinstance(payload, bytes | bytearray | memoryview):
        body, content_type = bytes(payload), None
    else:
        try:
            body, content_type = (
                json.dumps(payload, separators=(",", ":"), allow_nan=False).encode(),
                "application/json",
            )
        except (TypeError, ValueError) as err:
            problems.append(f"payload: not JSON-serialisable ({err}); pass bytes to send it as it is")
            return b"", None
    if len(body) > MAX_BODY_BYTES:
        problems.append(
            f"payload: {len(body):,} bytes is above the {MAX_BODY_BYTES:,}-byte task limit;"
            " store the data elsewhere and send its id"
        )
    return body, content_type


def _api_error(response: requests.Response) -> gexc.GoogleAPICallError:
    """The api_core exception for an error answer: by the gRPC status Google's JSON error names, else by the
    HTTP status (a proxy's HTML page, say)."""
    try:
        error = response.json()["error"]
        code = grpc.StatusCode[error["status"]]
        found: gexc.GoogleAPICallError = gexc.from_grpc_status(  # type: ignore[no-untyped-call]
            code, str(error["message"]), response=response
        )
        return found
    except (ValueError, KeyError, TypeError):
        by_status: gexc.GoogleAPICallError = gexc.from_http_response(response)  # type: ignore[no-untyped-call]
        return by_status
