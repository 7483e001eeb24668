"""The durable emulator killed during dispatch: 5,000 tasks, three SIGKILLs, nothing lost.

The local stack runs with a data dir (what `localcloud up` does) and the reliability probe as its handler. All
the tasks are queued, then dispatched; at a quarter, half and three quarters of them acknowledged, the emulator
is killed with SIGKILL and started again on the same ports and data dir, while the handler keeps running with
its idempotency store and its cached copy of the signing certs. Then:
- no task is lost: every one is acknowledged, and the queue ends empty;
- every task's work ran at least once, and the handler recorded it as done exactly once (a copy sent again
  after a kill finds it done: "duplicate");
- the restarted emulators' tokens are accepted (the signing key survived), so no attempt is refused;
- the tasks sent more than once are few: only attempts in flight, or whose outcome was not yet committed, at
  a kill are sent again (store.py: the exact rule).
"""

from __future__ import annotations

import signal
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

from reliability_support import PROBE_COMMAND, LocalStack, Watch, key_of, start_process, stock_client

from contract.outcomes import TaskOutcome
from contract.outputs import StackOutputs
from localcloud.stack import running
from taskclient.connection import connect
from taskclient.publisher import Outcome, TaskPublisher, TaskRequest

TASKS = 5000
KILLS = 3


def restart_emulator(stack: LocalStack, data_dir: Path) -> None:
    """SIGKILL the running emulator, then start it again on the same ports and data dir; ready on return."""
    local, watch = stack.local, stack.watch
    current = next(p for p in reversed(local.processes) if "emulator" in p.args and p.poll() is None)
    current.send_signal(signal.SIGKILL)
    current.wait(timeout=30)
    grpc_port = local.emulator_host.rsplit(":", 1)[1]
    http_port = str(urlsplit(local.certs_url).port)
    lines = len(watch.lines)
    command = [
        sys.executable,
        "-m",
        "localcloud",
        "emulator",
        "--port",
        grpc_port,
        "--http-port",
        http_port,
        "--data-dir",
        str(data_dir),
    ]
    local.processes.append(start_process(command, {}, "emulator", watch.on_line))
    watch.wait(
        lambda: any(f"emulator ready grpc={local.emulator_host}" in line for _, line in watch.lines[lines:]),
        "the emulator to be ready again",
    )


def test_5000_tasks_survive_three_sigkills_of_the_durable_emulator(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    watch = Watch()
    with running("dev", on_line=watch.on_line, handler_command=PROBE_COMMAND, data_dir=data_dir) as local:
        stack = LocalStack(local, watch, StackOutputs.from_mapping(local.plan.outputs))
        queue_path = stack.outputs.queues["default"].path
        queue = stack.queue_id("default")
        requests = [TaskRequest({"seconds": 0}, dedupe_key=f"durable-{n}") for n in range(TASKS)]
        with stock_client(local.emulator_host) as client:
            client.pause_queue(name=queue_path)  # all queued first: the kills land while most are still to go
            with TaskPublisher(stack.outputs, connection=connect(local.emulator_host)) as publisher:
                results = publisher.publish_many(requests, concurrency=16)
            client.resume_queue(name=queue_path)
        assert Counter(r.outcome for r in results) == {Outcome.CREATED: TASKS}
        ids = {key_of(r.name)[1] for r in results if r.name}
        assert len(ids) == TASKS

        for kill in range(1, KILLS + 1):
            watch.wait(lambda k=kill: len(watch.acknowledged) >= k * TASKS // (KILLS + 1), f"kill {kill}'s moment")
            restart_emulator(stack, data_dir)

        watch.wait(lambda: {(queue, t) for t in ids} <= watch.acknowledged, f"all {TASKS} tasks acknowledged")
        with stock_client(local.emulator_host) as client:
            assert list(client.list_tasks(parent=queue_path)) == []
        with watch.changed:
            outcomes = {t: [e["outcome"] for e in watch.entries[(queue, t)]] for t in ids}
            worked = Counter(t for event, t, _ in watch.work if event == "worked")
            emulators = sum(1 for p in local.processes if "emulator" in p.args)

    assert emulators == KILLS + 1
    assert {t for t in ids if worked[t] == 0} == set(), "a task's work never ran"
    assert {t for t in ids if outcomes[t].count(TaskOutcome.DONE) != 1} == set(), "not recorded done exactly once"
    every = Counter(o for entries in outcomes.values() for o in entries)
    assert every[TaskOutcome.REFUSED] == 0, "a restarted emulator's token was refused: the signing key changed"
    sent_again = {t: len(o) - 1 for t, o in outcomes.items() if len(o) > 1}
    ran_twice = sum(1 for t in ids if worked[t] > 1)
    print(
        f"\ndurable emulator, {KILLS} SIGKILLs during dispatch: {TASKS} tasks, lost 0,"
        f" done once each by the handler's record ({every[TaskOutcome.DONE]} done);"
        f" {sum(sent_again.values())} re-dispatches caused by the kills, to {len(sent_again)} tasks"
        f" (outcomes of the extra attempts: {dict(every - Counter({TaskOutcome.DONE: TASKS}))});"
        f" work ran twice for {ran_twice}"
    )
