"""Pulumi.yaml, the Makefile and CI agree with each other and with the settings."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from components import settings
from localcloud.program import PROJECT_DIR

PROJECT = yaml.safe_load((PROJECT_DIR / "Pulumi.yaml").read_text())


def test_project_is_python_with_an_explicit_toolchain_and_the_makefile_virtualenv() -> None:
    assert PROJECT["name"] == settings.NAMESPACE
    makefile_venv = re.search(r"^VENV := (\S+)$", (PROJECT_DIR / "Makefile").read_text(), re.MULTILINE)
    assert makefile_venv is not None
    assert PROJECT["runtime"] == {
        "name": "python",
        "options": {"toolchain": "pip", "virtualenv": makefile_venv[1]},
    }


def test_config_schema_declares_the_scalar_project_keys_with_their_types() -> None:
    # Structured keys (service, queues, enqueuers) cannot be typed in Pulumi.yaml; settings.py checks them.
    declared = {key: spec["type"] for key, spec in PROJECT["config"].items()}
    assert declared == {
        "namePrefix": "string",
        "deletionProtection": "boolean",
        "invokerServiceAccountId": "string",
        "defaultQueue": "string",
    }
    assert set(declared) <= set(settings.PROJECT_KEYS)
    assert all("default" not in spec for spec in PROJECT["config"].values()), "defaults live in settings.py only"


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (PROJECT_DIR / ".ci" / "run").read_text()
    assert "make test" in (PROJECT_DIR / "README.md").read_text()


FAKE_PYTHON = """#!/bin/sh
# A stand-in for the interpreter `make` is given: answers as Python {version} would.
case "$1" in
  --version) echo "Python {version}" ;;
  -c) exit {too_old} ;;
  -m) mkdir -p "$3/bin" && printf '#!/bin/sh\\necho "pip: no matching distribution" >&2\\nexit 1\\n' > "$3/bin/python"
      chmod +x "$3/bin/python" ;;
esac
"""


def _make_venv(tmp_path: Path, version: str, too_old: bool) -> tuple[subprocess.CompletedProcess[str], Path]:
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON.format(version=version, too_old=int(too_old)))
    python.chmod(0o755)
    venv = tmp_path / "venv"
    done = subprocess.run(
        ["make", "-s", f"PYTHON={python}", f"VENV={venv}", f"{venv}/.installed"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done, venv


def test_a_first_make_with_a_python_too_old_says_which_is_needed_and_leaves_no_venv(tmp_path: Path) -> None:
    done, venv = _make_venv(tmp_path, "3.9.2", too_old=True)
    assert done.returncode != 0
    assert "Python 3.11 or newer is needed" in done.stderr and "Python 3.9.2" in done.stderr
    assert "make PYTHON=python3.12" in done.stderr
    assert not venv.exists()


def test_a_failed_install_leaves_no_venv_to_break_the_next_run(tmp_path: Path) -> None:
    done, venv = _make_venv(tmp_path, "3.12.1", too_old=False)
    assert done.returncode != 0
    assert "pip: no matching distribution" in done.stderr
    assert not venv.exists()
