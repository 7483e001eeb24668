"""One Cloud Tasks client (one channel) per publisher or DeadLetters: Google's endpoint, or a local emulator."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import google.auth
import google.auth.exceptions
import grpc
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from contract.cloud_tasks import EMULATOR_HOST_ENV
from taskclient.errors import NO_CREDENTIALS_OR_EMULATOR, TaskClientError, TaskValidationError

EMULATOR_ENV = EMULATOR_HOST_ENV
_HOST_PORT = re.compile(r"(?:\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}")
_UNLIMITED_MESSAGES = (("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1))


@dataclass(frozen=True)
class Connection:
    client: tasks_v2.CloudTasksClient
    # Who calls CreateTask, for error messages that name the principal missing a role.
    principal: str

    def close(self) -> None:
        self.client.transport.close()  # type: ignore[no-untyped-call]


def connect(emulator_host: str | None = None) -> Connection:
    """A client for `emulator_host` (plaintext, no credentials) when given or set in the environment,
    else for Cloud Tasks with application default credentials."""
    host = emulator_host if emulator_host is not None else os.environ.get(EMULATOR_ENV, "")
    if host:
        if not _HOST_PORT.fullmatch(host):
            raise TaskValidationError(f"{EMULATOR_ENV}: {host!r} is not host:port (e.g. 127.0.0.1:8123)")
        # An injected channel: client_options with an endpoint would still build a TLS channel. No message size
        # limit, as on the channel the client builds for Google (its transport's create_channel): a page of
        # tasks in FULL view holds their bodies, well over gRPC's 4 MB default.
        channel = grpc.insecure_channel(host, options=_UNLIMITED_MESSAGES)
        transport = CloudTasksGrpcTransport(channel=channel)
        return Connection(tasks_v2.CloudTasksClient(transport=transport), principal=f"the caller (emulator {host})")
    try:
        credentials, _ = google.auth.default()
    except google.auth.exceptions.DefaultCredentialsError as err:
        message = NO_CREDENTIALS_OR_EMULATOR.format(emulator_env=EMULATOR_ENV)
        raise TaskClientError(f"{message} ({err})") from None
    email = getattr(credentials, "service_account_email", None)
    principal = (
        f"serviceAccount:{email}" if email and email != "default" else "the caller (application default credentials)"
    )
    return Connection(tasks_v2.CloudTasksClient(credentials=credentials), principal=principal)
