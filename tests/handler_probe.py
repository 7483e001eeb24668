"""A handler process for tests that must know when a task has started (shutdown, concurrent copies).

Serves the real app through handler.__main__.serve, with one extra task type that writes
"started <task>" to stderr, then takes `seconds` to finish.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from handler.__main__ import serve
from handler.app import create_app
from handler.environment import HandlerSettings
from handler.task_types import router
from handler.tasks import TaskContext


@router.task("/tasks/announce")
async def announce(payload: Any, context: TaskContext) -> None:
    print(f"started {context.task}", file=sys.stderr, flush=True)
    await asyncio.sleep(float(payload.get("seconds", 1)))


if __name__ == "__main__":
    serve(create_app(router, HandlerSettings.from_environ(os.environ)), "127.0.0.1", int(sys.argv[1]))
