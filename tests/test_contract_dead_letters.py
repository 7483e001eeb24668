"""contract/dead_letters.py: how a dead letter is named, what its headers carry, and what a replay keeps."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contract import cloud_tasks
from contract.dead_letters import (
    MAX_REASON_CHARS,
    DeadLetterMeta,
    dead_letter_task_id,
    producer_headers,
    replay_task_id,
    without_metadata,
)

QUEUE_IDS = st.from_regex(r"[A-Za-z0-9-]{1,100}", fullmatch=True)
TASK_IDS = st.from_regex(r"[A-Za-z0-9_-]{1,500}", fullmatch=True)


@given(QUEUE_IDS, TASK_IDS)
def test_a_dead_letter_id_is_a_valid_task_id(queue: str, task: str) -> None:
    assert cloud_tasks.TASK_ID.fullmatch(dead_letter_task_id(queue, task))


@given(QUEUE_IDS, TASK_IDS, QUEUE_IDS, TASK_IDS)
def test_two_tasks_never_share_a_dead_letter(queue: str, task: str, other_queue: str, other_task: str) -> None:
    if (queue, task) != (other_queue, other_task):
        assert dead_letter_task_id(queue, task) != dead_letter_task_id(other_queue, other_task)


def test_ids_that_only_a_separator_would_tell_apart_stay_apart() -> None:
    # Queue ids have no "_": "a-b" + "c" and "a" + "b-c" name different dead letters.
    assert dead_letter_task_id("a-b", "c") != dead_letter_task_id("a", "b-c")
    assert dead_letter_task_id("q", "t") == "q_t"


def test_a_long_task_id_is_cut_and_hashed_to_fit() -> None:
    long_a, long_b = "x" * 499 + "a", "x" * 499 + "b"
    first, second = dead_letter_task_id("q" * 100, long_a), dead_letter_task_id("q" * 100, long_b)
    assert len(first) <= 500 and first != second


def test_a_replay_id_is_the_same_for_the_same_letter_and_new_for_a_later_one() -> None:
    name = "projects/p/locations/l/queues/dlq/tasks/q_t1"
    first = replay_task_id("t1", name, "2026-12-02T10:00:00.000+00:00")
    assert first == replay_task_id("t1", name, "2026-12-02T10:00:00.000+00:00")
    assert first.startswith("t1-replay-") and cloud_tasks.TASK_ID.fullmatch(first)
    assert first != replay_task_id("t1", name, "2026-12-03T10:00:00.000+00:00")
    assert cloud_tasks.TASK_ID.fullmatch(replay_task_id("t" * 500, name, "x"))


def test_metadata_reads_back_what_was_written_whatever_the_reason_holds() -> None:
    meta = DeadLetterMeta(
        queue="q",
        task="t",
        attempt=3,
        reason="final attempt (3 of 3): ValueError: naïve\r\nX-Injected: yes %41 ✓",
        recorded_at=datetime(2026, 12, 2, 10, 0, tzinfo=UTC),
        final=False,
        size=12,
        sha256="ab" * 32,
    )
    headers = meta.headers()
    assert all(value.isascii() and "\n" not in value and "\r" not in value for value in headers.values())
    assert DeadLetterMeta.from_headers({name.lower(): value for name, value in headers.items()}) == meta


def test_a_long_reason_is_cut_and_says_so() -> None:
    meta = DeadLetterMeta("q", "t", 1, "e" * 5000, datetime.now(UTC))
    reason = DeadLetterMeta.from_headers(meta.headers()).reason
    assert reason.startswith("e" * MAX_REASON_CHARS) and reason.endswith(
        f"[cut at {MAX_REASON_CHARS} of 5000 characters]"
    )


def test_a_task_without_the_metadata_is_not_a_dead_letter() -> None:
    with pytest.raises(ValueError, match="not a dead letter: no X-Dead-Letter-Queue header"):
        DeadLetterMeta.from_headers({"Content-Type": "application/json"})


def test_only_the_producers_headers_are_kept_and_replayed() -> None:
    delivered = {
        "content-type": "application/json",
        "x-tenant": "acme",
        "authorization": "Bearer token",
        "host": "svc.run.app",
        "content-length": "2",
        "user-agent": "Google-Cloud-Tasks",
        "x-cloudtasks-taskname": "t",
        "x-forwarded-for": "10.0.0.1",
        "x-cloud-trace-context": "abc/1",
        "traceparent": "00-abc-01",
        "x-tasks-not-before": "1764700000",
        "x-dead-letter-queue": "forged",
    }
    assert producer_headers(delivered) == {"content-type": "application/json", "x-tenant": "acme"}
    letter = {"Content-Type": "image/png", "X-Dead-Letter-Queue": "q", "X-Dead-Letter-Task": "t"}
    assert without_metadata(letter) == {"Content-Type": "image/png"}
