"""Slow clients against the handler: how long trickling connections stay open, and what real tasks get meanwhile.

Starts `python -m handler` on loopback with its default bounds (a request head within 10 s, a body within
15 s; handler/limits.py). Opens `--connections` connections that send a request head one byte a second and
never finish it (slowloris), and a third as many that send a whole head, then its body one byte a second.
Meanwhile eight keep-alive connections send real no-op tasks. Measured, in one run: when the server closed
each trickling connection (seconds after it opened), the tasks/s the real connections got before and during
the attack, and the handler's resident memory before and at the peak.

    venv/bin/python benchmarks/slow_clients.py [--connections 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from pathlib import Path

from loopback import QUEUE, free_port, load, start_handler, task_request

HEAD_TIMEOUT_S = 10  # handler/limits.py defaults, which this measures
BODY_TIMEOUT_S = 15
REAL_CONNECTIONS = 8


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def trickle(port: int, prefix: bytes, drip: bytes, opened: list[float], closed: list[float]) -> None:
    """Send `prefix`, then `drip` a byte a second, until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.perf_counter()
    opened.append(started)
    writer.write(prefix)
    try:
        for byte in itertools.cycle(drip):
            writer.write(bytes([byte]))
            await writer.drain()
            try:
                if not await asyncio.wait_for(reader.read(65536), timeout=1.0) and reader.at_eof():
                    break  # closed by the server (after its 408, for a body)
            except TimeoutError:
                continue  # still open: drip the next byte
    except (ConnectionResetError, BrokenPipeError):
        pass
    closed.append(time.perf_counter() - started)
    writer.close()


async def measure(port: int, handler_pid: int, connections: int) -> dict[str, float]:
    await load(port, task_request, 1.0, REAL_CONNECTIONS)  # warm up
    before, _ = await load(port, task_request, 2.0, REAL_CONNECTIONS)
    rss_before = rss_mib(handler_pid)
    head = b"POST /tasks/default HTTP/1.1\r\nHost: bench\r\n"
    body_head = (
        b"POST /tasks/default HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        + f"X-CloudTasks-QueueName: {QUEUE}\r\nX-CloudTasks-TaskRetryCount: 0\r\n".encode()
        + b"X-CloudTasks-TaskName: slow\r\nContent-Length: 1000\r\n\r\n"
    )
    heads_open: list[float] = []
    heads_closed: list[float] = []
    bodies_open: list[float] = []
    bodies_closed: list[float] = []
    attack = [
        *(trickle(port, head, b"X-Slow: 1\r\n", heads_open, heads_closed) for _ in range(connections)),
        *(trickle(port, body_head, b"{}", bodies_open, bodies_closed) for _ in range(connections // 3)),
    ]
    attackers = asyncio.gather(*attack)
    while len(heads_open) + len(bodies_open) < len(attack):
        await asyncio.sleep(0.1)  # every trickling connection opened
    during, _ = await load(port, task_request, 5.0, REAL_CONNECTIONS)
    rss_peak = rss_mib(handler_pid)
    await attackers
    return {
        "heads": len(heads_closed),
        "heads_p50": statistics.median(heads_closed),
        "heads_max": max(heads_closed),
        "bodies": len(bodies_closed),
        "bodies_p50": statistics.median(bodies_closed),
        "bodies_max": max(bodies_closed),
        "before": before / 2.0,
        "during": during / 5.0,
        "rss_before": rss_before,
        "rss_peak": rss_peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=3000, help="trickling heads (default 3000)")
    args = parser.parse_args()
    port = free_port()
    handler = start_handler(port, [QUEUE])
    try:
        r = asyncio.run(measure(port, handler.pid, args.connections))
    finally:
        handler.terminate()
        handler.wait(timeout=15)
    print(f"\nSlow clients against the handler (head bound {HEAD_TIMEOUT_S} s, body bound {BODY_TIMEOUT_S} s)")
    print(f"{'trickling':<28}{'connections':>12}{'closed after, p50':>19}{'max':>8}")
    print(f"{'a head, a byte a second':<28}{r['heads']:>12.0f}{r['heads_p50']:>17.1f} s{r['heads_max']:>6.1f} s")
    print(f"{'a body, a byte a second':<28}{r['bodies']:>12.0f}{r['bodies_p50']:>17.1f} s{r['bodies_max']:>6.1f} s")
    print(f"\n{'real no-op tasks, 8 connections':<34}{'tasks/s':>9}{'handler RSS':>13}")
    print(f"{'before the attack':<34}{r['before']:>9.0f}{r['rss_before']:>9.0f} MiB")
    print(f"{'during it':<34}{r['during']:>9.0f}{r['rss_peak']:>9.0f} MiB")
    print(f"{'ratio':<34}{r['during'] / r['before']:>9.2f}")
    print(time.strftime("%Y-%m-%d"))


if __name__ == "__main__":
    main()
