"""Every benchmark in one command, then the machine they ran on, for the README to quote.

    venv/bin/python benchmarks/run_all.py            # each script with its default arguments
    venv/bin/python benchmarks/run_all.py --quick    # smaller sizes: a check that all of them run

Each script runs in its own process, one after another (they would otherwise share the cores they
measure), with its table streamed as it prints. A script that fails does not stop the others; the exit
status is then 1. The closing lines give the date, platform, CPU model, core count and memory.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Script -> the arguments --quick passes (its options for size and duration; see each script's --help).
SCRIPTS = {
    "enqueue.py": ["--tasks", "500", "--rounds", "1"],
    "bulk_memory.py": ["--lines", "2000,10000"],
    "handler.py": ["--seconds", "1"],
    "dispatch.py": ["--tasks", "2000", "--seconds", "3"],
    "program.py": ["--repeat", "1"],
    "slow_clients.py": ["--connections", "300"],
    "console.py": ["--tasks", "2000", "--repeat", "50"],
}
# In benchmarks/ but not benchmarks themselves.
NOT_BENCHMARKS = {"handler_contenders.py", "loopback.py", "minimal_program.py", "run_all.py"}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and shorter runs for each script")
    args = parser.parse_args()
    unlisted = sorted({p.name for p in HERE.glob("*.py")} - set(SCRIPTS) - NOT_BENCHMARKS)
    if unlisted:
        raise SystemExit(f"benchmarks not listed in run_all.py SCRIPTS: {', '.join(unlisted)}")

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # stream each table as it is printed
    results = []
    for script, quick_args in SCRIPTS.items():
        command = [sys.executable, str(HERE / script), *(quick_args if args.quick else [])]
        print(f"\n=== {script} {' '.join(command[2:])}".rstrip(), flush=True)
        started = time.monotonic()
        code = subprocess.run(command, cwd=HERE.parent, env=env, check=False).returncode
        results.append((script, code, time.monotonic() - started))

    print("\n=== summary")
    for script, code, seconds in results:
        print(f"{script:<18}{'ok' if code == 0 else f'FAILED (exit {code})':<18}{seconds:>7.0f} s")
    print(f"\ndate:     {time.strftime('%Y-%m-%d')}")
    print(f"platform: {platform.platform()}")
    print(f"python:   {platform.python_version()}")
    print(f"cpu:      {cpu_model()}")
    print(f"cores:    {os.cpu_count()}")
    print(f"memory:   {memory_gib()}")
    if args.quick:
        print("(--quick: smaller sizes; quote the figures of a full run)")
    if any(code != 0 for _, code, _ in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
