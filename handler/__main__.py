"""`python -m handler [--host H] [--port P]`: serve the task handler (port from $PORT, as on Cloud Run)."""

from __future__ import annotations

import argparse
import os
import sys

import uvicorn
from starlette.types import ASGIApp

from contract.handler_env import PORT
from handler.app import create_app
from handler.environment import HandlerConfigError, HandlerSettings
from handler.task_types import router

# Cloud Run sends SIGTERM, then SIGKILL 10 s later: finish in-flight tasks within that.
GRACEFUL_SHUTDOWN_S = 8


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m handler", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (the container uses 0.0.0.0)")
    parser.add_argument("--port", type=int, default=int(os.environ.get(PORT, "8080")))
    args = parser.parse_args()
    try:
        settings = HandlerSettings.from_environ(os.environ)
    except HandlerConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    serve(create_app(router, settings), args.host, args.port)
    return 0


def serve(app: ASGIApp, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT, then stop accepting and let in-flight tasks finish (up to 8 s)."""
    uvicorn.run(
        app,
        host=host,
        port=port,
        access_log=False,  # the app writes one structured entry per request
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )


if __name__ == "__main__":
    sys.exit(main())
