"""`python -m taskclient` end to end, against the emulator on loopback gRPC."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from emulator_support import LoopbackEmulator
from taskclient_support import outputs_document, run_with_stderr_on_a_terminal, stack, stack_emulator

from contract.outputs import OUTPUTS_ENV
from localcloud.program import PROJECT_DIR
from taskclient.cli import main
from taskclient.connection import EMULATOR_ENV
from taskclient.publisher import task_id_for


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


def test_send_prints_the_created_tasks_name(
    server: LoopbackEmulator, outputs_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["send", "--outputs", str(outputs_file), "--json", '{"a": 1}', "--name", "t1", "--delay", "30s"])
    assert status == 0
    assert capsys.readouterr().out == f"{stack().queues['default'].path}/tasks/t1\n"
    (task,) = server.tasks()
    assert task.http_request.body == b'{"a":1}'


def test_send_options_reach_the_task(server: LoopbackEmulator, outputs_file: Path, tmp_path: Path) -> None:
    data = tmp_path / "payload.bin"
    data.write_bytes(b"\x01\x02")
    options = ["--queue", "default", "--path", "/tasks/x", "--deadline", "2m", "--header", "X-Tenant: t1"]
    status = main(["send", "--outputs", str(outputs_file), "--data-file", str(data), *options, "--dedupe-key", "k"])
    assert status == 0
    (task,) = server.tasks()
    assert task.http_request.body == b"\x01\x02"
    assert task.http_request.url == stack().service_url + "/tasks/x"
    assert task.http_request.headers["X-Tenant"] == "t1"
    assert task.dispatch_deadline.total_seconds() == 120
    assert task.name.endswith("/tasks/" + task_id_for("k"))


def test_a_payload_from_standard_input_is_read_from_the_stdin_given(
    server: LoopbackEmulator, outputs_file: Path
) -> None:
    """`--data-file -` reads the stdin main() is handed, as bytes, not the process's own."""
    stdin = io.TextIOWrapper(io.BytesIO(b"\x00\xffbinary\n"))
    assert main(["send", "--outputs", str(outputs_file), "--data-file", "-"], stdin=stdin) == 0
    (task,) = server.tasks()
    assert task.http_request.body == b"\x00\xffbinary\n"


def test_outputs_are_read_from_stdin(server: LoopbackEmulator, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["send", "--outputs", "-", "--json", "{}"], stdin=io.StringIO(json.dumps(outputs_document())))
    assert status == 0
    assert capsys.readouterr().out.startswith(stack().queues["default"].path + "/tasks/")


def test_outputs_are_read_from_the_environment(
    server: LoopbackEmulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(OUTPUTS_ENV, json.dumps(outputs_document()))
    assert main(["send", "--json", "{}"]) == 0
    assert len(server.tasks()) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["send", "--json", "{nope"], "error: --json: not JSON"),
        (["send", "--json", "{}", "--queue", "nope"], "error: --queue: 'nope' is not one of the stack's queues"),
        (["send", "--json", "{}", "--deadline", "1h"], "error: --deadline: 3600s is outside 15s..1800s"),
        (["send", "--json", "{}", "--header", "no-colon"], "error: --header 'no-colon': expected NAME:VALUE"),
        (["bulk", "--file", "/nonexistent.jsonl"], "error: --file /nonexistent.jsonl: No such file or directory"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(
    server: LoopbackEmulator, outputs_file: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main([*argv[:1], "--outputs", str(outputs_file), *argv[1:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message)
    assert "Traceback" not in err
    assert server.faults.calls() == []


def test_missing_outputs_say_where_to_get_them(
    server: LoopbackEmulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # no pulumi CLI to ask
    assert main(["send", "--json", "{}"]) == 2
    assert "error: no stack outputs: pass --outputs FILE" in capsys.readouterr().err


def test_a_broken_outputs_file_is_reported(
    server: LoopbackEmulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "outputs.json"
    broken.write_text(json.dumps({**outputs_document(), "invoker_email": None}))
    assert main(["send", "--outputs", str(broken), "--json", "{}"]) == 2
    assert "invoker_email: expected a non-empty string, got None" in capsys.readouterr().err


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_bulk_creates_every_line_and_reports_bad_lines(
    server: LoopbackEmulator, outputs_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [json.dumps({"id": n}) for n in range(1000)]
    lines.insert(500, "{not json")
    tasks = write_lines(tmp_path / "tasks.jsonl", lines)
    status = main(["bulk", "--outputs", str(outputs_file), "--file", str(tasks), "--concurrency", "8"])
    captured = capsys.readouterr()
    assert status == 1  # one line failed
    assert captured.out.startswith("created 1000, duplicates 0, failed 1, ")
    assert captured.out.rstrip().endswith(" tasks/s")
    assert "line 501: not a task:" in captured.err
    assert len(server.tasks()) == 1000


def test_bulk_rerun_with_a_dedupe_field_creates_nothing_twice(
    server: LoopbackEmulator, outputs_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tasks = write_lines(tmp_path / "tasks.jsonl", [json.dumps({"id": n, "x": "y"}) for n in range(50)])
    argv = ["bulk", "--outputs", str(outputs_file), "--file", str(tasks), "--queue", "emails", "--dedupe-field", "id"]
    assert main(argv) == 0
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("created 50, duplicates 0, failed 0")
    assert out[1].startswith("created 0, duplicates 50 (already there, not sent again), failed 0")
    assert len(server.tasks()) == 50


def test_bulk_lines_without_the_dedupe_field_fail_alone(
    server: LoopbackEmulator, outputs_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tasks = write_lines(tmp_path / "tasks.jsonl", ['{"id": 1}', '{"other": 2}', "[3]"])
    assert main(["bulk", "--outputs", str(outputs_file), "--file", str(tasks), "--dedupe-field", "id"]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("created 1, duplicates 0, failed 2")
    assert "line 2: not a task: no field 'id'" in captured.err and "line 3:" in captured.err


def module_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "taskclient", *args]


def module_env(server: LoopbackEmulator) -> dict[str, str]:
    return {**os.environ, EMULATOR_ENV: server.address, "PYTHONPATH": str(PROJECT_DIR)}


def run_module(args: list[str], server: LoopbackEmulator, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        module_command(args), env=module_env(server), input=stdin, text=True, capture_output=True, timeout=60
    )


def test_pulumi_outputs_piped_into_the_module(server: LoopbackEmulator) -> None:
    done = run_module(
        ["send", "--outputs", "-", "--json", '{"hello": "world"}'], server, stdin=json.dumps(outputs_document())
    )
    assert done.returncode == 0, done.stderr
    assert [done.stdout.strip()] == [task.name for task in server.tasks()]


def test_bulk_shows_a_progress_bar_on_a_terminal_only(server: LoopbackEmulator, tmp_path: Path) -> None:
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(outputs_document()))
    tasks = write_lines(tmp_path / "tasks.jsonl", [json.dumps({"n": n}) for n in range(20)])
    args = ["bulk", "--outputs", str(outputs), "--file", str(tasks)]

    piped = run_module(args, server)
    assert piped.returncode == 0 and "creating tasks" not in piped.stderr

    status, stdout, shown = run_with_stderr_on_a_terminal(module_command(args), module_env(server))
    assert status == 0
    assert b"creating tasks" in shown
    assert stdout.startswith("created 20, duplicates 0, failed 0")
