"""The final attempt, decided by both retry limits (issue 13, path 2).

Cloud Tasks stops retrying only when max_attempts and max_retry_duration are both used up (-1 and 0: no
limit). The duration runs from the first attempt, whose time no header carries: the handler takes the least
time the attempts can have taken (the backoff schedule) and, when the producer set X-Tasks-Not-Before, the
most. Where those cannot settle it, a failure is recorded as a provisional dead letter and still answered as
a failure, so Cloud Tasks retries it if it would: a task is never acknowledged away nor dropped unrecorded.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from contract.dead_letters import CLOCK_SKEW_ALLOWANCE_S, HEADER_NOT_BEFORE
from contract.handler_env import QueueEntry
from contract.outcomes import TaskOutcome
from handler.app import create_app
from handler.dead_letters import MemoryDeadLetters
from handler.environment import HandlerSettings
from handler.structured_log import JsonLog
from handler.tasks import RetryLater, TaskContext, TaskRouter

router = TaskRouter()


@router.task("/fail")
async def fail(payload: Any, context: TaskContext) -> None:
    raise RuntimeError("downstream down")


@router.task("/later")
async def later(payload: Any, context: TaskContext) -> None:
    raise RetryLater("busy", after_seconds=5)


HOUR = 3600.0
# Backoff 10 s flat: attempt n starts at least 10 * (n - 1) s after the first.
FLAT = {"min_backoff_seconds": 10.0, "max_backoff_seconds": 10.0, "max_doublings": 0}
QUEUES = {
    "attempts-only": QueueEntry("a", max_attempts=3, max_retry_duration_seconds=0, **FLAT),
    "both": QueueEntry("b", max_attempts=3, max_retry_duration_seconds=HOUR, **FLAT),
    "duration-only": QueueEntry("d", max_attempts=-1, max_retry_duration_seconds=60, **FLAT),
    "unlimited": QueueEntry("u", max_attempts=-1, max_retry_duration_seconds=0, **FLAT),
}


@pytest.fixture
def letters() -> MemoryDeadLetters:
    return MemoryDeadLetters()


@pytest.fixture
def client(letters: MemoryDeadLetters) -> Iterator[TestClient]:
    settings = HandlerSettings(queues=QUEUES, invoker_emails=frozenset())
    with TestClient(create_app(router, settings, dead_letters=letters, log=JsonLog(io.StringIO()))) as test_client:
        yield test_client


def deliver(
    client: TestClient, queue: str, attempt: int, *, age: float | None = None, path: str = "/fail"
) -> tuple[int, str]:
    headers = {
        "X-CloudTasks-QueueName": queue,
        "X-CloudTasks-TaskName": f"t-{queue}-{attempt}",
        "X-CloudTasks-TaskRetryCount": str(attempt - 1),
        "X-CloudTasks-TaskExecutionCount": str(attempt - 1),
        "X-CloudTasks-TaskETA": str(time.time()),
    }
    if age is not None:  # the task was created `age` seconds ago
        headers[HEADER_NOT_BEFORE] = f"{time.time() - age:.3f}"
    response = client.post(path, content=b"{}", headers=headers)
    return response.status_code, response.json()["status"]


def test_attempts_only_the_last_attempt_is_final(client: TestClient, letters: MemoryDeadLetters) -> None:
    assert deliver(client, "attempts-only", 2) == (500, TaskOutcome.FAILED)
    assert deliver(client, "attempts-only", 3) == (200, TaskOutcome.DEAD_LETTERED)
    (letter,) = letters.letters
    assert letter.attempt == 3 and letter.final


def test_both_limits_attempts_used_up_but_not_the_duration_is_retried_not_dead_lettered(
    client: TestClient, letters: MemoryDeadLetters
) -> None:
    # Attempt 3 of 3 one minute into an hour's max_retry_duration: Cloud Tasks retries it.
    assert deliver(client, "both", 3, age=60) == (500, TaskOutcome.FAILED)
    assert letters.letters == []


def test_both_limits_used_up_is_final(client: TestClient, letters: MemoryDeadLetters) -> None:
    # Attempt 400: by the backoff alone at least 3,990 s after the first, past the hour.
    assert deliver(client, "both", 400) == (200, TaskOutcome.DEAD_LETTERED)
    assert letters.letters[0].final


def test_duration_only_an_attempt_past_the_duration_is_final(client: TestClient, letters: MemoryDeadLetters) -> None:
    # max_attempts -1: attempt 8 starts at least 70 s after the first, past the 60 s limit.
    assert deliver(client, "duration-only", 8) == (200, TaskOutcome.DEAD_LETTERED)
    assert letters.letters[0].final


def test_duration_only_within_the_clock_allowance_is_recorded_provisionally(
    client: TestClient, letters: MemoryDeadLetters
) -> None:
    # The task is 5 s old by its producer's clock, but that clock may run ahead by the allowance, which alone
    # is longer than the 60 s limit: the age cannot settle it...
    assert CLOCK_SKEW_ALLOWANCE_S + 5 > 60
    assert deliver(client, "duration-only", 2, age=5) == (500, TaskOutcome.FAILED)
    # ...so the failure is recorded provisionally, and retried.
    (letter,) = letters.letters
    assert not letter.final


def test_both_limits_when_the_handler_cannot_tell_it_records_and_asks_for_a_retry(
    client: TestClient, letters: MemoryDeadLetters
) -> None:
    # Attempt 3 of 3, no X-Tasks-Not-Before: the hour may or may not be used up.
    assert deliver(client, "both", 3) == (500, TaskOutcome.FAILED)
    (letter,) = letters.letters
    assert not letter.final and letter.attempt == 3
    assert letter.reason.startswith("maybe the final attempt (3 of 3")
    # A task past the hour by its producer's clock: the same.
    assert deliver(client, "both", 3, age=2 * HOUR)[0] == 500
    assert len(letters.letters) == 2 and not letters.letters[1].final


def test_retry_later_when_unsure_keeps_its_retry_after(client: TestClient, letters: MemoryDeadLetters) -> None:
    assert deliver(client, "both", 3, path="/later") == (429, TaskOutcome.RETRY)
    assert not letters.letters[0].final


def test_no_limits_a_young_task_is_never_final(client: TestClient, letters: MemoryDeadLetters) -> None:
    assert deliver(client, "unlimited", 1000, age=HOUR) == (500, TaskOutcome.FAILED)
    assert letters.letters == []


def test_no_limits_an_unknown_age_may_meet_the_retention_and_is_recorded(
    client: TestClient, letters: MemoryDeadLetters
) -> None:
    # With no limit only the 31-day retention ends the retries, and without the task's age the handler
    # cannot rule it out.
    assert deliver(client, "unlimited", 5)[0] == 500
    assert not letters.letters[0].final
