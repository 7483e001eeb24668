"""The emulator's durable state: SQLite in a data dir (`python -m localcloud emulator --data-dir DIR`).

What is kept: each queue (its normalized Queue message, state and purge time included, and its dispatch
counter), each task (the stored Task message, its schedule time, dispatch/response/execution counts, first
dispatch, previous response and its attempt history, the last `HISTORY_LIMIT` attempts, the last of which is
`last_attempt`), the task and queue name tombstones with their expiry, and the OIDC signing key and kid (a
handler that cached the emulator's certs keeps accepting its tokens after a restart).
Not kept: the ring of finished tasks the console shows (`EmulatorState.finished`: it starts empty), the
token buckets (a restarted queue starts with a full bucket) and attempts in flight (see the rule below).

Guarantees:
* An RPC that changes state (CreateQueue, UpdateQueue, PauseQueue, ResumeQueue, PurgeQueue, DeleteQueue,
  CreateTask, DeleteTask) commits its change before it answers, with every change recorded before it. One
  that answered OK survives a `kill -9` of the emulator. (RunTask only starts an attempt, whose outcome is
  committed as any other's.)
* After a restart every task is dispatched with its retry state intact: the same counts and the same next
  schedule time, so X-CloudTasks-TaskRetryCount, -TaskExecutionCount and -TaskPreviousResponse go on from
  where they were.
* The outcome of an attempt (success: the task dropped; failure: rescheduled) is recorded when the attempt
  ends and committed by the flusher thread within about a millisecond, in a group with the outcomes that
  ended meanwhile (and by any RPC's commit). The exact rule: after a restart, each task is as its last
  committed change left it. So a task is dispatched again because of the restart if, and only if, an
  attempt of it had started and its outcome was not committed: the attempt was in flight at the crash, or
  had ended just before it. That attempt is forgotten, as if it had not been made: it does not count in the
  task's dispatch count (its retry carries the same X-CloudTasks-TaskRetryCount), and the task is due at its
  stored schedule time, which had come (RunTask aside). At-least-once delivery allows exactly this. An
  attempt whose outcome was committed is never repeated.
* Tombstones survive: a task name used before the crash is refused (ALREADY_EXISTS) after it until its TTL
  ends, and a deleted queue's name likewise.
* `synchronous=NORMAL` in WAL mode: a commit is written to the WAL before the RPC answers, and so it
  survives the death of the process (kill -9, a crash), which is what an emulator on a laptop meets. It may
  not survive a power loss or an OS crash (the last commits can be lost; the file stays consistent): FULL
  would fsync every commit for that, at a cost a local emulator has no need to pay.
* One emulator per data dir: an exclusive lock (flock on `DIR/lock`, released by the kernel when the process
  dies, even by SIGKILL) makes a second one refuse to start, naming the dir and the pid holding it.
* A database of another schema version, or a file that is not SQLite, is refused with `UnreadableDataDir`,
  one line naming the path; nothing is changed in it.
On a graceful stop (SIGTERM, Ctrl-C), attempts in flight are cut and recorded as "no response", as any
attempt without an answer, and everything is committed before the process ends.

Layout of the data dir: `emulator.sqlite3` (with its `-wal` and `-shm` files while it is open) and `lock`
(the pid of the emulator using it). `remove_state` deletes exactly these files.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import sqlite3
import threading
from array import array
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from google.cloud import tasks_v2
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]  # no stubs installed

from localcloud.emulator.clock import Clock, SystemClock
from localcloud.emulator.config import normalize_queue
from localcloud.emulator.errors import CloudTasksError
from localcloud.emulator.state import (
    HISTORY_LIMIT,
    AttemptLog,
    EmulatorState,
    Journal,
    QueueRecord,
    TaskRecord,
)
from localcloud.emulator.taskspec import parse_task

__all__ = [
    "DATABASE_FILE",
    "LOCK_FILE",
    "SCHEMA_VERSION",
    "DataDirInUse",
    "SqliteStore",
    "StoreError",
    "UnreadableDataDir",
    "check_data_dir",
    "remove_state",
]

_LOG = logging.getLogger(__name__)

SCHEMA_VERSION = 1  # PRAGMA user_version; bump it with any change to _SCHEMA or to what a column holds
DATABASE_FILE = "emulator.sqlite3"
LOCK_FILE = "lock"
_STATE_FILES = (DATABASE_FILE, f"{DATABASE_FILE}-wal", f"{DATABASE_FILE}-shm", LOCK_FILE)
# Dropped tasks between two prunings of expired tombstones (an indexed range delete, cheap at this size).
_PRUNE_EVERY = 4096

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE queues (
    name TEXT PRIMARY KEY, uid INTEGER NOT NULL, seq INTEGER NOT NULL, queue BLOB NOT NULL,
    dispatched INTEGER NOT NULL
);
-- Written once per task; what changes with each failed attempt is in task_progress, so a retry never
-- rewrites a large body.
CREATE TABLE tasks (
    seq INTEGER PRIMARY KEY, name TEXT NOT NULL, queue TEXT NOT NULL, created REAL NOT NULL,
    schedule REAL NOT NULL, task BLOB NOT NULL
);
CREATE TABLE task_progress (
    seq INTEGER PRIMARY KEY, schedule REAL NOT NULL, dispatch_count INTEGER NOT NULL,
    response_count INTEGER NOT NULL, execution_count INTEGER NOT NULL, first_dispatch REAL,
    previous_response INTEGER, history BLOB NOT NULL
);
CREATE TABLE task_tombstones (name TEXT NOT NULL, expiry REAL NOT NULL);
CREATE INDEX task_tombstones_by_expiry ON task_tombstones (expiry);
CREATE TABLE queue_tombstones (name TEXT NOT NULL, expiry REAL NOT NULL);
CREATE INDEX queue_tombstones_by_expiry ON queue_tombstones (expiry);
"""
_TABLES = frozenset({"meta", "queues", "tasks", "task_progress", "task_tombstones", "queue_tombstones"})

_SAVE_QUEUE = "INSERT OR REPLACE INTO queues VALUES (?, ?, ?, ?, ?)"
_DROP_QUEUE = "DELETE FROM queues WHERE name = ? AND uid = ?"
_COUNT_DISPATCHES = "UPDATE queues SET dispatched = ? WHERE name = ? AND uid = ?"
_ADD_TASK = "INSERT INTO tasks VALUES (?, ?, ?, ?, ?, ?)"
_SAVE_PROGRESS = "INSERT OR REPLACE INTO task_progress VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_DROP_TASK = "DELETE FROM tasks WHERE seq = ?"
_DROP_PROGRESS = "DELETE FROM task_progress WHERE seq = ?"
_TASK_TOMBSTONE = "INSERT INTO task_tombstones VALUES (?, ?)"
_QUEUE_TOMBSTONE = "INSERT INTO queue_tombstones VALUES (?, ?)"
_CLEAR = tuple(f"DELETE FROM {table}" for table in sorted(_TABLES - {"meta"}))
_SIGNING_KEY, _SIGNING_KID = "oidc_signing_key", "oidc_kid"

_Op = tuple[str, tuple[Any, ...]]


class StoreError(RuntimeError):
    """The data dir cannot be used; the message is one line that names the path and why."""


class UnreadableDataDir(StoreError):
    """The data dir holds a file this emulator cannot read (another schema, not SQLite): start it empty."""


class DataDirInUse(StoreError):
    """Another emulator holds the data dir."""


def _encode_history(history: Iterable[AttemptLog]) -> bytes:
    """Four doubles per attempt (schedule, dispatch, response, status); NaN for None."""
    nan = math.nan
    values = array("d")
    for log in history:
        status = nan if log.status is None else float(log.status)
        values.extend((log.schedule, log.dispatch, nan if log.response is None else log.response, status))
    return values.tobytes()


def _decode_history(blob: bytes) -> deque[AttemptLog]:
    values = array("d")
    values.frombytes(blob)
    history: deque[AttemptLog] = deque(maxlen=HISTORY_LIMIT)
    for i in range(0, len(values), 4):
        schedule, dispatch, response, status = values[i : i + 4]
        history.append(
            AttemptLog(
                schedule,
                dispatch,
                None if math.isnan(response) else response,
                None if math.isnan(status) else int(status),
            )
        )
    return history


def _lock(data_dir: Path) -> int:
    """An exclusive lock on DIR/lock holding our pid, or DataDirInUse naming the pid that holds it."""
    path = data_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise StoreError(f"{path}: cannot be opened: {error.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DataDirInUse(f"{data_dir}: in use by another emulator (pid {holder})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _connect(path: Path) -> sqlite3.Connection:
    """The database at `path`, created with the schema when new; UnreadableDataDir when it is not ours."""
    try:
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as error:
        raise StoreError(f"{path}: cannot be opened: {error}") from None
    try:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version == 0 and not tables:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        elif version == 0:
            raise UnreadableDataDir(f"{path}: an SQLite database the emulator did not write")
        elif version != SCHEMA_VERSION or not tables >= _TABLES:
            raise UnreadableDataDir(
                f"{path}: written by another version of the emulator (schema version {version}; this one reads"
                f" version {SCHEMA_VERSION})"
            )
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(f"{path}: SQLite cannot use WAL mode here (journal mode {mode})")
        connection.execute("PRAGMA synchronous = NORMAL")  # why NORMAL: see the module docstring
    except sqlite3.DatabaseError as error:
        connection.close()
        raise UnreadableDataDir(f"{path}: not an emulator database ({error})") from None
    except BaseException:
        connection.close()
        raise
    return connection


def _data_dir(data_dir: Path) -> Path:
    if data_dir.exists() and not data_dir.is_dir():
        raise StoreError(f"{data_dir}: is a file, not a directory")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreError(f"{data_dir}: cannot be created: {error.strerror}") from None
    return data_dir


def check_data_dir(data_dir: Path) -> None:
    """Raise the StoreError an emulator started on `data_dir` would raise (creating it empty when missing)."""
    with SqliteStore(data_dir):
        pass


def remove_state(data_dir: Path) -> None:
    """Delete the emulator's files in `data_dir` (and the dir, once empty); nothing else in it is touched.
    DataDirInUse when an emulator is using it."""
    if not data_dir.exists():
        return
    fd = _lock(_data_dir(data_dir))
    try:
        for name in _STATE_FILES:
            with contextlib.suppress(FileNotFoundError):
                (data_dir / name).unlink()
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):  # not empty: the user keeps other files there
        data_dir.rmdir()


class SqliteStore(Journal):
    """The durable `Journal`: changes go to SQLite in `data_dir`, committed in groups. See the module docstring.

    Built, it holds the lock on the dir and has checked the database; `restore(state, now)` loads it into an
    empty state (CloudTasksCore does this). `commit()` commits every change recorded so far, in the caller's
    thread; `start_flushing()` starts the thread that commits attempt outcomes as they come, which no RPC
    waits for. `close()` commits the rest and releases the dir.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = _data_dir(Path(data_dir))
        self.path = self.data_dir / DATABASE_FILE
        self._lock_fd = _lock(self.data_dir)
        try:
            self._db = _connect(self.path)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._pending: list[_Op] = []
        self._dispatched: dict[tuple[str, int], int] = {}  # (queue name, uid) -> its dispatch counter
        self._recorded = 0  # changes recorded since the start; guarded by _guard
        self._committed = 0  # of which committed; guarded by _writing
        self._guard = threading.Lock()  # the pending changes
        self._writing = threading.Lock()  # the connection
        self._failure: str | None = None
        self._drops = 0  # tasks dropped since expired tombstones were last pruned
        self._clock: Clock = SystemClock()  # the core's, once restored
        self._wanted = threading.Event()
        self._closing = False
        self._flusher: threading.Thread | None = None

    # ----- the signing key -----

    def signing_key(self) -> tuple[bytes, str] | None:
        """(PEM, kid) saved by an earlier run, or None."""
        rows = dict(self._db.execute("SELECT key, value FROM meta WHERE key IN (?, ?)", (_SIGNING_KEY, _SIGNING_KID)))
        if _SIGNING_KEY not in rows or _SIGNING_KID not in rows:
            return None
        return bytes(rows[_SIGNING_KEY]), bytes(rows[_SIGNING_KID]).decode()

    def save_signing_key(self, key: tuple[bytes, str]) -> None:
        pem, kid = key
        with self._writing:
            self._db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)", [(_SIGNING_KEY, pem), (_SIGNING_KID, kid.encode())]
            )

    # ----- loading -----

    def restore(self, state: EmulatorState, clock: Clock) -> int:
        """Fill the empty `state` with what the store holds (tombstones expired by now left out); returns the
        highest queue uid used, so new queues get new ones. `clock` is the core's: tombstones expire by it."""
        self._clock = clock
        try:
            return self._restore(state, clock.now())
        except (sqlite3.DatabaseError, DecodeError, CloudTasksError, ValueError) as error:  # a row a rule refuses
            message = error.message if isinstance(error, CloudTasksError) else str(error)
            raise UnreadableDataDir(f"{self.path}: holds a record this emulator cannot read ({message})") from None

    def _restore(self, state: EmulatorState, now: float) -> int:
        last_seq, last_uid = 0, 0
        rows = self._db.execute("SELECT name, uid, seq, queue, dispatched FROM queues ORDER BY seq")
        for name, uid, seq, blob, dispatched in rows:
            queue = tasks_v2.Queue.deserialize(blob)
            settings = normalize_queue(queue)
            state.queues[name] = QueueRecord(
                name=name, uid=uid, seq=seq, queue=queue, settings=settings, tat=now, dispatched=dispatched
            )
            last_seq, last_uid = max(last_seq, seq), max(last_uid, uid)
        rows = self._db.execute(
            "SELECT t.seq, t.name, t.queue, t.created, t.task, coalesce(p.schedule, t.schedule),"
            " coalesce(p.dispatch_count, 0), coalesce(p.response_count, 0), coalesce(p.execution_count, 0),"
            " p.first_dispatch, p.previous_response, p.history"
            " FROM tasks t LEFT JOIN task_progress p USING (seq) ORDER BY t.seq"
        )
        for (
            seq,
            name,
            queue_name,
            created,
            blob,
            schedule,
            dispatches,
            responses,
            executions,
            first,
            previous,
            log,
        ) in rows:
            queue_record = state.queues.get(queue_name)
            if queue_record is None:
                continue  # cannot happen: a queue's tasks are dropped before it is
            stored = tasks_v2.Task.pb()()
            stored.ParseFromString(blob)
            # Checked when it was created; here only parsed again (leniently: the queue may have changed since).
            spec = parse_task(tasks_v2.Task.wrap(stored), now=now, url_optional=True, strict_deadlines=False)
            history = _decode_history(log) if log is not None else deque(maxlen=HISTORY_LIMIT)
            queue_record.tasks[name] = TaskRecord(
                name,
                seq,
                stored,
                spec,
                created=created,
                schedule=schedule,
                dispatch_count=dispatches,
                response_count=responses,
                execution_count=executions,
                first_dispatch=first,
                last_attempt=history[-1] if history else None,
                previous_response=previous,
                history=history,
            )
            last_seq = max(last_seq, seq)
        for table, tombstones in (
            ("task_tombstones", state.task_tombstones),
            ("queue_tombstones", state.queue_tombstones),
        ):
            query = f"SELECT name, expiry FROM {table} WHERE expiry > ? ORDER BY expiry"
            for name, expiry in self._db.execute(query, (now,)):
                tombstones.restore(name, expiry)
        state.restore_seq(last_seq)
        with self._writing:
            self._prune(now)
        return last_uid

    # ----- the Journal (called under the state lock) -----

    def queue_saved(self, queue: QueueRecord) -> None:
        blob = tasks_v2.Queue.pb(queue.queue).SerializeToString()
        self._record([(_SAVE_QUEUE, (queue.name, queue.uid, queue.seq, blob, queue.dispatched))], queue)

    def queue_dropped(self, queue: QueueRecord, tombstone_until: float | None) -> None:
        ops: list[_Op] = [(_DROP_QUEUE, (queue.name, queue.uid))]
        if tombstone_until is not None:
            ops.append((_QUEUE_TOMBSTONE, (queue.name, tombstone_until)))
        self._record(ops, None)

    def task_created(self, queue: QueueRecord, record: TaskRecord) -> None:
        blob = record.stored.SerializeToString()
        self._record([(_ADD_TASK, (record.seq, record.name, queue.name, record.created, record.schedule, blob))], None)

    def task_rescheduled(self, queue: QueueRecord, record: TaskRecord) -> None:
        progress = (
            record.seq,
            record.schedule,
            record.dispatch_count - record.running,  # attempts still in flight are not counted (see above)
            record.response_count,
            record.execution_count,
            record.first_dispatch,
            record.previous_response,
            _encode_history(record.history),
        )
        self._record([(_SAVE_PROGRESS, progress)], queue)

    def task_dropped(self, queue: QueueRecord, record: TaskRecord, tombstone_until: float | None) -> None:
        ops: list[_Op] = [(_DROP_TASK, (record.seq,)), (_DROP_PROGRESS, (record.seq,))]
        if tombstone_until is not None:
            ops.append((_TASK_TOMBSTONE, (record.name, tombstone_until)))
        self._drops += 1
        self._record(ops, queue)

    def cleared(self) -> None:
        self._record([(sql, ()) for sql in _CLEAR], None)

    def _record(self, ops: list[_Op], counted: QueueRecord | None) -> None:
        with self._guard:
            self._pending.extend(ops)
            if counted is not None:
                self._dispatched[(counted.name, counted.uid)] = counted.dispatched
            self._recorded += 1
        if self._flusher is not None and not self._wanted.is_set():
            self._wanted.set()

    # ----- committing -----

    def commit(self) -> None:
        """Commit every change recorded before this call (and any recorded since), in this thread. Callers
        that arrive while another commit runs find their changes committed by it, or commit the next group."""
        target = self._recorded
        with self._writing:
            if self._committed < target and self._failure is None:
                with self._guard:
                    ops, self._pending = self._pending, []
                    dispatched, self._dispatched = self._dispatched, {}
                    upto = self._recorded
                try:
                    self._apply(ops, dispatched)
                except sqlite3.Error as error:
                    self._failure = f"{self.path}: could not be written: {error}"
                    _LOG.error("emulator: %s; from now on, changes are kept in memory only", self._failure)
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                self._committed = upto
            failure = self._failure
        if failure is not None:
            raise CloudTasksError(grpc.StatusCode.INTERNAL, f"the emulator could not save its state: {failure}")

    def _apply(self, ops: list[_Op], dispatched: dict[tuple[str, int], int]) -> None:
        db = self._db
        db.execute("BEGIN")
        for sql, parameters in ops:
            db.execute(sql, parameters)
        if dispatched:
            db.executemany(_COUNT_DISPATCHES, [(count, name, uid) for (name, uid), count in dispatched.items()])
        if self._drops >= _PRUNE_EVERY:
            self._drops = 0
            self._prune(self._clock.now())
        db.execute("COMMIT")

    def _prune(self, now: float) -> None:
        """Delete the tombstones expired by `now`."""
        for table in ("task_tombstones", "queue_tombstones"):
            self._db.execute(f"DELETE FROM {table} WHERE expiry <= ?", (now,))

    def start_flushing(self) -> None:
        """Commit attempt outcomes from a thread of their own as they are recorded, so a driver never waits."""
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._flush, name="emulator-store-flusher", daemon=True)
            self._flusher.start()

    def _flush(self) -> None:
        while not self._closing:
            self._wanted.wait()
            self._wanted.clear()  # before the commit takes the pending changes: none is left behind
            with contextlib.suppress(CloudTasksError):  # logged once by commit(); the RPCs report it
                self.commit()

    def close(self) -> None:
        """Commit what is pending, stop the flusher, close the database and release the dir."""
        if self._closing:
            return
        with contextlib.suppress(CloudTasksError):
            self.commit()
        self._closing = True
        self._wanted.set()
        if self._flusher is not None:
            self._flusher.join(timeout=30)
        with self._writing:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
        os.close(self._lock_fd)

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
