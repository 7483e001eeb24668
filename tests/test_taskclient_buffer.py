"""`taskclient buffer` and TaskBuffer: end to end on the emulator's HTTP port (the task dispatched through the
queue's uri_override with its OIDC token), the refusals and their exit codes, and the Cloud Tasks path through
an AuthorizedSession, against a loopback server standing in for cloudtasks.googleapis.com."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import google.auth.transport.requests
import jwt
import pytest
from emulator_support import RecordingServer, stack_queues
from google.cloud import tasks_v2
from google.oauth2 import credentials as user_credentials
from google.oauth2 import id_token
from taskclient_support import outputs_document, service_account_key, stack

from contract import cloud_tasks
from contract.outputs import OUTPUTS_ENV
from harness import dev_run
from localcloud.emulator.service import CloudTasksEmulator
from localcloud.program import PROJECT_DIR
from localcloud.stack import RunningStack
from taskclient.buffer import BufferSession, TaskBuffer, buffer_session
from taskclient.cli import main
from taskclient.errors import PublishError
from taskclient.publisher import Outcome

EMAILS = stack().queues["emails"]  # queue-level routing to /tasks/send-email, with the invoker's token
DEFAULT = stack().queues["default"]  # no queue-level routing


@dataclass
class Local:
    emulator: CloudTasksEmulator
    worker: RecordingServer
    outputs: Path

    def tasks(self, queue: str) -> list[tasks_v2.Task]:
        request = tasks_v2.ListTasksRequest(parent=queue, response_view=tasks_v2.Task.View.FULL)
        return list(self.emulator.core.list_tasks(request).tasks)


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Local]:
    """The dev stack's queues on an emulator with its HTTP port, the routed queue sent to a loopback worker."""
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(outputs_document()))
    with RecordingServer() as worker, CloudTasksEmulator(port=0, http_port=0) as emulator:
        for queue in stack_queues(dev_run()):
            if queue.name == EMAILS.path:  # its uri_override, pointed at the worker instead of run.app
                override = queue.http_target.uri_override
                override.scheme = tasks_v2.UriOverride.Scheme.HTTP
                override.host, override.port = "127.0.0.1", int(worker.url.rsplit(":", 1)[1])
            parent = queue.name.rsplit("/queues/", 1)[0]
            emulator.core.create_queue(tasks_v2.CreateQueueRequest(parent=parent, queue=queue))
        assert emulator.oidc_url is not None
        monkeypatch.setenv(cloud_tasks.EMULATOR_HTTP_ENV, emulator.oidc_url)
        monkeypatch.delenv(cloud_tasks.EMULATOR_HOST_ENV, raising=False)
        monkeypatch.delenv(OUTPUTS_ENV, raising=False)
        yield Local(emulator, worker, outputs)


def test_the_command_buffers_a_task_the_queue_delivers_with_its_token(local: Local) -> None:
    command = [sys.executable, "-m", "taskclient", "buffer", "--outputs", str(local.outputs), "--queue", "emails"]
    done = subprocess.run(
        [*command, "--json", '{"to": "a@example.com"}'],
        env={**os.environ, "PYTHONPATH": str(PROJECT_DIR)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    name = done.stdout.strip()
    assert name.startswith(EMAILS.path + "/tasks/")

    (received,) = local.worker.wait_for(1)
    assert (received.method, received.path) == ("POST", "/tasks/send-email")
    assert (received.body, received.headers["Content-Type"]) == (b'{"to":"a@example.com"}', "application/json")
    assert received.headers["X-CloudTasks-TaskName"] == name.rsplit("/", 1)[1]
    scheme, token = received.headers["Authorization"].split(" ", 1)
    certs = local.emulator.keys.certs_url if local.emulator.keys else ""
    claims = id_token.verify_token(
        token, google.auth.transport.requests.Request(), stack().oidc_audience, certs_url=certs
    )
    assert (scheme, claims["email"]) == ("Bearer", stack().invoker_email)


def test_a_task_id_names_the_task_and_a_second_one_is_a_duplicate(
    local: Local, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local.emulator.core.pause_queue(tasks_v2.PauseQueueRequest(name=EMAILS.path))
    data = tmp_path / "payload.bin"
    data.write_bytes(b"\x00\xff")
    arguments = ["buffer", "--outputs", str(local.outputs), "--queue", "emails", "--task-id", "order-1"]
    assert main([*arguments, "--data-file", str(data)]) == 0
    assert capsys.readouterr() == (f"{EMAILS.path}/tasks/order-1\n", "")
    (task,) = local.tasks(EMAILS.path)
    assert (task.name, task.http_request.body) == (f"{EMAILS.path}/tasks/order-1", b"\x00\xff")
    assert "Content-Type" not in task.http_request.headers

    assert main([*arguments, "--json", '{"again": true}']) == 0
    name = f"{EMAILS.path}/tasks/order-1"
    assert capsys.readouterr() == (
        f"{name}\n",
        f"already exists: {name} (not sent again; the payload given now was not enqueued)\n",
    )
    assert [t.http_request.body for t in local.tasks(EMAILS.path)] == [b"\x00\xff"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--queue", "default", "--json", "{}"],
            "error: --queue: 'default' has no queue-level routing, which BufferTask needs (a buffered task carries"
            " no URL; its queue routes it): set queues.default.queueLevelRouting: true in the stack's config and"
            " deploy, or create the task with `send`",
        ),
        (
            ["--queue", "emails", "--task-id", "a b", "--json", "{}"],
            "error: --task-id: 'a b' is not a task id (1-500 letters, digits, '-' or '_')",
        ),
        (["--queue", "nope", "--json", "{}"], "error: --queue: 'nope' is not one of the stack's queues"),
        (["--queue", "emails", "--json", "{"], "error: --json: not JSON"),
    ],
    ids=["no queue-level routing", "task id", "unknown queue", "not JSON"],
)
def test_a_mistake_is_one_line_exit_2_and_sends_nothing(
    local: Local, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    assert main(["buffer", "--outputs", str(local.outputs), *arguments]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(message) and captured.err.count("\n") == 1
    assert local.tasks(EMAILS.path) == [] and local.tasks(DEFAULT.path) == []
    assert local.worker.requests == []


def test_a_queue_cloud_tasks_does_not_have_is_refused_by_it_exit_1(
    local: Local, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = copy.deepcopy(outputs_document())  # its queues are shared with the other tests
    missing = EMAILS.path.rsplit("/", 1)[0] + "/not-deployed"
    document["queues"]["emails"]["path"] = missing
    outputs = tmp_path / "missing.json"
    outputs.write_text(json.dumps(document))
    assert main(["buffer", "--outputs", str(outputs), "--queue", "emails", "--json", "{}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: queue {missing} not found: it is not deployed") and err.count("\n") == 1
    assert err.rstrip().endswith(
        "[NOT_FOUND: Queue does not exist. If you just created the queue, wait at least a minute for the queue to"
        " initialize.]"
    )


def test_local_mode_without_the_http_port_is_refused_before_anything_is_sent(
    local: Local, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(cloud_tasks.EMULATOR_HTTP_ENV)
    monkeypatch.setenv(cloud_tasks.EMULATOR_HOST_ENV, local.emulator.address)
    assert main(["buffer", "--outputs", str(local.outputs), "--queue", "emails", "--json", "{}"]) == 2
    assert capsys.readouterr().err == (
        "error: CLOUD_TASKS_EMULATOR_HOST is set but CLOUD_TASKS_EMULATOR_HTTP is not: BufferTask is REST only, so"
        " it goes to the emulator's HTTP port (its --http-port); set CLOUD_TASKS_EMULATOR_HTTP=http://127.0.0.1:8124"
        " (`localcloud up` prints the line to export)\n"
    )
    monkeypatch.setenv(cloud_tasks.EMULATOR_HTTP_ENV, "127.0.0.1:8124")
    assert main(["buffer", "--outputs", str(local.outputs), "--queue", "emails", "--json", "{}"]) == 2
    assert capsys.readouterr().err == (
        "error: CLOUD_TASKS_EMULATOR_HTTP: '127.0.0.1:8124' is not http://host:port (e.g. http://127.0.0.1:8124)\n"
    )
    assert local.tasks(EMAILS.path) == []


def test_no_credentials_and_no_emulator_name_both_ways_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in (cloud_tasks.EMULATOR_HTTP_ENV, cloud_tasks.EMULATOR_HOST_ENV, OUTPUTS_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(outputs_document()))
    assert main(["buffer", "--outputs", str(outputs), "--queue", "emails", "--json", "{}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "error: no Google credentials found, and CLOUD_TASKS_EMULATOR_HTTP is not set: for Cloud Tasks, run `gcloud"
        " auth application-default login` (or use workload identity); for the local emulator's BufferTask, set"
        " CLOUD_TASKS_EMULATOR_HTTP=http://127.0.0.1:8124 (its HTTP port)"
    )
    assert err.count("\n") == 1


def test_the_local_stack_exports_both_emulator_variables() -> None:
    running = RunningStack(None, "127.0.0.1:8123", "", [], emulator_http="http://127.0.0.1:8124")  # type: ignore[arg-type]
    assert running.export_line() == (
        "export CLOUD_TASKS_EMULATOR_HOST=127.0.0.1:8123 CLOUD_TASKS_EMULATOR_HTTP=http://127.0.0.1:8124"
    )


# ----- the Cloud Tasks path: google-auth on loopback -----


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


Answer = Callable[[Seen], tuple[int, str, bytes]]  # (status, Content-Type, body)


@dataclass
class StandIn:
    """A loopback server standing in for oauth2.googleapis.com/token and cloudtasks.googleapis.com."""

    answer: Answer
    seen: list[Seen] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    served = StandIn(answer=lambda seen: (200, "application/json", b"{}"))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            served.seen.append(seen)
            if self.path == "/token":
                status, kind, reply = 200, "application/json", b'{"access_token": "at-1", "expires_in": 3600}'
            else:
                status, kind, reply = served.answer(seen)
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    served.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield served
    httpd.shutdown()
    httpd.server_close()


def created(seen: Seen) -> tuple[int, str, bytes]:
    name = seen.path.removeprefix("/v2/").removesuffix(":buffer") + "/t-1"
    return 200, "application/json", json.dumps({"task": {"name": name}}).encode()


@pytest.fixture
def key_file(tmp_path: Path, stand_in: StandIn, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A service account key made here, its token_uri the stand-in: application default credentials."""
    path = service_account_key(tmp_path / "key.json", token_uri=stand_in.url + "/token")
    for name in (cloud_tasks.EMULATOR_HTTP_ENV, cloud_tasks.EMULATOR_HOST_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    return path


def test_application_default_credentials_authorise_the_rest_call(stand_in: StandIn, key_file: Path) -> None:
    stand_in.answer = created
    with TaskBuffer(stack(), session=buffer_session(endpoint=stand_in.url)) as buffer:
        outcome, name = buffer.buffer({"to": "a@example.com"}, queue="emails")
    assert (outcome, name) == (Outcome.CREATED, EMAILS.path + "/tasks/t-1")

    token_request, call = stand_in.seen
    grant = urllib.parse.parse_qs(token_request.body.decode())
    assert grant["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    claims = jwt.decode(grant["assertion"][0], options={"verify_signature": False})
    assert claims["iss"] == "api-dev@my-tasks-dev.iam.gserviceaccount.com"
    assert claims["scope"] == "https://www.googleapis.com/auth/cloud-platform"
    assert (call.method, call.path) == ("POST", f"/v2/{EMAILS.path}/tasks:buffer")
    assert call.headers["authorization"] == "Bearer at-1"
    assert (call.body, call.headers["content-type"]) == (b'{"to":"a@example.com"}', "application/json")


def fixed_token_session(url: str) -> BufferSession:
    session = google.auth.transport.requests.AuthorizedSession(user_credentials.Credentials(token="fixed"))
    return BufferSession(session, url, "serviceAccount:api-dev@my-tasks-dev.iam.gserviceaccount.com")


def google_error(status: int, code: str, message: str) -> Answer:
    document = {"error": {"code": status, "message": message, "status": code}}
    return lambda seen: (status, "application/json", json.dumps(document).encode())


def test_a_task_id_goes_in_the_path_and_409_is_a_duplicate(stand_in: StandIn) -> None:
    stand_in.answer = google_error(409, "ALREADY_EXISTS", "Requested entity already exists")
    with TaskBuffer(stack(), session=fixed_token_session(stand_in.url)) as buffer:
        outcome, name = buffer.buffer(b"\x01", queue="emails", task_id="order-1")
    assert (outcome, name) == (Outcome.DUPLICATE, EMAILS.path + "/tasks/order-1")
    (call,) = stand_in.seen
    assert call.path == f"/v2/{EMAILS.path}/tasks/order-1:buffer"
    assert call.headers["authorization"] == "Bearer fixed" and "content-type" not in call.headers


@pytest.mark.parametrize(
    ("answer", "code", "start"),
    [
        (
            google_error(403, "PERMISSION_DENIED", "The principal lacks IAM permission cloudtasks.tasks.create"),
            "PERMISSION_DENIED",
            f"serviceAccount:api-dev@my-tasks-dev.iam.gserviceaccount.com may not create tasks on {EMAILS.path}:"
            " grant it roles/cloudtasks.enqueuer",
        ),
        (
            google_error(400, "FAILED_PRECONDITION", "no queue-level routing"),
            "FAILED_PRECONDITION",
            f"queue {EMAILS.path} refused BufferTask: the stack outputs say it routes at queue level, the deployed"
            " queue does not; deploy the stack (queues.emails.queueLevelRouting)",
        ),
        (lambda seen: (502, "text/html", b"<html>Bad Gateway</html>"), "BadGateway", "Cloud Tasks answered BadGateway"),
    ],
    ids=["403", "400 FAILED_PRECONDITION", "502 not JSON"],
)
def test_a_refusal_is_a_publish_error_that_says_what_to_change(
    stand_in: StandIn, answer: Answer, code: str, start: str
) -> None:
    stand_in.answer = answer
    with (
        TaskBuffer(stack(), session=fixed_token_session(stand_in.url)) as buffer,
        pytest.raises(PublishError) as caught,
    ):
        buffer.buffer({}, queue="emails")
    assert caught.value.code == code
    assert str(caught.value).startswith(start)
