"""The stack's dead letters in the console, through the task client's `DeadLetters` (the same code as
`taskclient dead-letters`), talking to this emulator over gRPC.

Which queue holds them, and whether they can be replayed, comes from the stack outputs (`--outputs PATH`, the
file `localcloud up` writes after the emulator has started, so it is read each time it is needed). Without
them the letters are still listed, from a queue named as the stack names its dead-letter queue
(`<prefix>-dead-letters-<hex>`), but a replay is refused: it needs the service URL and the stack's queues.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.dead_letters import QUEUE_KEY
from contract.outputs import StackOutputs, StackOutputsError
from localcloud.emulator.core import CloudTasksCore
from taskclient.connection import Connection, connect
from taskclient.dead_letters import DeadLetter, DeadLetters, LetterResult
from taskclient.errors import DeadLetterError, TaskClientError
from taskclient.publisher import read_outputs_document

__all__ = ["ConsoleDeadLetters", "LetterPage", "Replay"]

# The stack's dead-letter queue id is `<namePrefix>-dead-letters-<hex>` (components/cloudrun_tasks.py).
_DEAD_LETTER_ID = re.compile(rf"(?:.+-)?{re.escape(QUEUE_KEY)}(?:-[0-9a-f]+)?")
_CACHED_LETTERS = 2000  # a dead letter never changes: each is read once, then served from here
PREVIEW_CHARS = 160


@dataclass(frozen=True)
class Replay:
    """Whether dead letters can be replayed now, and why not."""

    outputs: StackOutputs | None
    reason: str  # empty when `outputs` is set


@dataclass(frozen=True)
class LetterPage:
    queue: str | None  # the dead-letter queue's path; None when there is none on this emulator
    replay: Replay
    letters: list[dict[str, Any]]
    total: int
    before: int
    next_after: int | None
    problem: str = ""  # why there is no queue to list


class ConsoleDeadLetters:
    def __init__(self, core: CloudTasksCore, grpc_address: str, outputs_path: Path | None) -> None:
        self._core = core
        self._address = grpc_address
        self._outputs_path = outputs_path
        self._connection: Connection | None = None
        self._lock = threading.Lock()
        self._letters: OrderedDict[tuple[str, float], DeadLetter] = OrderedDict()

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def replay_state(self) -> Replay:
        if self._outputs_path is None:
            return Replay(
                None,
                "the emulator was started without --outputs: a replay needs the stack outputs (the service URL and"
                " the queues), which `localcloud up` writes",
            )
        try:
            return Replay(StackOutputs.from_mapping(read_outputs_document(self._outputs_path)), "")
        except StackOutputsError as err:
            return Replay(None, f"{err} (`localcloud up` writes it once the stack is up)")

    def queue_name(self, queues: Iterable[str]) -> str | None:
        """The dead-letter queue's path: the outputs', else the one of `queues` (the emulator's) named as the stack
        names it; None when there is none."""
        return self._queue(self.replay_state().outputs, queues)

    def page(self, after: int, limit: int) -> LetterPage:
        replay = self.replay_state()
        queue = self._queue(replay.outputs)
        if queue is None:
            return LetterPage(None, replay, [], 0, 0, None, problem="no dead-letter queue on this emulator")
        rows = self._core.console_tasks(queue, after=after, limit=limit)
        if rows is None:
            problem = f"the outputs' dead-letter queue {queue} is not on this emulator"
            return LetterPage(queue, replay, [], 0, 0, None, problem=problem)
        reader = self._reader(queue, replay.outputs)
        letters = []
        for row in rows.rows:
            letter = self._letter(reader, row.name, row.created)
            if letter is not None:
                letters.append(letter_json(letter, row.seq))
        return LetterPage(queue, replay, letters, rows.total, rows.before, rows.next_after)

    def replay(self, letter_id: str) -> LetterResult:
        replay = self.replay_state()
        if replay.outputs is None:
            raise DeadLetterError(f"not replayed: {replay.reason}")
        return self._reader(replay.outputs.dead_letter_queue, replay.outputs).replay([letter_id], concurrency=1)[0]

    def discard(self, letter_id: str) -> LetterResult:
        replay = self.replay_state()
        queue = self._queue(replay.outputs)
        if queue is None:
            raise DeadLetterError("no dead-letter queue on this emulator")
        return self._reader(queue, replay.outputs).discard([letter_id], concurrency=1)[0]

    # ----- internals -----

    def _queue(self, outputs: StackOutputs | None, queues: Iterable[str] | None = None) -> str | None:
        if outputs is not None:
            return outputs.dead_letter_queue
        names = queues if queues is not None else (q.name for q in self._core.console_queues())
        return next((name for name in names if _DEAD_LETTER_ID.fullmatch(name.rsplit("/", 1)[-1])), None)

    def _reader(self, queue: str, outputs: StackOutputs | None) -> DeadLetters:
        with self._lock:
            if self._connection is None:
                self._connection = connect(self._address)
            connection = self._connection
        return DeadLetters(outputs if outputs is not None else _listing_only(queue), connection=connection)

    def _letter(self, reader: DeadLetters, name: str, created: float) -> DeadLetter | None:
        key = (name, created)  # a name can come back once its tombstone expires: the creation time tells them apart
        with self._lock:
            cached = self._letters.get(key)
        if cached is not None:
            return cached
        try:
            letter = reader.show(name)
        except TaskClientError:
            return None  # replayed or discarded since the listing
        with self._lock:
            self._letters[key] = letter
            while len(self._letters) > _CACHED_LETTERS:
                self._letters.popitem(last=False)
        return letter


def _listing_only(queue: str) -> StackOutputs:
    """Outputs that name only the dead-letter queue: enough for DeadLetters to read letters, never to replay them
    (no queue of the stack is known, so `build_replay` refuses every letter)."""
    location = queue.rsplit("/queues/", 1)[0]
    project = location.split("/")[1]
    return StackOutputs(
        project=project,
        location=location.rsplit("/", 1)[-1],
        service_name="",
        service_url="",
        oidc_audience="",
        invoker_email="",
        runtime_email="",
        queues={},
        default_queue="",
        default_queue_path="",
        dead_letter_queue=queue,
        create_task_command="",
    )


def letter_json(letter: DeadLetter, seq: int) -> dict[str, Any]:
    """The letter as `taskclient dead-letters show --json` gives it, less the body (a page of letters would
    otherwise carry up to a MiB each), plus a short preview of it."""
    document = letter.as_json()
    del document["body"], document["bodyText"]
    kind, shown = letter.body_display()
    if kind == "base64" and letter.body is not None:
        kind, shown = "hex", letter.body[: PREVIEW_CHARS // 3].hex(" ")
    document["preview"] = {"kind": kind, "text": shown[:PREVIEW_CHARS], "cut": len(shown) > PREVIEW_CHARS}
    document["seq"] = seq
    return document
