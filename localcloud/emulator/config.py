"""Queue configuration: validation, Cloud Tasks' defaults, the derived burst size and UpdateQueue masks.

Defaults are what Cloud Tasks reports for a queue created without settings (creating-queues "describe"
output): 500 dispatches/s, 1000 concurrent, 100 attempts, backoff 0.1 s..3600 s, 16 doublings. Protobuf 3
cannot tell an unset number from 0, so 0 (or an unset field) means "use the default" for the rate, the
concurrency, max_attempts and max_doublings; backoff durations have presence, so an explicit 0 s is kept.
Backoffs are not truncated to whole seconds (the docs say they are, yet the default is 0.1 s) so tests can
use short ones.

max_burst_size is output only ("Cloud Tasks will pick the value of max_burst_size based on the value of
max_dispatches_per_second"); any value a client sends is replaced by `burst_size(rate)`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from google.cloud import tasks_v2

from contract import cloud_tasks as limits
from contract.retry import RetryPolicy
from localcloud.emulator.errors import (
    BACKOFF_ORDER_MESSAGE,
    CONCURRENCY_NEGATIVE_MESSAGE,
    CONCURRENCY_TOO_HIGH_MESSAGE,
    MAX_ATTEMPTS_MESSAGE,
    MAX_DOUBLINGS_NEGATIVE_MESSAGE,
    MIN_BACKOFF_NEGATIVE_MESSAGE,
    RATE_NEGATIVE_MESSAGE,
    RATE_TOO_HIGH_MESSAGE,
    invalid_argument,
)
from localcloud.emulator.routing import TargetOverride, parse_http_target

__all__ = [
    "QueueSettings",
    "apply_update_mask",
    "burst_size",
    "normalize_queue",
    "retry_policy",
]

# Queue fields UpdateQueue may change; name is the key and state/purge_time are output only.
_MUTABLE_FIELDS = (
    "app_engine_routing_override",
    "http_target",
    "rate_limits",
    "retry_config",
    "stackdriver_logging_config",
)
_IMMUTABLE_FIELDS = ("name", "state", "purge_time")
QUEUE_RETRY_FIELD = "retry_config"  # normalize_retry_config's field for a queue's own RetryConfig


@dataclass(frozen=True)
class QueueSettings:
    """A queue's effective dispatch settings, parsed once per create/update so dispatch reads plain values."""

    rate: float
    burst: int
    max_concurrent: int
    retry: RetryPolicy
    target: TargetOverride | None


def burst_size(rate: float) -> int:
    """The bucket size for `rate`: one second's worth of tokens, at least 1 and at most 100.

    Cloud Tasks documents the burst as "generally at least equal to max_dispatches_per_second" yet reports 100
    for the default 500/s; ceil(rate) capped at 100 honours both observations.
    """
    return max(1, min(limits.MAX_BURST_SIZE, math.ceil(rate)))


def _seconds(duration: Any) -> float:
    return float(duration.seconds + duration.nanos / 1e9)


def _set_seconds(duration: Any, value: float) -> None:
    duration.FromNanoseconds(round(value * 1e9))


def _normalize_rate_limits(rate_limits: Any) -> tuple[float, int]:
    rate = rate_limits.max_dispatches_per_second
    if rate < 0:
        raise invalid_argument(RATE_NEGATIVE_MESSAGE)
    if rate > limits.MAX_DISPATCHES_PER_SECOND:
        raise invalid_argument(RATE_TOO_HIGH_MESSAGE)
    if math.isnan(rate):  # no public record; ours
        raise invalid_argument(f"RateLimits.maxDispatchesPerSecond must be a number, got {rate}")
    concurrent = rate_limits.max_concurrent_dispatches
    if concurrent < 0:
        raise invalid_argument(CONCURRENCY_NEGATIVE_MESSAGE)
    if concurrent > limits.MAX_CONCURRENT_DISPATCHES:
        raise invalid_argument(CONCURRENCY_TOO_HIGH_MESSAGE)
    rate = rate or limits.DEFAULT_DISPATCHES_PER_SECOND
    concurrent = concurrent or limits.DEFAULT_CONCURRENT_DISPATCHES
    rate_limits.max_dispatches_per_second = rate
    rate_limits.max_concurrent_dispatches = concurrent
    rate_limits.max_burst_size = burst_size(rate)
    return rate, concurrent


def _negative_duration(retry: Any, name: str) -> float | None:
    seconds = _seconds(getattr(retry, name)) if retry.HasField(name) else 0.0
    return seconds if seconds < 0 else None


def _check_queue_retry(retry: Any) -> None:
    """A queue's RetryConfig, with Cloud Tasks' texts where they are on record (errors.py)."""
    if retry.max_attempts < limits.UNLIMITED_ATTEMPTS:
        raise invalid_argument(MAX_ATTEMPTS_MESSAGE)
    if retry.max_doublings < 0:
        raise invalid_argument(MAX_DOUBLINGS_NEGATIVE_MESSAGE)
    if _negative_duration(retry, "min_backoff") is not None:
        raise invalid_argument(MIN_BACKOFF_NEGATIVE_MESSAGE)
    for name in ("max_retry_duration", "max_backoff"):  # no public record; ours
        seconds = _negative_duration(retry, name)
        if seconds is not None:
            raise invalid_argument(f"retry_config.{name} must not be negative, got {seconds:g}s")


def _check_task_retry(retry: Any, field: str) -> None:
    """A task's own RetryConfig (a newer field): no public record of Cloud Tasks' texts; ours, naming the field."""
    if retry.max_attempts < limits.UNLIMITED_ATTEMPTS:
        raise invalid_argument(f"{field}.max_attempts must be >= -1 (-1: unlimited), got {retry.max_attempts}")
    if retry.max_doublings < 0:
        raise invalid_argument(f"{field}.max_doublings must not be negative, got {retry.max_doublings}")
    for name in ("max_retry_duration", "min_backoff", "max_backoff"):
        seconds = _negative_duration(retry, name)
        if seconds is not None:
            raise invalid_argument(f"{field}.{name} must not be negative, got {seconds:g}s")


def normalize_retry_config(retry: Any, field: str = QUEUE_RETRY_FIELD) -> RetryPolicy:
    """Validate a RetryConfig (raw pb, modified in place to hold the defaults) and return its policy.
    `field`: QUEUE_RETRY_FIELD for a queue's, else where the task's own sits (e.g. "Task.retry_config")."""
    if field == QUEUE_RETRY_FIELD:
        _check_queue_retry(retry)
    else:
        _check_task_retry(retry, field)
    retry.max_attempts = retry.max_attempts or limits.DEFAULT_MAX_ATTEMPTS
    retry.max_doublings = retry.max_doublings or limits.DEFAULT_MAX_DOUBLINGS
    if not retry.HasField("min_backoff"):
        _set_seconds(retry.min_backoff, limits.DEFAULT_MIN_BACKOFF_S)
    if not retry.HasField("max_backoff"):
        _set_seconds(retry.max_backoff, limits.DEFAULT_MAX_BACKOFF_S)
    policy = retry_policy(retry)
    if policy.min_backoff > policy.max_backoff:
        if field == QUEUE_RETRY_FIELD:
            raise invalid_argument(BACKOFF_ORDER_MESSAGE)
        raise invalid_argument(
            f"{field}.min_backoff ({policy.min_backoff:g}s) must not exceed max_backoff ({policy.max_backoff:g}s)"
        )
    return policy


def retry_policy(retry: Any) -> RetryPolicy:
    """The policy of a normalized RetryConfig (raw pb)."""
    return RetryPolicy(
        max_attempts=retry.max_attempts,
        max_retry_duration=_seconds(retry.max_retry_duration),
        min_backoff=_seconds(retry.min_backoff),
        max_backoff=_seconds(retry.max_backoff),
        max_doublings=retry.max_doublings,
    )


def normalize_queue(queue: tasks_v2.Queue) -> QueueSettings:
    """Validate `queue` (INVALID_ARGUMENT on any bad value), fill in the defaults in place, return its settings."""
    pb = tasks_v2.Queue.pb(queue)
    rate, concurrent = _normalize_rate_limits(pb.rate_limits)
    retry = normalize_retry_config(pb.retry_config)
    if pb.HasField("stackdriver_logging_config"):
        ratio = pb.stackdriver_logging_config.sampling_ratio
        if not 0.0 <= ratio <= 1.0:  # False for NaN too
            raise invalid_argument(f"stackdriver_logging_config.sampling_ratio must be within [0, 1], got {ratio}")
    target = parse_http_target(queue.http_target) if pb.HasField("http_target") else None
    return QueueSettings(rate, burst_size(rate), concurrent, retry, target)


def _snake_case(segment: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", segment).lower()


def _mask_fields(pb: Any, path: str) -> list[Any]:
    """The chain of field descriptors a mask path names; INVALID_ARGUMENT if it names none or an immutable one."""
    segments = [_snake_case(s) for s in path.split(".")]
    if segments[0] in _IMMUTABLE_FIELDS:
        raise invalid_argument(f'update_mask path "{path}": {segments[0]} cannot be changed by UpdateQueue')
    if segments[0] not in _MUTABLE_FIELDS:
        raise invalid_argument(f'update_mask path "{path}" does not name a field of Queue')
    descriptor, chain = pb.DESCRIPTOR, []
    for segment in segments:
        field = descriptor.fields_by_name.get(segment) if descriptor is not None else None
        if field is None:
            raise invalid_argument(f'update_mask path "{path}" does not name a field of Queue')
        chain.append(field)
        descriptor = None if field.is_repeated else field.message_type
    return chain


def _copy_field(source: Any, target: Any, chain: list[Any]) -> None:
    for field in chain[:-1]:
        source, target = getattr(source, field.name), getattr(target, field.name)
    leaf = chain[-1]
    target.ClearField(leaf.name)
    if leaf.is_repeated:
        getattr(target, leaf.name).MergeFrom(getattr(source, leaf.name))
    elif leaf.message_type is not None or leaf.has_presence:
        if source.HasField(leaf.name):
            if leaf.message_type is not None:
                getattr(target, leaf.name).CopyFrom(getattr(source, leaf.name))
            else:
                setattr(target, leaf.name, getattr(source, leaf.name))
    else:
        setattr(target, leaf.name, getattr(source, leaf.name))


def apply_update_mask(current: tasks_v2.Queue, update: tasks_v2.Queue, paths: list[str]) -> tasks_v2.Queue:
    """A copy of `current` with the masked fields taken from `update` ("If empty, then all fields will be updated")."""
    result = tasks_v2.Queue(current)
    result_pb, update_pb = tasks_v2.Queue.pb(result), tasks_v2.Queue.pb(update)
    for path in paths or _MUTABLE_FIELDS:
        _copy_field(update_pb, result_pb, _mask_fields(update_pb, path))
    return result
