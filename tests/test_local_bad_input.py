"""Local mode under a user's mistakes in the stack file: the problems in a few lines, no traceback, and nothing
started (no emulator, no handler) when the config is refused; the program's warnings shown as they are."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import localcloud.stack
from contract.outputs import StackOutputs
from harness import dev_outputs
from localcloud.__main__ import main
from localcloud.demo import workload
from localcloud.program import PROJECT_DIR
from localcloud.stack import unserved_queue_warnings

DEV = (PROJECT_DIR / "Pulumi.dev.yaml").read_text()


@pytest.fixture
def stacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory of stack files that local mode reads instead of the project's."""
    monkeypatch.setattr(localcloud.stack, "PROJECT_DIR", tmp_path)
    return tmp_path


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process, from /proc (no `ps` on a minimal machine)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:  # it ended while being read
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])  # the fields after "(comm)": state, ppid, ...
            found[int(entry.name)] = (parent, command)
    return found


def started_processes() -> list[str]:
    return [c for _, c in processes().values() if "-m localcloud emulator" in c or "-m handler" in c]


@pytest.mark.parametrize("command", ["up", "demo", "resources"])
def test_a_config_mistake_prints_the_problems_and_starts_nothing(
    stacks: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    (stacks / "Pulumi.bad.yaml").write_text(DEV.replace("maxAttempts: 15", "maxAttempts: -5"))
    before = started_processes()
    assert main([command, "--stack", "bad"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("error: Pulumi.bad.yaml: ")
    assert "queues.default.retry.maxAttempts" in err and "-5" in err
    assert started_processes() == before


def test_a_yaml_syntax_error_names_the_file_line_and_column(stacks: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (stacks / "Pulumi.bad.yaml").write_text("config:\n  gcp:project: my-tasks-dev\n  cloudrun-tasks:queues: [a\n")
    assert main(["resources", "--stack", "bad"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("error: Pulumi.bad.yaml:4:1: not YAML:"), err


def test_a_key_without_the_project_namespace_is_refused_not_ignored(
    stacks: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (stacks / "Pulumi.bad.yaml").write_text(DEV + "  deletionProtection: true\n")
    assert main(["resources", "--stack", "bad"]) == 2
    err = capsys.readouterr().err
    assert "error: Pulumi.bad.yaml: config key 'deletionProtection' has no namespace" in err
    assert "write 'cloudrun-tasks:deletionProtection'" in err


def test_a_stack_file_without_config_is_refused_in_one_line(stacks: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (stacks / "Pulumi.bad.yaml").write_text("encryptionsalt: abc\n")
    assert main(["resources", "--stack", "bad"]) == 2
    assert capsys.readouterr().err == "error: Pulumi.bad.yaml: no `config:` mapping\n"


def test_the_programs_warnings_are_printed_before_the_local_stack_starts(
    stacks: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The dev stack's emails queue sets both retry limits, so the handler may have to guess its final attempt.
    (stacks / "Pulumi.warn.yaml").write_text(DEV)
    assert main(["resources", "--stack", "warn"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and "queues.emails.retry" in err


# --- the processes of `localcloud up` ---------------------------------------------------------------------


def test_a_port_in_use_names_the_port_and_the_flag_to_change_it(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        before = started_processes()
        assert main(["up", "--emulator-port", str(port), "--handler-port", "0", "--http-port", "0"]) == 2
    err = capsys.readouterr().err.splitlines()[-1] + "\n"
    assert err == (
        f"error: port {port} (the emulator's gRPC port) is in use, by another `localcloud up` perhaps:"
        f" stop that, or choose another with --emulator-port\n"
    )
    assert started_processes() == before


def test_a_port_a_closed_connection_lingers_on_is_free_to_use_again() -> None:
    # Stop `localcloud up` and start it again at once: the handler's port still holds the last connections in
    # TIME_WAIT for a minute. The servers bind with SO_REUSEADDR and start; the check must not call it in use.
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn's (the handler's) does
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            served, _ = listener.accept()
            served.close()  # the server's side closes first: its end waits in TIME_WAIT
            client.recv(1)
    localcloud.stack._check_free((port, "the task handler's port", "--handler-port"))
    with socket.socket() as taken:  # a port someone listens on is still refused
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with pytest.raises(localcloud.stack.LocalStackError, match=f"port {port} .* is in use"):
            localcloud.stack._check_free((port, "the task handler's port", "--handler-port"))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie has exited; only its entry waits to be reaped


def test_the_emulator_and_handler_never_outlive_a_killed_localcloud_up(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "localcloud", "up", "--outputs", str(tmp_path / "outputs.json")]
    for flag in ("--emulator-port", "--handler-port", "--http-port", "--console-port"):
        command += [flag, "0"]  # free ports: a process on a default one (8125) must not fail the test
    env = {**os.environ, "PYTHONPATH": str(PROJECT_DIR)}
    up = subprocess.Popen(
        command, cwd=PROJECT_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert up.stdout is not None
    for line in up.stdout:
        if "is up" in line:
            break
    else:
        pytest.fail(f"localcloud up ended with {up.wait()} before it was up")
    children = [pid for pid, (parent, _) in processes().items() if parent == up.pid]
    assert len(children) == 2  # the emulator and the handler
    up.kill()
    up.wait(timeout=10)
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in children if _alive(pid)] == []


# --- queues whose path has no task type ---------------------------------------------------------------------


def outputs_with_emails_at(path: str) -> StackOutputs:
    document = dev_outputs()
    queues = {key: dict(queue) for key, queue in document["queues"].items()}
    queues["emails"]["task_url"] = document["service_url"] + path
    return StackOutputs.from_mapping({**document, "queues": queues})


def test_a_queue_whose_path_has_no_task_type_is_warned_of_at_start() -> None:
    assert unserved_queue_warnings(outputs_with_emails_at("/tasks/send-email")) == []
    (warning,) = unserved_queue_warnings(outputs_with_emails_at("/tasks/report"))
    assert warning.startswith("queue 'emails' sends its tasks to /tasks/report, where the handler has no task type")
    assert "/tasks/default, /tasks/send-email" in warning and "queues.emails.path" in warning


def test_the_demo_sends_only_to_queues_whose_task_type_it_knows_and_names_the_others() -> None:
    tasks, skipped = workload(outputs_with_emails_at("/tasks/report"), arrives_at=0)
    assert skipped == {"emails": "/tasks/report"}
    assert {task.request.queue for task in tasks} == {"default"}
