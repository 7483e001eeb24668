"""Handler throughput: a no-op task against a bare endpoint of the same server, in one run.

Starts `python -m handler` on loopback and drives it from this process with keep-alive HTTP/1.1
connections (plain asyncio streams: a load generator lighter than any HTTP client library, so the
server is what is measured). The bare endpoint is GET /health; the task is POST /tasks/default with
an empty JSON object and the Cloud Tasks headers, a new task id each time, so every request goes
through header parsing, the idempotency claim, JSON decoding, the work function and the log entry.

    venv/bin/python benchmarks/handler.py [--seconds 5] [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from loopback import QUEUE, free_port, load, start_handler, task_request


def bare_request(_: int) -> bytes:
    return b"GET /health HTTP/1.1\r\nHost: bench\r\n\r\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement (default 5)")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    port = free_port()
    handler = start_handler(port, [QUEUE])
    try:
        asyncio.run(load(port, bare_request, 1.0, args.connections))  # warm up
        totals = {"bare GET /health": [0, 0.0], "no-op task POST /tasks/default": [0, 0.0]}
        # Alternate the two twice, so drift on a shared machine falls on both alike.
        for _ in range(2):
            for name, make in (("bare GET /health", bare_request), ("no-op task POST /tasks/default", task_request)):
                count, seconds = asyncio.run(load(port, make, args.seconds / 2, args.connections))
                totals[name][0] += count
                totals[name][1] += seconds
    finally:
        handler.terminate()
        handler.wait(timeout=15)
    rates = {name: count / seconds for name, (count, seconds) in totals.items()}
    bare = rates["bare GET /health"]
    print(
        f"\nHandler on loopback, {args.connections} keep-alive connections, {os.cpu_count()} cores shared with the load"
    )
    print(f"{'endpoint':<34}{'requests':>10}{'req/s':>9}{'vs bare':>9}")
    for name, (count, _) in totals.items():
        print(f"{name:<34}{count:>10}{rates[name]:>9.0f}{rates[name] / bare:>9.2f}")
    print(time.strftime("%Y-%m-%d"))


if __name__ == "__main__":
    main()
