"""Enqueue throughput: taskclient's publish_many against the guide's pattern and the raw gRPC ceiling.

All contenders create the same HTTP task (OIDC token, JSON body) on the project's emulator, run in its own
process (`python -m localcloud emulator --latency-ms D --workers W`), in one run. The emulator answers each
call after `--delays` milliseconds: 0 measures client overhead, 20 stands for the network round trip to
Cloud Tasks, where concurrency decides. It gets 2 x --concurrency gRPC workers (at least 16), so that the
injected latency never queues calls behind busy workers. The benchmark creates its queue with CreateQueue and
pauses it: Cloud Tasks accepts tasks into a paused queue alike, and nothing is dispatched to the stack's
service URL, which is not on this machine.

    venv/bin/python benchmarks/enqueue.py            # prints one table per delay, with ratios

Contenders:
  guide        a new client (and channel) and one create_task per task, one after another, as the guide's
               create_http_task_with_token.py sample does when called per task
  publish      TaskPublisher.publish, one after another, over one reused channel
  publish_many TaskPublisher.publish_many(concurrency=C): taskclient.aio's engine (grpc.aio, one channel,
               C calls in flight), on an event loop of its own, from synchronous code
  AsyncTaskPublisher.publish_many
               the same engine awaited from a coroutine (no loop or channel set up per call)
  raw ceiling  pre-serialised CreateTaskRequest bytes on a bare grpc channel, C calls in flight (sync-future
               API, done callbacks): what the server and the gRPC stack allow with no client library work
  raw aio ceiling
               the same bytes on a bare grpc.aio channel, C coroutines in flight, one channel as the engine
               uses: the ceiling of the stack the engine is built on

The four concurrent contenders run --rounds times (8: each one runs twice in each place of the order), the
order turning each round, each on a purged queue; each row shows its median. "% ceiling" is against the FASTER
of the two raw contenders, so neither stack's ceiling flatters the engine. "paired %" compares within each round
instead: a contender's rate against the faster ceiling of the same round (seconds apart, so a change in the
machine's load between rounds cancels out), as the median and the range over the rounds. The ceilings send the
same metadata as the publishers (the routing and x-goog-api-client headers): the same RPC on the wire, without the
library work.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from google.api_core.gapic_v1 import routing_header
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport
from google.cloud.tasks_v2.services.cloud_tasks.transports.base import DEFAULT_CLIENT_INFO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from localcloud.program import evaluate  # noqa: E402
from localcloud.stack import stack_config  # noqa: E402
from taskclient.aio import AsyncTaskPublisher  # noqa: E402
from taskclient.calls import MAX_CONCURRENCY  # noqa: E402
from taskclient.connection import connect  # noqa: E402
from taskclient.publisher import Outcome, TaskPublisher, TaskRequest  # noqa: E402

CREATE_TASK = "/google.cloud.tasks.v2.CloudTasks/CreateTask"
READY = "emulator ready grpc="


def start_emulator(delay_ms: int, workers: int) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "localcloud", "emulator", "--port", "0"]
    command += ["--latency-ms", str(delay_ms), "--workers", str(workers)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    line = server.stdout.readline().strip()
    if not line.startswith(READY):
        server.kill()
        raise SystemExit(f"emulator did not start: {line!r}")
    return server, line.removeprefix(READY).split()[0]


def create_paused_queue(address: str, queue_path: str) -> None:
    channel = grpc.insecure_channel(address)
    client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
    try:
        client.create_queue(parent=queue_path.rsplit("/queues/", 1)[0], queue=tasks_v2.Queue(name=queue_path))
        client.pause_queue(name=queue_path)
    finally:
        channel.close()


def timed(count: int, run: Callable[[], int]) -> tuple[int, float]:
    started = time.perf_counter()
    created = run()
    elapsed = time.perf_counter() - started
    if created != count:
        raise SystemExit(f"created {created} of {count} tasks")
    return count, elapsed


def guide_pattern(address: str, publisher: TaskPublisher, count: int) -> int:
    created = 0
    for n in range(count):
        parent, task = publisher.build(TaskRequest({"n": n}))
        client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=grpc.insecure_channel(address)))
        client.create_task(parent=parent, task=task)
        client.transport.close()
        created += 1
    return created


def publish_one_by_one(publisher: TaskPublisher, count: int) -> int:
    return sum(1 for n in range(count) if publisher.publish({"n": n}))


def publish_many(publisher: TaskPublisher, count: int, concurrency: int) -> int:
    results = publisher.publish_many(({"n": n} for n in range(count)), concurrency=concurrency)
    return sum(1 for r in results if r.outcome is Outcome.CREATED)


def publish_many_async(outputs: dict[str, object], address: str, count: int, concurrency: int) -> Callable[[], int]:
    async def run() -> int:
        async with AsyncTaskPublisher.from_mapping(outputs, connection=connect(address)) as publisher:
            await publisher.create(TaskRequest({"warm": "up"}))  # its channel made and connected, as the others'
            results = await publisher.publish_many(({"n": n} for n in range(count)), concurrency=concurrency)
            return sum(1 for r in results if r.outcome is Outcome.CREATED)

    return lambda: asyncio.run(run())


def call_metadata(queue_path: str) -> tuple[tuple[str, str], ...]:
    """What the client library (and taskclient) sends with every CreateTask: the routing header and
    x-goog-api-client. The ceilings send it too, so that they make the same RPC on the wire."""
    routing = routing_header.to_grpc_metadata((("parent", queue_path),))
    return (routing, DEFAULT_CLIENT_INFO.to_grpc_metadata())


def serialised_requests(publisher: TaskPublisher, count: int) -> list[bytes]:
    requests = []
    for n in range(count):
        parent, task = publisher.build(TaskRequest({"n": n}))
        requests.append(tasks_v2.CreateTaskRequest.serialize(tasks_v2.CreateTaskRequest(parent=parent, task=task)))
    return requests


def raw_aio_ceiling(address: str, publisher: TaskPublisher, count: int, concurrency: int) -> Callable[[], int]:
    requests = serialised_requests(publisher, count)
    metadata = call_metadata(publisher.outputs.queues[publisher.outputs.default_queue].path)

    async def run() -> int:
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.unary_unary(CREATE_TASK)
            await channel.channel_ready()
            queue = iter(requests)
            created = 0

            async def worker() -> None:
                nonlocal created
                for request in queue:
                    await call(request, metadata=metadata)
                    created += 1

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return created

    return lambda: asyncio.run(run())


def raw_ceiling(address: str, publisher: TaskPublisher, count: int, concurrency: int) -> Callable[[], int]:
    requests = serialised_requests(publisher, count)
    metadata = call_metadata(publisher.outputs.queues[publisher.outputs.default_queue].path)
    channel = grpc.insecure_channel(address)
    call = channel.unary_unary(CREATE_TASK)
    grpc.channel_ready_future(channel).result(timeout=10)

    def run() -> int:
        window = threading.BoundedSemaphore(concurrency)
        done = threading.Event()
        created = 0
        lock = threading.Lock()

        def finished(future: grpc.Future) -> None:
            nonlocal created
            future.result()
            with lock:
                created += 1
                if created == count:
                    done.set()
            window.release()

        for request in requests:
            window.acquire()
            call.future(request, metadata=metadata).add_done_callback(finished)
        done.wait(timeout=600)
        channel.close()
        return created

    return run


Rows = list[tuple[str, int, list[float]]]  # (contender, tasks, the seconds of each of its runs)


def measure(delay_ms: int, concurrency: int, counts: dict[str, int], rounds: int) -> Rows:
    """A row per contender: one run of the sequential ones, `rounds` rounds of the concurrent ones, in round order."""
    outputs = dict(evaluate(stack_config("dev"), stack="dev").outputs)
    queue_path = outputs["queues"][outputs["default_queue"]]["path"]
    server, address = start_emulator(delay_ms, workers=max(16, 2 * concurrency))
    rows = []
    try:
        create_paused_queue(address, queue_path)
        admin = connect(address)
        with TaskPublisher.from_mapping(outputs, connection=connect(address)) as publisher:
            publisher.publish({"warm": "up"})
            publisher.publish_many([{"warm": "up"}])  # the engine's loop and channel made, as the others' are

            def seconds(count: int, run: Callable[[], int]) -> float:
                # Each starts on an empty queue: the emulator's cost per create grows a little with its queue.
                admin.client.purge_queue(name=queue_path)
                return timed(count, run)[1]

            guide, one_by_one = counts["guide"], counts["publish"]
            rows.append(("guide", guide, [seconds(guide, lambda: guide_pattern(address, publisher, guide))]))
            one_by_one_seconds = seconds(one_by_one, lambda: publish_one_by_one(publisher, one_by_one))
            rows.append(("publish", one_by_one, [one_by_one_seconds]))
            many = counts["many"]
            # Each round makes its contender afresh (a raw ceiling closes its channel when done).
            concurrent: dict[str, Callable[[], Callable[[], int]]] = {
                f"publish_many c={concurrency}": lambda: lambda: publish_many(publisher, many, concurrency),
                f"AsyncTaskPublisher c={concurrency}": lambda: publish_many_async(outputs, address, many, concurrency),
                f"raw ceiling c={concurrency}": lambda: raw_ceiling(address, publisher, many, concurrency),
                f"raw aio ceiling c={concurrency}": lambda: raw_aio_ceiling(address, publisher, many, concurrency),
            }
            times: dict[str, list[float]] = {name: [] for name in concurrent}
            names = list(concurrent)
            for round_ in range(rounds):
                # The order turns each round, so none always runs first (or last) on a warm or a tired machine.
                for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                    times[name].append(seconds(many, concurrent[name]()))
            rows += [(name, many, times[name]) for name in names]
        admin.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
    return rows


def print_table(delay_ms: int, rows: Rows, rounds: int) -> None:
    rates = {name: count / statistics.median(seconds) for name, count, seconds in rows}
    guide = rates["guide"]
    ceilings = [name for name in rates if name.startswith("raw ")]
    ceiling = max(rates[name] for name in ceilings)  # the faster of the two
    # The faster ceiling of each round, in tasks per second.
    per_round = [max(count / seconds[r] for name, count, seconds in rows if name in ceilings) for r in range(rounds)]
    print(f"\nCreateTask on loopback, emulator latency {delay_ms} ms per RPC")
    header = f"{'contender':<26}{'tasks':>7}{'seconds':>9}{'tasks/s':>10}{'x guide':>9}{'% ceiling':>11}"
    print(f"{header}{'paired %':>10}{'range':>11}")
    for name, count, seconds in rows:
        rate = rates[name]
        line = f"{name:<26}{count:>7}{count / rate:>9.2f}{rate:>10.0f}{rate / guide:>9.1f}"
        line += f"{100 * rate / ceiling:>10.0f}%"
        if len(seconds) == rounds > 1:
            paired = [100 * count / s / best for s, best in zip(seconds, per_round, strict=True)]
            line += f"{statistics.median(paired):>9.0f}%{min(paired):>6.0f}-{max(paired):.0f}%"
        print(line)
    print(f"(guide and publish: one run each; the others: the median of {rounds} rounds, in turning order)")


def whole(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from `minimum` (to `maximum`), else one line naming the rule."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if maximum is not None and not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"{value} is outside {minimum}..{maximum}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value

    return parse


def delays(text: str) -> list[int]:
    """--delays: milliseconds, comma-separated, each 0 or more."""
    return [whole(0)(part) for part in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--delays", type=delays, default=[0, 20], help="emulator latencies in ms, comma-separated (default 0,20)"
    )
    parser.add_argument(
        "--concurrency", type=whole(1, MAX_CONCURRENCY), default=32, help="as publish_many's default (32)"
    )
    parser.add_argument("--tasks", type=whole(1), default=4000, help="tasks for publish_many and the ceiling")
    parser.add_argument("--rounds", type=whole(1), default=8, help="rounds of the concurrent contenders (default 8)")
    args = parser.parse_args()
    for delay_ms in args.delays:
        # Sequential contenders get fewer tasks: at 20 ms each, 4,000 would take minutes to say the same.
        counts = {"guide": 300 if delay_ms == 0 else 100, "publish": 1000 if delay_ms == 0 else 150, "many": args.tasks}
        print_table(delay_ms, measure(delay_ms, args.concurrency, counts, args.rounds), args.rounds)
    print(f"\n{os.cpu_count()} cores; client and server share them. {time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
