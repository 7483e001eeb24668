"""Emulator dispatch: throughput to a no-op handler, and how closely a 50/s rate limit is kept.

The emulator's core and real dispatcher run in this process; the task handler (`python -m handler`)
runs in its own, answering a no-op task. Tasks are created on paused queues, then the queues are resumed
and the dispatches timed from the dispatcher's own results.

    venv/bin/python benchmarks/dispatch.py [--tasks 8000] [--seconds 10]

Throughput: Cloud Tasks caps a queue at 500 dispatches/s, and so does the emulator, so "rate
unlimited" means enough queues at 500/s that the cap is never what limits: 20 queues, 10,000/s of quota.
Accuracy: one queue at 50/s with more tasks than 10 s can dispatch; the rate is counted over the 10 s
after the first second, so the initial burst (a full bucket: 50 tokens) is left out, and shown apart.

Throughput is measured twice in the same run: the emulator in memory, and durable (`--data-dir`: SQLite in
a temporary directory, localcloud/emulator/store.py), with the ratio of the two. `--only durable` runs just
that one, e.g. under `py-spy record` to see where its time goes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

from google.cloud import tasks_v2
from loopback import free_port, start_handler

from localcloud.emulator.core import CloudTasksCore
from localcloud.emulator.realtime import AsyncDispatcher, DispatchResult
from localcloud.emulator.store import SqliteStore

PARENT = "projects/bench/locations/local"


class Recorder:
    def __init__(self, expected: int) -> None:
        self.times: list[float] = []
        self.statuses: dict[int | None, int] = {}
        self.expected = expected
        self.done = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, result: DispatchResult) -> None:
        with self.lock:
            self.times.append(time.monotonic())
            self.statuses[result.status] = self.statuses.get(result.status, 0) + 1
            if len(self.times) >= self.expected:
                self.done.set()


def create(core: CloudTasksCore, queue_ids: list[str], rate: float, per_queue: int, url: str, concurrency: int) -> None:
    for queue_id in queue_ids:
        name = f"{PARENT}/queues/{queue_id}"
        queue = tasks_v2.Queue(
            name=name,
            rate_limits=tasks_v2.RateLimits(max_dispatches_per_second=rate, max_concurrent_dispatches=concurrency),
        )
        core.create_queue(tasks_v2.CreateQueueRequest(parent=PARENT, queue=queue))
        core.pause_queue(tasks_v2.PauseQueueRequest(name=name))
        for _ in range(per_queue):
            task = tasks_v2.Task(
                http_request=tasks_v2.HttpRequest(url=url, body=b"{}", headers={"Content-Type": "application/json"}),
                dispatch_deadline=timedelta(seconds=60),
            )
            core.create_task(tasks_v2.CreateTaskRequest(parent=name, task=task))


def run(
    queue_ids: list[str],
    rate: float,
    per_queue: int,
    wait_s: float,
    concurrency: int,
    data_dir: Path | None = None,
) -> tuple[Recorder, float]:
    """Dispatch the tasks, in memory or (given `data_dir`) durable."""
    port = free_port()
    handler = start_handler(port, queue_ids)
    recorder = Recorder(len(queue_ids) * per_queue)
    with ExitStack() as stack:
        store = stack.enter_context(SqliteStore(data_dir)) if data_dir is not None else None
        core = CloudTasksCore(store=store)
        if store is not None:
            store.start_flushing()
        try:
            create(core, queue_ids, rate, per_queue, f"http://127.0.0.1:{port}/tasks/default", concurrency)
            with AsyncDispatcher(core, on_result=recorder):
                started = time.monotonic()
                for queue_id in queue_ids:
                    core.resume_queue(tasks_v2.ResumeQueueRequest(name=f"{PARENT}/queues/{queue_id}"))
                recorder.done.wait(timeout=wait_s)
        finally:
            handler.terminate()
            handler.wait(timeout=15)
    return recorder, started


MODES = ("memory", "durable")  # --only takes these; the table says "in memory" and "durable"


def throughput(tasks: int, concurrency: int, modes: tuple[str, ...] = MODES) -> None:
    queue_ids = [f"q{n}" for n in range(20)]
    rows = []
    for mode in modes:
        with tempfile.TemporaryDirectory(prefix="dispatch-bench-") as temp:
            data_dir = Path(temp) / "state" if mode == "durable" else None
            per_queue = tasks // len(queue_ids)
            recorder, started = run(queue_ids, 500, per_queue, wait_s=300, concurrency=concurrency, data_dir=data_dir)
        elapsed = max(recorder.times) - started
        label = mode.replace("memory", "in memory")
        rows.append((label, len(recorder.times), elapsed, len(recorder.times) / elapsed, recorder.statuses))
    print("\nDispatch throughput to a no-op handler (20 queues at 500/s: the per-queue cap never binds)")
    print(f"{'emulator':<11}{'tasks':>7}{'seconds':>9}{'dispatches/s':>14}{'vs memory':>11}  statuses")
    for mode, count, elapsed, rate, statuses in rows:
        ratio = f"{rate / rows[0][3]:>10.2f}x" if modes[0] == "memory" else f"{'-':>11}"
        print(f"{mode:<11}{count:>7}{elapsed:>9.2f}{rate:>14.0f}{ratio}  {statuses}")


def accuracy(seconds: float) -> None:
    rate = 50.0
    per_queue = int(rate * (seconds + 3)) + 50
    recorder, started = run(["limited"], rate, per_queue, wait_s=seconds + 2, concurrency=1000)
    times = sorted(t - started for t in recorder.times)
    window = [t for t in times if 1.0 <= t < 1.0 + seconds]
    burst = [t for t in times if t < 0.05]
    measured = len(window) / seconds
    print(f"\nRate limit accuracy: one queue at {rate:g}/s, counted over [1 s, {1 + seconds:g} s)")
    print(f"{'setting/s':>10}{'measured/s':>12}{'error':>8}{'burst at start':>16}")
    print(f"{rate:>10.1f}{measured:>12.1f}{100 * (measured - rate) / rate:>7.1f}%{len(burst):>16}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=5, help="max concurrent dispatches per queue (20 queues)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--only", choices=MODES, default=None, help="measure the throughput of one emulator only")
    args = parser.parse_args()
    throughput(args.tasks, args.concurrency, (args.only,) if args.only else MODES)
    if args.only is None:
        accuracy(args.seconds)
    print(f"\n{os.cpu_count()} cores shared by dispatcher and handler; {time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
