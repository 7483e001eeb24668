"""Pulumi.yaml, the Makefile and CI agree with each other and with the settings."""

from __future__ import annotations

import re

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
