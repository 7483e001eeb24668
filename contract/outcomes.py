"""What became of one request to the handler: the `status` of its JSON reply and the `outcome` of its log entry.

Local mode's demo and the tests read these from the handler's log, so the names are part of the contract.
"""

from __future__ import annotations

from enum import StrEnum


class TaskOutcome(StrEnum):
    DONE = "done"  # the work is done (200)
    DUPLICATE = "duplicate"  # done before under this name: acknowledged, not run again (200)
    DEAD_LETTERED = "dead-lettered"  # recorded as a dead letter, then acknowledged (200)
    RETRY = "retry"  # the work asked to be retried later (429 with Retry-After)
    IN_PROGRESS = "in-progress"  # another copy is running now (429 with Retry-After)
    FAILED = "failed"  # a retryable failure (500), or tokens cannot be checked now (503)
    REFUSED = "refused"  # the token was refused (401 or 403)
    REJECTED = "rejected"  # not a request Cloud Tasks sends (400; 408 for a late body, 431 for a huge head)
