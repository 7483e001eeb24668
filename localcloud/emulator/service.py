"""The whole local Cloud Tasks in one object: core, real dispatcher, gRPC server and (optionally) OIDC keys.

    with CloudTasksEmulator(port=0, http_port=0) as emulator:
        emulator.address      # "127.0.0.1:PORT" for grpc.insecure_channel
        emulator.oidc_url     # "http://127.0.0.1:PORT": /oauth2/v1/certs, /oauth2/v3/certs, discovery,
                              # and BufferTask (POST /v2/{queue}/tasks:buffer; see http.py)
        emulator.console_url  # "http://127.0.0.1:PORT/", given console_port: the web console

OIDC tokens are signed by one `TokenIssuer` per emulator run; the key server publishes that issuer's keys, so
a handler verifying tokens (as Cloud Run would) points its certs URL there. Given `data_dir`, the emulator is
durable (store.py): it starts from the state of the last run on that dir, signing key included, and keeps it.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from contract.cloud_tasks import QUEUE_REUSE_BLOCKED_S
from localcloud.emulator.clock import Clock
from localcloud.emulator.core import CloudTasksCore
from localcloud.emulator.faults import FaultInjector
from localcloud.emulator.realtime import AsyncDispatcher
from localcloud.emulator.server import EmulatorServer
from localcloud.emulator.store import SqliteStore

if TYPE_CHECKING:
    from localcloud.emulator.console.server import ConsoleServer
    from localcloud.emulator.http import OidcHttpServer

__all__ = ["CloudTasksEmulator"]


class CloudTasksEmulator:
    """Starts and stops a core, an AsyncDispatcher, an EmulatorServer and, given `http_port`, an OidcHttpServer;
    given `console_port`, a ConsoleServer (dead letters replayed with the stack outputs at `outputs_path`)."""

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
        console_port: int | None = None,
        outputs_path: Path | None = None,
        data_dir: Path | None = None,
    ) -> None:
        from localcloud.emulator.oidc import TokenIssuer  # signing keys: only built when an emulator is

        # Durable with a data dir (store.py): the state and the signing key of the last run, kept from now on.
        self.store = SqliteStore(data_dir) if data_dir is not None else None
        try:
            saved_key = self.store.signing_key() if self.store is not None else None
            self.issuer = TokenIssuer(signing_key=saved_key)
            if self.store is not None and saved_key is None:
                self.store.save_signing_key(self.issuer.saved_key())
            self.core = CloudTasksCore(
                clock,
                minter=self.issuer,
                task_tombstone_ttl=task_tombstone_ttl,
                queue_tombstone_ttl=queue_tombstone_ttl,
                strict_deadlines=strict_deadlines,
                store=self.store,
            )
        except BaseException:
            if self.store is not None:
                self.store.close()
            raise
        self.server = EmulatorServer(self.core, host=host, port=port, workers=workers)
        self.dispatcher = AsyncDispatcher(self.core)
        self._host = host
        self._http_port = http_port
        self.keys: OidcHttpServer | None = None
        self._console_port = console_port
        self._outputs_path = outputs_path
        self.console: ConsoleServer | None = None

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

    @property
    def console_url(self) -> str | None:
        return self.console.url if self.console is not None else None

    def start(self) -> CloudTasksEmulator:
        try:
            if self._http_port is not None:
                from localcloud.emulator.http import OidcHttpServer

                self.keys = OidcHttpServer(self.issuer, host=self._host, port=self._http_port, core=self.core).start()
            if self.store is not None:
                self.store.start_flushing()
            self.dispatcher.start()
            self.server.start()
            if self._console_port is not None:
                from localcloud.emulator.console.server import ConsoleServer  # Starlette: only with a console

                self.console = ConsoleServer(
                    self.core, grpc_address=self.address, outputs_path=self._outputs_path, port=self._console_port
                ).start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.console is not None:
            self.console.stop()
        self.server.stop()
        self.dispatcher.stop()
        if self.keys is not None:
            self.keys.stop()
        if self.store is not None:
            self.store.close()  # after the dispatcher: the outcomes of the attempts it cut are committed too

    def __enter__(self) -> CloudTasksEmulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
