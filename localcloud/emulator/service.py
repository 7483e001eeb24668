"""The whole local Cloud Tasks in one object: core, real dispatcher, gRPC server and (optionally) OIDC keys.

    with CloudTasksEmulator(port=0, http_port=0) as emulator:
        emulator.address      # "127.0.0.1:PORT" for grpc.insecure_channel
        emulator.oidc_url     # "http://127.0.0.1:PORT": /oauth2/v1/certs, /oauth2/v3/certs, discovery

OIDC tokens are signed by one `TokenIssuer` per emulator run; the key server publishes that issuer's keys, so
a handler verifying tokens (as Cloud Run would) points its certs URL there.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

from contract.cloud_tasks import QUEUE_REUSE_BLOCKED_S
from localcloud.emulator.clock import Clock
from localcloud.emulator.core import CloudTasksCore
from localcloud.emulator.faults import FaultInjector
from localcloud.emulator.realtime import AsyncDispatcher
from localcloud.emulator.server import EmulatorServer

if TYPE_CHECKING:
    from localcloud.emulator.http import OidcHttpServer

__all__ = ["CloudTasksEmulator"]


class CloudTasksEmulator:
    """Starts and stops a core, an AsyncDispatcher, an EmulatorServer and, given `http_port`, an OidcHttpServer."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        http_port: int | None = None,
        task_tombstone_ttl: float = 3600.0,
        queue_tombstone_ttl: float = QUEUE_REUSE_BLOCKED_S,
        strict_deadlines: bool = True,
        clock: Clock | None = None,
        workers: int = 16,
    ) -> None:
        from localcloud.emulator.oidc import TokenIssuer  # signing keys: only built when an emulator is

        self.issuer = TokenIssuer()
        self.core = CloudTasksCore(
            clock,
            minter=self.issuer,
            task_tombstone_ttl=task_tombstone_ttl,
            queue_tombstone_ttl=queue_tombstone_ttl,
            strict_deadlines=strict_deadlines,
        )
        self.server = EmulatorServer(self.core, host=host, port=port, workers=workers)
        self.dispatcher = AsyncDispatcher(self.core)
        self._host = host
        self._http_port = http_port
        self.keys: OidcHttpServer | None = None

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def faults(self) -> FaultInjector:
        """The gRPC server's fault injector (failures, latency, recorded calls)."""
        return self.server.faults

    @property
    def oidc_url(self) -> str | None:
        return self.keys.url if self.keys is not None else None

    def start(self) -> CloudTasksEmulator:
        try:
            if self._http_port is not None:
                from localcloud.emulator.http import OidcHttpServer

                self.keys = OidcHttpServer(self.issuer, host=self._host, port=self._http_port).start()
            self.dispatcher.start()
            self.server.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.server.stop()
        self.dispatcher.stop()
        if self.keys is not None:
            self.keys.stop()

    def __enter__(self) -> CloudTasksEmulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
