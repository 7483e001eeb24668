"""The handler as a real server process on loopback: bad input, concurrent copies, shutdown, tokens."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from oidc_support import AUDIENCE, INVOKER, CertsServer, make_key, mint

from contract.outcomes import TaskOutcome
from localcloud.program import PROJECT_DIR
from localcloud.stack import free_port

QUEUE = "tasks-dev-default-336068"
QUEUES = json.dumps({QUEUE: {"key": "default", "maxAttempts": 3}})


class HandlerProcess:
    def __init__(self, command: list[str], env: dict[str, str], port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        full_env = {**os.environ, "PYTHONPATH": f"{PROJECT_DIR}:{PROJECT_DIR / 'tests'}", **env}
        self.process = subprocess.Popen(
            command, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=PROJECT_DIR
        )
        self.client = httpx.Client(base_url=self.url, timeout=10)
        self._wait_until_healthy()

    def _wait_until_healthy(self) -> None:
        for _ in range(200):
            if self.process.poll() is not None:
                raise AssertionError(f"handler exited: {self.process.stderr.read() if self.process.stderr else ''}")
            try:
                if self.client.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                threading.Event().wait(0.05)  # the process is still starting: poll its port
        raise AssertionError("handler did not become healthy")

    def post(self, path: str, body: bytes = b"{}", task: str = "t1", retry: int = 0, **headers: str) -> httpx.Response:
        base = {"X-CloudTasks-QueueName": QUEUE, "X-CloudTasks-TaskName": task,
                "X-CloudTasks-TaskRetryCount": str(retry), "Content-Type": "application/json"}  # fmt: skip
        return self.client.post(path, content=body, headers=base | headers)

    def stop(self) -> tuple[int, str]:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=20)
        return self.process.returncode, out

    def log(self) -> list[dict[str, Any]]:
        _, out = self.stop()
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.fixture
def handler() -> Iterator[HandlerProcess]:
    port = free_port()
    process = HandlerProcess([sys.executable, "-m", "handler", "--port", str(port)], {"TASKS_QUEUES": QUEUES}, port)
    yield process
    process.stop()


@pytest.fixture
def probe() -> Iterator[HandlerProcess]:
    port = free_port()
    process = HandlerProcess(
        [sys.executable, str(Path(__file__).parent / "handler_probe.py"), str(port)], {"TASKS_QUEUES": QUEUES}, port
    )
    yield process
    process.stop()


def test_bad_requests_get_a_clear_answer_and_never_crash_the_server(handler: HandlerProcess) -> None:
    assert handler.post("/tasks/default", b'{"ok": true}', task="good").json() == {"status": TaskOutcome.DONE}
    not_json = handler.post("/tasks/default", b"{oops", task="bad-json")
    assert (not_json.status_code, not_json.json()["status"]) == (200, TaskOutcome.DEAD_LETTERED)
    huge = handler.post("/tasks/default", b"x" * (2 * 1024 * 1024), task="huge")
    assert (huge.status_code, huge.json()["status"]) == (200, TaskOutcome.DEAD_LETTERED)
    unknown = handler.post("/tasks/unknown", task="unknown-type")
    assert unknown.json()["reason"] == "no task type is registered at /tasks/unknown"
    no_headers = handler.client.post("/tasks/default", content=b"{}")
    assert no_headers.status_code == 400
    assert handler.client.get("/health").status_code == 200


def test_the_demo_switch_permanent_until_fails_for_good_before_its_time_and_is_done_after(
    handler: HandlerProcess,
) -> None:
    later = json.dumps({"permanent_until": time.time() + 3600}).encode()
    refused = handler.post("/tasks/default", later, task="not-yet").json()
    assert refused["status"] == TaskOutcome.DEAD_LETTERED and "not there yet" in refused["reason"]
    earlier = json.dumps({"permanent_until": time.time() - 1}).encode()
    assert handler.post("/tasks/default", earlier, task="arrived").json() == {"status": TaskOutcome.DONE}


def test_final_attempt_failure_and_permanent_failure_are_dead_lettered(handler: HandlerProcess) -> None:
    assert handler.post("/tasks/default", b'{"fail_attempts": 5}', task="flaky", retry=0).status_code == 500
    assert handler.post("/tasks/default", b'{"fail_attempts": 5}', task="flaky", retry=2).json()["status"] == (
        TaskOutcome.DEAD_LETTERED
    )
    assert (
        handler.post("/tasks/send-email", b'{"to": "nobody"}', task="mail").json()["status"]
        == TaskOutcome.DEAD_LETTERED
    )
    entries = handler.log()
    letters = [e["deadLetter"] for e in entries if "deadLetter" in e]
    assert [(d["task"], d["attempt"]) for d in letters] == [("flaky", 3), ("mail", 1)]
    requests = [e for e in entries if e.get("message", "").startswith("task ")]
    assert [e["outcome"] for e in requests] == [
        TaskOutcome.FAILED,
        TaskOutcome.DEAD_LETTERED,
        TaskOutcome.DEAD_LETTERED,
    ]
    assert all(e["queue"] == QUEUE and isinstance(e["latencyMs"], float) for e in requests)


def started(probe: HandlerProcess, task: str) -> None:
    """Block until the probe says `task` is running (it writes one line to stderr when it starts)."""
    assert probe.process.stderr is not None
    for line in probe.process.stderr:
        if line.strip() == f"started {task}":
            return
    raise AssertionError(f"{task} never started")


def post_in_background(probe: HandlerProcess, *args: Any, **kwargs: Any) -> Future[httpx.Response]:
    result: Future[httpx.Response] = Future()

    def run() -> None:
        with httpx.Client(base_url=probe.url, timeout=20) as client:
            base = {"X-CloudTasks-QueueName": QUEUE, "X-CloudTasks-TaskName": kwargs["task"]}
            result.set_result(client.post(args[0], content=args[1], headers=base))

    threading.Thread(target=run, daemon=True).start()
    return result


def test_two_copies_at_once_run_the_work_once(probe: HandlerProcess) -> None:
    first = post_in_background(probe, "/tasks/announce", b'{"seconds": 1}', task="dup")
    started(probe, "dup")
    second = probe.post("/tasks/announce", b'{"seconds": 1}', task="dup")
    assert (second.status_code, second.headers["Retry-After"]) == (429, "30")
    assert first.result(timeout=20).json() == {"status": TaskOutcome.DONE}
    assert probe.post("/tasks/announce", b'{"seconds": 1}', task="dup").json()["status"] == TaskOutcome.DUPLICATE


def test_sigterm_lets_the_running_task_finish(probe: HandlerProcess) -> None:
    running = post_in_background(probe, "/tasks/announce", b'{"seconds": 1.5}', task="long")
    started(probe, "long")
    probe.process.send_signal(signal.SIGTERM)
    response = running.result(timeout=20)
    assert (response.status_code, response.json()) == (200, {"status": TaskOutcome.DONE})
    # Uvicorn re-raises the signal once shut down, so the exit status says "ended by SIGTERM" as it should.
    assert probe.process.wait(timeout=20) == -signal.SIGTERM


def test_a_bad_environment_stops_the_handler_with_a_message() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "handler", "--port", "0"],
        env={**os.environ, "PYTHONPATH": str(PROJECT_DIR), "TASKS_QUEUES": "[]"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: TASKS_QUEUES: expected")
    assert "Traceback" not in done.stderr


# --- tokens checked in the container ---------------------------------------------------------------


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {"k1": make_key("k1"), "stranger": make_key("stranger")}


@pytest.fixture
def certs(keys: dict[str, Any]) -> Iterator[CertsServer]:
    server = CertsServer(certs={"k1": keys["k1"].cert_pem})
    server.start()
    yield server
    server.stop()


def verifying_handler(certs: CertsServer, audience: str | None) -> HandlerProcess:
    port = free_port()
    env = {"TASKS_QUEUES": QUEUES, "TASKS_VERIFY_OIDC": "true", "TASKS_INVOKER_EMAILS": INVOKER,
           "TASKS_OIDC_CERTS_URL": certs.url} | ({"TASKS_OIDC_AUDIENCE": audience} if audience else {})  # fmt: skip
    return HandlerProcess([sys.executable, "-m", "handler", "--port", str(port)], env, port)


def test_the_token_matrix_on_a_real_server(certs: CertsServer, keys: dict[str, Any]) -> None:
    handler = verifying_handler(certs, AUDIENCE)
    try:
        cases = {
            "valid": (mint(keys["k1"]), 200),
            "missing": (None, 401),
            "expired": (mint(keys["k1"], exp=1_600_000_000, iat=1_599_999_000), 401),
            "wrong audience": (mint(keys["k1"], aud="https://other.run.app"), 401),
            "wrong issuer": (mint(keys["k1"], iss="https://evil.example"), 401),
            "wrong signer": (mint(keys["stranger"], kid="k1"), 401),
            "email not allowed": (mint(keys["k1"], email="someone@else.iam.gserviceaccount.com"), 403),
        }
        statuses = {}
        for name, (token, _) in cases.items():
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            response = handler.post("/tasks/default", task=name.replace(" ", "-"), **headers)
            statuses[name] = response.status_code
            if response.status_code == 401:
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert statuses == {name: expected for name, (_, expected) in cases.items()}
    finally:
        handler.stop()


def test_a_verifying_handler_without_an_audience_refuses_to_start(certs: CertsServer) -> None:
    """The audience is never taken from Host or X-Forwarded-Proto, which the caller writes: a token minted
    for another service, sent with that service's Host, would pass."""
    env = {**os.environ, "TASKS_QUEUES": QUEUES, "TASKS_VERIFY_OIDC": "true", "TASKS_INVOKER_EMAILS": INVOKER,
           "TASKS_OIDC_CERTS_URL": certs.url, "PYTHONPATH": str(PROJECT_DIR)}  # fmt: skip
    env.pop("TASKS_OIDC_AUDIENCE", None)
    done = subprocess.run(
        [sys.executable, "-m", "handler", "--port", str(free_port())],
        env=env,
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert (
        done.stderr == "error: TASKS_VERIFY_OIDC is true but TASKS_OIDC_AUDIENCE is not set; set it to the"
        " service's URL (the stack sets its deterministic URL)\n"
    )
