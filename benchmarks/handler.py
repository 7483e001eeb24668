"""Handler throughput: a no-op task against a bare endpoint of the same server, in one run.

Starts `python -m handler` on loopback and drives it from this process with keep-alive HTTP/1.1
connections (plain asyncio streams: a load generator lighter than any HTTP client library, so the
server is what is measured). The bare endpoint is GET /health; the task is POST /tasks/default with
an empty JSON object and the Cloud Tasks headers, a new task id each time, so every request goes
through header parsing, the idempotency claim (the in-memory store: the benchmark names no Redis),
JSON decoding, the work function and the log entry. Token checks are off (the environment asks for none), as in
local mode. Besides the rates, the server's own CPU time per request (/proc) is printed: on a machine
shared with the load generator and other work, it drifts less than the rates.

    venv/bin/python benchmarks/handler.py [--seconds 5] [--connections 32]
    venv/bin/python benchmarks/handler.py --breakdown      # + the same server with one step stubbed out
    venv/bin/python benchmarks/handler.py --profile OUT    # + cProfile of the server under the task load
    venv/bin/python benchmarks/handler.py --in-process     # + each contender's app called in this process

--breakdown attributes the task's cost: benchmarks/handler_contenders.py starts the handler with one step
of the no-op task stubbed out (benchmark-only knobs; the handler has none), each contender against its own
GET /health in the same run. What a step costs is the full task's CPU per request less the contender's.
The last contender, server-only, has no app at all (every request answered at once): its two figures are
the server's own work, and differ by what the task request's shape (headers, body) costs the server.

--in-process calls each contender's ASGI app from this process, with the scope, body and headers the server
would hand it (the body already held whole, as handler.limits marks it), and no server, sockets or load
generator: the CPU time per request of the app alone, the contenders alternated, each the fastest of its
rounds. On a machine whose load moves the server's figures by a fifth or more, these move by about a tenth.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import pstats
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import handler_contenders
from loopback import QUEUE, cpu_seconds, free_port, handler_environment, load, start_handler, task_request

from handler.limits import BODY_BUFFERED

BARE = "bare GET /health"
TASK = "no-op task POST /tasks/default"
CONTENDERS = Path(__file__).resolve().parent / "handler_contenders.py"
# What each contender leaves out of the no-op task (benchmarks/handler_contenders.py).
STEPS = {
    "no-request-log": "the request's log entry",
    "no-claim": "the idempotency claim (MemoryStore)",
    "no-service": "all of TaskService (headers, claim, body, JSON, work, log)",
    "server-only": "the whole app (Starlette too): every request answered at once",
}
ALTERNATIONS = 4  # bare then task, this many times: the spread of their ratio shows the machine's drift


@dataclass(frozen=True)
class Measured:
    totals: dict[str, list[float]]  # name -> [requests, seconds, server CPU seconds]
    ratios: list[float]  # per alternation: bare's server CPU per request over the task's


def bare_request(_: int) -> bytes:
    return b"GET /health HTTP/1.1\r\nHost: bench\r\n\r\n"


def measure(handler: subprocess.Popen[bytes], port: int, seconds: float, connections: int) -> Measured:
    """name -> [requests, seconds, server CPU seconds], bare and task alternated ALTERNATIONS times; and each
    alternation's ratio of server CPU per request, bare's over the task's."""
    asyncio.run(load(port, bare_request, 1.0, connections))  # warm up
    totals = {BARE: [0.0, 0.0, 0.0], TASK: [0.0, 0.0, 0.0]}
    ratios = []
    # Alternated, so drift on a shared machine falls on both alike.
    makes: dict[str, Callable[[int], bytes]] = {BARE: bare_request, TASK: task_request}
    for _ in range(ALTERNATIONS):
        per_request = {}
        for name, make in makes.items():
            cpu = cpu_seconds(handler.pid)
            count, elapsed = asyncio.run(load(port, make, seconds / ALTERNATIONS, connections))
            cpu = cpu_seconds(handler.pid) - cpu
            totals[name][0] += count
            totals[name][1] += elapsed
            totals[name][2] += cpu
            per_request[name] = cpu / count
        ratios.append(per_request[BARE] / per_request[TASK])
    return Measured(totals, ratios)


def run_server(command: list[str] | None, seconds: float, connections: int) -> Measured:
    port = free_port()
    handler = start_handler(port, [QUEUE], None if command is None else [*command, str(port)])
    try:
        return measure(handler, port, seconds, connections)
    finally:
        handler.terminate()
        handler.wait(timeout=15)


def print_table(title: str, measured: Measured) -> None:
    totals = measured.totals
    rates = {name: count / seconds for name, (count, seconds, _) in totals.items()}
    print(f"\n{title}")
    print(f"{'endpoint':<34}{'requests':>10}{'req/s':>9}{'vs bare':>9}{'server CPU us/req':>19}")
    for name, (count, _, cpu) in totals.items():
        print(f"{name:<34}{count:>10.0f}{rates[name]:>9.0f}{rates[name] / rates[BARE]:>9.2f}{1e6 * cpu / count:>19.0f}")
    ratios = measured.ratios
    print(f"task vs bare by server CPU per request, in each of the {len(ratios)} alternations: {min(ratios):.2f} to"
          f" {max(ratios):.2f}")  # fmt: skip


def breakdown(full: Measured, seconds: float, connections: int) -> None:
    def per_request(totals: dict[str, list[float]], name: str) -> float:
        return 1e6 * totals[name][2] / totals[name][0]

    rows = []
    for step, what in STEPS.items():
        measured = run_server([sys.executable, str(CONTENDERS), step], seconds, connections)
        print_table(f"contender {step}: without {what}", measured)
        rows.append((step, what, measured.totals))
    task_cpu = per_request(full.totals, TASK)
    print(f"\nBreakdown of the no-op task, server CPU per request (full task: {task_cpu:.0f} us, bare: "
          f"{per_request(full.totals, BARE):.0f} us)")  # fmt: skip
    print(f"{'without':<16}{'us/req':>8}{'step costs us':>15}{'task vs bare':>14}  step")
    for step, what, totals in rows:
        cpu = per_request(totals, TASK)
        ratio = (totals[TASK][0] / totals[TASK][1]) / (totals[BARE][0] / totals[BARE][1])
        print(f"{step:<16}{cpu:>8.0f}{task_cpu - cpu:>15.0f}{ratio:>14.2f}  {what}")


def asgi_scope(request: bytes) -> tuple[dict[str, Any], bytes]:
    """The ASGI scope uvicorn builds for `request` (a head and a body of one read), and the body."""
    head, body = request.split(b"\r\n\r\n", 1)
    request_line, *lines = head.split(b"\r\n")
    method, path, _ = request_line.decode().split(" ")
    headers = [(name.lower(), value.strip()) for name, value in (line.split(b":", 1) for line in lines)]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8080), "extensions": {BODY_BUFFERED: {}}}  # fmt: skip
    return scope, body


def in_process(requests: int, rounds: int) -> None:
    os.environ.update(handler_environment([QUEUE]))
    apps = {step: handler_contenders.app(step) for step in ("full", *STEPS)}
    numbers = itertools.count()  # a new task id for every request of the run: a repeated one would be a duplicate

    async def call(app: Any, make: Callable[[int], bytes], count: int) -> float:
        async def send(_: Any) -> None:
            return None

        requests = [asgi_scope(make(next(numbers))) for _ in range(count)]  # made before the clock starts
        started = time.process_time()
        for scope, body in requests:
            message = {"type": "http.request", "body": body, "more_body": False}

            async def receive() -> dict[str, Any]:
                return message  # noqa: B023  (each request's own, awaited before the next is made)

            await app(scope, receive, send)
        return (time.process_time() - started) / count

    async def measure_all() -> dict[tuple[str, str], float]:
        best: dict[tuple[str, str], float] = {}
        for app in apps.values():  # warm up: the first requests of each app pay its caches
            await call(app, task_request, requests // 10)
        for _ in range(rounds):
            for step, app in apps.items():
                for name, make in ((BARE, bare_request), (TASK, task_request)):
                    seconds = await call(app, make, requests)
                    best[step, name] = min(best.get((step, name), seconds), seconds)
        return best

    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):  # the log lines, as the server's
        best = asyncio.run(measure_all())
    full = best["full", TASK]
    print(f"\nIn this process, {requests} requests a round, the fastest of {rounds} rounds; CPU per request"
          f" (full task: {1e6 * full:.1f} us, bare: {1e6 * best['full', BARE]:.1f} us)")  # fmt: skip
    print(f"{'without':<16}{'us/req':>8}{'step costs us':>15}  step")
    for step, what in STEPS.items():
        cpu = best[step, TASK]
        print(f"{step:<16}{1e6 * cpu:>8.1f}{1e6 * (full - cpu):>15.1f}  {what}")


def profile(out: str, seconds: float, connections: int) -> None:
    """The full server under cProfile while it serves the task load; the top of the profile printed."""
    port = free_port()
    command = [sys.executable, "-m", "cProfile", "-o", out, "-m", "handler", "--port", str(port)]
    handler = start_handler(port, [QUEUE], command)
    try:
        asyncio.run(load(port, task_request, seconds, connections))
    finally:
        # SIGINT: uvicorn re-raises the signal it stopped on, and only KeyboardInterrupt lets cProfile write.
        handler.send_signal(signal.SIGINT)
        handler.wait(timeout=30)
    print(f"\ncProfile of the server under {seconds:g} s of the task load ({out}), top 25 by own time:")
    pstats.Stats(out).sort_stats("tottime").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement (default 5)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--breakdown", action="store_true", help="also run the contenders with a step stubbed out")
    parser.add_argument("--profile", metavar="OUT", help="also profile the server (cProfile) into OUT")
    parser.add_argument("--in-process", action="store_true", help="also time the contenders' apps in this process")
    parser.add_argument("--requests", type=int, default=20_000, help="per round of --in-process (default 20000)")
    args = parser.parse_args()
    measured = run_server(None, args.seconds, args.connections)
    print_table(
        f"Handler on loopback, {args.connections} keep-alive connections, {os.cpu_count()} cores shared with the load",
        measured,
    )
    if args.breakdown:
        breakdown(measured, args.seconds, args.connections)
    if args.profile:
        profile(args.profile, args.seconds, args.connections)
    if args.in_process:
        in_process(args.requests, rounds=5)
    print(time.strftime("%Y-%m-%d"))


if __name__ == "__main__":
    main()
