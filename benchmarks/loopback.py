"""What every benchmark here needs: the real task handler, started on a free loopback port."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from contract import handler_env  # noqa: E402
from localcloud.stack import free_port  # noqa: E402

__all__ = ["QUEUE", "ROOT", "cpu_seconds", "free_port", "handler_environment", "load", "start_handler", "task_request"]

QUEUE = "bench-default-000000"  # the queue id the handler is started knowing


def start_handler(port: int, queue_ids: list[str], command: list[str] | None = None) -> subprocess.Popen[bytes]:
    """`python -m handler` (or `command`, a server taking the same environment) on 127.0.0.1:port, knowing
    `queue_ids`, its log discarded; returns once healthy."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **handler_environment(queue_ids)}
    handler = subprocess.Popen(
        command or [sys.executable, "-m", "handler", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return handler
        except OSError:
            time.sleep(0.05)  # still starting
    handler.kill()
    raise SystemExit("the handler did not start")


def handler_environment(queue_ids: list[str]) -> dict[str, str]:
    """The variables that tell the handler its queues: `queue_ids`, each with five attempts."""
    queues = {queue_id: handler_env.QueueEntry(key="default", max_attempts=5) for queue_id in queue_ids}
    return {handler_env.QUEUES: handler_env.encode_queue_table(queues)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def task_request(n: int) -> bytes:
    body = b"{}"
    return (
        b"POST /tasks/default HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        + f"X-CloudTasks-QueueName: {QUEUE}\r\nX-CloudTasks-TaskName: t{n}\r\n".encode()
        + b"X-CloudTasks-TaskRetryCount: 0\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


async def connection(port: int, make: object, counter: itertools.count[int], stop_at: float, done: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    completed = 0
    try:
        while time.perf_counter() < stop_at:
            writer.write(make(next(counter)))  # type: ignore[operator]
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = int(
                next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
            )
            await reader.readexactly(length)
            if status != 200:
                raise SystemExit(f"unexpected status {status}")
            completed += 1
    finally:
        writer.close()
    done.append(completed)


async def load(port: int, make: object, seconds: float, connections: int) -> tuple[int, float]:
    counter = itertools.count()
    done: list[int] = []
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(*(connection(port, make, counter, stop_at, done) for _ in range(connections)))
    return sum(done), time.perf_counter() - started
