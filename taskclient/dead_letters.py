"""DeadLetters: list, show, replay and discard the dead letters on the stack's dead-letter queue.

What a dead letter is (a task on the paused dead-letter queue: the original body, URL and headers, plus
`X-Dead-Letter-*` metadata) is defined in contract/dead_letters.py. One client (one gRPC channel) per
DeadLetters, reused by every call; bulk operations run at most `concurrency` letters at a time and give every
letter its own result, so one failure never stops the rest.

A replay creates the task again in its original queue, under `replay_task_id(...)`, and deletes the dead letter
only once that task exists. Run again after an interruption, it finds the task created (ALREADY_EXISTS),
deletes the letter and reports it as already replayed: nothing is lost and nothing is created twice, as long
as the re-run comes while Cloud Tasks still reserves the name (about an hour after the replayed task ends).
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import re
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, TypedDict, TypeVar, Unpack
from urllib.parse import urlsplit

from google.api_core import exceptions as gexc
from google.cloud import tasks_v2

from contract import cloud_tasks as limits
from contract.dead_letters import (
    HEADER_NOT_BEFORE,
    HEADER_RECORDED_AT,
    DeadLetterMeta,
    replay_task_id,
    without_metadata,
)
from contract.outputs import OutputName, QueueOutputs, StackOutputs, StackOutputsError
from taskclient.calls import Backoff, GaveUp, run_bounded
from taskclient.connection import Connection, connect
from taskclient.errors import (
    DeadLetterError,
    TaskClientError,
    TaskValidationError,
    explain,
    explain_operator_call,
)
from taskclient.publisher import not_before, read_outputs_document, read_outputs_env

T = TypeVar("T")

# A page of tasks in FULL view holds their bodies, and a task may be 1 MiB: 100 a page keeps one response near
# 100 MiB at worst, where the server's maximum of 1,000 could make it 1 GiB.
DEFAULT_PAGE_SIZE: Final = 100
MAX_PAGE_SIZE: Final = 1000  # ListTasksRequest.page_size: "The maximum page size is 1000."
DEFAULT_CONCURRENCY: Final = 32  # as TaskPublisher.publish_many
_QUEUE_PATH = re.compile(r"projects/[^/]+/locations/[^/]+/queues/[A-Za-z0-9-]{1,100}")
_REASON_LINE_CHARS: Final = 80


class LetterOutcome(StrEnum):
    REPLAYED = "replayed"
    # The replay's task existed already: an earlier replay created it (and was interrupted before the delete).
    ALREADY_REPLAYED = "already-replayed"
    DISCARDED = "discarded"
    FAILED = "failed"


@dataclass(frozen=True)
class LetterResult:
    """What became of one dead letter in a replay or discard."""

    name: str  # the dead letter's full name (as given, when it is not a name on the dead-letter queue)
    outcome: LetterOutcome
    task: str | None = None  # a replay's task in the original queue, full name
    # failed: why (it does not repeat `name`); otherwise a note (the dead letter was already gone)
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome is not LetterOutcome.FAILED

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "outcome": self.outcome.value, "task": self.task, "detail": self.detail or None}


@dataclass(frozen=True)
class DeadLetter:
    """One task on the dead-letter queue, read: its metadata, and the original task's URL, headers and body."""

    name: str  # full task name on the dead-letter queue
    queue_key: str | None  # the stack's key of the original queue; None when its id is not one of the stack's
    meta: DeadLetterMeta | None  # None: the task is not a dead letter (`problem` says why)
    url: str
    headers: Mapping[str, str]  # the original task's: the dead letter's, less its metadata
    body: bytes | None  # byte for byte; None when the dead letter holds none (meta.body_omitted says why)
    created: datetime | None  # when the dead letter was created on the queue
    replay_id: str | None  # the task id its replay creates in the original queue
    problem: str = ""

    @property
    def id(self) -> str:
        return self.name.rsplit("/", 1)[-1]

    @property
    def size(self) -> int | None:
        """The original body's size in bytes, when known."""
        if self.body is not None:
            return len(self.body)
        return self.meta.size if self.meta else None

    @property
    def sha256(self) -> str | None:
        if self.body is not None:
            return hashlib.sha256(self.body).hexdigest()
        return self.meta.sha256 if self.meta else None

    @property
    def body_text(self) -> str | None:
        """The body as text when it is UTF-8, else None."""
        if self.body is None:
            return None
        try:
            return self.body.decode("utf-8")
        except UnicodeDecodeError:
            return None

    @property
    def body_base64(self) -> str | None:
        return base64.b64encode(self.body).decode("ascii") if self.body is not None else None

    def body_display(self) -> tuple[str, str]:
        """("text", the body) when it is UTF-8 without control characters (but tab and newlines), which are
        safe on a terminal; else ("base64", the body in base64); ("omitted", why) when it holds none."""
        if self.body is None:
            return "omitted", self.meta.body_omitted if self.meta else "no body"
        text = self.body_text
        if text is not None and not any(_is_control(c) for c in text):
            return "text", text
        return "base64", self.body_base64 or ""

    def body_summary(self) -> str:
        """ "12 bytes, sha256 <hex>", with "unknown" for what the dead letter does not say."""
        size = f"{self.size:,} bytes" if self.size is not None else "size unknown"
        return f"{size}, sha256 {self.sha256 or 'unknown'}"

    def reason_line(self, width: int = _REASON_LINE_CHARS) -> str:
        """The reason on one line, cut to `width` characters."""
        text = self.meta.reason if self.meta else self.problem
        line = " ".join(text.split())
        return line if len(line) <= width else line[: width - 1] + "…"

    def as_json(self) -> dict[str, Any]:
        """The dead letter for machines: body in base64 (and as text when it is UTF-8), with size and sha256."""
        meta = self.meta
        return {
            "name": self.name,
            "id": self.id,
            "queueKey": self.queue_key,
            "queue": meta.queue if meta else None,
            "task": meta.task if meta else None,
            "attempt": meta.attempt if meta else None,
            "final": meta.final if meta else None,
            "reason": meta.reason if meta else None,
            "recordedAt": meta.recorded_at.isoformat() if meta else None,
            "url": self.url,
            "headers": dict(self.headers),
            "size": self.size,
            "sha256": self.sha256,
            "bodyOmitted": (meta.body_omitted or None) if meta else None,
            "body": self.body_base64,
            "bodyText": self.body_text,
            "createTime": self.created.isoformat() if self.created else None,
            "replayTask": self.replay_id,
            "problem": self.problem or None,
        }


class DeadLetterOptions(TypedDict, total=False):
    """The keyword arguments of `DeadLetters`, which its from_* constructors pass on."""

    connection: Connection | None
    retries: int
    backoff: float
    timeout: float
    now: Callable[[], datetime]
    sleep: Callable[[float], None]
    page_size: int


class DeadLetters:
    """The stack's dead-letter queue, for operators: read, replay and discard what the handler recorded."""

    def __init__(
        self,
        outputs: StackOutputs,
        *,
        connection: Connection | None = None,
        retries: int = 4,
        backoff: float = 0.25,
        timeout: float = 20.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], None] = time.sleep,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> None:
        if not _QUEUE_PATH.fullmatch(outputs.dead_letter_queue):
            raise StackOutputsError(
                f"{OutputName.DEAD_LETTER_QUEUE}: {outputs.dead_letter_queue!r} is not a queue path"
                " (projects/PROJECT/locations/LOCATION/queues/ID)"
            )
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise TaskValidationError(f"page_size: {page_size} is outside 1..{MAX_PAGE_SIZE}")
        self.outputs = outputs
        self.queue = outputs.dead_letter_queue
        self._by_id = {queue.id: queue for queue in outputs.queues.values()}
        self._connection = connection or connect()
        self._calls = Backoff(retries, backoff, sleep)
        self._timeout = timeout
        self._now = now
        self._page_size = page_size

    # --- construction from the exported values -------------------------------------------------

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], **options: Unpack[DeadLetterOptions]) -> DeadLetters:
        """From a dict: `pulumi stack output --json`, parsed, or what a StackReference gives."""
        return cls(StackOutputs.from_mapping(values), **options)

    @classmethod
    def from_file(cls, path: str | Path, **options: Unpack[DeadLetterOptions]) -> DeadLetters:
        """From a `pulumi stack output --json` document; "-" reads standard input."""
        return cls.from_mapping(read_outputs_document(path), **options)

    @classmethod
    def from_env(cls, **options: Unpack[DeadLetterOptions]) -> DeadLetters:
        """From the JSON document in CLOUDRUN_TASKS_OUTPUTS."""
        return cls.from_mapping(read_outputs_env(), **options)

    def __enter__(self) -> DeadLetters:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._connection.close()

    # --- reading --------------------------------------------------------------------------------

    def list(self, queue_key: str | None = None) -> Iterator[DeadLetter]:
        """Every dead letter (of the stack queue `queue_key`, when given), page by page in FULL view.

        An unknown `queue_key` is refused at once, before any RPC.
        """
        queue_id = self._queue_id(queue_key)
        return (letter for letter in map(self._letter, self._tasks()) if queue_id is None or _of(letter, queue_id))

    def names(self, queue_key: str | None = None) -> builtins.list[str]:
        """The full names of the dead letters `list(queue_key)` gives."""
        return [letter.name for letter in self.list(queue_key)]

    def show(self, name: str) -> DeadLetter:
        """One dead letter, by task id or full task name."""
        full = self.full_name(name)
        client = self._connection.client
        task = self._operator_call(
            lambda _: client.get_task(
                request=tasks_v2.GetTaskRequest(name=full, response_view=tasks_v2.Task.View.FULL),
                retry=None,
                timeout=self._timeout,
            ),
            denied=f"may not read the dead letter {full}: {_read_roles(self.queue)}",
            not_found=(
                f"no dead letter {full}: it was replayed or discarded, or never recorded"
                " (Cloud Tasks keeps a dead letter at most 31 days)"
            ),
        )
        return self._letter(task)

    def full_name(self, name: str) -> str:
        """`name` (a task id, or a task's full name on the dead-letter queue) as a full name."""
        prefix = f"{self.queue}/tasks/"
        task_id = name.removeprefix(prefix)
        if "/" in task_id:
            raise TaskValidationError(f"name: {name!r} is not on the dead-letter queue {self.queue}")
        if not limits.TASK_ID.fullmatch(task_id):
            raise TaskValidationError(f"name: {name!r} is not a task id (1-500 letters, digits, '-' or '_')")
        return prefix + task_id

    # --- replaying ------------------------------------------------------------------------------

    def replay(
        self,
        names: Iterable[str],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        on_result: Callable[[LetterResult], None] | None = None,
    ) -> builtins.list[LetterResult]:
        """Replays each dead letter; one result per name, in order: replayed, already replayed, or failed.

        `on_result` is called as each finishes (from a worker thread), e.g. for a progress bar.
        """
        return run_bounded(names, self._replay_one, concurrency=concurrency, on_result=on_result)

    def replay_all(
        self,
        queue_key: str | None = None,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        on_result: Callable[[LetterResult], None] | None = None,
    ) -> builtins.list[LetterResult]:
        """Replays every dead letter (of `queue_key`): the names are listed first, so letters recorded while it
        runs wait for the next run, and deleting never disturbs the listing."""
        return self.replay(self.names(queue_key), concurrency=concurrency, on_result=on_result)

    def build_replay(self, letter: DeadLetter) -> tuple[QueueOutputs, tasks_v2.Task]:
        """The original queue and the task a replay of `letter` creates there, or DeadLetterError saying why
        it cannot be replayed."""
        meta = letter.meta
        if meta is None or letter.replay_id is None:
            raise DeadLetterError(f"{letter.problem}; not replayed (discard it if it is not needed)")
        queue = self._by_id.get(meta.queue)
        if queue is None:
            known = ", ".join(f"{q.key} ({q.id})" for q in self.outputs.queues.values())
            raise DeadLetterError(
                f"its queue {meta.queue!r} is not one of the stack's queues ({known}): it was"
                " recorded for another stack, or for a queue since removed; not replayed"
            )
        if letter.body is None:
            raise DeadLetterError(
                f"holds no body ({meta.body_omitted}; body: {letter.body_summary()}); not replayed: create the task"
                " again from the producer's copy of the body, then discard this dead letter"
            )
        if meta.sha256 is not None and letter.sha256 != meta.sha256:
            raise DeadLetterError(
                f"its body's sha256 {letter.sha256} is not the {meta.sha256} recorded with it; not replayed"
            )
        url = queue.task_url if queue.queue_level_routing else self._service_url(letter)
        headers = {name: value for name, value in letter.headers.items() if name.lower() != HEADER_NOT_BEFORE.lower()}
        # A replay is a new task: its first attempt runs no earlier than now.
        headers[HEADER_NOT_BEFORE] = not_before(self._now())
        request = tasks_v2.HttpRequest(url=url, http_method=tasks_v2.HttpMethod.POST, headers=headers, body=letter.body)
        if not queue.queue_level_routing:
            # As TaskPublisher: the invoker's token with the explicit audience; a queue-level route sets its own.
            request.oidc_token = tasks_v2.OidcToken(
                service_account_email=self.outputs.invoker_email, audience=self.outputs.oidc_audience
            )
        task = tasks_v2.Task(
            name=f"{queue.path}/tasks/{letter.replay_id}",
            http_request=request,
            dispatch_deadline=timedelta(seconds=queue.dispatch_deadline_seconds),
        )
        return queue, task

    def _service_url(self, letter: DeadLetter) -> str:
        """The letter's path and query on the stack's service URL, as the outputs name it. The handler that
        recorded the letter is this stack's, so its task was for this service; the outputs say where the service
        is reached now (the recorded URL names it by its audience, which local mode does not serve)."""
        recorded = urlsplit(letter.url)
        if not recorded.path.startswith("/"):
            raise DeadLetterError(f"has no URL path ({letter.url!r}); not replayed")
        query = f"?{recorded.query}" if recorded.query else ""
        return f"{self.outputs.service_url.rstrip('/')}{recorded.path}{query}"

    def _replay_one(self, _: int, name: str) -> LetterResult:
        try:
            letter = self.show(name)
            queue, task = self.build_replay(letter)
        except TaskClientError as err:
            return LetterResult(self._result_name(name), LetterOutcome.FAILED, detail=str(err))
        except Exception as err:
            return LetterResult(self._result_name(name), LetterOutcome.FAILED, detail=_unexpected(err))
        try:
            if letter.meta is not None and not letter.meta.final:
                self._check_original_gone(letter, queue)
            outcome = self._create(queue, task)
        except TaskClientError as err:
            return LetterResult(letter.name, LetterOutcome.FAILED, detail=str(err))
        except Exception as err:
            return LetterResult(letter.name, LetterOutcome.FAILED, detail=_unexpected(err))
        try:
            deleted = self._delete(letter.name)
        except Exception as err:
            reason = str(err) if isinstance(err, TaskClientError) else _unexpected(err)
            return LetterResult(
                letter.name,
                LetterOutcome.FAILED,
                task=task.name,
                detail=f"replayed as {task.name}, but the dead letter was not deleted: {reason}. Replay it again:"
                " it finds that task created and deletes the dead letter",
            )
        note = "" if deleted else "the dead letter was already gone: someone else removed it"
        return LetterResult(letter.name, outcome, task=task.name, detail=note)

    def _check_original_gone(self, letter: DeadLetter, queue: QueueOutputs) -> None:
        """A provisional dead letter (final: false) whose task is still in its queue may yet be retried by Cloud
        Tasks: replaying it then would run it twice."""
        assert letter.meta is not None
        original = f"{queue.path}/tasks/{letter.meta.task}"
        client = self._connection.client
        try:
            self._operator_call(
                lambda _: client.get_task(name=original, retry=None, timeout=self._timeout),
                denied=(
                    f"may not read the task {original}, to tell whether Cloud Tasks still retries this provisional"
                    f" dead letter: grant it roles/cloudtasks.viewer on the queue {queue.path}"
                ),
                not_found="",
            )
        except DeadLetterError as err:
            if err.code == "NOT_FOUND":
                return
            raise
        raise DeadLetterError(
            f"provisional (final: false), and its task {original} is still in queue"
            f" {queue.key!r}: Cloud Tasks may retry it yet, and a replay would run it twice; not replayed."
            " Replay it once that task is gone, or discard this dead letter"
        )

    def _create(self, queue: QueueOutputs, task: tasks_v2.Task) -> LetterOutcome:
        client = self._connection.client

        def create(attempt: int) -> LetterOutcome:
            try:
                client.create_task(parent=queue.path, task=task, retry=None, timeout=self._timeout)
                return LetterOutcome.REPLAYED
            except gexc.AlreadyExists:
                # On a retry: our own earlier attempt stored it. On the first: an earlier replay did.
                return LetterOutcome.REPLAYED if attempt else LetterOutcome.ALREADY_REPLAYED

        try:
            return self._calls.run(create)
        except GaveUp as gave_up:
            raise self._create_error(gave_up.error, queue, f" (after {gave_up.attempts} attempts)") from None
        except gexc.GoogleAPICallError as err:
            raise self._create_error(err, queue, "") from None

    def _create_error(self, err: gexc.GoogleAPICallError, queue: QueueOutputs, note: str) -> DeadLetterError:
        error = explain(
            err,
            queue_path=queue.path,
            invoker_email=self.outputs.invoker_email,
            principal=self._connection.principal,
            location=queue.location,
        )
        return DeadLetterError(f"not replayed: {error}{note}", error.code)

    # --- discarding -----------------------------------------------------------------------------

    def discard(
        self,
        names: Iterable[str],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        on_result: Callable[[LetterResult], None] | None = None,
    ) -> builtins.list[LetterResult]:
        """Deletes each dead letter; one result per name, in order: discarded, or failed with the reason."""
        return run_bounded(names, self._discard_one, concurrency=concurrency, on_result=on_result)

    def discard_all(
        self,
        queue_key: str | None = None,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        on_result: Callable[[LetterResult], None] | None = None,
    ) -> builtins.list[LetterResult]:
        """Deletes every dead letter (of `queue_key`), listed first as `replay_all` does."""
        return self.discard(self.names(queue_key), concurrency=concurrency, on_result=on_result)

    def _discard_one(self, _: int, name: str) -> LetterResult:
        try:
            full = self.full_name(name)
            if not self._delete(full):
                return LetterResult(
                    full,
                    LetterOutcome.FAILED,
                    detail="not found: it was replayed or discarded already, or never recorded",
                )
            return LetterResult(full, LetterOutcome.DISCARDED)
        except TaskClientError as err:
            return LetterResult(self._result_name(name), LetterOutcome.FAILED, detail=str(err))
        except Exception as err:
            return LetterResult(self._result_name(name), LetterOutcome.FAILED, detail=_unexpected(err))

    def _delete(self, name: str) -> bool:
        """Deletes a dead letter: True, or False when it was not there (NOT_FOUND on the first attempt)."""
        client = self._connection.client

        def delete(attempt: int) -> bool:
            try:
                client.delete_task(name=name, retry=None, timeout=self._timeout)
            except gexc.NotFound:
                if not attempt:
                    return False
                # On a retry: our own earlier attempt deleted it, and its reply was lost.
            return True

        return self._operator_call(
            delete,
            denied=(
                f"may not delete tasks on the dead-letter queue {self.queue}: grant it roles/cloudtasks.taskDeleter"
                " on that queue"
            ),
            not_found="",
        )

    # --- internals ------------------------------------------------------------------------------

    def _tasks(self) -> Iterator[tasks_v2.Task]:
        token = ""
        while True:
            page = self._page(token)
            yield from page.tasks
            token = page.next_page_token
            if not token:
                return

    def _page(self, token: str) -> tasks_v2.ListTasksResponse:
        """One page per call: the pager's own iteration would fetch the next pages without our retries."""
        client = self._connection.client
        request = tasks_v2.ListTasksRequest(
            parent=self.queue, response_view=tasks_v2.Task.View.FULL, page_size=self._page_size, page_token=token
        )
        pager = self._operator_call(
            lambda _: client.list_tasks(request=request, retry=None, timeout=self._timeout),
            denied=f"may not list the dead letters: {_read_roles(self.queue)}",
            not_found=(
                f"dead-letter queue {self.queue} not found: it is not deployed, or the outputs name the wrong"
                " project or location"
            ),
        )
        # The pager's first page is the response of this call; asking for the next would make another.
        response: tasks_v2.ListTasksResponse = next(iter(pager.pages))
        return response

    def _letter(self, task: tasks_v2.Task) -> DeadLetter:
        request = task.http_request
        headers = dict(request.headers)
        meta: DeadLetterMeta | None
        try:
            meta, problem = DeadLetterMeta.from_headers(headers), ""
        except ValueError as err:
            text = str(err)
            meta = None
            problem = (
                text if text.startswith("not a dead letter") else f"not a dead letter: unreadable metadata: {text}"
            )
        queue = self._by_id.get(meta.queue) if meta else None
        recorded_at = next((v for k, v in headers.items() if k.lower() == HEADER_RECORDED_AT.lower()), "")
        return DeadLetter(
            name=task.name,
            queue_key=queue.key if queue else None,
            meta=meta,
            url=request.url,
            headers=without_metadata(headers),
            body=None if meta is not None and meta.body_omitted else bytes(request.body),
            created=task.create_time,
            replay_id=replay_task_id(meta.task, task.name, recorded_at) if meta else None,
            problem=problem,
        )

    def _queue_id(self, queue_key: str | None) -> str | None:
        if queue_key is None:
            return None
        queue = self.outputs.queues.get(queue_key)
        if queue is None:
            keys = ", ".join(self.outputs.queues)
            raise TaskValidationError(f"queue: {queue_key!r} is not one of the stack's queues ({keys})")
        return queue.id

    def _operator_call(self, call: Callable[[int], T], *, denied: str, not_found: str) -> T:
        """A retried read or delete; a server error as a DeadLetterError that names the role to grant."""
        try:
            return self._calls.run(call)
        except GaveUp as gave_up:
            note = f" (after {gave_up.attempts} attempts)"
            raise self._operator_error(gave_up.error, denied, not_found, note) from None
        except gexc.GoogleAPICallError as err:
            raise self._operator_error(err, denied, not_found, "") from None

    def _operator_error(self, err: gexc.GoogleAPICallError, denied: str, not_found: str, note: str) -> DeadLetterError:
        error = explain_operator_call(
            err, principal=self._connection.principal, denied=denied, not_found=not_found or "not found"
        )
        return DeadLetterError(f"{error}{note}", error.code)

    def _result_name(self, name: str) -> str:
        try:
            return self.full_name(name)
        except TaskValidationError:
            return name


def _of(letter: DeadLetter, queue_id: str) -> bool:
    return letter.meta is not None and letter.meta.queue == queue_id


def _read_roles(queue: str) -> str:
    return (
        f"grant it roles/cloudtasks.viewer on the queue {queue} (list and get), and roles/cloudtasks.enqueuer there"
        " (its cloudtasks.tasks.fullView reads bodies)"
    )


def _unexpected(err: Exception) -> str:
    return f"unexpected {type(err).__name__}: {err}"


def _is_control(char: str) -> bool:
    return char not in "\t\n\r" and unicodedata.category(char) in ("Cc", "Cf")
