"""Faults injected at the handler, against the real dispatcher: errors, throttling, hangs past the dispatch
deadline; and the retry schedule as it unfolds in real time.

The emulator runs in this process (`CloudTasksEmulator(strict_deadlines=False)`, so a task may have a 0.5 s
dispatch deadline) and the handler is the probe (tests/reliability_probe.py): the real app, served the real way,
with a task type whose every attempt does what `decide(task id, attempt)` says.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
from google.cloud import tasks_v2
from reliability_probe import Fault, decide
from reliability_support import PROBE_COMMAND, Watch, start_process, stock_client, stop_process, uvicorn_ready

from contract.outcomes import TaskOutcome
from contract.retry import RetryPolicy, backoff_delay
from localcloud.emulator.realtime import AsyncDispatcher, DispatchResult
from localcloud.emulator.service import CloudTasksEmulator
from localcloud.stack import free_port

LOCATION = "projects/reliability/locations/local"
FAULTY, SCHEDULE = "faulty", "schedule"
TASKS = 300
DEADLINE_S = 0.5
MAX_ATTEMPTS = 50  # never reached: the longest run of failures in the fixed decision table is far shorter
STATUS = {Fault.OK: 200, Fault.ERROR: 500, Fault.THROTTLE: 429, Fault.HANG: None}
HANDLER_OUTCOME = {
    Fault.OK: TaskOutcome.DONE,
    Fault.ERROR: TaskOutcome.FAILED,
    Fault.THROTTLE: TaskOutcome.RETRY,
    Fault.HANG: TaskOutcome.FAILED,
}


@dataclass
class Rig:
    emulator: CloudTasksEmulator
    watch: Watch
    results: list[DispatchResult]
    url: str

    def queue_path(self, queue_id: str) -> str:
        return f"{LOCATION}/queues/{queue_id}"


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    watch = Watch()
    results: list[DispatchResult] = []

    def on_result(result: DispatchResult) -> None:
        results.append(result)
        watch.on_line("emulator", result.line())

    emulator = CloudTasksEmulator(strict_deadlines=False)
    # The same dispatcher, reporting each attempt to the test instead of the log.
    emulator.dispatcher = AsyncDispatcher(emulator.core, on_result=on_result)
    port = free_port()
    queues = {q: {"key": q, "maxAttempts": MAX_ATTEMPTS} for q in (FAULTY, SCHEDULE)}
    probe = start_process(
        [*PROBE_COMMAND, "--port", str(port)], {"TASKS_QUEUES": json.dumps(queues)}, "handler", watch.on_line
    )
    try:
        uvicorn_ready(watch, port, 0)
        with emulator:
            yield Rig(emulator, watch, results, f"http://127.0.0.1:{port}")
    finally:
        stop_process(probe)


def test_every_task_is_done_exactly_once_despite_errors_throttling_and_hangs(rig: Rig) -> None:
    queue = rig.queue_path(FAULTY)
    ids = [f"fault-{n:03d}" for n in range(TASKS)]
    with stock_client(rig.emulator.address) as client:
        client.create_queue(
            parent=LOCATION,
            queue=tasks_v2.Queue(
                {
                    "name": queue,
                    "rate_limits": {"max_dispatches_per_second": 500, "max_concurrent_dispatches": 100},
                    "retry_config": {
                        "max_attempts": MAX_ATTEMPTS,
                        "min_backoff": "0.05s",
                        "max_backoff": "0.4s",
                        "max_doublings": 3,
                    },
                }
            ),
        )
        for task_id in ids:
            # The stock client, not TaskPublisher: a 0.5 s dispatch deadline is below Cloud Tasks' 15 s minimum,
            # which TaskPublisher enforces; this emulator runs with strict_deadlines=False to allow it.
            client.create_task(
                parent=queue,
                task=tasks_v2.Task(
                    {
                        "name": f"{queue}/tasks/{task_id}",
                        "http_request": {
                            "url": f"{rig.url}/tasks/faulty",
                            "body": b"{}",
                            "headers": {"Content-Type": "application/json"},
                        },
                        "dispatch_deadline": timedelta(seconds=DEADLINE_S),
                    }
                ),
            )
        watch = rig.watch
        keys = {(FAULTY, task_id) for task_id in ids}
        watch.wait(lambda: keys <= watch.acknowledged, f"all {TASKS} faulty tasks to be acknowledged")
        assert list(client.list_tasks(parent=queue)) == []

    with watch.changed:
        attempts = {task_id: list(watch.attempts[(FAULTY, task_id)]) for task_id in ids}
        handled = {task_id: [(e["attempt"], e["outcome"]) for e in watch.entries[(FAULTY, task_id)]] for task_id in ids}
        worked = Counter(task for event, task, _ in watch.work if event == "worked")
    by_kind: Counter[Fault] = Counter()
    collisions = 0  # a retry that arrived while the hung attempt still held the task: 429 "in-progress"
    problems = []
    for task_id in ids:
        answers = dict(handled[task_id])
        numbers = [n for n, _ in attempts[task_id]]
        if numbers != list(range(1, len(numbers) + 1)) or attempts[task_id][-1][1] != 200:
            problems.append(f"{task_id}: attempts {attempts[task_id]}")
            continue
        for number, status in attempts[task_id]:
            if answers.get(number) == TaskOutcome.IN_PROGRESS and status == 429:
                collisions += 1
                continue
            fault = decide(task_id, number)
            by_kind[fault] += 1
            if status != STATUS[fault] or answers.get(number) != HANDLER_OUTCOME[fault]:
                problems.append(
                    f"{task_id} attempt {number}: {fault} but status {status}, handler {answers.get(number)}"
                )
        # Done exactly once: one "done" in the log, the work announced once, and no attempt after the 200.
        if [o for _, o in handled[task_id]].count(TaskOutcome.DONE) != 1 or worked[task_id] != 1:
            problems.append(f"{task_id}: handled {handled[task_id]}, worked {worked[task_id]} times")
    assert problems == [], problems[:10]

    hangs = [r for r in rig.results if r.attempt.queue_name == queue and r.status is None]
    assert all(f"{DEADLINE_S:g}s dispatch deadline" in r.error for r in hangs), {r.error for r in hangs}
    failing = by_kind[Fault.ERROR] + by_kind[Fault.THROTTLE] + by_kind[Fault.HANG]
    share = failing / sum(by_kind.values())
    print(
        f"\nfaults: {sum(by_kind.values())} attempts for {TASKS} tasks; retries by kind: 500 x{by_kind[Fault.ERROR]},"
        f" 429 x{by_kind[Fault.THROTTLE]}, hang x{by_kind[Fault.HANG]} ({share:.0%} failing);"
        f" in-progress collisions {collisions}"
    )
    assert by_kind[Fault.OK] == TASKS
    assert min(by_kind[Fault.ERROR], by_kind[Fault.THROTTLE], by_kind[Fault.HANG]) >= 20
    assert 0.2 <= share <= 0.4


def test_the_retry_schedule_in_real_time_follows_the_queue_law(rig: Rig) -> None:
    """Attempt arrivals of a task failing 4 times, on min_backoff 0.2 s, max_doublings 2, max_backoff 1 s: the law
    gives 0.2, 0.4, 0.8, then 1.6 capped at 1.0. A gap is never shorter than the law's value (the backoff counts
    from the end of the failed attempt and the dispatcher never sends early) and, on loopback, less than 0.25 s
    longer: that slack is the real latency of answering, scheduling and sending, which real time makes inherent."""
    policy = RetryPolicy(max_attempts=10, min_backoff=0.2, max_backoff=1.0, max_doublings=2)
    law = [backoff_delay(policy, n) for n in range(1, 5)]
    assert law == pytest.approx([0.2, 0.4, 0.8, 1.0])
    queue = rig.queue_path(SCHEDULE)
    with stock_client(rig.emulator.address) as client:
        client.create_queue(
            parent=LOCATION,
            queue=tasks_v2.Queue(
                {
                    "name": queue,
                    "retry_config": {
                        "max_attempts": 10,
                        "min_backoff": "0.2s",
                        "max_backoff": "1s",
                        "max_doublings": 2,
                    },
                }
            ),
        )
        client.create_task(
            parent=queue,
            task=tasks_v2.Task(
                {
                    "name": f"{queue}/tasks/law",
                    "http_request": {"url": f"{rig.url}/tasks/flaky", "body": b'{"fail_attempts": 4}'},
                }
            ),
        )
        rig.watch.wait(lambda: (SCHEDULE, "law") in rig.watch.acknowledged, "the schedule task to succeed")
    arrivals = rig.watch.arrivals["law"]
    assert [n for n, _ in arrivals] == [1, 2, 3, 4, 5]
    assert rig.watch.attempts[(SCHEDULE, "law")] == [(1, 500), (2, 500), (3, 500), (4, 500), (5, 200)]
    gaps = [later - earlier for (_, earlier), (_, later) in itertools.pairwise(arrivals)]
    print(f"\nretry schedule: gaps {[round(g, 3) for g in gaps]} s for the law's {law}")
    for gap, value in zip(gaps, law, strict=True):
        assert value <= gap < value + 0.25, (gaps, law)
