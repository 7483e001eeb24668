"""Local mode under a user's mistakes in the stack file: the problems in a few lines, no traceback, and nothing
started (no emulator, no handler) when the config is refused; the program's warnings shown as they are."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import localcloud.stack
from localcloud.__main__ import main
from localcloud.program import PROJECT_DIR

DEV = (PROJECT_DIR / "Pulumi.dev.yaml").read_text()


@pytest.fixture
def stacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory of stack files that local mode reads instead of the project's."""
    monkeypatch.setattr(localcloud.stack, "PROJECT_DIR", tmp_path)
    return tmp_path


def started_processes() -> list[str]:
    done = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    return [line for line in done.stdout.splitlines() if "-m localcloud emulator" in line or "-m handler" in line]


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
