"""taskclient.dead_letters and `python -m taskclient dead-letters`, against the emulator on loopback gRPC.

The dead-letter queue is paused and filled as the handler fills it: a task per dead letter, holding the original
body, URL and headers plus the DeadLetterMeta headers, named dead_letter_task_id(queue, task).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from emulator_support import LoopbackEmulator
from google.cloud import tasks_v2
from taskclient_support import outputs_document, run_with_stderr_on_a_terminal, stack, stack_emulator

from contract.dead_letters import (
    HEADER_NOT_BEFORE,
    HEADER_PREFIX,
    HEADER_RECORDED_AT,
    DeadLetterMeta,
    dead_letter_task_id,
    replay_task_id,
)
from contract.outputs import OUTPUTS_ENV, QueueOutputs
from localcloud.program import PROJECT_DIR
from taskclient.cli import _parser as cli_parser
from taskclient.cli import main
from taskclient.connection import EMULATOR_ENV, connect
from taskclient.dead_letters import DeadLetter, DeadLetters, LetterOutcome, LetterResult
from taskclient.errors import DeadLetterError, TaskValidationError

# DeadLetters' clock, for the replays' X-Tasks-Not-Before.
NOW = datetime.now(UTC).replace(microsecond=0)
RECORDED = NOW - timedelta(hours=1)
DEFAULT = stack().queues["default"]
EMAILS = stack().queues["emails"]
DLQ = stack().dead_letter_queue
JSON_HEADERS = {"Content-Type": "application/json"}
# Cloud Tasks adds its User-Agent to the headers of every HTTP task it stores, a dead letter included.
CLOUD_TASKS_USER_AGENT = {"User-Agent": "Google-Cloud-Tasks"}


@pytest.fixture
def server() -> Iterator[LoopbackEmulator]:
    with stack_emulator() as running:
        yield running


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def letters(server: LoopbackEmulator, sleeps: list[float]) -> Iterator[DeadLetters]:
    with DeadLetters.from_mapping(
        outputs_document(), connection=connect(server.address), now=lambda: NOW, sleep=sleeps.append
    ) as created:
        yield created


def record(
    server: LoopbackEmulator,
    queue: QueueOutputs | str,
    task: str,
    body: bytes | None = b'{"n":1}',
    *,
    headers: dict[str, str] | None = None,
    url: str | None = None,
    final: bool = True,
    reason: str = "ValueError: no such order",
    body_omitted: str = "",
    size: int | None = None,
    sha256: str | None = None,
) -> str:
    """A dead letter on the dead-letter queue, as the handler records it; returns its full name."""
    queue_id = queue.id if isinstance(queue, QueueOutputs) else queue
    meta = DeadLetterMeta(
        queue=queue_id,
        task=task,
        attempt=3,
        reason=reason,
        recorded_at=RECORDED,
        final=final,
        size=len(body) if body is not None else size,
        sha256=hashlib.sha256(body).hexdigest() if body is not None else sha256,
        body_omitted=body_omitted,
    )
    name = f"{DLQ}/tasks/{dead_letter_task_id(queue_id, task)}"
    request = tasks_v2.HttpRequest(
        url=url or DEFAULT.task_url,
        http_method=tasks_v2.HttpMethod.POST,
        headers={**(JSON_HEADERS if headers is None else headers), **meta.headers()},
        body=body or b"",
    )
    server.core.create_task(tasks_v2.CreateTaskRequest(parent=DLQ, task=tasks_v2.Task(name=name, http_request=request)))
    return name


def replay_name(letter_name: str, task: str, queue: QueueOutputs = DEFAULT) -> str:
    recorded_at = DeadLetterMeta("q", "t", 1, "", RECORDED).headers()[HEADER_RECORDED_AT]
    return f"{queue.path}/tasks/{replay_task_id(task, letter_name, recorded_at)}"


def short(name: str) -> str:
    return name.rsplit("/", 1)[1]


def outcomes(results: list[LetterResult]) -> list[LetterOutcome]:
    return [result.outcome for result in results]


# --- list and show --------------------------------------------------------------------------------


def test_list_reads_every_page_in_full_view(server: LoopbackEmulator, sleeps: list[float]) -> None:
    names = [record(server, DEFAULT, f"order-{n}") for n in range(3)] + [
        record(server, EMAILS, f"mail-{n}") for n in range(2)
    ]
    with DeadLetters.from_mapping(outputs_document(), connection=connect(server.address), page_size=2) as small:
        listed = list(small.list())
    assert [letter.name for letter in listed] == names
    calls = server.faults.calls("ListTasks")
    assert len(calls) == 3  # pages of 2, 2 and 1
    assert {(c.request.parent, c.request.page_size, c.request.response_view) for c in calls} == {
        (DLQ, 2, tasks_v2.Task.View.FULL)
    }
    assert [c.request.page_token == "" for c in calls] == [True, False, False]


def test_a_listed_letter_holds_the_original_task_and_its_metadata(
    letters: DeadLetters, server: LoopbackEmulator
) -> None:
    url = stack().service_url + "/tasks/resize?size=2"
    name = record(server, DEFAULT, "order-1", b"\x00\xffbinary", headers={"X-Tenant": "t1"}, url=url)
    (letter,) = letters.list()
    assert letter.name == name and letter.id == f"{DEFAULT.id}_order-1"
    assert letter.queue_key == "default"
    assert letter.meta is not None
    assert (letter.meta.queue, letter.meta.task, letter.meta.attempt) == (DEFAULT.id, "order-1", 3)
    assert letter.meta.reason == "ValueError: no such order" and letter.meta.final
    assert letter.meta.recorded_at == RECORDED
    assert letter.url == url
    assert letter.headers == {"X-Tenant": "t1", **CLOUD_TASKS_USER_AGENT}  # no X-Dead-Letter-* metadata
    assert letter.body == b"\x00\xffbinary" and letter.body_text is None
    assert letter.size == 8 and letter.sha256 == hashlib.sha256(b"\x00\xffbinary").hexdigest()
    assert letter.body_display() == ("base64", base64.b64encode(b"\x00\xffbinary").decode())
    assert letter.created is not None
    assert f"{DEFAULT.path}/tasks/{letter.replay_id}" == replay_name(name, "order-1")


def test_list_filters_by_the_stack_queue_key(letters: DeadLetters, server: LoopbackEmulator) -> None:
    record(server, DEFAULT, "a")
    emails = [record(server, EMAILS, "b"), record(server, EMAILS, "c")]
    assert letters.names("emails") == emails
    assert {letter.queue_key for letter in letters.list("emails")} == {"emails"}
    assert len(letters.names()) == 3


def test_an_unknown_queue_key_is_refused_before_any_rpc(letters: DeadLetters, server: LoopbackEmulator) -> None:
    with pytest.raises(
        TaskValidationError, match=r"queue: 'nope' is not one of the stack's queues \(default, emails\)"
    ):
        letters.list("nope")
    assert server.faults.calls() == []


def test_show_takes_an_id_or_a_full_name(letters: DeadLetters, server: LoopbackEmulator) -> None:
    name = record(server, DEFAULT, "order-1", b"hello\n")
    assert letters.show(short(name)).name == name
    by_full = letters.show(name)
    assert by_full.name == name and by_full.body == b"hello\n"
    assert by_full.body_display() == ("text", "hello\n")
    assert server.faults.calls("GetTask")[0].request.response_view == tasks_v2.Task.View.FULL


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (f"{DEFAULT.path}/tasks/x", "is not on the dead-letter queue"),
        ("has space", "'has space' is not a task id"),
        ("", "'' is not a task id"),
    ],
)
def test_names_off_the_dead_letter_queue_are_refused(letters: DeadLetters, name: str, message: str) -> None:
    with pytest.raises(TaskValidationError, match=message):
        letters.show(name)


def test_show_of_a_letter_that_is_not_there_says_so(letters: DeadLetters) -> None:
    with pytest.raises(DeadLetterError, match=r"no dead letter .*/tasks/gone: it was replayed or discarded") as raised:
        letters.show("gone")
    assert raised.value.code == "NOT_FOUND"


def test_a_task_without_metadata_is_listed_with_the_problem(letters: DeadLetters, server: LoopbackEmulator) -> None:
    stray = tasks_v2.Task(name=f"{DLQ}/tasks/stray", http_request={"url": DEFAULT.task_url, "body": b"x"})
    server.core.create_task(tasks_v2.CreateTaskRequest(parent=DLQ, task=stray))
    (letter,) = letters.list()
    assert letter.meta is None and letter.queue_key is None and letter.replay_id is None
    assert letter.problem == "not a dead letter: no X-Dead-Letter-Queue header"
    (result,) = letters.replay(["stray"])
    assert result.outcome is LetterOutcome.FAILED and "not a dead letter" in result.detail
    assert outcomes(letters.discard(["stray"])) == [LetterOutcome.DISCARDED]


# --- replay -------------------------------------------------------------------------------------


def test_replay_creates_the_original_task_again_byte_for_byte(letters: DeadLetters, server: LoopbackEmulator) -> None:
    body = bytes(range(256))  # not UTF-8
    producer = {"Content-Type": "application/octet-stream", "X-Tenant": "t1", "x-lower": "kept as given"}
    url = stack().service_url + "/tasks/resize?size=2"
    name = record(server, DEFAULT, "order-1", body, headers=producer, url=url)

    (result,) = letters.replay([short(name)])

    assert result == LetterResult(name, LetterOutcome.REPLAYED, task=replay_name(name, "order-1"))
    (task,) = server.tasks(DEFAULT.path)
    assert task.name == result.task
    request = task.http_request
    assert request.body == body
    assert request.url == url
    assert request.http_method == tasks_v2.HttpMethod.POST
    assert dict(request.headers) == {**producer, HEADER_NOT_BEFORE: f"{NOW.timestamp():.3f}", **CLOUD_TASKS_USER_AGENT}
    assert not any(header.startswith(HEADER_PREFIX) for header in request.headers)
    assert request.oidc_token.service_account_email == stack().invoker_email
    assert request.oidc_token.audience == stack().oidc_audience
    assert task.dispatch_deadline == timedelta(seconds=DEFAULT.dispatch_deadline_seconds)
    assert server.tasks(DLQ) == []  # deleted once the task existed
    methods = [call.method for call in server.faults.calls()]
    assert methods == ["GetTask", "CreateTask", "DeleteTask"]


def test_replay_sends_the_letters_path_and_query_to_the_stacks_service_url_as_the_outputs_name_it(
    letters: DeadLetters, server: LoopbackEmulator
) -> None:
    # The handler records the URL under the service's deterministic URL (its audience). Where the outputs reach
    # the service elsewhere (local mode's loopback address, a service since renamed), the replay goes there.
    recorded = "https://tasks-dev-handler-123456789012.europe-west1.run.app/tasks/resize?size=2"
    assert not recorded.startswith(stack().service_url)
    name = record(server, DEFAULT, "order-1", b"x", url=recorded)
    assert outcomes(letters.replay([name])) == [LetterOutcome.REPLAYED]
    (task,) = server.tasks(DEFAULT.path)
    assert task.http_request.url == stack().service_url.rstrip("/") + "/tasks/resize?size=2"


def test_a_letter_whose_url_has_no_path_is_not_replayed(letters: DeadLetters, server: LoopbackEmulator) -> None:
    name = record(server, DEFAULT, "order-1", url="https://tasks-dev-handler.example")
    (result,) = letters.replay([name])
    assert result.outcome is LetterOutcome.FAILED
    assert "has no URL path ('https://tasks-dev-handler.example'); not replayed" in result.detail
    assert server.tasks(DEFAULT.path) == [] and len(server.tasks(DLQ)) == 1


def test_replay_into_a_queue_routed_at_queue_level_leaves_the_token_to_the_queue(
    letters: DeadLetters, server: LoopbackEmulator
) -> None:
    name = record(server, EMAILS, "mail-1", b'{"to":"a@example.com"}', url=EMAILS.task_url)
    assert outcomes(letters.replay([name])) == [LetterOutcome.REPLAYED]
    (task,) = server.tasks(EMAILS.path)
    assert task.name == replay_name(name, "mail-1", EMAILS)
    assert "oidc_token" not in task.http_request
    assert task.http_request.url == EMAILS.task_url and task.http_request.body == b'{"to":"a@example.com"}'
    assert task.dispatch_deadline == timedelta(seconds=EMAILS.dispatch_deadline_seconds)


def test_an_interrupted_replay_run_again_creates_nothing_twice(letters: DeadLetters, server: LoopbackEmulator) -> None:
    name = record(server, DEFAULT, "order-1")
    # The task is created, then the dead letter's delete fails: as if the replay had crashed in between.
    server.faults.fail_next("DeleteTask", grpc.StatusCode.PERMISSION_DENIED, "lacks cloudtasks.tasks.delete")
    (first,) = letters.replay([name])
    assert first.outcome is LetterOutcome.FAILED and first.task == replay_name(name, "order-1")
    assert f"replayed as {first.task}, but the dead letter was not deleted" in first.detail
    assert "roles/cloudtasks.taskDeleter" in first.detail and "Replay it again" in first.detail
    assert [task.name for task in server.tasks(DLQ)] == [name]

    (again,) = letters.replay([name])

    assert again == LetterResult(name, LetterOutcome.ALREADY_REPLAYED, task=first.task)
    assert [task.name for task in server.tasks(DEFAULT.path)] == [first.task]
    assert server.tasks(DLQ) == []
    assert server.create_calls() == 2


def test_a_lost_create_reply_is_retried_and_counts_as_replayed(
    letters: DeadLetters, server: LoopbackEmulator, sleeps: list[float]
) -> None:
    name = record(server, DEFAULT, "order-1")
    server.faults.fail_next("CreateTask", grpc.StatusCode.DEADLINE_EXCEEDED, "reply lost", after_effect=True)
    assert outcomes(letters.replay([name])) == [LetterOutcome.REPLAYED]
    assert len(server.tasks(DEFAULT.path)) == 1 and server.create_calls() == 2 and len(sleeps) == 1
    assert server.tasks(DLQ) == []


def test_a_lost_delete_reply_is_retried_and_counts_as_deleted(letters: DeadLetters, server: LoopbackEmulator) -> None:
    name = record(server, DEFAULT, "order-1")
    server.faults.fail_next("DeleteTask", grpc.StatusCode.UNAVAILABLE, "reply lost", after_effect=True)
    assert letters.replay([name]) == [LetterResult(name, LetterOutcome.REPLAYED, task=replay_name(name, "order-1"))]
    assert server.tasks(DLQ) == [] and len(server.faults.calls("DeleteTask")) == 2


def test_a_replay_task_that_exists_means_already_replayed(letters: DeadLetters, server: LoopbackEmulator) -> None:
    name = record(server, DEFAULT, "order-1", b"new")
    earlier = tasks_v2.Task(name=replay_name(name, "order-1"), http_request={"url": DEFAULT.task_url, "body": b"old"})
    server.core.create_task(tasks_v2.CreateTaskRequest(parent=DEFAULT.path, task=earlier))
    assert outcomes(letters.replay([name])) == [LetterOutcome.ALREADY_REPLAYED]
    (task,) = server.tasks(DEFAULT.path)
    assert task.http_request.body == b"old"  # the earlier replay's task stands
    assert server.tasks(DLQ) == []


def test_a_letter_someone_else_removed_meanwhile_is_reported(letters: DeadLetters, server: LoopbackEmulator) -> None:
    name = record(server, DEFAULT, "order-1")
    server.faults.fail_next("DeleteTask", grpc.StatusCode.NOT_FOUND, "Requested entity was not found.")
    (result,) = letters.replay([name])
    assert result.outcome is LetterOutcome.REPLAYED and result.ok
    assert result.detail == "the dead letter was already gone: someone else removed it"


def test_a_letter_without_its_body_is_not_replayed(letters: DeadLetters, server: LoopbackEmulator) -> None:
    why = "the body (1048000 bytes) does not fit beside this dead letter's metadata in one 1048576-byte task"
    digest = "ab" * 32
    name = record(server, DEFAULT, "big", None, body_omitted=why, size=1_048_000, sha256=digest)
    unread = record(server, DEFAULT, "unread", None, body_omitted="the body was not read: it is over the limit")

    big, never_read = letters.replay([name, unread])

    assert big.outcome is LetterOutcome.FAILED
    assert big.detail.startswith(f"holds no body ({why}; body: 1,048,000 bytes, sha256 {digest}); not replayed")
    assert "size unknown, sha256 unknown" in never_read.detail
    assert server.create_calls() == 0 and len(server.tasks(DLQ)) == 2
    assert letters.show(name).body_display() == ("omitted", why)


def test_a_letter_of_a_queue_the_stack_does_not_have_is_not_replayed(
    letters: DeadLetters, server: LoopbackEmulator
) -> None:
    name = record(server, "other-stack-queue", "t1")
    assert letters.show(name).queue_key is None
    (result,) = letters.replay([name])
    assert result.outcome is LetterOutcome.FAILED
    assert f"its queue 'other-stack-queue' is not one of the stack's queues (default ({DEFAULT.id})" in result.detail
    assert server.create_calls() == 0 and len(server.tasks(DLQ)) == 1


def test_a_body_that_does_not_match_its_sha256_is_not_replayed(letters: DeadLetters, server: LoopbackEmulator) -> None:
    name = record(server, DEFAULT, "t1", b"{}")
    letter = letters.show(name)
    assert letter.meta is not None
    tampered = DeadLetter(**{**letter.__dict__, "body": b"{ }"})
    with pytest.raises(DeadLetterError, match=r"its body's sha256 .* is not the .* recorded with it"):
        letters.build_replay(tampered)


def test_a_provisional_letter_is_replayed_only_once_its_task_is_gone(
    letters: DeadLetters, server: LoopbackEmulator
) -> None:
    name = record(server, DEFAULT, "still-retrying", final=False)
    original = tasks_v2.Task(name=f"{DEFAULT.path}/tasks/still-retrying", http_request={"url": DEFAULT.task_url})
    server.core.create_task(tasks_v2.CreateTaskRequest(parent=DEFAULT.path, task=original))

    (waiting,) = letters.replay([name])
    assert waiting.outcome is LetterOutcome.FAILED
    assert "provisional (final: false), and its task" in waiting.detail and "would run it twice" in waiting.detail
    assert server.create_calls() == 0

    server.core.delete_task(tasks_v2.DeleteTaskRequest(name=original.name))
    assert outcomes(letters.replay([name])) == [LetterOutcome.REPLAYED]


@pytest.mark.parametrize(
    ("detail", "expected"),
    [
        ("lacks IAM permission cloudtasks.tasks.create", "may not create tasks on {queue}: grant it roles/cloudtasks."),
        ("lacks IAM permission iam.serviceAccounts.actAs", "may not act as the invoker {invoker}: grant it roles/iam."),
    ],
)
def test_a_refused_create_names_the_principal_and_the_role(
    letters: DeadLetters, server: LoopbackEmulator, detail: str, expected: str
) -> None:
    name = record(server, DEFAULT, "t1")
    server.faults.fail_next("CreateTask", grpc.StatusCode.PERMISSION_DENIED, detail)
    (result,) = letters.replay([name])
    assert result.outcome is LetterOutcome.FAILED
    assert expected.format(queue=DEFAULT.path, invoker=stack().invoker_email) in result.detail
    assert f"the caller (emulator {server.address})" in result.detail
    assert len(server.tasks(DLQ)) == 1  # nothing created, nothing deleted


def test_a_refused_listing_names_the_roles_to_read_the_dead_letter_queue(
    letters: DeadLetters, server: LoopbackEmulator
) -> None:
    server.faults.fail_next("ListTasks", grpc.StatusCode.PERMISSION_DENIED, "lacks cloudtasks.tasks.list")
    with pytest.raises(DeadLetterError) as raised:
        letters.names()
    message = str(raised.value)
    assert f"the caller (emulator {server.address}) may not list the dead letters" in message
    assert f"roles/cloudtasks.viewer on the queue {DLQ}" in message and "roles/cloudtasks.enqueuer" in message
    assert "[PERMISSION_DENIED: lacks cloudtasks.tasks.list]" in message


def test_transient_errors_on_reads_are_retried(
    letters: DeadLetters, server: LoopbackEmulator, sleeps: list[float]
) -> None:
    record(server, DEFAULT, "t1")
    server.faults.fail_next("ListTasks", grpc.StatusCode.UNAVAILABLE, "try again", times=2)
    assert len(letters.names()) == 1 and len(sleeps) == 2


# --- many at once -----------------------------------------------------------------------------------


def test_replay_all_goes_on_past_failures_and_reports_every_letter(
    letters: DeadLetters, server: LoopbackEmulator
) -> None:
    good = [record(server, DEFAULT, f"order-{n}") for n in range(30)]
    omitted = record(server, DEFAULT, "big", None, body_omitted="too big")
    foreign = record(server, "other-queue", "t1")
    seen: list[LetterResult] = []
    server.faults.latency = 0.01  # so that calls overlap, and the cap is what stops more of them

    results = letters.replay_all(concurrency=4, on_result=seen.append)

    assert [result.name for result in results] == [*good, omitted, foreign]
    assert outcomes(results) == [LetterOutcome.REPLAYED] * 30 + [LetterOutcome.FAILED] * 2
    assert sorted(r.name for r in seen) == sorted(r.name for r in results)
    assert server.faults.max_in_flight == 4
    assert len(server.tasks(DEFAULT.path)) == 30
    assert [task.name for task in server.tasks(DLQ)] == [omitted, foreign]


def test_replay_all_of_one_queue_leaves_the_others(letters: DeadLetters, server: LoopbackEmulator) -> None:
    stays = record(server, DEFAULT, "order-1")
    record(server, EMAILS, "mail-1")
    assert outcomes(letters.replay_all("emails")) == [LetterOutcome.REPLAYED]
    assert [task.name for task in server.tasks(DLQ)] == [stays]


def test_discard_deletes_each_and_reports_one_not_there(letters: DeadLetters, server: LoopbackEmulator) -> None:
    names = [record(server, DEFAULT, f"t{n}") for n in range(3)]
    results = letters.discard([short(names[0]), names[1], "never-recorded"])
    assert outcomes(results) == [LetterOutcome.DISCARDED, LetterOutcome.DISCARDED, LetterOutcome.FAILED]
    assert results[2].name == f"{DLQ}/tasks/never-recorded"
    assert results[2].detail.startswith("not found: it was replayed or discarded already")
    assert [task.name for task in server.tasks(DLQ)] == [names[2]]
    assert server.create_calls() == 0


def test_discard_all_of_one_queue(letters: DeadLetters, server: LoopbackEmulator) -> None:
    stays = record(server, DEFAULT, "order-1")
    record(server, EMAILS, "mail-1")
    record(server, EMAILS, "mail-2")
    seen: list[LetterResult] = []
    assert outcomes(letters.discard_all("emails", on_result=seen.append)) == [LetterOutcome.DISCARDED] * 2
    assert len(seen) == 2
    assert [task.name for task in server.tasks(DLQ)] == [stays]


def test_the_dead_letter_queue_output_must_be_a_queue_path(server: LoopbackEmulator) -> None:
    with pytest.raises(ValueError, match=r"dead_letter_queue: 'dlq' is not a queue path"):
        DeadLetters.from_mapping({**outputs_document(), "dead_letter_queue": "dlq"}, connection=connect(server.address))


# --- the command line -------------------------------------------------------------------------------


@pytest.fixture
def cli(server: LoopbackEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The outputs file, with the emulator in the environment."""
    monkeypatch.setenv(EMULATOR_ENV, server.address)
    monkeypatch.delenv(OUTPUTS_ENV, raising=False)
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(outputs_document()))
    return path


def dead_letters(outputs: Path, *args: str) -> int:
    return main(["dead-letters", args[0], "--outputs", str(outputs), *args[1:]])


def test_cli_list_prints_a_table(cli: Path, server: LoopbackEmulator, capsys: pytest.CaptureFixture[str]) -> None:
    name = record(server, DEFAULT, "order-1", reason="first line\nsecond line")
    record(server, EMAILS, "mail-1", final=False)
    assert dead_letters(cli, "list") == 0
    out = capsys.readouterr().out
    assert short(name) in out and "order-1" in out and "provisional" in out
    assert "first line second line" in out  # the reason on one line
    assert RECORDED.strftime("%Y-%m-%d %H:%M:%SZ") in out and "7 B" in out
    assert out.rstrip().endswith("2 dead letters")


def test_cli_list_of_an_empty_queue(cli: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert dead_letters(cli, "list", "--queue", "emails") == 0
    assert capsys.readouterr().out == "no dead letters of queue 'emails'\n"


def test_cli_list_json_holds_every_letter_with_its_body(
    cli: Path, server: LoopbackEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    text = record(server, DEFAULT, "text", "héllo".encode())
    binary = record(server, DEFAULT, "binary", b"\xff\x00")
    record(server, EMAILS, "mail")
    assert dead_letters(cli, "list", "--queue", "default", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [item["name"] for item in listed] == [text, binary]
    first, second = listed
    assert base64.b64decode(first["body"]) == "héllo".encode() and first["bodyText"] == "héllo"
    assert base64.b64decode(second["body"]) == b"\xff\x00" and second["bodyText"] is None
    assert first["queueKey"] == "default" and first["queue"] == DEFAULT.id and first["task"] == "text"
    assert first["size"] == 6 and first["sha256"] == hashlib.sha256("héllo".encode()).hexdigest()
    assert (
        first["headers"] == {**JSON_HEADERS, **CLOUD_TASKS_USER_AGENT}
        and first["final"] is True
        and first["attempt"] == 3
    )
    assert first["replayTask"] == short(replay_name(text, "text"))


def test_cli_list_json_of_nothing_is_an_empty_array(cli: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert dead_letters(cli, "list", "--json") == 0
    assert json.loads(capsys.readouterr().out) == []


def test_cli_show_prints_metadata_headers_and_body(
    cli: Path, server: LoopbackEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    name = record(server, DEFAULT, "order-1", b'{"order":42}', headers={"X-Tenant": "t1"})
    binary = record(server, DEFAULT, "order-2", b"\x1b[2J")  # UTF-8, but a terminal escape: shown as base64
    assert dead_letters(cli, "show", short(name)) == 0
    out = capsys.readouterr().out
    assert f"name         {name}" in out and "queue        default" in out and "attempt      3 (final)" in out
    assert "  X-Tenant: t1" in out and "X-Dead-Letter" not in out
    digest = hashlib.sha256(b'{"order":42}').hexdigest()
    assert out.endswith(f'body         12 bytes, sha256 {digest}, as text:\n{{"order":42}}\n')
    assert dead_letters(cli, "show", binary) == 0
    escape = base64.b64encode(b"\x1b[2J").decode()
    assert capsys.readouterr().out.endswith(f"as base64:\n{escape}\n")


def test_cli_show_json(cli: Path, server: LoopbackEmulator, capsys: pytest.CaptureFixture[str]) -> None:
    name = record(server, DEFAULT, "order-1", b"\x00")
    assert dead_letters(cli, "show", name, "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["name"] == name and shown["body"] == "AA==" and shown["bodyText"] == "\x00"


def test_cli_show_of_a_missing_letter_exits_1(cli: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert dead_letters(cli, "show", "gone") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no dead letter") and "Traceback" not in err


def test_cli_replay_json_gives_each_result(
    cli: Path, server: LoopbackEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    name = record(server, DEFAULT, "order-1")
    assert dead_letters(cli, "replay", short(name), "--json") == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == [
        {"name": name, "outcome": "replayed", "task": replay_name(name, "order-1"), "detail": None}
    ]
    assert captured.err.strip() == "replayed 1, already replayed 0, failed 0"


def test_cli_replay_all_exits_1_when_a_letter_fails(
    cli: Path, server: LoopbackEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    good = record(server, DEFAULT, "order-1")
    bad = record(server, DEFAULT, "big", None, body_omitted="too big")
    assert dead_letters(cli, "replay", "--all") == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        f"replayed {short(good)} as {replay_name(good, 'order-1')}",
        "replayed 1, already replayed 0, failed 1",
    ]
    assert f"{short(bad)}: holds no body (too big; body: size unknown" in captured.err


def test_cli_discard_all_needs_yes(cli: Path, server: LoopbackEmulator, capsys: pytest.CaptureFixture[str]) -> None:
    record(server, DEFAULT, "order-1")
    assert dead_letters(cli, "discard", "--all", "--queue", "default") == 2
    err = capsys.readouterr().err
    assert err == "error: discard --all deletes every dead letter of queue 'default' for good: add --yes to confirm\n"
    assert server.faults.calls() == [] and len(server.tasks(DLQ)) == 1

    assert dead_letters(cli, "discard", "--all", "--yes", "--json") == 0
    captured = capsys.readouterr()
    assert [item["outcome"] for item in json.loads(captured.out)] == ["discarded"]
    assert captured.err.strip() == "discarded 1, failed 0"
    assert server.tasks(DLQ) == []


def test_cli_discard_by_name_needs_no_yes(
    cli: Path, server: LoopbackEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    name = record(server, DEFAULT, "order-1")
    assert dead_letters(cli, "discard", short(name), "missing") == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [f"discarded {short(name)}", "discarded 1, failed 1"]
    assert "missing: not found: it was replayed or discarded already" in captured.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["replay"], "error: replay: give the dead letters' names, or --all"),
        (["replay", "a", "--all"], "error: replay: give dead-letter names or --all, not both"),
        (["discard", "a", "--queue", "default"], "error: discard: --queue selects the dead letters of --all"),
        (["discard", "--all"], "error: discard --all deletes every dead letter of every queue for good: add --yes"),
        (["list", "--queue", "nope"], "error: --queue: 'nope' is not one of the stack's queues (default, emails)"),
        (["replay", "--all", "--concurrency", "0"], "error: --concurrency: 0 is outside 1..1000"),
    ],
)
def test_cli_usage_errors_are_one_line_and_exit_2(
    cli: Path, server: LoopbackEmulator, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert dead_letters(cli, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and "Traceback" not in err


def test_cli_server_errors_exit_1_and_name_the_role(
    cli: Path, server: LoopbackEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    server.faults.fail_next("ListTasks", grpc.StatusCode.PERMISSION_DENIED, "denied")
    assert dead_letters(cli, "replay", "--all") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the caller") and "roles/cloudtasks.viewer" in err


def test_cli_reads_the_outputs_from_stdin(
    server: LoopbackEmulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(EMULATOR_ENV, server.address)
    name = record(server, DEFAULT, "order-1")
    stdin = io.StringIO(json.dumps(outputs_document()))
    assert main(["dead-letters", "list", "--outputs", "-", "--json"], stdin=stdin) == 0
    assert [item["name"] for item in json.loads(capsys.readouterr().out)] == [name]


def test_cli_bulk_replay_shows_a_progress_bar_on_a_terminal_only(server: LoopbackEmulator, tmp_path: Path) -> None:
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(outputs_document()))
    command = [sys.executable, "-m", "taskclient", "dead-letters", "replay", "--all", "--outputs", str(outputs)]
    env = {**os.environ, EMULATOR_ENV: server.address, "PYTHONPATH": str(PROJECT_DIR)}
    for n in range(5):
        record(server, DEFAULT, f"piped-{n}")
    piped = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0, piped.stderr
    assert "replaying dead letters" not in piped.stderr
    assert piped.stdout.splitlines()[-1] == "replayed 5, already replayed 0, failed 0"

    for n in range(5):
        record(server, DEFAULT, f"terminal-{n}")
    status, stdout, shown = run_with_stderr_on_a_terminal(command, env)
    assert status == 0
    assert b"replaying dead letters" in shown
    assert stdout.splitlines()[-1] == "replayed 5, already replayed 0, failed 0"


def test_cli_output_piped_into_a_reader_that_stops_early_ends_quietly(server: LoopbackEmulator, tmp_path: Path) -> None:
    """`dead-letters list --json | head -1`: the reader goes away; the command stops without a traceback."""
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(outputs_document()))
    for n in range(400):  # far more output than a pipe's buffer holds
        record(server, DEFAULT, f"many-{n}", reason="ValueError: " + "no such order " * 20)
    command = [sys.executable, "-m", "taskclient", "dead-letters", "list", "--json", "--outputs", str(outputs)]
    env = {**os.environ, EMULATOR_ENV: server.address, "PYTHONPATH": str(PROJECT_DIR)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline() == b"[\n"
    process.stdout.close()
    errors = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141, errors
    assert "Traceback" not in errors and errors == ""


# --- docs/dead-letters.md ---------------------------------------------------------------------------

DOC = (PROJECT_DIR / "docs" / "dead-letters.md").read_text()


def test_the_documented_library_example_runs(
    server: LoopbackEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (example,) = re.findall(r"```python\n(.*?)```", DOC, re.DOTALL)
    monkeypatch.setenv(EMULATOR_ENV, server.address)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs.json").write_text(json.dumps(outputs_document()))
    name = record(server, DEFAULT, "order-42", b'{"order":42}')
    record(server, DEFAULT, "big", None, body_omitted="too big")
    namespace: dict[str, object] = {}
    exec(compile(example, "docs/dead-letters.md", "exec"), namespace)
    assert short(name) in capsys.readouterr().out
    failed = namespace["failed"]
    assert isinstance(failed, list) and [result.name for result in failed] == [f"{DLQ}/tasks/{DEFAULT.id}_big"]
    assert len(server.tasks(DEFAULT.path)) == 1


def test_the_documented_commands_are_the_cli_s(server: LoopbackEmulator, tmp_path: Path) -> None:
    commands = re.findall(r"^\$ python -m taskclient (dead-letters .*)$", DOC, re.MULTILINE)
    assert {command.split()[1] for command in commands} == {"list", "show", "replay", "discard"}
    parser = cli_parser()
    for command in commands:
        parser.parse_args(command.split())  # exits 2 on an option the CLI does not have
