"""`python -m localcloud up`: the local stack, serving until Ctrl-C, with every process's log on the console.

The emulator keeps its state in the data dir, so tasks waiting when `up` stopped (or was killed) are
dispatched by the next `up`; the declared queues are updated to the stack file at each start. `fresh`
deletes that state first.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from localcloud.program import PROJECT_DIR
from localcloud.stack import LocalStackError, running, write_outputs
from taskclient.connection import EMULATOR_ENV
from taskclient.interrupts import stop_on_signals


def run_up(
    stack: str,
    outputs_path: Path,
    *,
    emulator_port: int = 0,
    handler_port: int = 0,
    http_port: int = 0,
    console_port: int = 0,
    data_dir: Path | None = None,
    fresh: bool = False,
) -> int:
    if data_dir is not None:
        _prepare_data_dir(data_dir, fresh=fresh)
    stop = stop_on_signals()
    lock = threading.Lock()

    def on_line(source: str, line: str) -> None:
        with lock:
            print(f"{source:>8} | {line}", flush=True)

    with running(
        stack,
        emulator_port=emulator_port,
        handler_port=handler_port,
        http_port=http_port,
        on_line=on_line,
        console_port=console_port,
        outputs_path=outputs_path,
        data_dir=data_dir,
    ) as local:
        write_outputs(local.plan.outputs, outputs_path)
        shown = outputs_path.relative_to(PROJECT_DIR) if outputs_path.is_relative_to(PROJECT_DIR) else outputs_path
        print(
            f"local stack {stack!r} is up\n"
            f"  Cloud Tasks emulator      {EMULATOR_ENV}={local.emulator_host}\n"
            f"  task handler (Cloud Run)  {local.plan.service.url}\n"
            f"  token signing certs       {local.certs_url}\n"
            f"  outputs                   {shown}  (the shape of `pulumi stack output --json`)\n"
            f"{_state_line(data_dir, local.waiting)}"
            f"console: {local.console_url}\n"
            f"for the task client (send, bulk, buffer): {local.export_line()}\n"
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


def _prepare_data_dir(data_dir: Path, *, fresh: bool) -> None:
    """Empty the emulator's state in `data_dir` when `fresh`; LocalStackError when an emulator could not use it."""
    from localcloud.emulator.store import DataDirInUse, StoreError, UnreadableDataDir, check_data_dir, remove_state

    try:
        if fresh:
            remove_state(data_dir)
        check_data_dir(data_dir)
    except UnreadableDataDir as error:
        raise LocalStackError(
            f"{error}: start empty with `localcloud up --fresh` (deletes the state in {_shown(data_dir)}),"
            " or choose another --data-dir"
        ) from None
    except DataDirInUse as error:
        raise LocalStackError(
            f"{error}, by another `localcloud up` perhaps: stop that, or choose another --data-dir"
        ) from None
    except StoreError as error:
        raise LocalStackError(f"{error}: choose another --data-dir") from None


def _state_line(data_dir: Path | None, waiting: int) -> str:
    if data_dir is None:
        return "  emulator state            in memory only\n"
    found = f"{waiting} task{'' if waiting == 1 else 's'} waiting from the last run"
    return f"  emulator state            {_shown(data_dir)}  ({found}; --fresh starts empty)\n"


def _shown(path: Path) -> str:
    return str(path.relative_to(PROJECT_DIR)) if path.is_relative_to(PROJECT_DIR) else str(path)


def _python() -> str:
    """This interpreter as a command to paste into a shell here: the venv's, not a bare `python`."""
    path = Path(sys.executable)
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)
