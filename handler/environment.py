"""The handler's settings, read from the environment the stack gives the service (names: contract.handler_env)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from contract.cloud_tasks import EMULATOR_HOST_ENV, QUEUE_ID
from contract.handler_env import (
    DEAD_LETTER_QUEUE,
    GOOGLE_CERTS_URL,
    IDEMPOTENCY_REDIS_URL,
    INVOKER_EMAILS,
    OIDC_AUDIENCE,
    OIDC_CERTS_URL,
    PROJECT,
    QUEUES,
    VERIFY_OIDC,
    QueueEntry,
    QueueTableError,
    decode_queue_table,
)

REDIS_URL_SCHEMES = ("redis://", "rediss://", "unix://")  # what redis.asyncio.Redis.from_url reads
_QUEUE_PATH = re.compile(rf"projects/[^/]+/locations/[^/]+/queues/{QUEUE_ID.pattern}")
_HOST_PORT = re.compile(r"(?:\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}")


class HandlerConfigError(ValueError):
    """The environment the handler was started with is unusable; the message names the variable."""


@dataclass(frozen=True)
class HandlerSettings:
    queues: Mapping[str, QueueEntry]  # physical queue id -> what the stack says of it
    invoker_emails: frozenset[str]
    verify_oidc: bool = False
    oidc_audience: str | None = None
    certs_url: str = GOOGLE_CERTS_URL
    project: str | None = None
    redis_url: str | None = None  # the shared idempotency store; None: in memory, per instance
    dead_letter_queue: str | None = None  # the stack's dead-letter queue; None: dead letters to the log only
    emulator_host: str | None = None  # a local Cloud Tasks emulator for the dead-letter queue (local mode)

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> HandlerSettings:
        verify = env.get(VERIFY_OIDC, "false").strip().lower()
        if verify not in ("true", "false"):
            raise HandlerConfigError(f"{VERIFY_OIDC}: {verify!r} is not true or false")
        emails = frozenset(e.strip() for e in env.get(INVOKER_EMAILS, "").split(",") if e.strip())
        if verify == "true" and not emails:
            raise HandlerConfigError(f"{VERIFY_OIDC} is true but {INVOKER_EMAILS} names no invoker to accept")
        if verify == "true" and not env.get(OIDC_AUDIENCE):
            raise HandlerConfigError(
                f"{VERIFY_OIDC} is true but {OIDC_AUDIENCE} is not set; set it to the service's URL"
                " (the stack sets its deterministic URL)"
            )
        try:
            queues = decode_queue_table(env.get(QUEUES, "{}"))
        except QueueTableError as err:
            raise HandlerConfigError(str(err)) from None
        redis_url = env.get(IDEMPOTENCY_REDIS_URL, "").strip() or None
        if redis_url is not None and not redis_url.startswith(REDIS_URL_SCHEMES):
            raise HandlerConfigError(
                f"{IDEMPOTENCY_REDIS_URL}: {redis_url!r} is not a redis:// (rediss://, unix://) URL,"
                " e.g. redis://10.0.0.3:6379/0"
            )
        dead_letter_queue = env.get(DEAD_LETTER_QUEUE, "").strip() or None
        if dead_letter_queue is not None and not _QUEUE_PATH.fullmatch(dead_letter_queue):
            raise HandlerConfigError(
                f"{DEAD_LETTER_QUEUE}: {dead_letter_queue!r} is not a queue's full path"
                " (projects/PROJECT/locations/LOCATION/queues/QUEUE_ID)"
            )
        emulator_host = env.get(EMULATOR_HOST_ENV, "").strip() or None
        if emulator_host is not None and not _HOST_PORT.fullmatch(emulator_host):
            raise HandlerConfigError(f"{EMULATOR_HOST_ENV}: {emulator_host!r} is not host:port (e.g. 127.0.0.1:8123)")
        return cls(
            queues=queues,
            invoker_emails=emails,
            verify_oidc=verify == "true",
            oidc_audience=env.get(OIDC_AUDIENCE) or None,
            certs_url=env.get(OIDC_CERTS_URL) or GOOGLE_CERTS_URL,
            project=env.get(PROJECT) or None,
            redis_url=redis_url,
            dead_letter_queue=dead_letter_queue,
            emulator_host=emulator_host,
        )
