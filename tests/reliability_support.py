"""Shared support for the reliability suite (tests/test_reliability_*.py): watching the local stack's processes,
starting and restarting them, and talking to the emulator with the stock client.

Nothing here sleeps to let time pass: every wait is on a condition (a line printed, a process exited), with a
timeout that only bounds a failure.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from contract.outcomes import TaskOutcome
from contract.outputs import StackOutputs
from localcloud.program import PROJECT_DIR
from localcloud.stack import RunningStack, _handler_env, running

TESTS_DIR = Path(__file__).resolve().parent
PROBE = TESTS_DIR / "reliability_probe.py"
PROBE_COMMAND = (sys.executable, str(PROBE))
WAIT_S = 60  # bounds a wait that should end in well under a second to a few seconds; reached only on failure

Key = tuple[str, str]  # (queue id, task id)
# "dispatch queue=Q task=T attempt=N status=S latency_ms=L" (localcloud.emulator.realtime.DispatchResult.line)
DISPATCH = re.compile(r"dispatch queue=(\S+) task=(\S+) attempt=(\d+) status=(\d+|none)")
PROBE_EVENT = re.compile(r"(started|worked) (\S+) pid=(\d+)")
ARRIVED = re.compile(r"arrived (\S+) attempt=(\d+) at=([0-9.]+)")
LEDGER = re.compile(r"ledger (\S+) sha256=([0-9a-f]{64})")


def key_of(task_name: str) -> Key:
    """(queue id, task id) of a full task name projects/P/locations/L/queues/Q/tasks/T."""
    parts = task_name.split("/")
    return parts[5], parts[7]


@dataclass
class Watch:
    """Everything the local processes print, parsed as it arrives, with one condition to wait on.

    Handler JSON entries with an outcome are kept per task; emulator dispatch lines per task as (attempt, status);
    probe lines ("started"/"worked" with the process id, "arrived" with a timestamp, "ledger" with a body's
    sha256) as events.
    """

    entries: dict[Key, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    attempts: dict[Key, list[tuple[int, int | None]]] = field(default_factory=lambda: defaultdict(list))
    work: list[tuple[str, str, int]] = field(default_factory=list)  # (event, task id, pid)
    arrivals: dict[str, list[tuple[int, float]]] = field(default_factory=lambda: defaultdict(list))
    ledger: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # task id -> body sha256s
    lines: list[tuple[str, str]] = field(default_factory=list)
    terminal: set[Key] = field(default_factory=set)  # tasks with a "done" or "dead-lettered" entry
    acknowledged: set[Key] = field(default_factory=set)  # tasks the emulator got a 2xx for
    changed: threading.Condition = field(default_factory=threading.Condition)

    def on_line(self, source: str, line: str) -> None:
        with self.changed:
            self.lines.append((source, line))
            if source == "emulator":
                self._dispatch(line)
            else:
                self._handler(line)
            self.changed.notify_all()

    def _dispatch(self, line: str) -> None:
        match = DISPATCH.search(line)
        if match:
            status = None if match[4] == "none" else int(match[4])
            self.attempts[(match[1], match[2])].append((int(match[3]), status))
            if status is not None and 200 <= status < 300:
                self.acknowledged.add((match[1], match[2]))

    def _handler(self, line: str) -> None:
        if line.startswith("{"):
            entry = json.loads(line)
            if "deadLetter" in entry:
                self.dead_letters.append(entry["deadLetter"])
            elif "outcome" in entry and "task" in entry:
                key = (entry["queue"], entry["task"])
                self.entries[key].append(entry)
                if entry["outcome"] in (TaskOutcome.DONE, TaskOutcome.DEAD_LETTERED):
                    self.terminal.add(key)
        elif match := PROBE_EVENT.fullmatch(line):
            self.work.append((match[1], match[2], int(match[3])))
        elif match := ARRIVED.fullmatch(line):
            self.arrivals[match[1]].append((int(match[2]), float(match[3])))
        elif match := LEDGER.fullmatch(line):
            self.ledger[match[1]].append(match[2])

    def wait(self, predicate: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
        """Block until `predicate()` is truthy (evaluated under the lock at each new line); its value."""
        with self.changed:
            value = self.changed.wait_for(predicate, timeout)
            if not value:
                tail = "\n".join(f"{s}: {line}" for s, line in self.lines[-15:])
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last lines:\n{tail}")
            return value

    def line_with(self, source: str, fragment: str) -> str:
        return str(
            self.wait(
                lambda: next((line for s, line in self.lines if s == source and fragment in line), None),
                f"{source} to print {fragment!r}",
            )
        )

    def outcomes(self, key: Key) -> list[str]:
        with self.changed:
            return [e["outcome"] for e in self.entries.get(key, [])]

    def outcome_counts(self) -> Counter[str]:
        with self.changed:
            return Counter(e["outcome"] for entries in self.entries.values() for e in entries)


@dataclass
class LocalStack:
    """`localcloud.stack.running(...)`, watched: the running stack, its outputs, and what its processes print."""

    local: RunningStack
    watch: Watch
    outputs: StackOutputs

    @property
    def emulator(self) -> subprocess.Popen[str]:
        return self.local.processes[0]

    def queue_id(self, key: str) -> str:
        return self.outputs.queues[key].id


@contextmanager
def local_stack(stack: str = "dev", handler_command: Sequence[str] | None = None) -> Iterator[LocalStack]:
    watch = Watch()
    options: dict[str, Any] = {"handler_command": handler_command} if handler_command else {}
    with running(stack, on_line=watch.on_line, **options) as local:
        yield LocalStack(local, watch, StackOutputs.from_mapping(local.plan.outputs))


@contextmanager
def stock_client(host: str) -> Iterator[tasks_v2.CloudTasksClient]:
    """The stock google-cloud-tasks client on a plaintext channel to the emulator."""
    channel = grpc.insecure_channel(host)
    try:
        yield tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
    finally:
        channel.close()


def start_process(
    command: Sequence[str], env: Mapping[str, str], source: str, on_line: Callable[[str, str], None]
) -> subprocess.Popen[str]:
    """A process of the local stack, started the way localcloud.stack starts them, its output to `on_line`."""
    full_env = {**os.environ, "PYTHONPATH": f"{PROJECT_DIR}{os.pathsep}{TESTS_DIR}", "PYTHONUNBUFFERED": "1", **env}
    process = subprocess.Popen(
        list(command), env=full_env, cwd=PROJECT_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    stream: IO[str] = process.stdout

    def pump() -> None:
        for line in stream:
            on_line(source, line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True, name=f"{source}-{process.pid}-output").start()
    return process


def stop_process(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)


def uvicorn_ready(watch: Watch, port: int, after: int) -> None:
    """Wait for a handler's "Uvicorn running on ...:<port>" line printed after line number `after`."""
    fragment = f"Uvicorn running on http://127.0.0.1:{port}"
    watch.wait(
        lambda: any(fragment in line for _, line in watch.lines[after:]),
        f"a handler to listen on port {port}",
    )


def start_probe_generation(stack: LocalStack, generation: int) -> subprocess.Popen[str]:
    """A new probe process (PROBE_GENERATION=`generation`) on the stack's handler port, with the environment the
    local stack gives its handler; ready when this returns, and stopped with the stack. The previous handler
    must be gone."""
    local = stack.local
    lines_before = len(stack.watch.lines)
    env = {
        **_handler_env(local.plan.service, local.certs_url, local.emulator_host),
        "PROBE_GENERATION": str(generation),
    }
    port = local.plan.service.port
    process = start_process([*PROBE_COMMAND, "--port", str(port)], env, "handler", stack.watch.on_line)
    local.processes.append(process)
    uvicorn_ready(stack.watch, port, lines_before)
    return process
