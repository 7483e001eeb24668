"""What every benchmark here needs: the real task handler, started on a free loopback port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from localcloud.stack import free_port  # noqa: E402

__all__ = ["ROOT", "free_port", "start_handler"]


def start_handler(port: int, queue_ids: list[str]) -> subprocess.Popen[bytes]:
    """`python -m handler` on 127.0.0.1:port, knowing `queue_ids`, its log discarded; returns once healthy."""
    queues = {queue_id: {"key": "default", "maxAttempts": 5} for queue_id in queue_ids}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TASKS_QUEUES": json.dumps(queues)}
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
