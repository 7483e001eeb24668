"""Work that outlives its dispatch deadline, and the final attempt that finds it still running: neither may
lose a task without a record (Cloud Tasks deletes a task after its final attempt's answer)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2 as httpx

from contract.handler_env import QueueEntry
from contract.outcomes import TaskOutcome
from handler.app import create_app
from handler.dead_letters import MemoryDeadLetters
from handler.environment import HandlerSettings
from handler.tasks import TaskContext, TaskRouter

QUEUE = "tasks-dev-default-a1b2c3"
DEADLINE_S = 0.3


def settings(max_attempts: int = 3) -> HandlerSettings:
    entry = QueueEntry("default", max_attempts=max_attempts, dispatch_deadline_seconds=DEADLINE_S)
    return HandlerSettings(queues={QUEUE: entry}, invoker_emails=frozenset())


def headers(task: str, retry: int) -> dict[str, str]:
    return {"X-CloudTasks-QueueName": QUEUE, "X-CloudTasks-TaskName": task, "X-CloudTasks-TaskRetryCount": str(retry)}


def test_the_final_attempt_finding_an_earlier_one_still_running_is_recorded() -> None:
    """Before: 429 "in progress", as if a retry would come; none does, and if the running attempt then fails,
    the task is gone without a trace."""
    release = asyncio.Event()
    started = asyncio.Event()
    router = TaskRouter()

    @router.task("/tasks/slow")
    async def slow(payload: Any, context: TaskContext) -> None:
        started.set()
        await release.wait()

    letters = MemoryDeadLetters()
    app = create_app(router, settings(max_attempts=2), dead_letters=letters)

    async def scenario() -> tuple[int, Any]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://handler") as client:
            first = asyncio.create_task(client.post("/tasks/slow", content=b'{"n": 1}', headers=headers("t", 0)))
            await asyncio.wait_for(started.wait(), 5)
            final = await client.post("/tasks/slow", content=b'{"n": 1}', headers=headers("t", 1))
            release.set()
            await first
            return final.status_code, final.json()

    status, body = asyncio.run(scenario())
    assert (status, body["status"]) == (200, TaskOutcome.DEAD_LETTERED)
    (letter,) = letters.letters
    assert (letter.task, letter.attempt, letter.body) == ("t", 2, b'{"n": 1}')
    assert "still running" in letter.reason


def test_async_work_past_its_dispatch_deadline_is_cancelled_and_the_claim_released() -> None:
    """Before: it ran on after Cloud Tasks stopped waiting, holding the claim, so retries got 429."""
    cancelled = asyncio.Event()
    router = TaskRouter()

    @router.task("/tasks/stuck")
    async def stuck(payload: Any, context: TaskContext) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    letters = MemoryDeadLetters()
    app = create_app(router, settings(), dead_letters=letters)

    async def scenario() -> tuple[Any, Any]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://handler") as client:
            first = await client.post("/tasks/stuck", content=b"{}", headers=headers("s", 0))
            again = await client.post("/tasks/stuck", content=b"{}", headers=headers("s", 1))
            final = await client.post("/tasks/stuck", content=b"{}", headers=headers("s", 2))
            return first, (again, final)

    first, (again, final) = asyncio.run(scenario())
    assert cancelled.is_set()
    assert (first.status_code, first.json()["status"]) == (504, TaskOutcome.FAILED)
    assert f"{DEADLINE_S:g}s dispatch deadline" in first.json()["reason"]
    assert again.status_code == 504  # the claim was released: the retry ran (and timed out) again
    assert (final.status_code, final.json()["status"]) == (200, TaskOutcome.DEAD_LETTERED)
    assert [letter.attempt for letter in letters.letters] == [3]


def test_a_timeout_of_the_works_own_is_an_ordinary_retryable_failure() -> None:
    router = TaskRouter()

    @router.task("/tasks/flaky")
    async def flaky(payload: Any, context: TaskContext) -> None:
        raise TimeoutError("the database did not answer")

    app = create_app(router, settings())

    async def scenario() -> Any:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://handler") as client:
            return await client.post("/tasks/flaky", content=b"{}", headers=headers("f", 0))

    response = asyncio.run(scenario())
    assert (response.status_code, response.json()) == (
        500,
        {"status": TaskOutcome.FAILED, "reason": "TimeoutError: the database did not answer"},
    )
