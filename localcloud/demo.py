"""`python -m localcloud demo`: the whole flow on one machine, with a summary that must show nothing lost.

The local stack starts on free ports; a batch of tasks goes in through the task client (some that
succeed, some that fail and are retried, some that can never succeed); the handler's log says what
became of each; the summary counts delivered, retried, dead-lettered and lost, with latency from
publish to outcome. Then it lists the dead letters, which must be one per dead-lettered task, and replays
the one whose cause has gone away (its record "arrives" a few seconds after it was sent), which must then
be delivered. Exit status 1 when any task is lost or ends otherwise than expected.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TextIO
from urllib.parse import urlsplit

from rich.console import Console

from contract.dead_letters import dead_letter_task_id
from contract.outcomes import TaskOutcome
from contract.outputs import StackOutputs
from localcloud.program import PROJECT_DIR
from localcloud.stack import running, write_outputs
from taskclient.connection import connect
from taskclient.dead_letter_cli import letters_table, output_console
from taskclient.dead_letters import DeadLetters, LetterOutcome
from taskclient.progress import progress_bar
from taskclient.publisher import Outcome, PublishResult, TaskPublisher, TaskRequest

# The handler's log outcome that ends a task -> how the summary counts it.
TERMINAL = {TaskOutcome.DONE: "delivered", TaskOutcome.DEAD_LETTERED: "dead-lettered"}
EMAIL_PATH = "/tasks/send-email"
DEFAULT_PATH = "/tasks/default"
OUTPUTS_FILE = "demo-outputs.json"  # its own: never the outputs.json of a running `localcloud up`
ARRIVES_AFTER_S = 2.0  # the demo's replayed task fails for good until its record "arrives", this long after the start


@dataclass(frozen=True)
class DemoTask:
    request: TaskRequest
    kind: str  # what the task is, for the summary: "succeeds", "fails, then succeeds", ...
    expect: str  # "delivered" or "dead-lettered"
    retries: bool  # expected to fail at least once first
    replay: bool = False  # the dead letter the demo replays once its cause has gone, expected delivered then


@dataclass
class Fate:
    published_at: float = 0.0
    failed_attempts: int = 0
    outcome: str | None = None
    finished_at: float = 0.0


@dataclass
class Ledger:
    """What the handler's log says about each task, keyed by (queue id, task id)."""

    fates: dict[tuple[str, str], Fate] = field(default_factory=dict)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def published(self, key: tuple[str, str], at: float) -> None:
        with self.changed:
            self.fates.setdefault(key, Fate()).published_at = at

    def observe(self, line: str) -> None:
        try:
            entry = json.loads(line)
        except ValueError:
            return
        if "queue" not in entry or "task" not in entry:
            return
        with self.changed:
            fate = self.fates.setdefault((entry["queue"], entry["task"]), Fate())
            if entry.get("outcome") in TERMINAL and fate.outcome is None:
                fate.outcome = TERMINAL[entry["outcome"]]
                fate.finished_at = datetime.fromisoformat(entry["time"]).timestamp()
            elif entry.get("outcome") in (TaskOutcome.FAILED, TaskOutcome.RETRY):
                fate.failed_attempts += 1
            self.changed.notify_all()

    def wait_until_settled(
        self, keys: list[tuple[str, str]], timeout: float, on_settled: Callable[[int], None] = lambda _: None
    ) -> None:
        """Until every task of `keys` has an outcome, or `timeout`; `on_settled(n)` for each n newly settled."""
        deadline = time.monotonic() + timeout
        settled = 0
        with self.changed:
            while True:
                now_settled = sum(self.fates[key].outcome is not None for key in keys)
                if now_settled > settled:
                    on_settled(now_settled - settled)
                    settled = now_settled
                remaining = deadline - time.monotonic()
                if settled == len(keys) or remaining <= 0:
                    return
                self.changed.wait(remaining)


def workload(outputs: StackOutputs, arrives_at: float) -> tuple[list[DemoTask], dict[str, str]]:
    """Tasks for each queue whose path reaches one of the reference task types, and {queue key: path} of the
    queues skipped, whose task type the demo does not know. The first queue of the default task type also gets
    the task to replay: refused for good until `arrives_at` (epoch seconds)."""
    tasks: list[DemoTask] = []
    skipped: dict[str, str] = {}
    for key, queue in outputs.queues.items():
        path = urlsplit(queue.task_url).path
        if path == EMAIL_PATH:
            tasks += [
                DemoTask(TaskRequest({"to": f"user{n}@example.com"}, queue=key), "email", "delivered", False)
                for n in range(10)
            ]
            tasks += [
                DemoTask(TaskRequest({"to": "nobody"}, queue=key), "invalid email", "dead-lettered", False)
                for _ in range(3)
            ]
        elif path == DEFAULT_PATH:
            tasks += [DemoTask(TaskRequest({"n": n}, queue=key), "succeeds", "delivered", False) for n in range(100)]
            tasks += [
                DemoTask(
                    TaskRequest({"fail_attempts": 1 + n % 2}, queue=key), "fails, then succeeds", "delivered", True
                )
                for n in range(20)
            ]
            first = not any(t.replay for t in tasks)
            permanent = TaskRequest({"permanent": "demo: no such order"}, queue=key)
            tasks += [DemoTask(permanent, "fails for good", "dead-lettered", False)] * (4 if first else 5)
            if first:
                request = TaskRequest({"order": "demo-42", "permanent_until": arrives_at}, queue=key)
                tasks.append(DemoTask(request, "fails until its record arrives", "dead-lettered", False, replay=True))
        else:
            skipped[key] = path
    return tasks, skipped


def _key(task_name: str) -> tuple[str, str]:
    parts = task_name.split("/")
    return parts[5], parts[7]  # projects/P/locations/L/queues/Q/tasks/T


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def run_demo(stack: str = "dev", timeout: float = 120.0, out: TextIO | None = None) -> int:
    import sys

    out = out or sys.stdout
    workdir = PROJECT_DIR / ".localcloud"
    workdir.mkdir(exist_ok=True)
    ledger = Ledger()
    log_path = workdir / "demo.log"
    # No data_dir: the emulator runs in memory, so the counts below never include a task of an earlier run (nor
    # of a `localcloud up` on .localcloud/state).
    with log_path.open("w") as log, running(stack, on_line=_Lines(log, ledger)) as local:
        write_outputs(local.plan.outputs, workdir / OUTPUTS_FILE)
        outputs = StackOutputs.from_mapping(local.plan.outputs)
        arrives_at = time.time() + ARRIVES_AFTER_S
        tasks, skipped = workload(outputs, arrives_at)
        print(f"local stack up: emulator {local.emulator_host}, handler {local.plan.service.url}", file=out)
        for key, path in skipped.items():
            print(f"skipping queue {key!r}: its tasks go to {path}, a task type the demo does not know", file=out)
        sent_to = sorted({t.request.queue or "" for t in tasks})
        print(f"publishing {len(tasks)} tasks to {', '.join(sent_to)} ...", file=out)
        results = _publish(outputs, local.emulator_host, tasks, ledger)
        keys = [_key(r.name) for r in results if r.name]
        with progress_bar(Console(stderr=True), len(keys), "waiting for outcomes") as advance:

            def settled(count: int) -> None:
                for _ in range(count):
                    advance()

            ledger.wait_until_settled(keys, timeout, on_settled=settled)
        code = _summarise(tasks, results, ledger, out)
        with DeadLetters(outputs, connection=connect(local.emulator_host)) as dead_letters:
            code |= _work_dead_letters(dead_letters, tasks, results, ledger, arrives_at, timeout, out)
    print(f"logs: {log_path.relative_to(PROJECT_DIR)}; outputs: .localcloud/{OUTPUTS_FILE}", file=out)
    return code


@dataclass
class _Lines:
    log: TextIO
    ledger: Ledger
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, source: str, line: str) -> None:
        with self.lock:
            self.log.write(f"{source}: {line}\n")
        if source == "handler":
            self.ledger.observe(line)


def _publish(outputs: StackOutputs, emulator_host: str, tasks: list[DemoTask], ledger: Ledger) -> list[PublishResult]:
    def on_result(result: PublishResult) -> None:
        if result.name:
            ledger.published(_key(result.name), time.time())

    with TaskPublisher(outputs, connection=connect(emulator_host)) as publisher:
        return publisher.publish_many([t.request for t in tasks], concurrency=16, on_result=on_result)


def _summarise(tasks: list[DemoTask], results: list[PublishResult], ledger: Ledger, out: TextIO) -> int:
    counts = {"published": 0, "delivered": 0, "retried": 0, "dead-lettered": 0, "lost": 0, "unexpected": 0}
    latencies: list[float] = []
    problems: list[str] = []
    by_kind: dict[str, Counter[str]] = {}  # kind -> outcome (delivered, dead-lettered, lost) -> tasks
    for task, result in zip(tasks, results, strict=True):
        tally = by_kind.setdefault(task.kind, Counter())
        if result.outcome is not Outcome.CREATED or not result.name:
            problems.append(f"not published: {result.error}")
            counts["lost"] += 1
            tally["lost"] += 1
            continue
        counts["published"] += 1
        fate = ledger.fates[_key(result.name)]
        if fate.outcome is None:
            counts["lost"] += 1
            tally["lost"] += 1
            problems.append(f"lost: {result.name} (no outcome in the handler log)")
            continue
        counts[fate.outcome] += 1
        tally[fate.outcome] += 1
        counts["retried"] += fate.failed_attempts > 0
        latencies.append(fate.finished_at - fate.published_at)
        if fate.outcome != task.expect or (fate.failed_attempts > 0) != task.retries:
            counts["unexpected"] += 1
            problems.append(f"unexpected: {result.name} ended {fate.outcome} after {fate.failed_attempts} failures")
    for problem in problems[:20]:
        print(f"  {problem}", file=out)
    expected = {task.kind: task.expect for task in tasks}
    width = max(map(len, by_kind), default=0)
    for kind, outcomes in by_kind.items():
        became = ", ".join(f"{outcome} {n}" for outcome, n in sorted(outcomes.items()))
        print(f"  {kind:<{width}}  {became}  (expected: {expected[kind]})", file=out)
    print(
        f"published {counts['published']}, delivered {counts['delivered']}, retried {counts['retried']},"
        f" dead-lettered {counts['dead-lettered']}, lost {counts['lost']}, unexpected {counts['unexpected']}",
        file=out,
    )
    if latencies:
        print(
            f"latency publish -> outcome: p50 {1000 * percentile(latencies, 0.5):.0f} ms,"
            f" p95 {1000 * percentile(latencies, 0.95):.0f} ms, max {1000 * max(latencies):.0f} ms"
            f" (mean {1000 * statistics.fmean(latencies):.0f} ms)",
            file=out,
        )
    return 1 if counts["lost"] or counts["unexpected"] else 0


def _work_dead_letters(
    dead_letters: DeadLetters,
    tasks: list[DemoTask],
    results: list[PublishResult],
    ledger: Ledger,
    arrives_at: float,
    timeout: float,
    out: TextIO,
) -> int:
    """Lists the dead letters (one per dead-lettered task, or exit status 1), then replays the one whose record
    has arrived since, as an operator would once the cause is fixed, and waits for it to be delivered."""
    dead = {_key(r.name) for r in results if r.name and ledger.fates[_key(r.name)].outcome == "dead-lettered"}
    listed = list(dead_letters.list())
    recorded = {(letter.meta.queue, letter.meta.task) for letter in listed if letter.meta}
    table, count = letters_table(listed)
    print(f"\ndead letters ({dead_letters.queue.rsplit('/', 1)[-1]}): {count}", file=out)
    output_console(out).print(table)
    code = 0
    if recorded != dead or count != len(dead):
        print(
            f"  {len(dead - recorded)} dead-lettered tasks have no dead letter;"
            f" {count - len(dead & recorded)} dead letters are for no dead-lettered task",
            file=out,
        )
        code = 1
    replayable = [r.name for t, r in zip(tasks, results, strict=True) if t.replay and r.name]
    if not replayable:
        return code
    original = _key(replayable[0])
    time.sleep(max(0.0, arrives_at - time.time()))  # its record has arrived: the cause is gone
    (result,) = dead_letters.replay([dead_letter_task_id(*original)])
    if result.outcome is not LetterOutcome.REPLAYED or not result.task:
        print(f"replay of {original[1]}: {result.outcome.value} ({result.detail})", file=out)
        return 1
    replayed = _key(result.task)
    ledger.published(replayed, time.time())
    ledger.wait_until_settled([replayed], timeout)
    fate = ledger.fates[replayed].outcome or "lost"
    print(f"replayed {result.name.rsplit('/', 1)[-1]} (its record has arrived) as {replayed[1]}: {fate}", file=out)
    left = len(dead_letters.names())
    print(f"{left} dead letters left: `taskclient dead-letters list` against `localcloud up` shows them", file=out)
    return code | (fate != "delivered")
