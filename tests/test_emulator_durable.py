"""The durable emulator (localcloud/emulator/store.py): what a `kill -9` leaves, and bad data dirs.

Process tests run `python -m localcloud emulator --data-dir DIR`, talk to it with the stock google-cloud-tasks
client over real gRPC, kill it with SIGKILL and start it again on the same ports and dir. Unit tests drive a
core on a ManualClock over a `SqliteStore` without its flusher thread, so that what is committed is exactly
what the test committed; a crash is then a copy of the database files as they are on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import grpc
import httpx2
import pytest
from emulator_support import (
    LOCATION,
    T0,
    EmulatorProcess,
    Received,
    RecordingServer,
    add_queue,
    add_task,
    queue_path,
    retry,
    start_emulator_command,
)
from google.api_core import exceptions
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from contract.outputs import StackOutputs
from localcloud.__main__ import main
from localcloud.emulator.clock import ManualClock
from localcloud.emulator.core import CloudTasksCore
from localcloud.emulator.errors import CloudTasksError
from localcloud.emulator.state import HISTORY_LIMIT
from localcloud.emulator.store import (
    DATABASE_FILE,
    LOCK_FILE,
    SCHEMA_VERSION,
    DataDirInUse,
    SqliteStore,
    UnreadableDataDir,
    remove_state,
)
from localcloud.program import PROJECT_DIR
from localcloud.stack import free_port

FULL = tasks_v2.Task.View.FULL


@contextmanager
def stock_client(address: str) -> Iterator[tasks_v2.CloudTasksClient]:
    channel = grpc.insecure_channel(address)
    try:
        yield tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
    finally:
        channel.close()


def durable_emulator(data_dir: Path, *more: str) -> EmulatorProcess:
    return EmulatorProcess("--port", str(free_port()), "--data-dir", str(data_dir), *more)


def dispatched(emulator: EmulatorProcess, task_id: str, status: str) -> None:
    """Wait for the emulator's log line of an attempt of `task_id` answered `status`: its outcome is recorded."""
    emulator.wait_for_lines(
        lambda lines: any(f"task={task_id} " in line and f"status={status} " in line for line in lines),
        f"an attempt of {task_id} answered {status}",
    )


def commit_everything(client: tasks_v2.CloudTasksClient) -> None:
    """A state-changing RPC that answers OK has committed every change recorded before it, outcomes included."""
    client.update_queue(queue=tasks_v2.Queue(name=queue_path(f"marker-{free_port()}")))


def http_task(url: str, **fields: object) -> tasks_v2.Task:
    return tasks_v2.Task(http_request=tasks_v2.HttpRequest(url=url), **fields)


# --- the guarantees, against a real process killed with SIGKILL -----------------------------------------------


def test_every_change_an_rpc_acknowledged_survives_kill_9(tmp_path: Path) -> None:
    later = {"schedule_time": {"seconds": int(time.time()) + 3600}}  # not due during the test
    with durable_emulator(tmp_path / "state") as emulator:
        with stock_client(emulator.address) as client:
            kept = client.create_queue(
                parent=LOCATION,
                queue=tasks_v2.Queue(
                    name=queue_path("kept"),
                    rate_limits=tasks_v2.RateLimits(max_dispatches_per_second=7, max_concurrent_dispatches=3),
                    retry_config=tasks_v2.RetryConfig(max_attempts=4, min_backoff=timedelta(seconds=2)),
                ),
            )
            updated = client.update_queue(
                queue=tasks_v2.Queue(name=kept.name, rate_limits=tasks_v2.RateLimits(max_dispatches_per_second=9)),
                update_mask={"paths": ["rate_limits.max_dispatches_per_second"]},
            )
            client.pause_queue(name=kept.name)
            purged = client.create_queue(parent=LOCATION, queue={"name": queue_path("purged")})
            client.create_task(parent=purged.name, task=http_task("http://127.0.0.1:9/x", **later))
            purge_answer = client.purge_queue(name=purged.name)
            gone = client.create_queue(parent=LOCATION, queue={"name": queue_path("gone")})
            client.delete_queue(name=gone.name)

            body = bytes(range(256)) * 3
            task = tasks_v2.Task(
                name=f"{kept.name}/tasks/named",
                http_request=tasks_v2.HttpRequest(url="http://127.0.0.1:9/work", body=body, headers={"X-Mine": "yes"}),
                dispatch_deadline=timedelta(seconds=45),
                **later,
            )
            named = client.create_task(
                request=tasks_v2.CreateTaskRequest(parent=kept.name, task=task, response_view=FULL)
            )
            unnamed = client.create_task(parent=kept.name, task=http_task("http://127.0.0.1:9/other", **later))
            deleted = client.create_task(
                parent=kept.name, task=http_task("http://127.0.0.1:9/x", name=f"{kept.name}/tasks/deleted", **later)
            )
            client.delete_task(name=deleted.name)
            before = client.get_queue(name=kept.name)

        emulator.kill()
        emulator.restart()

        with stock_client(emulator.address) as client:
            after = client.get_queue(name=kept.name)
            assert after == before
            assert after.state == tasks_v2.Queue.State.PAUSED
            assert after.rate_limits.max_dispatches_per_second == 9 == updated.rate_limits.max_dispatches_per_second
            assert after.retry_config.max_attempts == 4
            assert client.get_queue(name=purged.name).purge_time == purge_answer.purge_time
            assert list(client.list_tasks(parent=purged.name)) == []
            tasks = list(client.list_tasks(request={"parent": kept.name, "response_view": FULL}))
            assert [t.name for t in tasks] == [named.name, unnamed.name]  # creation order kept
            assert tasks[0] == named
            assert tasks[0].http_request.body == body
            # Tombstones: the deleted task's name, and the deleted queue's.
            with pytest.raises(exceptions.NotFound) as missing:
                client.get_task(name=deleted.name)
            assert "existed recently" in missing.value.message
            with pytest.raises(exceptions.AlreadyExists):
                client.create_task(parent=kept.name, task=http_task("http://127.0.0.1:9/x", name=deleted.name))
            with pytest.raises(exceptions.FailedPrecondition):
                client.create_queue(parent=LOCATION, queue={"name": gone.name})
            # A name never used is still free, and the paging tokens of before still read the same listing.
            client.create_task(parent=kept.name, task=http_task("http://127.0.0.1:9/x", name=f"{kept.name}/tasks/new"))
        assert emulator.stop()[0] == 0


def test_after_a_kill_a_retried_task_goes_on_with_its_counts_and_schedule(tmp_path: Path) -> None:
    """Attempt 1 gets 429 (counted as an execution), attempt 2 a 503; the queue is paused from inside the
    worker before it answers attempt 2, so nothing else is dispatched. After the kill and restart, the task has
    the same counts and schedule time, and its third attempt carries RetryCount 2, ExecutionCount 1 and
    PreviousResponse 503."""
    emulator_box: list[EmulatorProcess] = []
    queue = queue_path("retried")

    def reply(request: Received, index: int) -> int:
        if index == 1:
            with stock_client(emulator_box[0].address) as client:
                client.pause_queue(name=queue)
        return [429, 503][index] if index < 2 else 200

    with RecordingServer(reply) as worker, durable_emulator(tmp_path / "state") as emulator:
        emulator_box.append(emulator)
        with stock_client(emulator.address) as client:
            client.create_queue(
                parent=LOCATION,
                queue=tasks_v2.Queue(name=queue, retry_config=retry(0.1, 0.1, max_attempts=10)),
            )
            task = client.create_task(parent=queue, task=http_task(f"{worker.url}/work", name=f"{queue}/tasks/t"))
            worker.wait_for(2)
            dispatched(emulator, "t", "503")
            commit_everything(client)
            before = client.get_task(name=task.name)
        assert (before.dispatch_count, before.response_count) == (2, 2)

        emulator.kill()
        emulator.restart()

        with stock_client(emulator.address) as client:
            after = client.get_task(name=task.name)
            assert after == before  # counts, schedule time, first and last attempt
            client.resume_queue(name=queue)
            third = worker.wait_for(3)[2]
    assert third.headers["X-CloudTasks-TaskRetryCount"] == "2"
    assert third.headers["X-CloudTasks-TaskExecutionCount"] == "1"
    assert third.headers["X-CloudTasks-TaskPreviousResponse"] == "503"
    eta = before.schedule_time.timestamp()
    assert float(third.headers["X-CloudTasks-TaskETA"]) == pytest.approx(eta, abs=1e-6)


def test_after_a_kill_only_the_attempt_in_flight_is_dispatched_again(tmp_path: Path) -> None:
    """One attempt at a time (max_concurrent_dispatches 1): 20 tasks answered 200, then the last one hangs.
    Once it arrives, the 20 outcomes are recorded; an RPC commits them; SIGKILL. After the restart only the
    attempt that was in flight is sent again (with the same retry count), then a task created after it."""
    hung = threading.Event()

    def reply(request: Received, index: int) -> int | None:
        if request.path == "/hang" and not hung.is_set():
            hung.set()
            return None
        return 200

    queue = queue_path("one-at-a-time")
    with RecordingServer(reply) as worker, durable_emulator(tmp_path / "state") as emulator:
        with stock_client(emulator.address) as client:
            client.create_queue(
                parent=LOCATION,
                queue=tasks_v2.Queue(name=queue, rate_limits=tasks_v2.RateLimits(max_concurrent_dispatches=1)),
            )
            client.pause_queue(name=queue)  # every task queued first: they go out in creation order
            for n in range(20):
                client.create_task(parent=queue, task=http_task(f"{worker.url}/done", name=f"{queue}/tasks/d{n}"))
            client.create_task(parent=queue, task=http_task(f"{worker.url}/hang", name=f"{queue}/tasks/hang"))
            client.resume_queue(name=queue)
            assert worker.wait_for(21)[-1].path == "/hang"
            commit_everything(client)

        emulator.kill()
        emulator.restart()

        with stock_client(emulator.address) as client:
            client.create_task(parent=queue, task=http_task(f"{worker.url}/sentinel", name=f"{queue}/tasks/s"))
            requests = worker.wait_for(23)
            with pytest.raises(exceptions.AlreadyExists):  # the tasks done before the kill stay done
                client.create_task(parent=queue, task=http_task(f"{worker.url}/done", name=f"{queue}/tasks/d0"))
    before, after = requests[:21], requests[21:]
    assert sorted(r.headers["X-CloudTasks-TaskName"] for r in before) == sorted([f"d{n}" for n in range(20)] + ["hang"])
    assert [r.headers["X-CloudTasks-TaskName"] for r in after] == ["hang", "s"]
    assert after[0].headers["X-CloudTasks-TaskRetryCount"] == before[-1].headers["X-CloudTasks-TaskRetryCount"] == "0"


def test_the_signing_key_survives_so_cached_certs_still_verify(tmp_path: Path) -> None:
    http_port = free_port()
    with durable_emulator(tmp_path / "state", "--http-port", str(http_port)) as emulator:
        certs_url = f"http://127.0.0.1:{http_port}/oauth2/v3/certs"
        before = httpx2.get(certs_url, timeout=10).json()
        emulator.kill()
        emulator.restart()
        after = httpx2.get(certs_url, timeout=10).json()
    assert after == before
    assert len(before["keys"]) == 1


# --- data dirs the emulator refuses -------------------------------------------------------------------------


def refused(*arguments: str) -> str:
    """Start the emulator with `arguments`; it must exit 2 before it is ready. Its stderr."""
    process, line = start_emulator_command("--port", "0", *arguments)
    _, stderr = process.communicate(timeout=60)
    assert (process.returncode, line) == (2, "")
    assert "Traceback" not in stderr
    return stderr


def test_a_data_dir_of_another_schema_version_is_refused_in_one_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    data_dir.mkdir()
    with sqlite3.connect(data_dir / DATABASE_FILE) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        db.execute("CREATE TABLE queues (name TEXT)")
    db.close()
    database = data_dir / DATABASE_FILE
    assert refused("--data-dir", str(data_dir)) == (
        f"emulator: cannot start: {database}: written by another version of the emulator (schema version"
        f" {SCHEMA_VERSION + 1}; this one reads version {SCHEMA_VERSION}): delete {data_dir} to start empty, or"
        " choose another --data-dir\n"
    )


def test_a_file_that_is_not_sqlite_is_refused_in_one_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    data_dir.mkdir()
    (data_dir / DATABASE_FILE).write_bytes(b"this is not a database\n" * 100)
    stderr = refused("--data-dir", str(data_dir))
    assert stderr.count("\n") == 1
    assert stderr.startswith(f"emulator: cannot start: {data_dir / DATABASE_FILE}: not an emulator database (")
    assert stderr.endswith(f": delete {data_dir} to start empty, or choose another --data-dir\n")
    assert (data_dir / DATABASE_FILE).read_bytes() == b"this is not a database\n" * 100  # left as it was


def test_a_data_dir_that_is_a_file_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    assert refused("--data-dir", str(tmp_path / "state")) == (
        f"emulator: cannot start: {tmp_path / 'state'}: is a file, not a directory: choose another --data-dir\n"
    )


def test_a_second_emulator_on_the_same_data_dir_refuses_to_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    with durable_emulator(data_dir) as first:
        assert refused("--data-dir", str(data_dir)) == (
            f"emulator: cannot start: {data_dir}: in use by another emulator (pid {first.process.pid}): stop it,"
            " or choose another --data-dir\n"
        )
        first.kill()  # the kernel releases the lock of a killed process: no stale lock
    with durable_emulator(data_dir) as second:
        assert second.stop()[0] == 0


def test_localcloud_up_names_the_fresh_flag_for_an_unreadable_data_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "state"
    data_dir.mkdir()
    (data_dir / DATABASE_FILE).write_bytes(b"not sqlite" * 500)
    assert main(["up", "--data-dir", str(data_dir), "--outputs", str(tmp_path / "outputs.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"error: {data_dir / DATABASE_FILE}: not an emulator database")
    assert err.endswith(
        f"start empty with `localcloud up --fresh` (deletes the state in {data_dir}), or choose another --data-dir\n"
    )


def test_remove_state_deletes_the_emulators_files_only(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    with SqliteStore(data_dir):
        pass
    (data_dir / "notes.txt").write_text("mine")
    remove_state(data_dir)
    assert sorted(p.name for p in data_dir.iterdir()) == ["notes.txt"]
    (data_dir / "notes.txt").unlink()
    with SqliteStore(data_dir):
        pass
    remove_state(data_dir)
    assert not data_dir.exists()


def test_remove_state_refuses_a_data_dir_in_use(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "state"), pytest.raises(DataDirInUse):
        remove_state(tmp_path / "state")
    assert (tmp_path / "state" / DATABASE_FILE).exists()


def test_two_stores_on_one_dir_in_one_process_are_refused_too(tmp_path: Path) -> None:
    with SqliteStore(tmp_path), pytest.raises(DataDirInUse, match=f"{tmp_path}: in use by another emulator"):
        SqliteStore(tmp_path)
    assert (tmp_path / LOCK_FILE).exists()


def test_a_database_the_emulator_did_not_write_is_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / DATABASE_FILE) as db:
        db.execute("CREATE TABLE other (x)")
    db.close()
    with pytest.raises(UnreadableDataDir, match="an SQLite database the emulator did not write"):
        SqliteStore(tmp_path)


# --- the store, on a manual clock ---------------------------------------------------------------------------


class Durable:
    """A core on a ManualClock over a store without its flusher: only what the test commits is committed."""

    def __init__(self, data_dir: Path, clock: ManualClock | None = None, **options: object) -> None:
        self.data_dir = data_dir
        self.clock = clock or ManualClock(T0)
        self.store = SqliteStore(data_dir)
        self.core = CloudTasksCore(self.clock, store=self.store, **options)  # type: ignore[arg-type]

    def crash(self, into: Path, **options: object) -> Durable:
        """What a kill -9 now would leave: the database files as they are on disk, opened by a new core (on the
        same clock). This one is closed afterwards (committing its pending changes to its own files only)."""
        into.mkdir()
        for name in (DATABASE_FILE, f"{DATABASE_FILE}-wal"):
            if (self.data_dir / name).exists():
                shutil.copyfile(self.data_dir / name, into / name)
        self.store.close()
        return Durable(into, self.clock, **options)

    def task(self, name: str) -> tasks_v2.Task:
        return self.core.get_task(tasks_v2.GetTaskRequest(name=name, response_view=FULL))


@pytest.fixture
def durable(tmp_path: Path) -> Iterator[Durable]:
    run = Durable(tmp_path / "first")
    yield run
    run.store.close()


def test_an_outcome_not_committed_is_forgotten_and_the_attempt_made_again(durable: Durable, tmp_path: Path) -> None:
    queue = add_queue(durable.core, "q", retry_config=retry(10, 10, max_attempts=5))
    ok, failed, lost = (add_task(durable.core, queue, name).name for name in ("ok", "failed", "lost"))
    attempts = {a.task_name: a for a in durable.core.take_due(durable.clock.now())}
    durable.clock.advance(1)
    durable.core.complete(attempts[ok], 200, durable.clock.now())
    durable.core.complete(attempts[failed], 500, durable.clock.now())
    durable.store.commit()  # what the flusher does; the third attempt is still in flight
    failed_before = durable.task(failed)
    durable.core.complete(attempts[lost], 200, durable.clock.now())  # ended, not yet committed

    after = durable.crash(tmp_path / "crashed")
    assert after.task(failed) == failed_before
    assert (failed_before.dispatch_count, failed_before.schedule_time.timestamp()) == (1, T0 + 1 + 10)
    lost_task = after.task(lost)
    assert (lost_task.dispatch_count, lost_task.response_count) == (0, 0)  # as if the attempt had not been made
    with pytest.raises(CloudTasksError, match="existed recently"):
        after.task(ok)
    again = after.core.take_due(after.clock.now())
    assert [(a.task_name, a.headers["X-CloudTasks-TaskRetryCount"]) for a in again] == [(lost, "0")]
    after.store.close()


def test_an_rpc_commits_every_outcome_recorded_before_it(durable: Durable, tmp_path: Path) -> None:
    queue = add_queue(durable.core, "q")
    done = add_task(durable.core, queue, "done").name
    [attempt] = durable.core.take_due(durable.clock.now())
    durable.core.complete(attempt, 204, durable.clock.now())
    durable.core.pause_queue(tasks_v2.PauseQueueRequest(name=queue))  # no explicit commit

    after = durable.crash(tmp_path / "crashed")
    with pytest.raises(CloudTasksError, match="existed recently"):
        after.task(done)
    assert after.core.get_queue(tasks_v2.GetQueueRequest(name=queue)).state == tasks_v2.Queue.State.PAUSED
    after.store.close()


def test_attempt_history_and_dispatch_counter_survive(durable: Durable, tmp_path: Path) -> None:
    queue = add_queue(durable.core, "q", retry_config=retry(1, 1, max_attempts=-1))
    name = add_task(durable.core, queue, "t").name
    statuses = [500, 404, 503] * 40  # more attempts than the history keeps
    for status in statuses:
        [attempt] = durable.core.take_due(durable.clock.now())
        durable.clock.advance(0.25)
        durable.core.complete(attempt, status, durable.clock.now())
        durable.clock.advance(1)
    durable.store.commit()
    record = durable.core._state.queues[queue].tasks[name]
    history, dispatched = list(record.history), durable.core._state.queues[queue].dispatched

    after = durable.crash(tmp_path / "crashed")
    restored_queue = after.core._state.queues[queue]
    restored = restored_queue.tasks[name]
    assert list(restored.history) == history
    assert len(history) == HISTORY_LIMIT and history[-1].status == statuses[-1]
    assert restored.last_attempt == history[-1]
    assert restored_queue.dispatched == dispatched == len(statuses)
    assert (restored.dispatch_count, restored.response_count, restored.execution_count) == (120, 120, 40)
    assert restored.previous_response == 503
    assert after.task(name) == durable_task_view(durable, name)
    after.store.close()


def durable_task_view(run: Durable, name: str) -> tasks_v2.Task:
    """The task as the first run showed it (its store is closed, its memory is not)."""
    return run.core.get_task(tasks_v2.GetTaskRequest(name=name, response_view=FULL))


def test_restored_tombstones_expire_when_they_would_have(tmp_path: Path) -> None:
    first = Durable(tmp_path / "first", task_tombstone_ttl=100.0, queue_tombstone_ttl=300.0)
    queue = add_queue(first.core, "q")
    gone = add_queue(first.core, "gone")
    name = add_task(first.core, queue, "t").name
    first.core.delete_task(tasks_v2.DeleteTaskRequest(name=name))
    first.core.delete_queue(tasks_v2.DeleteQueueRequest(name=gone))
    first.clock.advance(99)

    after = first.crash(tmp_path / "crashed", task_tombstone_ttl=100.0, queue_tombstone_ttl=300.0)
    with pytest.raises(CloudTasksError, match="ALREADY_EXISTS"):
        add_task(after.core, queue, "t")
    after.clock.advance(1)
    assert add_task(after.core, queue, "t").name == name  # 100 s after the delete, as without the restart
    with pytest.raises(CloudTasksError, match="FAILED_PRECONDITION"):
        add_queue(after.core, "gone")
    after.clock.advance(200)
    assert add_queue(after.core, "gone") == gone
    after.store.close()


def test_new_records_after_a_restart_get_new_numbers(durable: Durable, tmp_path: Path) -> None:
    """Sequence numbers and queue uids go on after the highest restored: listing order and page tokens hold,
    and a re-created queue is never taken for an old one."""
    queue = add_queue(durable.core, "q")
    first = [add_task(durable.core, queue).name for _ in range(3)]
    page = durable.core.list_tasks(tasks_v2.ListTasksRequest(parent=queue, page_size=2))
    old_uid = durable.core._state.queues[queue].uid

    after = durable.crash(tmp_path / "crashed")
    later = add_task(after.core, queue).name
    rest = after.core.list_tasks(tasks_v2.ListTasksRequest(parent=queue, page_size=5, page_token=page.next_page_token))
    assert [t.name for t in rest.tasks] == [first[2], later]
    assert after.core._state.queues[add_queue(after.core, "other")].uid > old_uid
    after.store.close()


def test_reset_empties_the_store(durable: Durable, tmp_path: Path) -> None:
    queue = add_queue(durable.core, "q")
    add_task(durable.core, queue)
    durable.core.reset()
    after = durable.crash(tmp_path / "crashed")
    assert after.core._state.queues == {}
    after.store.close()


@pytest.mark.parametrize("column", ["queue", "rate_limits"])
def test_a_record_this_emulator_cannot_read_makes_the_dir_unreadable(tmp_path: Path, column: str) -> None:
    """A row that no longer parses (bytes that are not a Queue) or no longer passes the rules (a rate above
    Cloud Tasks' limit, as a newer version might enforce): one clear error, not a half-restored state."""
    run = Durable(tmp_path / "state")
    add_queue(run.core, "q")
    run.store.close()
    bad = b"\xff\xff\xff" if column == "queue" else queue_with_rate(10_000.0)
    with sqlite3.connect(tmp_path / "state" / DATABASE_FILE) as db:
        db.execute("UPDATE queues SET queue = ?", (bad,))
    db.close()
    with SqliteStore(tmp_path / "state") as store, pytest.raises(UnreadableDataDir) as error:
        CloudTasksCore(ManualClock(T0), store=store)
    assert str(error.value).startswith(f"{tmp_path / 'state' / DATABASE_FILE}: holds a record this emulator cannot")


def queue_with_rate(rate: float) -> bytes:
    queue = tasks_v2.Queue(name=queue_path("q"), rate_limits=tasks_v2.RateLimits(max_dispatches_per_second=rate))
    return bytes(tasks_v2.Queue.serialize(queue))


def test_without_a_data_dir_the_core_has_no_store() -> None:
    core = CloudTasksCore(ManualClock(T0))
    assert type(core._state.journal).__name__ == "Journal"


# --- localcloud up on its data dir --------------------------------------------------------------------------


def start_up(tmp_path: Path, *more: str) -> tuple[subprocess.Popen[str], list[str]]:
    """`localcloud up` on free ports with its outputs and state in `tmp_path`; (process, lines up to "is up")."""
    ports = [str(free_port()) for _ in range(4)]
    flags = ["--emulator-port", ports[0], "--handler-port", ports[1], "--http-port", ports[2]]
    command = [sys.executable, "-m", "localcloud", "up", "--outputs", str(tmp_path / "outputs.json"), *flags]
    up = subprocess.Popen(
        [*command, "--console-port", ports[3], "--data-dir", str(tmp_path / "state"), *more],
        cwd=PROJECT_DIR,
        env={**os.environ, "PYTHONPATH": str(PROJECT_DIR)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert up.stdout is not None
    lines = []
    for line in up.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith("Ctrl-C stops it"):
            return up, lines
    raise AssertionError(f"localcloud up ended with {up.wait()} before it was up:\n" + "\n".join(lines[-20:]))


def stop_up(up: subprocess.Popen[str]) -> None:
    up.send_signal(signal.SIGINT)
    up.communicate(timeout=60)
    assert up.returncode == 0


@pytest.fixture
def ups() -> Iterator[list[subprocess.Popen[str]]]:
    """The `localcloud up` processes a test starts, killed at the end if the test left one running."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for up in started:
        if up.poll() is None:
            up.kill()
            up.wait(timeout=30)


def state_line(lines: list[str]) -> str:
    return next(line for line in lines if line.startswith("  emulator state"))


def test_localcloud_up_keeps_waiting_tasks_applies_the_config_and_fresh_starts_empty(
    tmp_path: Path, ups: list[subprocess.Popen[str]]
) -> None:
    up, lines = start_up(tmp_path)
    ups.append(up)
    shown = tmp_path / "state"
    assert state_line(lines) == (
        f"  emulator state            {shown}  (0 tasks waiting from the last run; --fresh starts empty)"
    )
    outputs = StackOutputs.from_mapping(json.loads((tmp_path / "outputs.json").read_text()))
    default = outputs.queues["default"].path
    host = next(line for line in lines if "Cloud Tasks emulator" in line).rsplit("=", 1)[1]
    with stock_client(host) as client:
        declared = client.get_queue(name=default)
        client.create_task(
            parent=default,
            task=http_task(f"{outputs.service_url}/tasks/default", schedule_time={"seconds": int(time.time()) + 3600}),
        )
        client.update_queue(  # a change the stack file does not declare: the next `up` undoes it
            queue=tasks_v2.Queue(name=default, rate_limits=tasks_v2.RateLimits(max_dispatches_per_second=3)),
            update_mask={"paths": ["rate_limits.max_dispatches_per_second"]},
        )
        client.pause_queue(name=default)
    stop_up(up)

    up, lines = start_up(tmp_path)
    ups.append(up)
    assert "(1 task waiting from the last run; --fresh starts empty)" in state_line(lines)
    host = next(line for line in lines if "Cloud Tasks emulator" in line).rsplit("=", 1)[1]
    with stock_client(host) as client:
        assert client.get_queue(name=default) == declared  # rate and state as declared again
        assert len(list(client.list_tasks(parent=default))) == 1
    stop_up(up)

    up, lines = start_up(tmp_path, "--fresh")
    ups.append(up)
    assert "(0 tasks waiting from the last run; --fresh starts empty)" in state_line(lines)
    stop_up(up)
