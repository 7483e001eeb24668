"""One Cloud Tasks client (one channel) per publisher or DeadLetters: Google's endpoint, or a local emulator.

A Connection also makes the grpc.aio channels of the asyncio publisher (taskclient.aio), to the same place with
the same credentials: a grpc.aio channel belongs to the event loop it is made in, so it is made there, per loop.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import google.auth
import google.auth.credentials
import google.auth.exceptions
import grpc
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import (
    CloudTasksGrpcAsyncIOTransport,
    CloudTasksGrpcTransport,
)

from contract.cloud_tasks import EMULATOR_HOST_ENV
from taskclient.errors import NO_CREDENTIALS_OR_EMULATOR, TaskClientError, TaskValidationError

EMULATOR_ENV = EMULATOR_HOST_ENV
_HOST_PORT = re.compile(r"(?:\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}")
CLOUD_TASKS_TARGET = f"{CloudTasksGrpcTransport.DEFAULT_HOST}:443"
_UNLIMITED_MESSAGES = (("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1))


@dataclass(frozen=True)
class Connection:
    client: tasks_v2.CloudTasksClient
    # Who calls CreateTask, for error messages that name the principal missing a role.
    principal: str
    # Where the asyncio channels go: the emulator's host:port (plaintext), or None for Cloud Tasks itself.
    emulator_host: str | None = None
    # The credentials of the Cloud Tasks path (None: application default credentials, looked up again).
    credentials: google.auth.credentials.Credentials | None = None

    def close(self) -> None:
        self.client.transport.close()  # type: ignore[no-untyped-call]

    def aio_channel(self) -> grpc.aio.Channel:
        """A new grpc.aio channel, made in (and bound to) the running event loop: to the emulator in plaintext,
        else to cloudtasks.googleapis.com:443 with TLS, these credentials and the client library's own scopes
        (its asyncio transport's create_channel, as the synchronous client's transport does it)."""
        if self.emulator_host is not None:
            return grpc.aio.insecure_channel(self.emulator_host, options=_UNLIMITED_MESSAGES)
        return CloudTasksGrpcAsyncIOTransport.create_channel(
            CLOUD_TASKS_TARGET, credentials=self.credentials, options=_UNLIMITED_MESSAGES
        )


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
        client = tasks_v2.CloudTasksClient(transport=transport)
        return Connection(client, principal=f"the caller (emulator {host})", emulator_host=host)
    try:
        credentials, _ = google.auth.default()
    except google.auth.exceptions.DefaultCredentialsError as err:
        message = NO_CREDENTIALS_OR_EMULATOR.format(emulator_env=EMULATOR_ENV)
        raise TaskClientError(f"{message} ({err})") from None
    email = getattr(credentials, "service_account_email", None)
    principal = (
        f"serviceAccount:{email}" if email and email != "default" else "the caller (application default credentials)"
    )
    client = tasks_v2.CloudTasksClient(credentials=credentials)
    return Connection(client, principal=principal, credentials=credentials)
