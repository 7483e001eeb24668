"""The web console's API with a full queue: how long each read takes over real HTTP.

One emulator with its console (CloudTasksEmulator(console_port=0), uvicorn on 127.0.0.1) and one queue of
--tasks tasks, held paused so nothing is dispatched while it is measured. The tasks are created on the core
in-process, which is quicker than gRPC and not what is measured. Each endpoint is asked --repeat times over one
kept-alive connection (httpx), one request at a time, as the page polls; the table gives the median and the
95th percentile of the whole request, and the size of the answer.

    venv/bin/python benchmarks/console.py              # 10,000 tasks
    venv/bin/python benchmarks/console.py --tasks 2000 --repeat 50
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import httpx2 as httpx
from google.cloud import tasks_v2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from localcloud.emulator.service import CloudTasksEmulator  # noqa: E402

LOCATION = "projects/bench/locations/local"
QUEUE = f"{LOCATION}/queues/console-bench"


def fill(emulator: CloudTasksEmulator, tasks: int) -> list[str]:
    core = emulator.core
    core.create_queue(tasks_v2.CreateQueueRequest(parent=LOCATION, queue=tasks_v2.Queue(name=QUEUE)))
    core.pause_queue(tasks_v2.PauseQueueRequest(name=QUEUE))
    names = []
    for number in range(tasks):
        request = tasks_v2.HttpRequest(url="http://127.0.0.1:9/work", body=b'{"n": %d}' % number)
        task = core.create_task(tasks_v2.CreateTaskRequest(parent=QUEUE, task=tasks_v2.Task(http_request=request)))
        names.append(task.name)
    return names


def measure(client: httpx.Client, path: str, params: dict[str, str], repeat: int) -> tuple[float, float, int]:
    times = []
    size = 0
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(path, params=params)
        times.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
        size = len(response.content)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, round(0.95 * (len(times) - 1)))], size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks in the queue (default 10,000)")
    parser.add_argument("--repeat", type=int, default=200, help="requests per endpoint (default 200)")
    args = parser.parse_args()
    with CloudTasksEmulator(port=0, console_port=0) as emulator:
        started = time.perf_counter()
        names = fill(emulator, args.tasks)
        filled = time.perf_counter() - started
        assert emulator.console_url is not None
        tasks_path = f"/api/{QUEUE}/tasks"
        middle = emulator.core.console_tasks(QUEUE, limit=1, after=-1)
        assert middle is not None
        first_seq = middle.rows[0].seq
        cases = [
            ("GET /api/queues (counts every task)", "/api/queues", {}),
            ("tasks: first page (100)", tasks_path, {}),
            ("tasks: page at the middle (100)", tasks_path, {"cursor": str(first_seq + args.tasks // 2)}),
            ("tasks: last page", tasks_path, {"cursor": str(first_seq + args.tasks - 50)}),
            ("tasks: one page of 1,000", tasks_path, {"limit": "1000"}),
            ("tasks: state=waiting, first page", tasks_path, {"state": "waiting"}),
            ("one task, with its timeline", f"/api/{names[args.tasks // 2]}", {}),
        ]
        print(f"console API with {args.tasks:,} tasks in one queue ({filled:.1f} s to create them);")
        print(f"{args.repeat} requests each, one at a time, over one connection\n")
        print(f"| {'request':<38} | {'median ms':>9} | {'p95 ms':>7} | {'bytes':>9} |")
        print(f"|{'-' * 40}|{'-' * 10}:|{'-' * 8}:|{'-' * 10}:|")
        with httpx.Client(base_url=emulator.console_url.rstrip("/"), timeout=30) as client:
            for label, path, params in cases:
                median, p95, size = measure(client, path, params, args.repeat)
                print(f"| {label:<38} | {median:>9.2f} | {p95:>7.2f} | {size:>9,} |")


if __name__ == "__main__":
    main()
