"""`python -m taskclient bulk` reading its input as a stream: the file checked whole before anything is sent,
standard input and FIFOs spooled to disk, and every line reported in line order as results arrive."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from emulator_support import LoopbackEmulator
from taskclient_support import outputs_document, stack, stack_emulator

from contract.outputs import OUTPUTS_ENV
from localcloud.emulator.faults import Fault
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


def jsonl(count: int) -> bytes:
    return "".join(json.dumps({"id": n}) + "\n" for n in range(count)).encode()


def bulk(server: LoopbackEmulator, outputs: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "taskclient", "bulk", "--outputs", str(outputs), *args]
    env = {**os.environ, EMULATOR_ENV: server.address, "PYTHONPATH": str(PROJECT_DIR)}
    return subprocess.run(command, env=env, input=stdin, capture_output=True, timeout=120, check=False)


def test_a_line_that_is_not_utf8_at_the_very_end_still_sends_nothing(
    server: LoopbackEmulator, outputs_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_bytes(jsonl(10_000) + b'{"id": "\xff"}\n')
    assert main(["bulk", "--outputs", str(outputs_file), "--file", str(tasks)]) == 2
    assert capsys.readouterr().err.startswith(f"error: --file {tasks}: line 10001 is not UTF-8")
    assert server.faults.calls() == []


def test_standard_input_is_spooled_and_sent_whole(server: LoopbackEmulator, outputs_file: Path) -> None:
    done = bulk(server, outputs_file, "--file", "-", stdin=jsonl(500))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"created 500, duplicates 0, failed 0, ")
    assert len(server.tasks()) == 500


def test_standard_input_with_a_bad_last_line_sends_nothing(server: LoopbackEmulator, outputs_file: Path) -> None:
    done = bulk(server, outputs_file, "--file", "-", stdin=jsonl(500) + b"\xfe\n")
    assert done.returncode == 2
    assert done.stderr.startswith(b"error: --file -: line 501 is not UTF-8")
    assert server.faults.calls() == []


def test_a_fifo_is_read_once_and_sent_whole(
    server: LoopbackEmulator, outputs_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "tasks.fifo"
    os.mkfifo(fifo)

    def write() -> None:
        with open(fifo, "wb") as pipe:  # blocks until bulk opens it
            pipe.write(jsonl(300))

    writer = threading.Thread(target=write)
    writer.start()
    status = main(["bulk", "--outputs", str(outputs_file), "--file", str(fifo), "--concurrency", "8"])
    writer.join(timeout=30)
    assert status == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith("created 300, duplicates 0, failed 0, ")
    assert len(server.tasks()) == 300


def test_failures_are_reported_in_line_order_as_results_arrive(
    server: LoopbackEmulator, outputs_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    denied_ids = set(range(3, 400, 7))
    denied_names = {f"{stack().queues['default'].path}/tasks/{task_id_for(json.dumps(n))}" for n in denied_ids}
    denied = Fault(grpc.StatusCode.PERMISSION_DENIED, "The principal lacks IAM permission cloudtasks.tasks.create")
    server.faults.fail_when("CreateTask", lambda request: denied if request.task.name in denied_names else None)
    lines = [json.dumps({"id": n}) if n % 11 else "{not json" for n in range(400)]
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(line + "\n" for line in lines))
    argv = ["bulk", "--outputs", str(outputs_file), "--file", str(tasks), "--dedupe-field", "id"]
    assert main([*argv, "--concurrency", "16"]) == 1
    captured = capsys.readouterr()
    reported = [int(line.split(":", 1)[0].removeprefix("line ")) for line in captured.err.splitlines()]
    bad_json = {n for n in range(400) if n % 11 == 0}
    expected = sorted(n + 1 for n in (bad_json | denied_ids))
    assert reported == expected
    created = 400 - len(bad_json | denied_ids)
    assert captured.out.startswith(f"created {created}, duplicates 0, failed {len(expected)}, ")
    assert len(server.tasks()) == created
