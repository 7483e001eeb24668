"""Run the real program under Pulumi's mocks with a stack file's config, as the CLI would pass it."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from contract.outputs import StackOutputs
from localcloud.program import PROJECT_DIR, ProgramRun, evaluate


def cli_value(value: Any) -> str:
    """A stack-file value as the Pulumi CLI hands it to the program: strings as-is, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def stack_file_config(stack: str) -> dict[str, str]:
    document = yaml.safe_load((PROJECT_DIR / f"Pulumi.{stack}.yaml").read_text())
    return {key: cli_value(value) for key, value in document["config"].items()}


def with_overrides(config: Mapping[str, str], **project_keys: Any) -> dict[str, str]:
    """`config` with whole `cloudrun-tasks:` keys replaced (None removes a key)."""
    result = dict(config)
    for key, value in project_keys.items():
        result.pop(f"cloudrun-tasks:{key}", None)
        if value is not None:
            result[f"cloudrun-tasks:{key}"] = cli_value(value)
    return result


def run_stack(stack: str = "dev", **project_keys: Any) -> ProgramRun:
    return evaluate(with_overrides(stack_file_config(stack), **project_keys), stack=stack)


@functools.cache
def dev_run() -> ProgramRun:
    """The dev stack's run, evaluated on first use (never when a test module is imported) and shared by the
    tests that only read it."""
    return run_stack("dev")


def dev_outputs() -> dict[str, Any]:
    """The dev stack's outputs document, a fresh copy each call."""
    return dict(dev_run().outputs)


def dev_stack() -> StackOutputs:
    return StackOutputs.from_mapping(dev_run().outputs)


def stack_document(stack: str) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(Path(PROJECT_DIR / f"Pulumi.{stack}.yaml").read_text())["config"]
    return config
