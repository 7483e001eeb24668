"""`python -m handler [--host H] [--port P]`: serve the task handler (port from $PORT, as on Cloud Run)."""

from __future__ import annotations

import argparse
import math
import os
import sys

import uvicorn
from starlette.types import ASGIApp

from contract.handler_env import PORT
from handler.app import create_app
from handler.environment import HandlerConfigError, HandlerSettings
from handler.limits import BODY_TIMEOUT_S, HEADER_TIMEOUT_S, bounded_protocol
from handler.task_types import router

# Cloud Run sends SIGTERM, then SIGKILL 10 s later: finish in-flight tasks within that.
GRACEFUL_SHUTDOWN_S = 8


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m handler", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (the container uses 0.0.0.0)")
    parser.add_argument("--port", type=int, default=int(os.environ.get(PORT, "8080")))
    parser.add_argument(
        "--header-timeout",
        type=_seconds,
        default=HEADER_TIMEOUT_S,
        metavar="S",
        help="close a connection whose request head is not in after S seconds (default %(default)g)",
    )
    parser.add_argument(
        "--body-timeout",
        type=_seconds,
        default=BODY_TIMEOUT_S,
        metavar="S",
        help="answer 408 to a task whose body is not in after S seconds (default %(default)g)",
    )
    args = parser.parse_args()
    try:
        settings = HandlerSettings.from_environ(os.environ)
    except HandlerConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    serve(create_app(router, settings, body_timeout_s=args.body_timeout), args.host, args.port, args.header_timeout)
    return 0


def serve(app: ASGIApp, host: str, port: int, header_timeout_s: float = HEADER_TIMEOUT_S) -> None:
    """Serve until SIGTERM/SIGINT, then stop accepting and let in-flight tasks finish (up to 8 s)."""
    uvicorn.run(
        app,
        host=host,
        port=port,
        http=bounded_protocol(header_timeout_s),  # request heads held to a size and a time (handler.limits)
        access_log=False,  # the app writes one structured entry per request
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


if __name__ == "__main__":
    sys.exit(main())
