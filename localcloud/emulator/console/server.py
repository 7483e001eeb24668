"""The console served by uvicorn on 127.0.0.1, in a thread of its own with its own event loop.

The socket is bound on construction, so a port in use fails there (before anything else starts) and the URL
is known at once; `start()` serves, `stop()` closes it. The dispatcher's loop is never touched: the console only
reads the core (under its lock, briefly) and calls the core's RPC methods.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from types import TracebackType

import uvicorn

from localcloud.emulator.console.app import create_app
from localcloud.emulator.console.dead_letters import ConsoleDeadLetters
from localcloud.emulator.core import CloudTasksCore

__all__ = ["DEFAULT_CONSOLE_PORT", "ConsoleServer"]

DEFAULT_CONSOLE_PORT = 8125
HOST = "127.0.0.1"  # never another address: the console can purge queues and shows task bodies
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0


class _Server(uvicorn.Server):
    """uvicorn's server, saying when it is serving (or has failed to start)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            self.ready.set()


class ConsoleServer:
    """The web console of `core`, on http://127.0.0.1:`port`/ (0: a free port); dead letters through the
    emulator's own gRPC address, replayed with the stack outputs at `outputs_path` when given."""

    def __init__(
        self, core: CloudTasksCore, *, grpc_address: str, outputs_path: Path | None = None, port: int = 0
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"console port: {port} is outside 0..65535 (0: any free port)")
        try:
            self._socket = socket.create_server((HOST, port))
        except OSError as err:
            raise OSError(
                f"the console cannot listen on {HOST}:{port}: {err.strerror} (choose another --console-port; 0: any"
                " free one)"
            ) from None
        self.port = int(self._socket.getsockname()[1])
        self.url = f"http://{HOST}:{self.port}/"
        self.dead_letters = ConsoleDeadLetters(core, grpc_address, outputs_path)
        self.app = create_app(core, self.dead_letters, port=self.port)
        config = uvicorn.Config(
            self.app,
            log_config=None,  # the emulator's process keeps its own logging
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self._server = _Server(config)
        self._thread: threading.Thread | None = None

    def start(self) -> ConsoleServer:
        if self._thread is not None:
            raise RuntimeError("ConsoleServer already started")
        self._thread = threading.Thread(target=self._serve, name="emulator-console", daemon=True)
        self._thread.start()
        if not self._server.ready.wait(_START_TIMEOUT_S) or not self._server.started:
            self.stop()
            raise RuntimeError(f"the console did not start on {self.url}")
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.should_exit = True
            self._thread.join(_STOP_TIMEOUT_S)
            self._thread = None
        self._socket.close()
        self.dead_letters.close()

    def _serve(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self._server.ready.set()

    def __enter__(self) -> ConsoleServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
