"""The Cloud Tasks retry law, as pure functions of a `RetryPolicy` (queue.py RetryConfig docstrings).

The emulator schedules attempts by it, and the handler decides by it whether an attempt is the last one.

Backoff: "A task's retry interval starts at min_backoff, then doubles max_doublings times, then increases
linearly [by 2^max_doublings * min_backoff], and finally retries at intervals of max_backoff" - the docs'
example (min 10 s, max 300 s, 3 doublings) gives 10, 20, 40, 80, 160, 240, 300, 300, ...

Stopping: "Cloud Tasks stops retrying only when max_attempts and max_retry_duration are both satisfied, or
when the task is successfully executed". A limit set to "unlimited" (-1 attempts, 0 duration) takes no part
in that conjunction; with both unlimited the 31-day task retention ends the retries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from contract.cloud_tasks import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_BACKOFF_S,
    DEFAULT_MAX_DOUBLINGS,
    DEFAULT_MAX_RETRY_DURATION_S,
    DEFAULT_MIN_BACKOFF_S,
    TASK_RETENTION_S,
    UNLIMITED_ATTEMPTS,
    UNLIMITED_RETRY_DURATION_S,
)

__all__ = ["DEFAULT_RETRY", "RetryPolicy", "backoff_delay", "retry_allowed", "retry_window", "retrying_stops"]

# Past this many doublings any positive min_backoff exceeds every representable max_backoff.
_DOUBLING_CEILING = 1000


@dataclass(frozen=True)
class RetryPolicy:
    """A queue's (or task's) effective retry settings, in seconds, defaults already filled in."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS  # attempts including the first; -1 = unlimited
    max_retry_duration: float = DEFAULT_MAX_RETRY_DURATION_S  # from the first attempt's dispatch; 0 = unlimited
    min_backoff: float = DEFAULT_MIN_BACKOFF_S
    max_backoff: float = DEFAULT_MAX_BACKOFF_S
    max_doublings: int = DEFAULT_MAX_DOUBLINGS


DEFAULT_RETRY = RetryPolicy()


def backoff_delay(policy: RetryPolicy, failed_attempt: int) -> float:
    """The delay before the next attempt after failed attempt number `failed_attempt` (1-based)."""
    if failed_attempt < 1:
        raise ValueError(f"attempt numbers start at 1, got {failed_attempt}")
    doublings = min(failed_attempt - 1, policy.max_doublings)
    if policy.min_backoff <= 0:
        return 0.0
    if doublings > _DOUBLING_CEILING:
        return policy.max_backoff
    delay = policy.min_backoff * 2.0**doublings
    linear_steps = failed_attempt - 1 - policy.max_doublings
    if linear_steps > 0:
        delay += linear_steps * policy.min_backoff * 2.0**policy.max_doublings
    return min(delay, policy.max_backoff)


def retry_window(policy: RetryPolicy) -> float:
    """Seconds from a task's first attempt to the last one the policy allows, when every attempt fails at once.

    Retrying stops only when every configured limit is used up, so the window is the later of the attempt
    limit's last attempt and max_retry_duration; with neither limit, the 31-day task retention ends it. The
    attempt that crosses max_retry_duration is not counted, so a duration-bound window is a lower bound (by at
    most one backoff), which is the safe side for a rule that the window be long enough.
    """
    ends: list[float] = []
    if policy.max_attempts != UNLIMITED_ATTEMPTS:
        ends.append(time_of_attempt(policy, policy.max_attempts))
    if policy.max_retry_duration > UNLIMITED_RETRY_DURATION_S:
        ends.append(policy.max_retry_duration)
    return min(max(ends), TASK_RETENTION_S) if ends else TASK_RETENTION_S


def time_of_attempt(policy: RetryPolicy, attempt: int) -> float:
    """Seconds from the first attempt (at 0) to attempt number `attempt` when each one fails at once: the sum of
    `backoff_delay` over the attempts before it, in closed form (max_attempts may be 2^31 - 1)."""
    delays = attempt - 1
    if delays <= 0 or policy.min_backoff <= 0:
        return 0.0
    total, failed = 0.0, 1
    # Doubling: the cap is reached within some 60 doublings of any backoff this stack accepts.
    while failed <= delays and failed - 1 <= min(policy.max_doublings, _DOUBLING_CEILING):
        delay = backoff_delay(policy, failed)
        if delay >= policy.max_backoff:
            return total + (delays - failed + 1) * policy.max_backoff
        total += delay
        failed += 1
    remaining = delays - failed + 1
    if remaining <= 0:
        return total
    # Linear: the j-th delay after the doublings is step * (j + 1), until it reaches max_backoff.
    step = policy.min_backoff * 2.0**policy.max_doublings
    linear = min(remaining, max(0, math.ceil(policy.max_backoff / step) - 2))
    total += step * (linear * (linear + 1) / 2 + linear)
    return total + (remaining - linear) * policy.max_backoff


def retrying_stops(policy: RetryPolicy, *, attempts: int, retried_for: float | None) -> bool:
    """Whether no attempt follows a failed `attempts`-th attempt, `retried_for` seconds after the first
    attempt's dispatch (the task's retention aside: see `retry_allowed`).

    `retried_for` None means the caller cannot tell (the handler: the first attempt's time is in no header).
    A duration limit is then taken as used up, so a caller that must guess treats the attempt as the last
    one and records the task rather than lose it.
    """
    limits_used_up: list[bool] = []
    if policy.max_attempts != UNLIMITED_ATTEMPTS:
        limits_used_up.append(attempts >= policy.max_attempts)
    if policy.max_retry_duration > UNLIMITED_RETRY_DURATION_S:
        limits_used_up.append(retried_for is None or retried_for >= policy.max_retry_duration)
    return bool(limits_used_up) and all(limits_used_up)


def retry_allowed(
    policy: RetryPolicy, *, attempts: int, first_dispatch: float, created: float, failed_at: float
) -> bool:
    """Whether a task whose `attempts`-th attempt failed at `failed_at` gets another attempt.

    The duration limit is judged when the attempt fails: once `max_retry_duration` has passed since the first
    attempt's dispatch (and the attempt limit is used up too), no further attempt is made.
    """
    if failed_at - created >= TASK_RETENTION_S:
        return False
    return not retrying_stops(policy, attempts=attempts, retried_for=failed_at - first_dispatch)
