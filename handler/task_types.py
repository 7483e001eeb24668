"""The task types this service handles. Add yours here: one function per path.

The two below are the reference service's: they do no real work, and they show each branch of the
contract (used by the local stack's demo and the tests).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from handler.tasks import PermanentError, TaskContext, TaskRouter

router = TaskRouter()
MAX_DEMO_SLEEP_S = 30


@router.task("/tasks/default")
async def process(payload: Any, context: TaskContext) -> None:
    """Accepts any JSON object. Demo switches: "fail_attempts": N fails the first N attempts (retryable),
    "permanent": "why" fails for good, "permanent_until": T fails for good before the epoch time T (a record not
    there yet: a replay after T is done), "sleep_seconds": S takes S seconds (at most 30)."""
    if not isinstance(payload, dict):
        raise PermanentError(f"expected a JSON object, got {type(payload).__name__}")
    if "permanent" in payload:
        raise PermanentError(str(payload["permanent"]))
    if time.time() < float(payload.get("permanent_until", 0)):
        arrives = datetime.fromtimestamp(float(payload["permanent_until"]), UTC).isoformat(timespec="seconds")
        raise PermanentError(f"not there yet: it arrives at {arrives}")
    if context.attempt <= int(payload.get("fail_attempts", 0)):
        raise RuntimeError(f"failing attempt {context.attempt} on purpose (fail_attempts={payload['fail_attempts']})")
    sleep = float(payload.get("sleep_seconds", 0))
    if sleep > 0:
        await asyncio.sleep(min(sleep, MAX_DEMO_SLEEP_S))


@router.task("/tasks/send-email")
def send_email(payload: Any, context: TaskContext) -> None:
    """A blocking function (runs in a worker thread). Refuses, for good, a payload without a recipient."""
    recipient = payload.get("to") if isinstance(payload, dict) else None
    if not isinstance(recipient, str) or "@" not in recipient:
        raise PermanentError(f"'to' must be an email address, got {recipient!r}")
