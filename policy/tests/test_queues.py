"""Queue rules: limits Cloud Tasks accepts, retries that end (unless allowed), log sampling set."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from policy_args import UNKNOWN_NUMBER, UNKNOWN_OBJECT, UNKNOWN_STRING, check

from guardrails import tokens
from guardrails.queues import validate_bounded_retry, validate_queue_limits, validate_queue_logging

# What the program registers for a queue (Pulumi.dev.yaml's "default" queue).
GOOD = {
    "location": "europe-west1",
    "name": "tasks-dev-default-336068",
    "rateLimits": {"maxConcurrentDispatches": 240.0, "maxDispatchesPerSecond": 500.0},
    "retryConfig": {
        "maxAttempts": 15.0,
        "maxBackoff": "60s",
        "maxDoublings": 3.0,
        "maxRetryDuration": "0s",
        "minBackoff": "1s",
    },
    "stackdriverLoggingConfig": {"samplingRatio": 1.0},
}


def queue(**sections: dict[str, Any] | None) -> dict[str, Any]:
    """GOOD with some fields changed: queue(retryConfig={"maxAttempts": -1}); a None value removes the field."""
    props: dict[str, Any] = {key: dict(value) if isinstance(value, dict) else value for key, value in GOOD.items()}
    for section, changes in sections.items():
        if changes is None:
            props.pop(section, None)
            continue
        for field, value in changes.items():
            if value is None:
                props[section].pop(field, None)
            else:
                props.setdefault(section, {})[field] = value
    return props


# --- limits -------------------------------------------------------------------------------------------------

LIMIT_CASES = [
    ("the program's queue", queue(), []),
    ("no rate or retry at all (API defaults)", queue(rateLimits=None, retryConfig=None), []),
    ("rate at the limit", queue(rateLimits={"maxDispatchesPerSecond": 500}), []),
    ("fractional rate", queue(rateLimits={"maxDispatchesPerSecond": 0.5}), []),
    ("rate above 500", queue(rateLimits={"maxDispatchesPerSecond": 900}),
     ["rateLimits.maxDispatchesPerSecond: 900 is outside [1/86400 (one dispatch a day), 500], the Cloud Tasks "
      "limits per queue (a smaller rate never dispatches). Fix: use a rate of at least one dispatch a day and at "
      "most 500, and spread more load over several queues."]),
    ("rate 0", queue(rateLimits={"maxDispatchesPerSecond": 0}),
     ["rateLimits.maxDispatchesPerSecond: 0 is outside [1/86400 (one dispatch a day), 500]"]),
    ("negative rate", queue(rateLimits={"maxDispatchesPerSecond": -1}),
     ["rateLimits.maxDispatchesPerSecond: -1 is outside [1/86400 (one dispatch a day), 500]"]),
    ("the smallest double", queue(rateLimits={"maxDispatchesPerSecond": 5e-324}),
     ["rateLimits.maxDispatchesPerSecond: 5e-324 is outside [1/86400 (one dispatch a day), 500]"]),
    ("one dispatch a day", queue(rateLimits={"maxDispatchesPerSecond": 1 / 86400}), []),
    ("concurrency 0", queue(rateLimits={"maxConcurrentDispatches": 0}),
     ["rateLimits.maxConcurrentDispatches: 0 is not a whole number from 1 to 5000. Fix: use 1-5000"]),
    ("concurrency above 5000", queue(rateLimits={"maxConcurrentDispatches": 5001}),
     ["rateLimits.maxConcurrentDispatches: 5001 is not a whole number from 1 to 5000"]),
    ("fractional concurrency", queue(rateLimits={"maxConcurrentDispatches": 2.5}),
     ["rateLimits.maxConcurrentDispatches: 2.5 is not a whole number from 1 to 5000"]),
    ("concurrency at the limits", queue(rateLimits={"maxConcurrentDispatches": 5000}), []),
    ("maxBurstSize set", queue(rateLimits={"maxBurstSize": 100}),
     ["rateLimits.maxBurstSize is set, but it is output-only: Cloud Tasks derives it from the rate. "
      "Fix: remove max_burst_size."]),
    ("maxBurstSize set to an unknown", queue(rateLimits={"maxBurstSize": UNKNOWN_NUMBER}),
     ["rateLimits.maxBurstSize is set"]),
    ("maxAttempts -1 (unlimited)", queue(retryConfig={"maxAttempts": -1, "maxRetryDuration": "60s"}), []),
    ("maxAttempts below -1", queue(retryConfig={"maxAttempts": -2}),
     ["retryConfig.maxAttempts: -2 is not a whole number of at least -1 (-1: unlimited). Fix: set it to -1 or "
      "more; it counts the first attempt."]),
    ("fractional maxAttempts", queue(retryConfig={"maxAttempts": 1.5}),
     ["retryConfig.maxAttempts: 1.5 is not a whole number"]),
    ("duration in minutes", queue(retryConfig={"maxBackoff": "1m"}),
     ['retryConfig.maxBackoff: "1m" is not a duration in seconds (such as "10s" or "0.5s"). Fix: write it as '
      'seconds with an "s", e.g. "10s" or "0.5s".']),
    ("negative duration", queue(retryConfig={"maxRetryDuration": "-5s"}),
     ['retryConfig.maxRetryDuration: "-5s" is negative. Fix: write it as seconds']),
    ("minBackoff above maxBackoff", queue(retryConfig={"minBackoff": "120s", "maxBackoff": "60s"}),
     ['retryConfig.minBackoff ("120s") is above maxBackoff ("60s"). Fix: make minBackoff at most maxBackoff.']),
    ("minBackoff equal to maxBackoff", queue(retryConfig={"minBackoff": "60s", "maxBackoff": "60s"}), []),
    ("negative maxDoublings", queue(retryConfig={"maxDoublings": -1}),
     ["retryConfig.maxDoublings: -1 is not a whole number of at least 0. Fix: set it to 0 or more."]),
    ("every problem at once",
     queue(rateLimits={"maxDispatchesPerSecond": 501, "maxConcurrentDispatches": 0, "maxBurstSize": 10},
           retryConfig={"maxAttempts": -3, "minBackoff": "10", "maxDoublings": -1}),
     ["maxDispatchesPerSecond: 501", "maxConcurrentDispatches: 0", "maxBurstSize is set", "maxAttempts: -3",
      'minBackoff: "10" is not a duration', "maxDoublings: -1"]),
    ("unknowns everywhere",
     queue(rateLimits={"maxDispatchesPerSecond": UNKNOWN_NUMBER, "maxConcurrentDispatches": UNKNOWN_NUMBER},
           retryConfig={"maxAttempts": UNKNOWN_NUMBER, "minBackoff": UNKNOWN_STRING, "maxBackoff": UNKNOWN_STRING,
                        "maxRetryDuration": UNKNOWN_STRING, "maxDoublings": UNKNOWN_NUMBER}), []),
    ("unknown sections", queue(rateLimits={}, retryConfig={}) | {"rateLimits": UNKNOWN_OBJECT,
                                                                  "retryConfig": UNKNOWN_OBJECT}, []),
    ("one unknown backoff, the other bad", queue(retryConfig={"minBackoff": UNKNOWN_STRING, "maxBackoff": "x"}),
     ['retryConfig.maxBackoff: "x" is not a duration']),
]  # fmt: skip


@pytest.mark.parametrize(("props", "expected"), [c[1:] for c in LIMIT_CASES], ids=[c[0] for c in LIMIT_CASES])
def test_queue_settings_stay_within_cloud_tasks_limits(props: dict[str, Any], expected: list[str]) -> None:
    messages = check(validate_queue_limits, tokens.QUEUE, props, name="tasks-default")
    assert len(messages) == len(expected), messages
    for message, fragment in zip(messages, expected, strict=True):
        assert message.startswith("Cloud Tasks queue 'tasks-default': ")
        assert fragment in message


@given(rate=st.floats(min_value=0, max_value=2000, allow_nan=False))
def test_any_rate_passes_exactly_when_it_is_between_one_a_day_and_500(rate: float) -> None:
    messages = check(validate_queue_limits, tokens.QUEUE, queue(rateLimits={"maxDispatchesPerSecond": rate}))
    assert (messages == []) == (1 / 86400 <= rate <= 500)


def test_limits_ignore_other_resource_types() -> None:
    assert check(validate_queue_limits, tokens.RUN_SERVICE, {"rateLimits": {"maxDispatchesPerSecond": 900}}) == []


# --- bounded retry ------------------------------------------------------------------------------------------

UNBOUNDED_DURATIONS = {"0s": '"0s"', None: "unset"}
RETRY_CASES = [
    ("the program's queue", queue(), {}, None),
    ("unset retry config (100 attempts)", queue(retryConfig=None), {}, None),
    ("-1 with a duration", queue(retryConfig={"maxAttempts": -1, "maxRetryDuration": "86400s"}), {}, None),
    ("-1 with 0s", queue(retryConfig={"maxAttempts": -1, "maxRetryDuration": "0s"}), {}, '"0s"'),
    ("-1 with no duration", queue(retryConfig={"maxAttempts": -1, "maxRetryDuration": None}), {}, "unset"),
    ("-1 with 0.0s", queue(retryConfig={"maxAttempts": -1, "maxRetryDuration": "0.0s"}), {}, '"0.0s"'),
    ("-1 with 0s, allowed by config", queue(retryConfig={"maxAttempts": -1, "maxRetryDuration": "0s"}),
     {"allowUnboundedRetries": True}, None),
    ("-1 with 0s, config says no", queue(retryConfig={"maxAttempts": -1, "maxRetryDuration": "0s"}),
     {"allowUnboundedRetries": False}, '"0s"'),
    ("unknown attempts", queue(retryConfig={"maxAttempts": UNKNOWN_NUMBER, "maxRetryDuration": "0s"}), {}, None),
    ("-1 with an unknown duration", queue(retryConfig={"maxAttempts": -1, "maxRetryDuration": UNKNOWN_STRING}), {},
     None),
    ("-1 with 0s, held paused (a dead-letter queue)",
     queue(retryConfig={"maxAttempts": -1, "maxRetryDuration": "0s"}) | {"desiredState": "PAUSED"}, {}, None),
    ("-1 with 0s, running",
     queue(retryConfig={"maxAttempts": -1, "maxRetryDuration": "0s"}) | {"desiredState": "RUNNING"}, {}, '"0s"'),
    ("-1 with 0s, state unknown",
     queue(retryConfig={"maxAttempts": -1, "maxRetryDuration": "0s"}) | {"desiredState": UNKNOWN_STRING}, {}, '"0s"'),
    ("-1 with a malformed duration (the limits policy's)", queue(retryConfig={"maxAttempts": -1,
                                                                              "maxRetryDuration": "1d"}), {}, None),
]  # fmt: skip


@pytest.mark.parametrize(("props", "config", "duration"), [c[1:] for c in RETRY_CASES],
                         ids=[c[0] for c in RETRY_CASES])  # fmt: skip
def test_retries_end_unless_the_config_allows_unbounded(
    props: dict[str, Any], config: dict[str, Any], duration: str | None
) -> None:
    messages = check(validate_bounded_retry, tokens.QUEUE, props, name="reports", config=config)
    if duration is None:
        assert messages == []
        return
    assert messages == [
        f"Cloud Tasks queue 'reports': retryConfig.maxAttempts is -1 and maxRetryDuration is {duration}: a failing "
        "task is retried until the 31-day task retention ends. Fix: set maxAttempts to a positive number or "
        "maxRetryDuration above 0s, or set allowUnboundedRetries: true in this policy's config."
    ]


# --- logging ------------------------------------------------------------------------------------------------

LOGGING_CASES = [
    ("full sampling", queue(), None),
    ("a tenth", queue(stackdriverLoggingConfig={"samplingRatio": 0.1}), None),
    ("explicit 0 (a decision)", queue(stackdriverLoggingConfig={"samplingRatio": 0}), None),
    ("unknown", queue(stackdriverLoggingConfig={"samplingRatio": UNKNOWN_NUMBER}), None),
    ("unknown block", queue() | {"stackdriverLoggingConfig": UNKNOWN_OBJECT}, None),
    ("no logging block", queue(stackdriverLoggingConfig=None),
     "stackdriverLoggingConfig.samplingRatio is not set, so Cloud Tasks logs none of its attempts (its default is "
     "0.0)"),
    ("block without ratio", queue(stackdriverLoggingConfig={"samplingRatio": None}),
     "stackdriverLoggingConfig.samplingRatio is not set"),
    ("above 1", queue(stackdriverLoggingConfig={"samplingRatio": 1.5}),
     "stackdriverLoggingConfig.samplingRatio: 1.5 is outside 0..1"),
    ("negative", queue(stackdriverLoggingConfig={"samplingRatio": -0.1}),
     "stackdriverLoggingConfig.samplingRatio: -0.1 is outside 0..1"),
    ("a string", queue(stackdriverLoggingConfig={"samplingRatio": "1"}),
     'stackdriverLoggingConfig.samplingRatio: "1" is outside 0..1'),
]  # fmt: skip


@pytest.mark.parametrize(("props", "problem"), [c[1:] for c in LOGGING_CASES], ids=[c[0] for c in LOGGING_CASES])
def test_queues_set_their_log_sampling_ratio(props: dict[str, Any], problem: str | None) -> None:
    messages = check(validate_queue_logging, tokens.QUEUE, props, name="q")
    if problem is None:
        assert messages == []
        return
    assert len(messages) == 1
    assert messages[0].startswith(f"Cloud Tasks queue 'q': {problem}")
    assert messages[0].endswith(
        "Fix: set stackdriver_logging_config.sampling_ratio (1.0 in dev; lower for busy production queues)."
    )
