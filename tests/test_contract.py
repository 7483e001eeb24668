"""contract/: the queue table the stack writes and the handler reads, and the retry law's stopping rule."""

from __future__ import annotations

import json

import pytest

from contract import handler_env
from contract.handler_env import QueueEntry, QueueTableError, decode_queue_table, encode_queue_table
from contract.retry import RetryPolicy, retry_allowed, retrying_stops


def test_the_queue_table_reads_back_what_the_stack_writes() -> None:
    table = {
        "tasks-dev-default-a1b2c3": QueueEntry(
            "default",
            max_attempts=5,
            dispatch_deadline_seconds=600.0,
            max_retry_duration_seconds=3600.0,
            min_backoff_seconds=1.0,
            max_backoff_seconds=60.0,
            max_doublings=4,
        ),
        "tasks-dev-emails-d4e5f6": QueueEntry("emails", max_attempts=-1),
    }
    text = encode_queue_table(table)
    assert json.loads(text)["tasks-dev-default-a1b2c3"] == {
        "key": "default",
        "maxAttempts": 5,
        "dispatchDeadlineSeconds": 600.0,
        "maxRetryDurationSeconds": 3600.0,
        "minBackoffSeconds": 1.0,
        "maxBackoffSeconds": 60.0,
        "maxDoublings": 4,
    }
    assert decode_queue_table(text) == table
    assert table["tasks-dev-default-a1b2c3"].retry == RetryPolicy(5, 3600.0, 1.0, 60.0, 4)


def test_the_table_carries_each_queues_task_path_so_the_handler_can_check_it_serves_it() -> None:
    table = {"q": QueueEntry("emails", max_attempts=5, path="/tasks/send-email")}
    assert json.loads(encode_queue_table(table))["q"]["path"] == "/tasks/send-email"
    assert decode_queue_table(encode_queue_table(table)) == table
    # A table from a stack older than its handler image has no paths: nothing to check, nothing refused.
    (entry,) = decode_queue_table('{"q": {"key": "k", "maxAttempts": 5}}').values()
    assert entry.path is None


def test_a_table_without_the_retry_settings_reads_as_cloud_tasks_defaults() -> None:
    # What a handler image newer than its stack reads: the limits Cloud Tasks applies when none are set.
    (entry,) = decode_queue_table('{"q": {"key": "k", "maxAttempts": 5}}').values()
    assert entry.retry == RetryPolicy(max_attempts=5)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"q": []}',
        '{"q": {"key": "k"}}',
        '{"q": {"key": "k", "maxAttempts": true}}',
        '{"q": {"key": "k", "maxAttempts": -2}}',
        '{"q": {"key": "k", "maxAttempts": 5, "dispatchDeadlineSeconds": 0}}',
        '{"q": {"key": "k", "maxAttempts": 5, "dispatchDeadlineSeconds": "600"}}',
        '{"q": {"key": "k", "maxAttempts": 5, "maxRetryDurationSeconds": -1}}',
        '{"q": {"key": "k", "maxAttempts": 5, "minBackoffSeconds": 0}}',
        '{"q": {"key": "k", "maxAttempts": 5, "maxDoublings": 1.5}}',
        '{"q": {"key": "k", "maxAttempts": 5, "path": 7}}',
        '{"q": {"key": "k", "maxAttempts": 5, "path": "tasks/x"}}',
    ],
)
def test_a_table_of_another_shape_is_refused_naming_the_variable(text: str) -> None:
    with pytest.raises(QueueTableError, match=f"^{handler_env.QUEUES}: expected "):
        decode_queue_table(text)


@pytest.mark.parametrize(
    ("max_attempts", "max_retry_duration", "attempts", "retried_for", "stops"),
    [
        (5, 0.0, 4, 100.0, False),  # attempts left, no duration limit
        (5, 0.0, 5, 0.0, True),  # attempts used up, no duration limit
        (-1, 60.0, 1000, 30.0, False),  # unlimited attempts, time left
        (-1, 60.0, 1, 60.0, True),  # unlimited attempts, time used up
        (5, 60.0, 5, 30.0, False),  # both set: stops only when both are used up
        (5, 60.0, 3, 90.0, False),
        (5, 60.0, 5, 60.0, True),
        (-1, 0.0, 10**6, 10**6, False),  # both unlimited: only the task's retention ends it
    ],
)
def test_retrying_stops_only_when_every_limit_in_force_is_used_up(
    max_attempts: int, max_retry_duration: float, attempts: int, retried_for: float, stops: bool
) -> None:
    policy = RetryPolicy(max_attempts=max_attempts, max_retry_duration=max_retry_duration)
    assert retrying_stops(policy, attempts=attempts, retried_for=retried_for) is stops


def test_a_caller_that_cannot_tell_the_duration_treats_it_as_used_up() -> None:
    """The handler does not know when the first attempt ran: it errs toward recording the task."""
    policy = RetryPolicy(max_attempts=5, max_retry_duration=60.0)
    assert retrying_stops(policy, attempts=5, retried_for=None) is True
    assert retrying_stops(policy, attempts=4, retried_for=None) is False
    assert retrying_stops(RetryPolicy(max_attempts=5), attempts=5, retried_for=None) is True


def test_the_task_retention_ends_retries_whatever_the_limits() -> None:
    unlimited = RetryPolicy(max_attempts=-1, max_retry_duration=0.0)
    assert retry_allowed(unlimited, attempts=10, first_dispatch=0.0, created=0.0, failed_at=30 * 86400.0)
    assert not retry_allowed(unlimited, attempts=10, first_dispatch=0.0, created=0.0, failed_at=31 * 86400.0)
