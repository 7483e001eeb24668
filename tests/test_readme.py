"""The README's configuration and output tables say what the code does."""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import pytest

from components import settings as s
from contract.outputs import OutputName, QueueField
from localcloud.program import PROJECT_DIR

README = (PROJECT_DIR / "README.md").read_text()


def table(section: str) -> dict[str, list[str]]:
    """First-column key -> the row's other cells, for the table under `## section`."""
    body = README.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \|(.*)\|$", body, re.MULTILINE)
    return {key: [cell.strip() for cell in rest.split("|")] for key, rest in rows}


def constants(holder: type) -> set[str]:
    return {value for name, value in vars(holder).items() if name.isupper()}


def test_configuration_table_lists_exactly_the_keys_the_settings_accept() -> None:
    objects = ("rateLimits", "retry", "probes", "vpc")  # documented through their fields
    expected = {
        "gcp:project",
        "gcp:region",
        *s.PROJECT_KEYS,
        *(f"service.{key}" for key in s.SERVICE_KEYS if key not in objects),
        *(f"service.probes.{probe}.{key}" for probe in s.PROBES_KEYS for key in s.PROBE_KEYS),
        *(f"service.vpc.{key}" for key in s.VPC_KEYS),
        "queues.<name>",
        *(f"queues.<name>.{key}" for key in s.QUEUE_KEYS if key not in objects),
        *(f"queues.<name>.rateLimits.{key}" for key in s.RATE_LIMIT_KEYS),
        *(f"queues.<name>.retry.{key}" for key in s.RETRY_KEYS),
        *(f"monitoring.{key}" for key in s.MONITORING_KEYS),
    }
    assert set(table("Configuration reference")) == expected


def test_outputs_table_lists_exactly_the_exported_names() -> None:
    expected = constants(OutputName) | {f"queues.<name>.{field}" for field in constants(QueueField)}
    assert set(table("Outputs")) == expected


BASELINE = s.load_settings(
    {"gcp:project": "my-tasks-dev", "gcp:region": "europe-west1", "cloudrun-tasks:queues": '{"default": {}}'},
    "dev",
)
QUEUE = BASELINE.queues[0]
# With a network, for the defaults of the VPC egress fields.
VPC = s.load_settings(
    {
        "gcp:project": "my-tasks-dev",
        "gcp:region": "europe-west1",
        "cloudrun-tasks:queues": '{"default": {}}',
        "cloudrun-tasks:service": '{"vpc": {"network": "default"}}',
    },
    "dev",
).service.vpc
assert VPC is not None

# README key -> the value the settings hold when the key is not set.
DEFAULTS: dict[str, Any] = {
    "deletionProtection": BASELINE.deletion_protection,
    "operators": list(BASELINE.operators),
    "service.image": BASELINE.service.image,
    "service.manageImage": BASELINE.service.manage_image,
    "service.ingress": BASELINE.service.ingress.value,
    "service.minInstances": BASELINE.service.min_instances,
    "service.maxInstances": BASELINE.service.max_instances,
    "service.concurrency": BASELINE.service.concurrency,
    "service.cpu": f'"{BASELINE.service.cpu}"',
    "service.memory": BASELINE.service.memory,
    "service.cpuAlwaysAllocated": BASELINE.service.cpu_always_allocated,
    "service.startupCpuBoost": BASELINE.service.startup_cpu_boost,
    **{
        f"service.probes.{kind}.{key}": getattr(probe, field)
        for kind, probe in (("startup", BASELINE.service.startup_probe), ("liveness", BASELINE.service.liveness_probe))
        for key, field in (
            ("initialDelaySeconds", "initial_delay_seconds"),
            ("periodSeconds", "period_seconds"),
            ("timeoutSeconds", "timeout_seconds"),
            ("failureThreshold", "failure_threshold"),
        )
    },
    "service.vpc.egress": VPC.egress,
    "service.vpc.networkTags": list(VPC.network_tags),
    "service.secretEnv": dict(BASELINE.service.secret_env),
    "queues.<name>.path": QUEUE.path.replace("default", "<name>"),
    "queues.<name>.dispatchDeadline": str(QUEUE.dispatch_deadline),
    "queues.<name>.queueLevelRouting": QUEUE.queue_level_routing,
    "queues.<name>.logSamplingRatio": QUEUE.log_sampling_ratio,
    "queues.<name>.rateLimits.maxDispatchesPerSecond": int(QUEUE.rate_limits.max_dispatches_per_second),
    "queues.<name>.retry.maxAttempts": QUEUE.retry.max_attempts,
    "queues.<name>.retry.maxRetryDuration": str(QUEUE.retry.max_retry_duration),
    "queues.<name>.retry.minBackoff": str(QUEUE.retry.min_backoff),
    "queues.<name>.retry.maxBackoff": str(QUEUE.retry.max_backoff),
    "queues.<name>.retry.maxDoublings": QUEUE.retry.max_doublings,
    "monitoring.enabled": BASELINE.monitoring.enabled,
    "monitoring.backlogThreshold": BASELINE.monitoring.backlog_threshold,
    "monitoring.backlogFor": str(BASELINE.monitoring.backlog_for),
    "monitoring.failingAttemptsRatio": BASELINE.monitoring.failing_attempts_ratio,
    "monitoring.handlerErrorRatio": BASELINE.monitoring.handler_error_ratio,
    "monitoring.failingFor": str(BASELINE.monitoring.failing_for),
    "monitoring.notificationChannels": list(BASELINE.monitoring.notification_channels),
    "monitoring.emails": list(BASELINE.monitoring.emails),
}


@pytest.mark.parametrize("key", sorted(DEFAULTS))
def test_documented_default_is_the_code_default(key: str) -> None:
    value = DEFAULTS[key]
    shown = {True: "true", False: "false"}.get(value, value) if isinstance(value, bool) else value
    assert table("Configuration reference")[key][1] == f"`{shown}`"


def python_example(heading: str) -> str:
    section = README.split(f"\n### {heading}\n", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_taskclient_example_runs_as_written(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from emulator_support import LoopbackEmulator, stack_queues

    from harness import run_stack

    run = run_stack("dev")
    outputs = dict(run.outputs)
    (tmp_path / "outputs.json").write_text(json.dumps(outputs))
    monkeypatch.chdir(tmp_path)
    with LoopbackEmulator(stack_queues(run)) as emulator:
        monkeypatch.setenv("CLOUD_TASKS_EMULATOR_HOST", emulator.address)
        namespace: dict[str, Any] = {}
        exec(compile(python_example("From Python: `taskclient`"), "README.md", "exec"), namespace)
    assert namespace["failed"] == []
    assert len(namespace["results"]) == 1000
    assert len(emulator.tasks()) == 1002
    assert namespace["name"].startswith(outputs["default_queue_path"] + "/tasks/")


def test_the_readmes_commands_run_from_a_fresh_shell_in_the_repository() -> None:
    """`make` builds ./venv; a fresh shell has no venv on its PATH, and its `python` lacks the packages. Every
    command of the project's own modules is written with the venv's interpreter."""
    commands = re.findall(r"(?<![\w/])(?:python3?) -m (?:taskclient|localcloud|handler)\b", README)
    assert commands == []
    assert "venv/bin/python -m taskclient" in README and "venv/bin/python -m localcloud" in README
