"""`python -m localcloud up`: the local stack, serving until Ctrl-C, with every process's log on the console."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from localcloud.program import PROJECT_DIR
from localcloud.stack import running, write_outputs
from taskclient.connection import EMULATOR_ENV


def run_up(stack: str, outputs_path: Path, *, emulator_port: int = 0, handler_port: int = 0, http_port: int = 0) -> int:
    stop = threading.Event()

    def on_signal(signum: int, _: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    lock = threading.Lock()

    def on_line(source: str, line: str) -> None:
        with lock:
            print(f"{source:>8} | {line}", flush=True)

    with running(
        stack, emulator_port=emulator_port, handler_port=handler_port, http_port=http_port, on_line=on_line
    ) as local:
        write_outputs(local.plan.outputs, outputs_path)
        shown = outputs_path.relative_to(PROJECT_DIR) if outputs_path.is_relative_to(PROJECT_DIR) else outputs_path
        print(
            f"local stack {stack!r} is up\n"
            f"  Cloud Tasks emulator      {EMULATOR_ENV}={local.emulator_host}\n"
            f"  task handler (Cloud Run)  {local.plan.service.url}\n"
            f"  token signing certs       {local.certs_url}\n"
            f"  outputs                   {shown}  (the shape of `pulumi stack output --json`)\n"
            f"try: {EMULATOR_ENV}={local.emulator_host} {_python()} -m taskclient send --outputs {shown}"
            " --json '{}'\n"
            "Ctrl-C stops it.",
            flush=True,
        )
        while not stop.wait(0.5):
            exited = [p for p in local.processes if p.poll() is not None]
            if exited:
                print(f"a local process exited with status {exited[0].returncode}; stopping", file=sys.stderr)
                return 1
    return 0


def _python() -> str:
    """This interpreter as a command to paste into a shell here: the venv's, not a bare `python`."""
    path = Path(sys.executable)
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)
