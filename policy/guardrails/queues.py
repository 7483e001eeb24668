"""Cloud Tasks queue rules: limits the API accepts, retries that end, logs that show failures."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pulumi_policy import ReportViolation, ResourceValidationArgs

from contract import cloud_tasks
from guardrails import tokens
from guardrails.properties import (
    MISSING,
    UNKNOWN,
    Absent,
    DurationError,
    duration_seconds,
    is_number,
    is_whole_number,
    read,
    show,
)

MAX_DISPATCHES_PER_SECOND = cloud_tasks.MAX_DISPATCHES_PER_SECOND
MAX_CONCURRENT_DISPATCHES = cloud_tasks.MAX_CONCURRENT_DISPATCHES
RETRY_DURATIONS = ("maxRetryDuration", "minBackoff", "maxBackoff")
PAUSED = "PAUSED"  # desiredState of a queue that holds its tasks (pulumi-gcp's Queue: RUNNING or PAUSED)

Problem = tuple[str, str]  # (what is wrong, with the path and the value; how to fix it)


def _problems(args: ResourceValidationArgs) -> Iterator[Problem]:
    yield from _rate_problems(args.props)
    yield from _retry_problems(args.props)


def _rate_problems(props: Mapping[str, Any]) -> Iterator[Problem]:
    rate = read(props, "rateLimits.maxDispatchesPerSecond")
    if not isinstance(rate, Absent) and not (
        is_number(rate) and cloud_tasks.MIN_DISPATCHES_PER_SECOND <= rate <= MAX_DISPATCHES_PER_SECOND
    ):
        yield (
            f"rateLimits.maxDispatchesPerSecond: {show(rate)} is outside [{cloud_tasks.MIN_DISPATCHES_PER_SECOND_TEXT},"
            f" {show(MAX_DISPATCHES_PER_SECOND)}], the Cloud Tasks limits per queue (a smaller rate never dispatches)",
            f"use a rate of at least one dispatch a day and at most {show(MAX_DISPATCHES_PER_SECOND)}, and spread"
            " more load over several queues",
        )
    concurrency = read(props, "rateLimits.maxConcurrentDispatches")
    if not isinstance(concurrency, Absent) and not (
        is_whole_number(concurrency) and 1 <= concurrency <= MAX_CONCURRENT_DISPATCHES
    ):
        yield (
            f"rateLimits.maxConcurrentDispatches: {show(concurrency)} is not a whole number from 1 to "
            f"{MAX_CONCURRENT_DISPATCHES}",
            f"use 1-{MAX_CONCURRENT_DISPATCHES}, at most what the service absorbs (max instances x concurrency)",
        )
    if read(props, "rateLimits") is not UNKNOWN and read(props, "rateLimits.maxBurstSize") is not MISSING:
        # Set at all is the problem, whatever its value, even an unknown one (not a whole unknown rateLimits).
        yield (
            "rateLimits.maxBurstSize is set, but it is output-only: Cloud Tasks derives it from the rate",
            "remove max_burst_size",
        )


def _retry_problems(props: Mapping[str, Any]) -> Iterator[Problem]:
    attempts = read(props, "retryConfig.maxAttempts")
    if not isinstance(attempts, Absent) and not (is_whole_number(attempts) and attempts >= -1):
        yield (
            f"retryConfig.maxAttempts: {show(attempts)} is not a whole number of at least -1 (-1: unlimited)",
            "set it to -1 or more; it counts the first attempt",
        )
    seconds: dict[str, float] = {}
    for field in RETRY_DURATIONS:
        value = read(props, f"retryConfig.{field}")
        if isinstance(value, Absent):
            continue
        try:
            seconds[field] = duration_seconds(value)
        except DurationError as error:
            yield f"retryConfig.{field}: {error}", 'write it as seconds with an "s", e.g. "10s" or "0.5s"'
    if "minBackoff" in seconds and "maxBackoff" in seconds and seconds["minBackoff"] > seconds["maxBackoff"]:
        yield (
            f"retryConfig.minBackoff ({show(read(props, 'retryConfig.minBackoff'))}) is above maxBackoff "
            f"({show(read(props, 'retryConfig.maxBackoff'))})",
            "make minBackoff at most maxBackoff",
        )
    doublings = read(props, "retryConfig.maxDoublings")
    if not isinstance(doublings, Absent) and not (is_whole_number(doublings) and doublings >= 0):
        yield (
            f"retryConfig.maxDoublings: {show(doublings)} is not a whole number of at least 0",
            "set it to 0 or more",
        )


def validate_queue_limits(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """Rate, concurrency and retry settings within what Cloud Tasks accepts; no output-only maxBurstSize.

    Why: the API rejects these at `pulumi up`, after other resources may already have changed; the pack
    refuses them at preview (pitfalls C3 for maxBurstSize). Every problem is reported, not only the first.
    """
    if not tokens.is_one_of(args.resource_type, tokens.QUEUES):
        return
    what = tokens.describe(args.resource_type, args.name)
    for problem, fix in _problems(args):
        report_violation(f"{what}: {problem}. Fix: {fix}.", None)


def is_paused(props: Mapping[str, Any]) -> bool:
    """Declared PAUSED (desiredState): Cloud Tasks keeps its tasks and dispatches none of them."""
    return read(props, "desiredState") == PAUSED


def validate_bounded_retry(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """A failing task stops being retried: maxAttempts is not -1, or maxRetryDuration is above 0s.

    Why: retrying stops only when both limits are used up, so -1 with no duration retries for the whole 31-day
    task retention, and Cloud Tasks retries 4xx answers too (pitfalls F2, cloud-tasks.md 1.2). Config
    `allowUnboundedRetries: true` permits it for queues that really must never drop a task. A queue declared
    PAUSED is exempt: it dispatches nothing, so nothing is retried, and unlimited retries are what keep its
    tasks (a dead-letter queue's records) should someone resume it by mistake.
    """
    if not tokens.is_one_of(args.resource_type, tokens.QUEUES) or args.get_config().get("allowUnboundedRetries"):
        return
    if is_paused(args.props):
        return
    if read(args.props, "retryConfig.maxAttempts") != -1:
        return  # bounded, unknown, or unset (the default is 100 attempts)
    duration = read(args.props, "retryConfig.maxRetryDuration")
    if duration is UNKNOWN or (duration is not MISSING and _positive_duration(duration) is not False):
        return
    shown = "unset" if duration is MISSING else show(duration)
    report_violation(
        f"{tokens.describe(args.resource_type, args.name)}: retryConfig.maxAttempts is -1 and maxRetryDuration "
        f"is {shown}: a failing task is retried until the 31-day task retention ends. Fix: set maxAttempts "
        "to a positive number or maxRetryDuration above 0s, or set allowUnboundedRetries: true in this policy's "
        "config.",
        None,
    )


def _positive_duration(value: Any) -> bool | None:
    """Above 0s; None when it is not a duration at all (the limits policy reports that)."""
    try:
        return duration_seconds(value) > 0
    except DurationError:
        return None


def validate_queue_logging(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """Each queue sets its log sampling ratio, between 0 and 1.

    Why: unset, Cloud Tasks logs nothing (default ratio 0.0), so failing tasks look as if they vanished
    (pitfalls C5). An explicit 0 is a decision and passes; a missing one is an accident.
    """
    if not tokens.is_one_of(args.resource_type, tokens.QUEUES):
        return
    ratio = read(args.props, "stackdriverLoggingConfig.samplingRatio")
    what = tokens.describe(args.resource_type, args.name)
    fix = "set stackdriver_logging_config.sampling_ratio (1.0 in dev; lower for busy production queues)"
    if ratio is MISSING:
        report_violation(
            f"{what}: stackdriverLoggingConfig.samplingRatio is not set, so Cloud Tasks logs none of its "
            f"attempts (its default is 0.0). Fix: {fix}.",
            None,
        )
    elif ratio is not UNKNOWN and not (is_number(ratio) and 0 <= ratio <= 1):
        report_violation(
            f"{what}: stackdriverLoggingConfig.samplingRatio: {show(ratio)} is outside 0..1. Fix: {fix}.",
            None,
        )
