"""The task client under a user's mistakes and interruptions: one clear line each, nothing sent twice or lost
without saying so (library and `python -m taskclient`), against the emulator on loopback gRPC."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from emulator_support import LoopbackEmulator
from google.api_core import exceptions as gexc
from taskclient_support import outputs_document, stack, stack_emulator

from contract.outputs import OUTPUTS_ENV
from localcloud.program import PROJECT_DIR
from taskclient.cli import main
from taskclient.connection import EMULATOR_ENV
from taskclient.errors import TaskClientError, explain
from taskclient.publisher import TaskPublisher, task_id_for

INTERRUPTED = 130


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackEmulator]:
    with stack_emulator() as running:
        monkeypatch.setenv(EMULATOR_ENV, running.address)
        monkeypatch.delenv(OUTPUTS_ENV, raising=False)
        yield running


@pytest.fixture
def outputs_file(tmp_path: Path) -> Path:
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(outputs_document()))
    return path


# --- a task that exists already --------------------------------------------------------------------------


@pytest.mark.parametrize(("option", "value"), [("--name", "order-42"), ("--dedupe-key", "order-42")])
def test_sending_a_name_that_exists_says_it_was_not_sent_again(
    server: LoopbackEmulator, outputs_file: Path, capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    argv = ["send", "--outputs", str(outputs_file), option, value]
    assert main([*argv, "--json", '{"v": 1}']) == 0
    capsys.readouterr()
    assert main([*argv, "--json", '{"v": 2}']) == 0
    captured = capsys.readouterr()
    task_id = value if option == "--name" else task_id_for(value)
    name = f"{stack().queues['default'].path}/tasks/{task_id}"
    assert captured.out == f"{name}\n"
    assert captured.err == f"already exists: {name} (not sent again; the payload given now was not enqueued)\n"
    (task,) = server.tasks()
    assert task.http_request.body == b'{"v":1}'


def test_bulks_summary_names_the_lines_that_already_existed(
    server: LoopbackEmulator, outputs_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = tmp_path / "first.jsonl"
    first.write_text('{"id": 1}\n{"id": 2}\n')
    again = tmp_path / "again.jsonl"
    again.write_text('{"id": 3}\n{"id": 2}\n')
    options = ["--outputs", str(outputs_file), "--dedupe-field", "id"]
    assert main(["bulk", *options, "--file", str(first)]) == 0
    capsys.readouterr()
    assert main(["bulk", *options, "--file", str(again)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("created 1, duplicates 1 (already there, not sent again), failed 0, ")
    name = f"{stack().queues['default'].path}/tasks/{task_id_for('2')}"
    assert f"line 2: already exists: {name} (not sent again; the payload on this line was not enqueued)" in (
        captured.err
    )


# --- Ctrl-C during bulk ------------------------------------------------------------------------------------


def test_ctrl_c_during_bulk_prints_what_was_sent_and_where_to_resume_and_exits_130(
    server: LoopbackEmulator, outputs_file: Path, tmp_path: Path
) -> None:
    total = 20_000
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"id": n}) + "\n" for n in range(total)))
    command = [sys.executable, "-m", "taskclient", "bulk", "--outputs", str(outputs_file), "--file", str(tasks)]
    env = {**os.environ, EMULATOR_ENV: server.address, "PYTHONPATH": str(PROJECT_DIR)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while server.create_calls() < 200:
        assert process.poll() is None and time.monotonic() < deadline, "bulk ended before it could be interrupted"
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)

    assert process.returncode == INTERRUPTED, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    created = len(server.tasks())
    summary = out.splitlines()[0]
    assert summary.startswith(f"interrupted: created {created}, duplicates 0, failed 0, not sent {total - created}")
    assert f"last line sent: {created}; not sent: lines {created + 1} to {total}" in summary
    assert "--dedupe-field" in err  # how to resume without duplicates
    assert 0 < created < total


# --- mistakes found before any RPC --------------------------------------------------------------------------


def test_no_credentials_and_no_emulator_is_one_line_naming_both_ways_out(
    outputs_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(EMULATOR_ENV, raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(outputs_file.parent / "missing.json"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    assert main(["send", "--outputs", str(outputs_file), "--json", "{}"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "gcloud auth application-default login" in err and f"{EMULATOR_ENV}=127.0.0.1:8123" in err


def test_the_library_says_the_same_without_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(EMULATOR_ENV, raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    with pytest.raises(TaskClientError, match="no Google credentials found, and CLOUD_TASKS_EMULATOR_HOST is not set"):
        TaskPublisher.from_mapping(outputs_document())


@pytest.mark.parametrize("delay", ["99999999999d", "99999999999999999999h", "31d"])
def test_a_delay_out_of_range_is_one_line_in_the_unit_given(
    server: LoopbackEmulator, outputs_file: Path, capsys: pytest.CaptureFixture[str], delay: str
) -> None:
    status = main(["send", "--outputs", str(outputs_file), "--json", "{}", "--delay", delay])
    err = capsys.readouterr().err
    assert status == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "--delay" in err and delay in err and "30d" in err
    assert server.faults.calls() == []


@pytest.mark.parametrize("concurrency", ["0", "1001"])
def test_a_bulk_concurrency_out_of_range_names_the_flag_and_sends_nothing(
    server: LoopbackEmulator, outputs_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], concurrency: str
) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"id": 1}\n')
    assert main(["bulk", "--outputs", str(outputs_file), "--file", str(tasks), "--concurrency", concurrency]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --concurrency: {concurrency} is outside 1..1000\n"
    assert server.tasks() == []


def test_a_bulk_file_with_undecodable_bytes_names_the_line_and_sends_nothing(
    server: LoopbackEmulator, outputs_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_bytes(b'{"id": 1}\n{"id": 2}\n{"id": "\xff\xfe"}\n{"id": 4}\n')
    assert main(["bulk", "--outputs", str(outputs_file), "--file", str(tasks)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --file {tasks}: line 3 is not UTF-8")
    assert "nothing was sent" in err and len(err.splitlines()) == 1
    assert server.tasks() == []


def test_outputs_env_holding_a_path_says_how_to_pass_a_file(
    server: LoopbackEmulator, outputs_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(OUTPUTS_ENV, str(outputs_file))
    assert main(["send", "--json", "{}"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert f"{OUTPUTS_ENV} holds a path ({outputs_file}), not the outputs document" in err
    assert f"--outputs {outputs_file}" in err


# --- hints in the caller's own terms ------------------------------------------------------------------------


def test_cli_hints_name_its_flags_and_the_library_its_keyword_arguments(
    server: LoopbackEmulator, outputs_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.faults.fail_next("CreateTask", grpc.StatusCode.UNAVAILABLE)
    assert main(["send", "--outputs", str(outputs_file), "--json", "{}"]) == 1
    err = capsys.readouterr().err
    assert "pass --name or --dedupe-key to make retries safe" in err and "name=" not in err

    server.faults.fail_next("CreateTask", grpc.StatusCode.UNAVAILABLE)
    with TaskPublisher.from_mapping(outputs_document()) as publisher:
        (result,) = publisher.publish_many([{}])
    assert result.error and "pass name= or dedupe_key= to make retries safe" in result.error


def test_failed_precondition_does_not_blame_a_paused_queue_which_accepts_tasks() -> None:
    error = explain(
        gexc.FailedPrecondition("The queue cannot accept tasks."),
        queue_path="projects/p/locations/l/queues/q",
        invoker_email="i@p.iam.gserviceaccount.com",
        principal="me",
        location="l",
    )
    assert "paused or disabled" not in str(error) and "queues resume" not in str(error)
    assert "A pause is not the cause: a paused queue accepts tasks (they wait until it is resumed)" in str(error)


def test_a_bulk_file_mistake_is_reported_before_credentials_are_looked_for(
    outputs_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(EMULATOR_ENV, raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(outputs_file.parent / "missing.json"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    assert main(["bulk", "--outputs", str(outputs_file), "--file", "/nonexistent.jsonl"]) == 2
    assert capsys.readouterr().err == "error: --file /nonexistent.jsonl: No such file or directory\n"
