"""The token matrix at the local IAM level: the dev stack, whose handler checks each request's OIDC token against
the emulator's signing keys the way Cloud Run checks it (signature, audience, run.invoker grant, expiry).

Tokens the emulator mints go through real tasks; tokens it would never mint (another signer, an expired one) are
crafted with `localcloud.emulator.oidc.TokenIssuer` and sent straight to the handler's URL with the Cloud Tasks
headers. A genuine emulator token, captured on its way to a recording server, is the control for that path.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import pytest
from emulator_support import RecordingServer
from google.cloud import tasks_v2
from reliability_support import LocalStack, Watch, local_stack, start_process, stock_client, stop_process, uvicorn_ready

from contract.outcomes import TaskOutcome
from localcloud.emulator.http import OidcHttpServer
from localcloud.emulator.oidc import TokenIssuer
from localcloud.stack import _handler_env, free_port, plan, stack_config

NOT_AN_INVOKER = "someone-else@my-tasks-dev.iam.gserviceaccount.com"
TWO_HOURS = 2 * 3600


@pytest.fixture(scope="module")
def dev() -> Iterator[LocalStack]:
    with local_stack("dev") as stack:
        yield stack


def send_task(dev: LocalStack, task_id: str, url: str, email: str, audience: str) -> tuple[str, str]:
    """A task on the default queue whose OIDC token the emulator mints for (email, audience)."""
    queue = dev.outputs.queues["default"]
    with stock_client(dev.local.emulator_host) as client:
        client.create_task(
            parent=queue.path,
            task=tasks_v2.Task(
                {
                    "name": f"{queue.path}/tasks/{task_id}",
                    "http_request": {
                        "url": url,
                        "body": b"{}",
                        "headers": {"Content-Type": "application/json"},
                        "oidc_token": {"service_account_email": email, "audience": audience},
                    },
                }
            ),
        )
    return queue.id, task_id


def first_answer(dev: LocalStack, key: tuple[str, str]) -> tuple[int, str, str]:
    """(status, outcome, reason) of the handler's first log entry for the task."""
    entry = dev.watch.wait(lambda: dev.watch.entries.get(key), f"the handler to answer {key}")[0]
    return entry["httpRequest"]["status"], entry["outcome"], entry.get("reason", "")


@pytest.mark.parametrize(
    ("case", "email", "audience", "expected"),
    [
        ("control", None, None, (200, TaskOutcome.DONE, "")),
        ("not-an-invoker", NOT_AN_INVOKER, None, (403, TaskOutcome.REFUSED, "caller is not an allowed invoker")),
        ("wrong-audience", None, "https://not-the-service.example", (401, TaskOutcome.REFUSED, "wrong audience")),
    ],
)
def test_tokens_the_emulator_mints_are_checked_like_cloud_run(
    dev: LocalStack, case: str, email: str | None, audience: str | None, expected: tuple[int, str, str]
) -> None:
    key = send_task(
        dev,
        f"iam-{case}",
        dev.outputs.queues["default"].task_url,
        email or dev.outputs.invoker_email,
        audience or dev.outputs.oidc_audience,
    )
    assert first_answer(dev, key) == expected
    # ... and the emulator sees that status for the attempt (a refusal is retried like any non-2xx answer).
    assert dev.watch.wait(lambda: dev.watch.attempts.get(key), "the attempt to be reported")[0] == (1, expected[0])
    if expected[0] != 200:  # Cloud Tasks retries a refusal; stop this one
        with stock_client(dev.local.emulator_host) as client:
            client.delete_task(name=f"{dev.outputs.queues['default'].path}/tasks/{key[1]}")


def captured_token(dev: LocalStack) -> str:
    """A genuine token minted by the running emulator for the invoker and the service's audience, captured by
    sending its task to a recording server instead of the handler."""
    with RecordingServer() as recorder:
        send_task(dev, "capture", f"{recorder.url}/capture", dev.outputs.invoker_email, dev.outputs.oidc_audience)
        authorization = recorder.wait_for(1)[0].headers["Authorization"]
    assert authorization.startswith("Bearer ")
    return authorization.removeprefix("Bearer ")


def emulator_kid(dev: LocalStack) -> str:
    certs = httpx.get(dev.local.certs_url, timeout=10).json()
    assert len(certs) == 1
    return str(next(iter(certs)))


def retarget(token: str, **claims: Any) -> str:
    """The token with some claims changed and the original signature kept."""
    header, payload, signature = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = base64.urlsafe_b64encode(json.dumps(decoded | claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def post_direct(url: str, queue: str, task: str, token: str) -> httpx.Response:
    headers = {
        "Authorization": f"Bearer {token}",
        "X-CloudTasks-QueueName": queue,
        "X-CloudTasks-TaskName": task,
        "X-CloudTasks-TaskRetryCount": "0",
        "Content-Type": "application/json",
    }
    return httpx.post(f"{url}/tasks/default", content=b"{}", headers=headers, timeout=10)


def test_tokens_the_emulator_would_never_mint_are_refused(dev: LocalStack) -> None:
    invoker, audience = dev.outputs.invoker_email, dev.outputs.oidc_audience
    genuine = captured_token(dev)
    stranger = TokenIssuer()  # a signer the handler has never heard of
    impostor = TokenIssuer()
    impostor.kid = emulator_kid(dev)  # ... claiming the emulator's key id
    stale = TokenIssuer(clock=lambda: time.time() - TWO_HOURS)  # its tokens expired an hour ago
    cases = {
        "genuine (control)": (genuine, 200, TaskOutcome.DONE, ""),
        "genuine, email changed": (retarget(genuine, email=NOT_AN_INVOKER), 401, TaskOutcome.REFUSED, "bad signature"),
        "wrong signer": (stranger.mint(invoker, audience), 401, TaskOutcome.REFUSED, "unknown signing key"),
        "wrong signer, emulator kid": (impostor.mint(invoker, audience), 401, TaskOutcome.REFUSED, "bad signature"),
        # The signer is checked before the expiry, so this one is refused for its signer: see the next test for
        # an expired token whose signature the handler trusts.
        "expired, other signer": (stale.mint(invoker, audience), 401, TaskOutcome.REFUSED, "unknown signing key"),
    }
    queue = dev.queue_id("default")
    answers = {}
    for n, (case, (token, *_)) in enumerate(cases.items()):
        response = post_direct(dev.local.plan.service.url, queue, f"direct-{n}", token)
        body = response.json()
        answers[case] = (response.status_code, body["status"], body.get("reason", ""))
        if response.status_code == 401:
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert answers == {case: tuple(expected) for case, (_, *expected) in cases.items()}


def test_an_expired_token_from_a_trusted_signer_is_refused_as_expired() -> None:
    """The handler as the dev stack configures it, verifying against an emulator key server whose issuer's clock
    can be set: the same issuer's token is accepted now, refused 2 h old (expired) and 2 h ahead (not yet valid)."""
    offset = [0.0]
    issuer = TokenIssuer(clock=lambda: time.time() + offset[0])
    port = free_port()
    local = plan(stack_config("dev"), "dev", port)
    service, queue = local.service, local.queues[0].name.rsplit("/", 1)[1]
    watch = Watch()
    with OidcHttpServer(issuer) as keys:
        handler = start_process(
            [sys.executable, "-m", "handler", "--port", str(port)],
            _handler_env(service, keys.certs_url),
            "handler",
            watch.on_line,
        )
        try:
            uvicorn_ready(watch, port, 0)
            invoker = next(iter(service.invokers))
            answers = {}
            for n, shift in enumerate((0.0, -TWO_HOURS, TWO_HOURS)):
                offset[0] = shift
                token = issuer.mint(invoker, service.env["TASKS_OIDC_AUDIENCE"])
                response = post_direct(service.url, queue, f"clock-{n}", token)
                answers[shift] = (response.status_code, response.json().get("reason", ""))
        finally:
            stop_process(handler)
    assert answers == {
        0.0: (200, ""),
        -TWO_HOURS: (401, "token expired"),
        TWO_HOURS: (401, "token not yet valid (iat in the future)"),
    }
