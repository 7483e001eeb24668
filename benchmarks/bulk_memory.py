"""Peak memory of `python -m taskclient bulk` as its input grows: flat, since bulk reads the file as a stream.

For each size, a JSON Lines file of that many tasks is written to a temporary directory, and
`python -m taskclient bulk --file FILE` runs in its own process against the project's emulator (its own
process too, on loopback, the queue created and paused as benchmarks/enqueue.py does: nothing is dispatched).
The peak resident set size is the child's ru_maxrss (os.wait4), the rate bulk's own "tasks/s" line. The
reference is the smallest size: "x smallest" near 1.0 at every size is what flat means.

    venv/bin/python benchmarks/bulk_memory.py                       # 10,000 and 100,000 lines
    venv/bin/python benchmarks/bulk_memory.py --lines 10000,1000000 # the issue's sizes (1M: ~15-20 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from enqueue import ROOT, create_paused_queue, start_emulator

from localcloud.program import evaluate
from localcloud.stack import stack_config
from taskclient.connection import EMULATOR_ENV


def write_lines(path: Path, count: int) -> None:
    with path.open("w") as out:
        for n in range(count):
            out.write(f'{{"order": {n}, "customer": "c-{n % 977}", "items": [1, 2, 3]}}\n')


def run_bulk(address: str, outputs: Path, tasks: Path, concurrency: int) -> tuple[float, float, str]:
    """(peak RSS in MiB, seconds, bulk's summary line)."""
    command = [sys.executable, "-m", "taskclient", "bulk", "--outputs", str(outputs), "--file", str(tasks)]
    command += ["--concurrency", str(concurrency)]
    env = {**os.environ, EMULATOR_ENV: address, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryFile("w+") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.DEVNULL, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        summary = out.read().strip()
    if process.returncode != 0:
        raise SystemExit(f"bulk exited {process.returncode}: {summary}")
    return usage.ru_maxrss / 1024, elapsed, summary  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", default="10000,100000", help="file sizes in lines, comma-separated")
    parser.add_argument("--concurrency", type=int, default=32, help="bulk's --concurrency (default 32, as bulk's)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.lines.split(",")]

    outputs_values = dict(evaluate(stack_config("dev"), stack="dev").outputs)
    queue_path = outputs_values["queues"][outputs_values["default_queue"]]["path"]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        outputs = Path(scratch) / "outputs.json"
        outputs.write_text(json.dumps(outputs_values))
        for size in sizes:
            tasks = Path(scratch) / f"tasks-{size}.jsonl"
            write_lines(tasks, size)
            # A fresh emulator per size: the tasks it holds are its memory, not bulk's.
            server, address = start_emulator(0, workers=max(16, 2 * args.concurrency))
            try:
                create_paused_queue(address, queue_path)
                peak, seconds, summary = run_bulk(address, outputs, tasks, args.concurrency)
            finally:
                server.terminate()
                server.wait(timeout=30)
            if not summary.startswith(f"created {size}, duplicates 0, failed 0"):
                raise SystemExit(f"bulk did not create every task: {summary}")
            rows.append((size, tasks.stat().st_size / 1024**2, peak, seconds))
            tasks.unlink()

    smallest = rows[0][2]
    print("\n`python -m taskclient bulk`, its own process, against the emulator on loopback (paused queue)")
    print(f"{'lines':>10}{'file MiB':>10}{'peak RSS MiB':>14}{'x smallest':>12}{'seconds':>10}{'tasks/s':>10}")
    for size, file_mib, peak, seconds in rows:
        print(
            f"{size:>10,}{file_mib:>10.1f}{peak:>14.1f}{peak / smallest:>12.2f}{seconds:>10.1f}{size / seconds:>10.0f}"
        )
    print(f"\n{os.cpu_count()} cores; bulk and the emulator share them. {time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
