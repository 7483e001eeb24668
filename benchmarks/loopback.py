"""What every benchmark here needs: the real task handler, started on a free loopback port."""

from __future__ import annotations

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

__all__ = ["ROOT", "free_port", "start_handler"]


def start_handler(port: int, queue_ids: list[str]) -> subprocess.Popen[bytes]:
    """`python -m handler` on 127.0.0.1:port, knowing `queue_ids`, its log discarded; returns once healthy."""
    queues = {queue_id: handler_env.QueueEntry(key="default", max_attempts=5) for queue_id in queue_ids}
    env = {**os.environ, "PYTHONPATH": str(ROOT), handler_env.QUEUES: handler_env.encode_queue_table(queues)}
    handler = subprocess.Popen(
        [sys.executable, "-m", "handler", "--port", str(port)],
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
