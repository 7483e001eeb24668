"""The handler's routing and response contract, through Starlette's test client."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from contract.handler_env import QueueEntry
from contract.outcomes import TaskOutcome
from handler.app import MAX_BODY_BYTES, create_app
from handler.dead_letters import MemoryDeadLetters
from handler.environment import HandlerConfigError, HandlerSettings
from handler.oidc import TokenVerifier
from handler.structured_log import JsonLog
from handler.tasks import Finality, PermanentError, RetryLater, TaskContext, TaskRouter

QUEUE = "tasks-dev-default-336068"
SETTINGS = HandlerSettings(queues={QUEUE: QueueEntry("default", max_attempts=3)}, invoker_emails=frozenset())

calls: list[tuple[Any, TaskContext]] = []
router = TaskRouter()


@router.task("/tasks/ok")
async def ok(payload: Any, context: TaskContext) -> None:
    calls.append((payload, context))


@router.task("/tasks/blocking")
def blocking(payload: Any, context: TaskContext) -> None:
    calls.append((payload, context))


@router.task("/tasks/boom")
async def boom(payload: Any, context: TaskContext) -> None:
    calls.append((payload, context))
    raise RuntimeError("database unreachable")


@router.task("/tasks/permanent")
async def permanent(payload: Any, context: TaskContext) -> None:
    raise PermanentError("order 42 does not exist")


@router.task("/tasks/later")
async def later(payload: Any, context: TaskContext) -> None:
    raise RetryLater("downstream rate limit", after_seconds=12)


@pytest.fixture
def letters() -> MemoryDeadLetters:
    return MemoryDeadLetters()


@pytest.fixture
def log() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def client(letters: MemoryDeadLetters, log: io.StringIO) -> Iterator[TestClient]:
    calls.clear()
    app = create_app(router, SETTINGS, dead_letters=letters, log=JsonLog(log, project="my-tasks-dev"))
    with TestClient(app) as test_client:
        yield test_client


def task_headers(task: str = "t1", retry: int = 0, queue: str = QUEUE, **extra: str) -> dict[str, str]:
    return {
        "X-CloudTasks-QueueName": queue,
        "X-CloudTasks-TaskName": task,
        "X-CloudTasks-TaskRetryCount": str(retry),
        "X-CloudTasks-TaskExecutionCount": str(retry),
        "X-CloudTasks-TaskETA": "1764331200.5",
        "Content-Type": "application/json",
        **extra,
    }


def post(client: TestClient, path: str, body: Any = None, raw: bytes | None = None, **headers: Any) -> Any:
    content = raw if raw is not None else json.dumps(body if body is not None else {}).encode()
    return client.post(path, content=content, headers=task_headers(**headers))


def log_entries(log: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.getvalue().splitlines()]


def test_every_post_is_a_task_and_every_other_request_is_routed_as_before(
    client: TestClient, letters: MemoryDeadLetters
) -> None:
    """POSTs skip Starlette's router (handler.app.PostsToTasks): what each request gets must not change."""
    assert (client.get("/health").status_code, client.get("/health").json()) == (200, {"status": "ok"})
    for method in ("GET", "PUT", "DELETE"):  # the task route takes only POST; Starlette's 405 names it
        response = client.request(method, "/tasks/ok")
        assert (response.status_code, response.headers["allow"]) == (405, "POST"), method
    assert client.post("/health").json()["status"] == TaskOutcome.REJECTED  # a POST to /health is a task request
    assert post(client, "/health", task="h1").json()["status"] == TaskOutcome.DEAD_LETTERED
    assert post(client, "/", task="root").json()["status"] == TaskOutcome.DEAD_LETTERED
    assert [(letter.path, letter.reason) for letter in letters.letters] == [
        ("/health", "no task type is registered at /health"),
        ("/", "no task type is registered at /"),
    ]
    assert post(client, "/tasks/ok", task="t1").json()["status"] == TaskOutcome.DONE


def test_done_work_answers_200_with_a_typed_context(client: TestClient) -> None:
    response = post(
        client,
        "/tasks/ok",
        {"order": 42},
        retry=1,
        **{"X-CloudTasks-TaskPreviousResponse": "500", "X-CloudTasks-TaskRetryReason": ""},
    )
    assert (response.status_code, response.json()) == (200, {"status": TaskOutcome.DONE})
    ((payload, context),) = calls
    assert payload == {"order": 42}
    assert (context.queue, context.task, context.retry_count, context.attempt) == (QUEUE, "t1", 1, 2)
    assert context.previous_response == 500 and context.retry_reason is None
    assert context.eta is not None and context.eta.timestamp() == 1764331200.5
    assert context.max_attempts == 3 and context.finality(time.time()) is Finality.NOT_FINAL


def test_blocking_work_runs_off_the_event_loop(client: TestClient) -> None:
    assert post(client, "/tasks/blocking", [1, 2]).status_code == 200
    assert calls[0][0] == [1, 2]


def test_retryable_failure_answers_500_and_is_not_dead_lettered(client: TestClient, letters: MemoryDeadLetters) -> None:
    response = post(client, "/tasks/boom", retry=0)
    assert response.status_code == 500
    assert response.json() == {"status": TaskOutcome.FAILED, "reason": "RuntimeError: database unreachable"}
    assert letters.letters == []


def test_failure_on_the_final_attempt_is_dead_lettered_and_acknowledged(
    client: TestClient, letters: MemoryDeadLetters
) -> None:
    response = post(client, "/tasks/boom", {"order": 7}, retry=2)  # attempt 3 of 3
    assert response.status_code == 200
    assert response.json()["status"] == TaskOutcome.DEAD_LETTERED
    (letter,) = letters.letters
    assert (letter.queue, letter.task, letter.path, letter.attempt) == (QUEUE, "t1", "/tasks/boom", 3)
    assert letter.reason == "final attempt (3 of 3): RuntimeError: database unreachable"
    assert letter.body is not None and json.loads(letter.body) == {"order": 7}


def test_unknown_queue_never_counts_as_final(client: TestClient, letters: MemoryDeadLetters) -> None:
    assert post(client, "/tasks/boom", retry=99, queue="some-other-queue").status_code == 500
    assert letters.letters == []


@pytest.mark.parametrize(
    ("path", "raw", "reason"),
    [
        ("/tasks/permanent", b"{}", "permanent failure: order 42 does not exist"),
        ("/tasks/nowhere", b"{}", "no task type is registered at /tasks/nowhere"),
        ("/tasks/ok", b"{not json", "body is not JSON"),
        ("/tasks/ok", b"\xff\xfe", "body is not JSON"),
        ("/tasks/ok", b"x" * (MAX_BODY_BYTES + 1), f"body is over {MAX_BODY_BYTES} bytes"),
    ],
)
def test_permanent_failures_are_dead_lettered_not_retried(
    client: TestClient, letters: MemoryDeadLetters, path: str, raw: bytes, reason: str
) -> None:
    response = post(client, path, raw=raw)
    assert response.status_code == 200
    assert response.json()["status"] == TaskOutcome.DEAD_LETTERED and reason in response.json()["reason"]
    assert len(letters.letters) == 1 and reason in letters.letters[0].reason
    assert calls == []


def test_retry_later_answers_429_with_retry_after(client: TestClient) -> None:
    response = post(client, "/tasks/later")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "12"


def test_retry_later_on_the_final_attempt_is_dead_lettered(client: TestClient, letters: MemoryDeadLetters) -> None:
    assert post(client, "/tasks/later", retry=2).status_code == 200
    assert letters.letters[0].reason == "final attempt (3 of 3): retry later: downstream rate limit"


def test_a_duplicate_of_a_done_task_is_acknowledged_without_running(client: TestClient) -> None:
    assert post(client, "/tasks/ok", task="same").json() == {"status": TaskOutcome.DONE}
    again = post(client, "/tasks/ok", task="same", retry=1)
    assert (again.status_code, again.json()["status"]) == (200, TaskOutcome.DUPLICATE)
    assert len(calls) == 1


def test_a_dead_lettered_task_delivered_again_is_not_dead_lettered_twice(
    client: TestClient, letters: MemoryDeadLetters
) -> None:
    post(client, "/tasks/permanent", task="bad")
    assert post(client, "/tasks/permanent", task="bad").json()["status"] == TaskOutcome.DUPLICATE
    assert len(letters.letters) == 1


def test_a_failed_task_runs_again_on_retry(client: TestClient) -> None:
    assert post(client, "/tasks/boom", task="flaky").status_code == 500
    assert post(client, "/tasks/boom", task="flaky", retry=1).status_code == 500
    assert len(calls) == 2


def test_same_task_id_on_another_queue_is_another_task(client: TestClient) -> None:
    post(client, "/tasks/ok", task="t")
    assert post(client, "/tasks/ok", task="t", queue="other-queue").json()["status"] == TaskOutcome.DONE
    assert len(calls) == 2


def test_concurrent_copies_run_the_work_once(letters: MemoryDeadLetters, log: io.StringIO) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    slow = TaskRouter()
    runs: list[str] = []

    @slow.task("/tasks/slow")
    async def slow_task(payload: Any, context: TaskContext) -> None:
        runs.append(context.task)
        started.set()
        await release.wait()

    app = create_app(slow, SETTINGS, dead_letters=letters, log=JsonLog(log))

    async def scenario() -> list[int]:
        import httpx2 as httpx

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://handler") as http:
            first = asyncio.create_task(http.post("/tasks/slow", content=b"{}", headers=task_headers("dup")))
            await started.wait()
            second = await http.post("/tasks/slow", content=b"{}", headers=task_headers("dup"))
            release.set()
            third_after = await first
            after = await http.post("/tasks/slow", content=b"{}", headers=task_headers("dup"))
            assert second.headers["Retry-After"] == "30"
            return [second.status_code, third_after.status_code, after.status_code]

    assert asyncio.run(scenario()) == [429, 200, 200]
    assert runs == ["dup"]


def test_a_dead_letter_sink_failure_is_retried_not_lost(log: io.StringIO) -> None:
    class BrokenSink:
        async def record(self, letter: Any) -> None:
            raise OSError("bucket unavailable")

    app = create_app(router, SETTINGS, dead_letters=BrokenSink(), log=JsonLog(log))
    with TestClient(app) as client:
        response = post(client, "/tasks/permanent", task="p")
        assert response.status_code == 500
        assert "dead-letter sink failed (OSError: bucket unavailable)" in response.json()["reason"]
        # Not acknowledged, so not marked done: the retry tries again.
        assert post(client, "/tasks/permanent", task="p", retry=1).status_code == 500


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing X-CloudTasks-QueueName or X-CloudTasks-TaskName"),
        ({"X-CloudTasks-QueueName": QUEUE}, "missing X-CloudTasks-QueueName or X-CloudTasks-TaskName"),
        (task_headers(**{"X-CloudTasks-TaskRetryCount": "minus one"}), "x-cloudtasks-taskretrycount: 'minus one'"),
        (task_headers(**{"X-CloudTasks-TaskETA": "soon"}), "x-cloudtasks-tasketa: 'soon' is not seconds"),
    ],
)
def test_requests_that_are_not_from_cloud_tasks_get_400(
    client: TestClient, headers: dict[str, str], reason: str
) -> None:
    response = client.post("/tasks/ok", content=b"{}", headers=headers)
    assert response.status_code == 400
    assert reason in response.json()["reason"]
    assert calls == []


def test_health_endpoint(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}


def test_each_request_is_one_structured_log_entry(client: TestClient, log: io.StringIO) -> None:
    trace = "105445aa7843bc8bf206b12000100000/1;o=1"
    post(client, "/tasks/ok", task="logged", **{"X-Cloud-Trace-Context": trace})
    post(client, "/tasks/boom", task="broken", retry=2)
    done, dead = log_entries(log)
    assert done["severity"] == "INFO" and done["message"] == "task done"
    assert done["logging.googleapis.com/trace"] == "projects/my-tasks-dev/traces/105445aa7843bc8bf206b12000100000"
    assert (done["queue"], done["task"], done["attempt"], done["path"]) == (QUEUE, "logged", 1, "/tasks/ok")
    assert done["latencyMs"] >= 0 and done["httpRequest"]["status"] == 200
    assert dead["severity"] == "ERROR" and dead["outcome"] == TaskOutcome.DEAD_LETTERED and dead["attempt"] == 3


def test_default_dead_letter_sink_is_a_structured_error_entry(log: io.StringIO) -> None:
    app = create_app(router, SETTINGS, log=JsonLog(log))
    with TestClient(app) as client:
        post(client, "/tasks/permanent", {"order": 42}, task="p1")
    letter = next(e for e in log_entries(log) if "deadLetter" in e)
    assert letter["severity"] == "ERROR"
    assert letter["deadLetter"]["task"] == "p1" and json.loads(letter["deadLetter"]["payload"]) == {"order": 42}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TASKS_QUEUES": "not json"}, "TASKS_QUEUES: expected"),
        ({"TASKS_QUEUES": '{"q": {"key": "k"}}'}, "TASKS_QUEUES: expected"),
        ({"TASKS_VERIFY_OIDC": "yes"}, "TASKS_VERIFY_OIDC: 'yes' is not true or false"),
        ({"TASKS_VERIFY_OIDC": "true"}, "TASKS_VERIFY_OIDC is true but TASKS_INVOKER_EMAILS names no invoker"),
        (
            {"TASKS_VERIFY_OIDC": "true", "TASKS_INVOKER_EMAILS": "i@p.iam.gserviceaccount.com"},
            "TASKS_VERIFY_OIDC is true but TASKS_OIDC_AUDIENCE is not set",
        ),
    ],
)
def test_bad_environment_is_refused_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(HandlerConfigError, match=message):
        HandlerSettings.from_environ(env)


def test_environment_set_by_the_stack_is_understood() -> None:
    env = {
        "TASKS_QUEUES": json.dumps({QUEUE: {"key": "default", "maxAttempts": 5}}),
        "TASKS_INVOKER_EMAILS": "tasks-dev-invoker@my-tasks-dev.iam.gserviceaccount.com",
        "GOOGLE_CLOUD_PROJECT": "my-tasks-dev",
    }
    settings = HandlerSettings.from_environ(env)
    assert settings.queues == {QUEUE: QueueEntry("default", 5)}
    assert settings.invoker_emails == {"tasks-dev-invoker@my-tasks-dev.iam.gserviceaccount.com"}
    assert settings.project == "my-tasks-dev" and settings.verify_oidc is False


def test_token_checks_without_an_audience_are_refused_when_the_app_is_built() -> None:
    """The audience never comes from the request (Host, X-Forwarded-Proto): without one, no app."""
    verifier = TokenVerifier(allowed_emails={"invoker@p.iam.gserviceaccount.com"}, certs_url="http://127.0.0.1:9/certs")
    with pytest.raises(ValueError, match="oidc_audience"):
        create_app(TaskRouter(), SETTINGS, verifier=verifier)


def test_a_queue_sending_to_a_path_without_a_task_type_is_a_warning_when_the_handler_starts(log: io.StringIO) -> None:
    # Cloud Run logs it as the revision starts, at `pulumi up`, not at the first task's dead letter.
    settings = HandlerSettings(
        queues={
            QUEUE: QueueEntry("default", max_attempts=3, path="/tasks/ok"),
            "tasks-dev-reports-1": QueueEntry("reports", max_attempts=3, path="/tasks/report"),
            "tasks-dev-old-2": QueueEntry("old", max_attempts=3),  # a stack older than its image: not known
        },
        invoker_emails=frozenset(),
    )
    with TestClient(create_app(router, settings, log=JsonLog(log))):
        pass
    (warning,) = [entry for entry in log_entries(log) if entry["severity"] == "WARNING"]
    assert warning["queue"] == "tasks-dev-reports-1"
    assert warning["message"].startswith(
        "queue 'reports' sends its tasks to /tasks/report, where the handler has no task type"
        " (it has /tasks/blocking, /tasks/boom"
    )
    assert "each would be dead-lettered" in warning["message"]
