"""The Cloud Tasks retry law, as pure functions of a `RetryPolicy` (queue.py RetryConfig docstrings).

Backoff: "A task's retry interval starts at min_backoff, then doubles max_doublings times, then increases
linearly [by 2^max_doublings * min_backoff], and finally retries at intervals of max_backoff" - the docs'
example (min 10 s, max 300 s, 3 doublings) gives 10, 20, 40, 80, 160, 240, 300, 300, ...

Stopping: "Cloud Tasks stops retrying only when max_attempts and max_retry_duration are both satisfied, or
when the task is successfully executed". A limit set to "unlimited" (-1 attempts, 0 duration) takes no part
in that conjunction; with both unlimited the 31-day task retention ends the retries.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEFAULT_RETRY",
    "TASK_RETENTION_SECONDS",
    "UNLIMITED_ATTEMPTS",
    "RetryPolicy",
    "backoff_delay",
    "retry_allowed",
]

TASK_RETENTION_SECONDS = 31 * 24 * 3600.0  # "Maximum task retention: 31 days" (quotas page)
UNLIMITED_ATTEMPTS = -1

# Past this many doublings any positive min_backoff exceeds every representable max_backoff.
_DOUBLING_CEILING = 1000


@dataclass(frozen=True)
class RetryPolicy:
    """A queue's (or task's) effective retry settings, in seconds, defaults already filled in."""

    max_attempts: int = 100  # attempts including the first; -1 = unlimited
    max_retry_duration: float = 0.0  # measured from the first attempt's dispatch; 0 = unlimited
    min_backoff: float = 0.1
    max_backoff: float = 3600.0
    max_doublings: int = 16


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


def retry_allowed(
    policy: RetryPolicy, *, attempts: int, first_dispatch: float, created: float, failed_at: float
) -> bool:
    """Whether a task whose `attempts`-th attempt failed at `failed_at` gets another attempt.

    The duration limit is judged when the attempt fails: once `max_retry_duration` has passed since the first
    attempt's dispatch (and the attempt limit is used up too), no further attempt is made.
    """
    if failed_at - created >= TASK_RETENTION_SECONDS:
        return False
    limits_used_up: list[bool] = []
    if policy.max_attempts != UNLIMITED_ATTEMPTS:
        limits_used_up.append(attempts >= policy.max_attempts)
    if policy.max_retry_duration > 0:
        limits_used_up.append(failed_at - first_dispatch >= policy.max_retry_duration)
    return not (limits_used_up and all(limits_used_up))
