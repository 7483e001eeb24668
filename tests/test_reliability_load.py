"""Load: 10,000 tasks through the task client, the emulator and the real handler of the dev stack, accounted for
one by one.

The dev stack's default queue dispatches at 500/s with at most 240 in flight (3 instances x 80), so the run takes
about 20 s of dispatching at least; the handler checks every task's OIDC token against the emulator's keys.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest
from reliability_support import LocalStack, key_of, local_stack, stock_client

from contract.outcomes import TaskOutcome
from taskclient.connection import connect
from taskclient.publisher import Outcome, TaskPublisher, TaskRequest

TOTAL = 10_000
PERMANENT = 100  # dead-lettered at their first attempt
FLAKY = 100  # fail once (500), then done at the retry: the dev queue's backoff starts at 1 s
SETTLE_S = 90  # a bound for a failure; the run itself takes ~25 s


@pytest.fixture(scope="module")
def dev() -> Iterator[LocalStack]:
    with local_stack("dev") as stack:
        yield stack


def workload() -> list[tuple[TaskRequest, str]]:
    """(request, kind) for every task: plain, flaky or permanent, interleaved so each kind spans the whole run."""
    items: list[tuple[TaskRequest, str]] = []
    for n in range(TOTAL):
        if n % (TOTAL // PERMANENT) == 1:
            items.append((TaskRequest({"permanent": f"load: no such order {n}"}), "permanent"))
        elif n % (TOTAL // FLAKY) == 2:
            items.append((TaskRequest({"fail_attempts": 1, "n": n}), "flaky"))
        else:
            items.append((TaskRequest({"n": n}), "plain"))
    return items


def test_ten_thousand_tasks_none_lost_none_worked_twice_every_outcome_accounted_for(dev: LocalStack) -> None:
    default = next(q for q in dev.local.plan.queues if q.name == dev.outputs.queues["default"].path)
    assert (default.rate_limits.max_dispatches_per_second, default.rate_limits.max_concurrent_dispatches) == (500, 240)
    items = workload()
    assert Counter(kind for _, kind in items) == {
        "plain": TOTAL - PERMANENT - FLAKY,
        "permanent": PERMANENT,
        "flaky": FLAKY,
    }
    started = time.monotonic()
    with TaskPublisher(dev.outputs, connection=connect(dev.local.emulator_host)) as publisher:
        results = publisher.publish_many([request for request, _ in items], concurrency=32)
    published_s = time.monotonic() - started

    # Publishing: every item created, under its own new name.
    assert Counter(r.outcome for r in results) == {Outcome.CREATED: TOTAL}, [r.error for r in results if r.error][:5]
    keys = [key_of(r.name) for r in results if r.name]
    assert len(set(keys)) == TOTAL
    kinds = {key: kind for key, (_, kind) in zip(keys, items, strict=True)}

    # Every task reaches an outcome in the handler's log, and the emulator gets the acknowledgement of each.
    watch = dev.watch
    watch.wait(lambda: len(watch.terminal) >= TOTAL, f"{TOTAL} tasks to reach an outcome", timeout=SETTLE_S)
    watch.wait(lambda: len(watch.acknowledged) >= TOTAL, f"{TOTAL} acknowledgements", timeout=SETTLE_S)
    settled_s = time.monotonic() - started
    assert watch.terminal == set(keys)
    assert watch.acknowledged == set(keys)

    # Nothing is left in the queue: no task stuck, none scheduled for another attempt.
    with stock_client(dev.local.emulator_host) as client:
        assert list(client.list_tasks(parent=dev.outputs.queues["default"].path)) == []

    # Per task: the work function ran to "done" exactly once; a second delivery may only be a "duplicate".
    expected_outcomes = {
        "plain": [TaskOutcome.DONE],
        "permanent": [TaskOutcome.DEAD_LETTERED],
        "flaky": [TaskOutcome.FAILED, TaskOutcome.DONE],
    }
    expected_failures = {"plain": [], "permanent": [], "flaky": [500]}
    wrong = []
    with watch.changed:
        for key in keys:
            outcomes = [e["outcome"] for e in watch.entries[key]]
            duplicates = outcomes.count(TaskOutcome.DUPLICATE)
            statuses = [status for _, status in watch.attempts[key]]
            failures = [status for status in statuses if status != 200]
            if (
                [o for o in outcomes if o != TaskOutcome.DUPLICATE] != expected_outcomes[kinds[key]]
                or failures != expected_failures[kinds[key]]
                or statuses.count(200) != 1 + duplicates  # each extra delivery was answered "duplicate"
            ):
                wrong.append((kinds[key], key, outcomes, watch.attempts[key]))
        counts = Counter(e["outcome"] for key in keys for e in watch.entries[key])
        letters = Counter((d["queue"], d["task"]) for d in watch.dead_letters)
    assert wrong == [], f"{len(wrong)} tasks ended otherwise than expected, e.g. {wrong[:5]}"

    # Accounting: published = done + dead-lettered, and each dead letter was recorded once.
    assert counts[TaskOutcome.DONE] + counts[TaskOutcome.DEAD_LETTERED] == TOTAL
    assert (counts[TaskOutcome.DONE], counts[TaskOutcome.DEAD_LETTERED], counts[TaskOutcome.FAILED]) == (
        TOTAL - PERMANENT,
        PERMANENT,
        FLAKY,
    )
    assert set(counts) <= {TaskOutcome.DONE, TaskOutcome.DEAD_LETTERED, TaskOutcome.FAILED, TaskOutcome.DUPLICATE}, (
        counts
    )
    assert sorted(letters.values()) == [1] * PERMANENT
    assert set(letters) == {key for key in keys if kinds[key] == "permanent"}
    print(
        f"\nload: published {TOTAL} in {published_s:.1f}s, all settled after {settled_s:.1f}s"
        f" ({TOTAL / settled_s:.0f} tasks/s end to end); outcomes {dict(counts)}"
    )
