"""The handler's environment: variable names (the Pulumi component imports them) and their parsing.

Standard library only, so the component can import the names without the web framework.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

# JSON object: physical queue id (the X-CloudTasks-QueueName header) -> {"key", "maxAttempts",
# "dispatchDeadlineSeconds"}. The handler uses maxAttempts to know which attempt is the last one
# (dead-letter instead of failing); the deadline is there so the service's configuration shows, and a
# policy can check, that every queue's deadline fits in the request timeout.
QUEUES: Final = "TASKS_QUEUES"
# Comma-separated emails whose OIDC tokens the handler accepts when it verifies tokens itself.
INVOKER_EMAILS: Final = "TASKS_INVOKER_EMAILS"
# "true" to verify OIDC tokens in the container (platforms that do not, e.g. Cloud Run for Anthos).
VERIFY_OIDC: Final = "TASKS_VERIFY_OIDC"
# The audience tokens must carry. Unset: the URL the request came to (scheme and host), which on Cloud
# Run is the service URL. The stack cannot set it: a service cannot be given its own URL before it exists.
OIDC_AUDIENCE: Final = "TASKS_OIDC_AUDIENCE"
# Where the token signing certs are served ({kid: PEM}); Google's by default, the emulator's locally.
OIDC_CERTS_URL: Final = "TASKS_OIDC_CERTS_URL"
# Project id, for the trace field of log entries (Cloud Logging links them to the request's trace).
PROJECT: Final = "GOOGLE_CLOUD_PROJECT"
# Cloud Run sets PORT; listed so the component refuses a user env var that would shadow it.
PORT: Final = "PORT"

GOOGLE_CERTS_URL: Final = "https://www.googleapis.com/oauth2/v1/certs"


class HandlerConfigError(ValueError):
    """The environment the handler was started with is unusable; the message names the variable."""


@dataclass(frozen=True)
class QueuePolicy:
    key: str
    max_attempts: int  # -1: unlimited


@dataclass(frozen=True)
class HandlerSettings:
    queues: Mapping[str, QueuePolicy]
    invoker_emails: frozenset[str]
    verify_oidc: bool = False
    oidc_audience: str | None = None
    certs_url: str = GOOGLE_CERTS_URL
    project: str | None = None

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> HandlerSettings:
        verify = env.get(VERIFY_OIDC, "false").strip().lower()
        if verify not in ("true", "false"):
            raise HandlerConfigError(f"{VERIFY_OIDC}: {verify!r} is not true or false")
        emails = frozenset(e.strip() for e in env.get(INVOKER_EMAILS, "").split(",") if e.strip())
        if verify == "true" and not emails:
            raise HandlerConfigError(f"{VERIFY_OIDC} is true but {INVOKER_EMAILS} names no invoker to accept")
        return cls(
            queues=_queues(env.get(QUEUES, "{}")),
            invoker_emails=emails,
            verify_oidc=verify == "true",
            oidc_audience=env.get(OIDC_AUDIENCE) or None,
            certs_url=env.get(OIDC_CERTS_URL) or GOOGLE_CERTS_URL,
            project=env.get(PROJECT) or None,
        )


def _queues(text: str) -> dict[str, QueuePolicy]:
    try:
        raw = json.loads(text)
        return {
            queue_id: QueuePolicy(key=str(entry["key"]), max_attempts=int(entry["maxAttempts"]))
            for queue_id, entry in raw.items()
        }
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise HandlerConfigError(
            f'{QUEUES}: expected {{"<queue id>": {{"key": str, "maxAttempts": int}}}}, got {text[:200]!r} ({err})'
        ) from None
