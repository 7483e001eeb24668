"""Restarts of the local stack's processes: the handler killed mid-run, and the emulator restarted.

What survives what:
- The handler killed (SIGKILL) and restarted on the same port: every task is still delivered (the emulator retries
  the attempts that got no answer), but the handler's in-memory idempotency store is gone, so a task whose work
  finished while its answer never reached the emulator runs again. Duplicates are bounded by the tasks in flight
  at the kill.
- The emulator in memory (no --data-dir, as `localcloud demo` runs it) restarted: nothing. Queues, tasks, and
  the names it reserves (tombstones) are gone, and so is its signing key. Creating the declared queues again
  makes the API usable. The handler keeps running, with its idempotency memory and its cached copy of the *old*
  signing certs, so it refuses the new emulator's tokens until it refetches them (tested below).
- The durable emulator (--data-dir, as `localcloud up` runs it) killed with SIGKILL and restarted: everything
  it had acknowledged. Queues with their settings, waiting tasks, the names it reserves, and its signing key,
  so the running handler accepts its tokens at once (tested below; under load, with three kills, in
  test_reliability_durable.py).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from urllib.parse import urlsplit

import pytest
from google.api_core import exceptions
from reliability_support import (
    PROBE_COMMAND,
    WAIT_S,
    LocalStack,
    Watch,
    key_of,
    local_stack,
    start_probe_generation,
    start_process,
    stock_client,
)

from contract.outcomes import TaskOutcome
from contract.outputs import StackOutputs
from localcloud.stack import _create_queues, running
from taskclient.connection import connect
from taskclient.errors import PublishError
from taskclient.publisher import Outcome, TaskPublisher, TaskRequest

TASKS = 600
HELD = 10  # of each kind: work held before it starts, and after it finished (first process only)
KILL_AFTER_WORKED = 250


def test_the_handler_killed_mid_run_and_restarted_loses_no_task() -> None:
    """SIGKILL the handler while tasks are in flight, restart it on the same port: no task is lost; a task runs
    twice only if it was in flight at the kill, and those whose work had finished (answer not yet sent) do."""
    with local_stack("dev", handler_command=PROBE_COMMAND) as dev:
        watch = dev.watch
        requests = (
            [TaskRequest({"hold": "before"}, dedupe_key=f"held-before-{n}") for n in range(HELD)]
            + [TaskRequest({"hold": "after"}, dedupe_key=f"held-after-{n}") for n in range(HELD)]
            + [TaskRequest({"seconds": 0.02}, dedupe_key=f"kill-{n}") for n in range(TASKS - 2 * HELD)]
        )
        first = dev.local.processes[1]
        queue_path = dev.outputs.queues["default"].path
        # Paused while publishing, so the run starts with every task queued: at 500 dispatches/s the last ones are
        # still to come when the kill lands, however long publishing took.
        with stock_client(dev.local.emulator_host) as client:
            client.pause_queue(name=queue_path)
            with TaskPublisher(dev.outputs, connection=connect(dev.local.emulator_host)) as publisher:
                results = publisher.publish_many(requests, concurrency=16)
            client.resume_queue(name=queue_path)
        assert Counter(r.outcome for r in results) == {Outcome.CREATED: TASKS}
        ids = [key_of(r.name)[1] for r in results if r.name]
        held_before, held_after = set(ids[:HELD]), set(ids[HELD : 2 * HELD])

        def ready_to_kill() -> bool:
            started = {t for event, t, pid in watch.work if event == "started" and pid == first.pid}
            worked = sum(1 for event, _, pid in watch.work if event == "worked" and pid == first.pid)
            return (held_before | held_after) <= started and worked >= KILL_AFTER_WORKED

        watch.wait(ready_to_kill, "the held tasks to start and enough tasks to finish")
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=30) == -signal.SIGKILL
        # What the killed process printed is all in its pipe: let localcloud.stack's reader drain it, so every
        # "started" line of the first process is counted below.
        for reader in [t for t in threading.enumerate() if t.name == "handler-output"]:
            reader.join(timeout=WAIT_S)
            assert not reader.is_alive()
        # The same command, port and environment as the local stack gives the handler (a new process generation,
        # so the probe no longer holds tasks).
        second = start_probe_generation(dev, 2)

        queue = dev.queue_id("default")
        watch.wait(lambda: {(queue, t) for t in ids} <= watch.acknowledged, f"all {TASKS} tasks to be acknowledged")
        with stock_client(dev.local.emulator_host) as client:
            assert list(client.list_tasks(parent=queue_path)) == []

        with watch.changed:
            events = list(watch.work)
            attempts = {t: list(watch.attempts[(queue, t)]) for t in ids}
            outcomes = {t: [e["outcome"] for e in watch.entries[(queue, t)]] for t in ids}
    started_first = {t for event, t, pid in events if event == "started" and pid == first.pid}
    no_answer = {t for t in ids if any(status is None for _, status in attempts[t])}
    in_flight = started_first & no_answer  # its work had started, and the emulator never got its answer
    runs = Counter(t for event, t, _ in events if event == "worked")
    runs_per_process = Counter((t, pid) for event, t, pid in events if event == "worked")
    twice = {t for t in ids if runs[t] >= 2}

    after_restart = {t for event, t, pid in events if event == "worked" and pid == second.pid}
    assert after_restart - held_before - held_after, "the kill was not mid-run: nothing was left for the restart"
    assert {t for t in ids if TaskOutcome.DONE not in outcomes[t]} == set(), "a task never got done"
    assert {t for t in ids if runs[t] == 0} == set(), "a task's work never ran"
    assert max(runs_per_process.values()) == 1, "one process ran a task's work twice"
    assert max(runs.values()) <= 2
    assert (held_before | held_after) <= in_flight
    assert twice <= in_flight and len(twice) <= len(in_flight)
    assert held_after <= twice, "work finished before the kill, answer never sent: it must run again"
    assert {t for t in held_before if runs[t] != 1} == set(), "work that never finished runs exactly once"
    assert not [t for t in ids if set(outcomes[t]) - {TaskOutcome.DONE, TaskOutcome.DUPLICATE}]
    print(
        f"\nhandler kill: {len(in_flight)} in flight at the kill, {len(twice)} ran twice"
        f" ({len(twice - held_after)} besides the ones held after their work),"
        f" {len(after_restart - held_before - held_after)} others done by the restarted handler"
    )


# --- the emulator restarted ---------------------------------------------------------------------------------


@dataclass
class Restarted:
    dev: LocalStack
    pending: str  # a task scheduled an hour ahead before the restart
    done_key: str  # the dedupe key of a task done before the restart


@pytest.fixture(scope="module")
def restarted() -> Iterator[Restarted]:
    """The dev stack with one task done and one pending, then its emulator stopped and started again on the same
    ports (gRPC and signing keys)."""
    with local_stack("dev") as dev:
        watch = dev.watch
        with TaskPublisher(dev.outputs, connection=connect(dev.local.emulator_host)) as publisher:
            done = publisher.publish({"before": "restart"}, dedupe_key="before-restart")
            pending = publisher.publish({"later": True}, delay=3600)
        watch.wait(lambda: key_of(done) in watch.acknowledged, "the task before the restart to be done")
        with stock_client(dev.local.emulator_host) as client:
            assert client.get_task(name=pending).name == pending

        dev.emulator.terminate()
        assert dev.emulator.wait(timeout=30) == 0
        grpc_port = dev.local.emulator_host.rsplit(":", 1)[1]
        http_port = str(urlsplit(dev.local.certs_url).port)
        lines = len(watch.lines)
        command = [sys.executable, "-m", "localcloud", "emulator", "--port", grpc_port, "--http-port", http_port]
        emulator = start_process(command, {}, "emulator", watch.on_line)
        dev.local.processes.append(emulator)
        watch.wait(
            lambda: any(f"emulator ready grpc={dev.local.emulator_host}" in line for _, line in watch.lines[lines:]),
            "the emulator to be ready again",
        )
        yield Restarted(dev, pending, "before-restart")


def test_a_restarted_emulator_keeps_nothing_until_the_queues_are_created_again(restarted: Restarted) -> None:
    """The contract: the emulator keeps nothing across a restart. Queues and tasks are gone (NOT_FOUND), including
    a task that had not run yet, and names used before are free again. Creating the declared queues again (what
    `localcloud up` does at start) makes it usable: the same settings, new tasks accepted and dispatched."""
    dev = restarted.dev
    host = dev.local.emulator_host
    declared = dev.local.plan.queues
    with stock_client(host) as client, TaskPublisher(dev.outputs, connection=connect(host)) as publisher:
        for queue in declared:
            with pytest.raises(exceptions.NotFound):
                client.get_queue(name=queue.name)
        assert list(client.list_queues(parent=declared[0].name.rsplit("/queues/", 1)[0])) == []
        with pytest.raises(exceptions.NotFound):
            client.get_task(name=restarted.pending)
        with pytest.raises(PublishError) as refused:
            publisher.publish({"after": "restart"})
        assert refused.value.code == "NOT_FOUND"

        _create_queues(host, declared)  # what `localcloud up` does at start

        for queue in declared:
            recreated = client.get_queue(name=queue.name)
            assert recreated.rate_limits.max_dispatches_per_second == queue.rate_limits.max_dispatches_per_second
            assert recreated.rate_limits.max_concurrent_dispatches == queue.rate_limits.max_concurrent_dispatches
            assert recreated.retry_config == queue.retry_config
            assert ("http_target" in recreated) == ("http_target" in queue)
        assert list(client.list_tasks(parent=dev.outputs.default_queue_path)) == []  # the pending task is gone
        # Name reservations did not survive either: the dedupe key used before the restart creates a new task.
        again = publisher.publish_many([TaskRequest({"again": True}, dedupe_key=restarted.done_key)])
        assert [r.outcome for r in again] == [Outcome.CREATED]
        assert again[0].name is not None
        fresh = publisher.publish({"after": "restart"})
    for key in (key_of(again[0].name), key_of(fresh)):
        dev.watch.wait(partial(dev.watch.attempts.get, key), f"{key} to be dispatched")


def test_a_running_handler_refuses_a_restarted_emulators_tokens_until_it_refetches_keys(
    restarted: Restarted,
) -> None:
    """What an emulator-only restart does to the handler, exactly: the new emulator signs with a new key, and the
    handler, which caches the signing certs and refetches for an unknown key id at most once per 30 s (so random
    key ids cannot make it hammer the certs endpoint), refuses the new tokens with 401 until then. That is why
    `localcloud up` starts and stops the emulator and the handler together and never restarts one alone."""
    dev = restarted.dev
    host = dev.local.emulator_host
    _create_queues_once(restarted)
    with TaskPublisher(dev.outputs, connection=connect(host)) as publisher:
        name = publisher.publish({"first": "attempt"})
    first = dev.watch.wait(lambda: dev.watch.attempts.get(key_of(name)), "the first attempt")[0]
    refusals = [e.get("reason") for e in dev.watch.entries[key_of(name)] if e["outcome"] == TaskOutcome.REFUSED]
    assert first == (1, 401)
    assert refusals[:1] == ["unknown signing key"]


def _create_queues_once(restarted: Restarted) -> None:
    """The queues exist after the first test; create them here when this test runs on its own."""
    with stock_client(restarted.dev.local.emulator_host) as client:
        try:
            client.get_queue(name=restarted.dev.local.plan.queues[0].name)
        except exceptions.NotFound:
            _create_queues(restarted.dev.local.emulator_host, restarted.dev.local.plan.queues)


# --- the durable emulator killed and restarted --------------------------------------------------------------


@pytest.fixture(scope="module")
def durably_restarted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Restarted]:
    """The dev stack on a data dir (as `localcloud up` runs it) with one task done and one pending, then its
    emulator killed with SIGKILL and started again on the same ports and data dir; the handler kept running."""
    data_dir = tmp_path_factory.mktemp("durable") / "state"
    watch = Watch()
    with running("dev", on_line=watch.on_line, data_dir=data_dir) as local:
        dev = LocalStack(local, watch, StackOutputs.from_mapping(local.plan.outputs))
        with TaskPublisher(dev.outputs, connection=connect(local.emulator_host)) as publisher:
            done = publisher.publish({"before": "restart"}, dedupe_key="before-restart")
            pending = publisher.publish({"later": True}, delay=3600)
        watch.wait(lambda: key_of(done) in watch.acknowledged, "the task before the restart to be done")

        dev.emulator.send_signal(signal.SIGKILL)
        assert dev.emulator.wait(timeout=30) == -signal.SIGKILL
        grpc_port = local.emulator_host.rsplit(":", 1)[1]
        http_port = str(urlsplit(local.certs_url).port)
        lines = len(watch.lines)
        command = [sys.executable, "-m", "localcloud", "emulator", "--port", grpc_port, "--http-port", http_port]
        emulator = start_process([*command, "--data-dir", str(data_dir)], {}, "emulator", watch.on_line)
        local.processes.append(emulator)
        watch.wait(
            lambda: any(f"emulator ready grpc={local.emulator_host}" in line for _, line in watch.lines[lines:]),
            "the emulator to be ready again",
        )
        yield Restarted(dev, pending, "before-restart")


def test_a_durable_emulator_killed_and_restarted_keeps_queues_tasks_and_names(durably_restarted: Restarted) -> None:
    """Without re-creating anything: the declared queues are there with their settings (the dead-letter queue
    still paused), the pending task waits with its schedule, and the dedupe key used before is still refused."""
    dev = durably_restarted.dev
    host = dev.local.emulator_host
    with stock_client(host) as client, TaskPublisher(dev.outputs, connection=connect(host)) as publisher:
        for queue in dev.local.plan.queues:
            kept = client.get_queue(name=queue.name)
            assert kept.rate_limits.max_dispatches_per_second == queue.rate_limits.max_dispatches_per_second
            assert kept.retry_config == queue.retry_config
            assert kept.state == queue.state
        assert client.get_task(name=durably_restarted.pending).name == durably_restarted.pending
        again = publisher.publish_many([TaskRequest({"again": True}, dedupe_key=durably_restarted.done_key)])
        assert [r.outcome for r in again] == [Outcome.DUPLICATE]


def test_a_running_handler_accepts_a_restarted_durable_emulators_tokens_at_once(durably_restarted: Restarted) -> None:
    """The signing key survived the kill: the handler's cached certs verify the new process's tokens, so the
    first attempt after the restart is done, not refused with 401."""
    dev = durably_restarted.dev
    with TaskPublisher(dev.outputs, connection=connect(dev.local.emulator_host)) as publisher:
        name = publisher.publish({"after": "restart"})
    first = dev.watch.wait(lambda: dev.watch.attempts.get(key_of(name)), "the first attempt")[0]
    assert first == (1, 200)
    assert dev.watch.outcomes(key_of(name)) == [TaskOutcome.DONE]
