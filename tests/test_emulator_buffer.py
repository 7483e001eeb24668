"""BufferTask on the emulator's HTTP port, over real HTTP on loopback: the two body forms, task ids, Cloud Tasks'
status codes in Google's JSON error shape, the request bound, and dispatch through the queue's http_target."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import google.auth.transport.requests
import pytest
import requests
from emulator_support import LOCATION, RecordingServer, queue_path
from google.cloud import tasks_v2
from google.oauth2 import id_token

from localcloud.emulator.http import MAX_BUFFER_REQUEST_BYTES
from localcloud.emulator.service import CloudTasksEmulator

INVOKER = "invoker@p.iam.gserviceaccount.com"
AUDIENCE = "https://handler.example"
QUEUE_MISSING = (
    "Queue does not exist. If you just created the queue, wait at least a minute for the queue to initialize."
)


@dataclass
class Buffering:
    emulator: CloudTasksEmulator
    worker: RecordingServer
    routed: str  # a queue with queue-level routing to the worker, with an OIDC token
    plain: str  # a queue without an http_target

    def post(self, path: str, body: bytes = b"", **headers: str) -> requests.Response:
        assert self.emulator.oidc_url is not None
        return requests.post(f"{self.emulator.oidc_url}/v2/{path}", data=body, headers=headers, timeout=10)

    def hold(self) -> None:
        """Pause the routed queue, so a task stays there to be read (a delivered one is gone)."""
        self.emulator.core.pause_queue(tasks_v2.PauseQueueRequest(name=self.routed))

    def release(self) -> None:
        self.emulator.core.resume_queue(tasks_v2.ResumeQueueRequest(name=self.routed))

    def task(self, name: str) -> tasks_v2.Task:
        request = tasks_v2.GetTaskRequest(name=name, response_view=tasks_v2.Task.View.FULL)
        return self.emulator.core.get_task(request)


@pytest.fixture
def buffering() -> Iterator[Buffering]:
    with RecordingServer() as worker, CloudTasksEmulator(port=0, http_port=0) as emulator:
        port = int(worker.url.rsplit(":", 1)[1])
        routing = {
            "uri_override": {
                "scheme": tasks_v2.UriOverride.Scheme.HTTP,
                "host": "127.0.0.1",
                "port": port,
                "path_override": {"path": "/work"},
            },
            "oidc_token": {"service_account_email": INVOKER, "audience": AUDIENCE},
        }
        routed = _queue(emulator, "routed", http_target=routing)
        plain = _queue(emulator, "plain")
        yield Buffering(emulator, worker, routed, plain)


def _queue(emulator: CloudTasksEmulator, queue_id: str, **fields: Any) -> str:
    queue = tasks_v2.Queue(name=queue_path(queue_id), **fields)
    return emulator.core.create_queue(tasks_v2.CreateQueueRequest(parent=LOCATION, queue=queue)).name


def error_of(response: requests.Response) -> tuple[int, str, str]:
    """(HTTP status, gRPC status name, message), with the error shape checked exactly."""
    document = response.json()
    assert list(document) == ["error"] and sorted(document["error"]) == ["code", "message", "status"]
    assert document["error"]["code"] == response.status_code
    assert response.headers["Content-Type"] == "application/json"
    return response.status_code, document["error"]["status"], document["error"]["message"]


def test_a_body_as_it_is_becomes_a_task_that_the_queue_routes_with_its_token(buffering: Buffering) -> None:
    buffering.hold()
    response = buffering.post(f"{buffering.routed}/tasks:buffer", b'{"order": 7}', **{"Content-Type": "text/x-a"})
    assert response.status_code == 200
    (key,) = response.json()
    task = response.json()["task"]
    assert key == "task" and task["name"].startswith(buffering.routed + "/tasks/")
    assert task["view"] == "BASIC" and "body" not in task["httpRequest"]
    assert task["httpRequest"]["httpMethod"] == "POST"
    assert task["httpRequest"]["headers"] == {"Content-Type": "text/x-a", "User-Agent": "Google-Cloud-Tasks"}
    assert buffering.task(task["name"]).http_request.body == b'{"order": 7}'

    buffering.release()
    (received,) = buffering.worker.wait_for(1)
    assert (received.method, received.path, received.body) == ("POST", "/work", b'{"order": 7}')
    assert received.headers["Content-Type"] == "text/x-a"
    assert received.headers["X-CloudTasks-QueueName"] == "routed"
    assert received.headers["X-CloudTasks-TaskName"] == task["name"].rsplit("/", 1)[1]
    scheme, token = received.headers["Authorization"].split(" ", 1)
    assert scheme == "Bearer"
    certs = buffering.emulator.keys.certs_url if buffering.emulator.keys else ""
    claims = id_token.verify_token(token, google.auth.transport.requests.Request(), AUDIENCE, certs_url=certs)
    assert claims["email"] == INVOKER


def test_the_references_json_form_gives_its_data_and_content_type(buffering: Buffering) -> None:
    data = bytes(range(256))
    envelope = {"body": {"contentType": "application/octet-stream", "data": base64.b64encode(data).decode()}}
    buffering.hold()
    response = buffering.post(
        f"{buffering.routed}/tasks/from-json:buffer",
        json.dumps(envelope).encode(),
        **{"Content-Type": "application/json"},
    )
    assert response.status_code == 200
    task = buffering.task(response.json()["task"]["name"])
    assert task.name == buffering.routed + "/tasks/from-json"
    assert task.http_request.body == data
    assert task.http_request.headers == {"Content-Type": "application/octet-stream", "User-Agent": "Google-Cloud-Tasks"}


def test_json_that_is_not_the_reference_form_is_a_body_as_it_is(buffering: Buffering) -> None:
    body = b'{"body": "hello", "to": "a@b"}'
    buffering.hold()
    response = buffering.post(f"{buffering.routed}/tasks:buffer", body, **{"Content-Type": "application/json"})
    assert response.status_code == 200
    assert buffering.task(response.json()["task"]["name"]).http_request.body == body


def test_a_task_id_is_taken_once_then_refused_as_cloud_tasks_does(buffering: Buffering) -> None:
    buffering.hold()
    first = buffering.post(f"{buffering.routed}/tasks/order-1:buffer", b"a")
    assert first.status_code == 200 and first.json()["task"]["name"] == buffering.routed + "/tasks/order-1"
    assert error_of(buffering.post(f"{buffering.routed}/tasks/order-1:buffer", b"b")) == (
        409,
        "ALREADY_EXISTS",
        "Requested entity already exists",
    )
    buffering.emulator.core.delete_task(tasks_v2.DeleteTaskRequest(name=buffering.routed + "/tasks/order-1"))
    status, code, message = error_of(buffering.post(f"{buffering.routed}/tasks/order-1:buffer", b"c"))
    assert (status, code) == (409, "ALREADY_EXISTS")
    assert message.startswith("The task cannot be created because a task with this name existed too recently.")


def test_a_paused_queue_takes_buffered_tasks(buffering: Buffering) -> None:
    buffering.hold()
    assert buffering.post(f"{buffering.routed}/tasks:buffer", b"x").status_code == 200


ROUTING_TEXT = (
    "Queue {queue} has no queue-level routing (an http_target whose uri_override names a host), which BufferTask"
    " needs: a buffered task carries no URL of its own."
)


def test_refusals_have_cloud_tasks_codes_and_texts(buffering: Buffering) -> None:
    routed, plain = buffering.routed, buffering.plain
    assert error_of(buffering.post(f"{queue_path('none')}/tasks:buffer", b"x")) == (404, "NOT_FOUND", QUEUE_MISSING)
    assert error_of(buffering.post(f"{plain}/tasks:buffer", b"x")) == (
        400,
        "FAILED_PRECONDITION",
        ROUTING_TEXT.format(queue=plain),
    )
    assert error_of(buffering.post(f"{routed}/tasks/a.b:buffer", b"x")) == (
        400,
        "INVALID_ARGUMENT",
        'Task ID "a.b" can contain only letters ([A-Za-z]), numbers ([0-9]), hyphens (-), or underscores (_).'
        " Task ID must between 1 and 500 characters.",
    )
    assert error_of(buffering.post("projects/p/locations/l/queues/bad_id/tasks:buffer", b"x")) == (
        400,
        "INVALID_ARGUMENT",
        'Queue name must be formatted: "projects/<PROJECT_ID>/locations/<LOCATION_ID>/queues/<QUEUE_ID>".',
    )
    assert error_of(buffering.post(f"{routed}/tasks/:buffer", b"x"))[:2] == (400, "INVALID_ARGUMENT")
    assert error_of(buffering.post(f"{routed}/tasks:run", b"x"))[:2] == (404, "NOT_FOUND")
    assert buffering.emulator.core.list_tasks(tasks_v2.ListTasksRequest(parent=routed)).tasks == []


@pytest.mark.parametrize(
    "http_body",
    [
        {"data": "not base64!"},
        {"data": "aGk=", "colour": "red"},
        {"contentType": 7, "data": "aGk="},
    ],
    ids=["bad base64", "unknown field", "content type not a string"],
)
def test_a_malformed_json_form_is_invalid_argument(buffering: Buffering, http_body: dict[str, Any]) -> None:
    body = json.dumps({"body": http_body}).encode()
    status, code, message = error_of(
        buffering.post(f"{buffering.routed}/tasks:buffer", body, **{"Content-Type": "application/json"})
    )
    assert (status, code) == (400, "INVALID_ARGUMENT")
    assert message.startswith("Invalid JSON payload received. body: ")


def test_a_body_over_the_task_size_is_refused_as_too_large(buffering: Buffering) -> None:
    response = buffering.post(f"{buffering.routed}/tasks:buffer", b"x" * (1024 * 1024 + 1))
    assert error_of(response) == (400, "INVALID_ARGUMENT", "Task size too large")


def test_a_request_over_the_bound_is_answered_before_its_body_is_sent(buffering: Buffering) -> None:
    assert buffering.emulator.oidc_url is not None
    host, port = buffering.emulator.oidc_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.putrequest("POST", f"/v2/{buffering.routed}/tasks:buffer")
        connection.putheader("Content-Length", str(MAX_BUFFER_REQUEST_BYTES + 1))
        connection.endheaders()  # and no body: the answer must not wait for it
        response = connection.getresponse()
        document = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 400 and response.getheader("Connection") == "close"
    assert document == {"error": {"code": 400, "message": "Task size too large", "status": "INVALID_ARGUMENT"}}
