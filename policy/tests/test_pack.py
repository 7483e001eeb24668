"""The pack as the Pulumi CLI runs it, spoken to over its gRPC analyzer as the CLI does.

The CLI's python analyzer shim runs `python -u -m pulumi.policy ENGINE_ADDRESS PACK_DIR` in the pack's
virtualenv; that `runpy.run_path`s the folder, so `__main__.py` runs with policy/ first on sys.path.

This is where enforcement levels and config live (the SDK applies them, not the validators), and where the
SDK's own deserialization hands the validators unknowns, so these are tested through the real process.
"""

from __future__ import annotations

import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import program_dumps
import pytest
from google.protobuf import empty_pb2, json_format, struct_pb2
from policy_args import UNKNOWN_BOOL, UNKNOWN_STRING, urn_for
from pulumi.runtime.proto import analyzer_pb2 as proto
from pulumi.runtime.proto import analyzer_pb2_grpc
from pulumi_policy import EnforcementLevel, ResourceValidationPolicy, StackValidationPolicy

from guardrails import tokens
from guardrails.pack import PACK_NAME, POLICIES

POLICY_DIR = Path(__file__).resolve().parents[1]
START_TIMEOUT_SECONDS = 60

DEFAULT_LEVELS = {
    "cloud-run-no-public-access": EnforcementLevel.MANDATORY,
    "cloud-run-invoker-iam-check": EnforcementLevel.MANDATORY,
    "cloud-run-dedicated-runtime-account": EnforcementLevel.MANDATORY,
    "cloud-run-ingress-restricted": EnforcementLevel.ADVISORY,
    "iam-no-project-wide-invoker-or-act-as": EnforcementLevel.MANDATORY,
    "iam-no-cloudtasks-admin-for-service-accounts": EnforcementLevel.MANDATORY,
    "iam-no-service-account-keys": EnforcementLevel.MANDATORY,
    "cloud-tasks-queue-within-limits": EnforcementLevel.MANDATORY,
    "cloud-tasks-queue-bounded-retry": EnforcementLevel.MANDATORY,
    "cloud-tasks-queue-logging": EnforcementLevel.MANDATORY,
    "apis-kept-on-destroy": EnforcementLevel.MANDATORY,
    "cloud-tasks-delivery-wiring": EnforcementLevel.MANDATORY,
    "cloud-tasks-dead-letter-queue-paused": EnforcementLevel.MANDATORY,
}
WIRE_LEVELS = {
    EnforcementLevel.ADVISORY: proto.ADVISORY,
    EnforcementLevel.MANDATORY: proto.MANDATORY,
    EnforcementLevel.DISABLED: proto.DISABLED,
}

# A Cloud Run service whose only fault is all-traffic ingress (advisory by default).
OPEN_SERVICE = {
    "name": "h",
    "location": "europe-west1",
    "ingress": "INGRESS_TRAFFIC_ALL",
    "invokerIamDisabled": False,
    "template": {"serviceAccount": "run@p.iam.gserviceaccount.com", "timeout": "600s"},
}


@pytest.fixture(scope="module")
def analyzer() -> Iterator[analyzer_pb2_grpc.AnalyzerStub]:
    """The pack's own process; it prints its port, then serves until stopped (we stop the one we started)."""
    command = [sys.executable, "-u", "-m", "pulumi.policy", "127.0.0.1:0", str(POLICY_DIR)]
    process = subprocess.Popen(command, cwd=POLICY_DIR.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT_SECONDS)
        line = process.stdout.readline() if ready else b""
        if not line.strip().isdigit():
            process.kill()
            _, stderr = process.communicate(timeout=10)
            pytest.fail(f"the pack did not start (printed {line!r}): {stderr.decode()[-2000:]}")
        with grpc.insecure_channel(f"127.0.0.1:{int(line)}") as channel:
            grpc.channel_ready_future(channel).result(timeout=START_TIMEOUT_SECONDS)
            yield analyzer_pb2_grpc.AnalyzerStub(channel)
    finally:
        process.terminate()
        process.wait(timeout=10)


def configure(stub: Any, config: dict[str, dict[str, Any]]) -> None:
    """Replace the pack's config, as the CLI does with --policy-pack-config: {policy: {enforcementLevel, ...}}."""
    request = proto.ConfigureAnalyzerRequest()
    for name, settings in config.items():
        level = settings.get("enforcementLevel")
        entry = request.policyConfig[name]
        entry.enforcementLevel = WIRE_LEVELS[level] if level else WIRE_LEVELS[DEFAULT_LEVELS[name]]
        entry.properties.update({k: v for k, v in settings.items() if k != "enforcementLevel"})
    stub.Configure(request)


@pytest.fixture
def stub(analyzer: Any) -> Any:
    configure(analyzer, {})  # every test starts from the pack's defaults
    return analyzer


def struct(props: dict[str, Any]) -> struct_pb2.Struct:
    return json_format.ParseDict(props, struct_pb2.Struct())


def analyze(stub: Any, resource_type: str, props: dict[str, Any], name: str = "h") -> list[Any]:
    request = proto.AnalyzeRequest(
        type=resource_type, properties=struct(props), urn=urn_for(resource_type, name), name=name
    )
    return list(stub.Analyze(request).diagnostics)


# --- the pack's declaration ---------------------------------------------------------------------------------


def test_policy_names_are_unique_and_levels_are_the_documented_defaults() -> None:
    assert {p.name: p.enforcement_level for p in POLICIES} == DEFAULT_LEVELS
    assert len({p.name for p in POLICIES}) == len(POLICIES)
    assert [p.name for p in POLICIES if isinstance(p, StackValidationPolicy)] == [
        "cloud-tasks-delivery-wiring",
        "cloud-tasks-dead-letter-queue-paused",
    ]
    assert all(isinstance(p, ResourceValidationPolicy | StackValidationPolicy) for p in POLICIES)


def test_the_cli_sees_the_pack_its_policies_levels_and_config_schemas(stub: Any) -> None:
    info = stub.GetAnalyzerInfo(empty_pb2.Empty())
    assert info.name == PACK_NAME
    assert {p.name: p.enforcementLevel for p in info.policies} == {
        name: WIRE_LEVELS[level] for name, level in DEFAULT_LEVELS.items()
    }
    schemas = {p.name: json_format.MessageToDict(p.configSchema.properties) for p in info.policies}
    assert schemas["cloud-run-ingress-restricted"]["allowAllIngress"]["default"] is False
    assert schemas["cloud-tasks-queue-bounded-retry"]["allowUnboundedRetries"]["type"] == "boolean"
    assert schemas["iam-no-cloudtasks-admin-for-service-accounts"]["exemptMembers"]["type"] == "array"


# --- enforcement levels and config, as the SDK applies them --------------------------------------------------


def test_a_violation_reaches_the_cli_with_the_policy_level_and_message(stub: Any) -> None:
    [diagnostic] = analyze(stub, tokens.RUN_SERVICE, OPEN_SERVICE)
    assert diagnostic.policyName == "cloud-run-ingress-restricted"
    assert diagnostic.policyPackName == PACK_NAME
    assert diagnostic.enforcementLevel == proto.ADVISORY
    assert "Cloud Run service 'h': ingress is \"INGRESS_TRAFFIC_ALL\"" in diagnostic.message


@pytest.mark.parametrize("level", [EnforcementLevel.MANDATORY, EnforcementLevel.ADVISORY])
def test_the_enforcement_level_can_be_overridden(stub: Any, level: EnforcementLevel) -> None:
    configure(stub, {"cloud-run-ingress-restricted": {"enforcementLevel": level}})
    [diagnostic] = analyze(stub, tokens.RUN_SERVICE, OPEN_SERVICE)
    assert diagnostic.enforcementLevel == WIRE_LEVELS[level]


def test_a_disabled_policy_reports_nothing(stub: Any) -> None:
    key = {"role": "roles/viewer"}
    assert [d.policyName for d in analyze(stub, tokens.SERVICE_ACCOUNT_KEY, key)] == ["iam-no-service-account-keys"]
    configure(stub, {"iam-no-service-account-keys": {"enforcementLevel": EnforcementLevel.DISABLED}})
    assert analyze(stub, tokens.SERVICE_ACCOUNT_KEY, key) == []


def test_config_allows_all_ingress(stub: Any) -> None:
    configure(stub, {"cloud-run-ingress-restricted": {"allowAllIngress": True}})
    assert analyze(stub, tokens.RUN_SERVICE, OPEN_SERVICE) == []


def test_config_allows_unbounded_retries(stub: Any) -> None:
    queue = {
        "location": "europe-west1",
        "retryConfig": {"maxAttempts": -1, "maxRetryDuration": "0s"},
        "stackdriverLoggingConfig": {"samplingRatio": 1},
    }
    assert [d.policyName for d in analyze(stub, tokens.QUEUE, queue)] == ["cloud-tasks-queue-bounded-retry"]
    configure(stub, {"cloud-tasks-queue-bounded-retry": {"allowUnboundedRetries": True}})
    assert analyze(stub, tokens.QUEUE, queue) == []


# --- unknowns through the SDK's own deserialization ---------------------------------------------------------


def test_unknown_values_are_neither_violations_nor_skipped_policies(stub: Any) -> None:
    # Everything a preview may not know yet: no violation, and no "can't run policy during preview" note either.
    service = {
        "name": "h",
        "ingress": UNKNOWN_STRING,
        "invokerIamDisabled": UNKNOWN_BOOL,
        "template": {"serviceAccount": UNKNOWN_STRING, "timeout": UNKNOWN_STRING},
    }
    assert analyze(stub, tokens.RUN_SERVICE, service) == []
    member = {"name": UNKNOWN_STRING, "role": "roles/run.invoker", "member": UNKNOWN_STRING}
    assert analyze(stub, tokens.RUN_SERVICE_IAM_MEMBER, member) == []


def test_one_unknown_field_does_not_hide_a_violation_in_another(stub: Any) -> None:
    service = {"ingress": UNKNOWN_STRING, "invokerIamDisabled": True, "template": {"serviceAccount": UNKNOWN_STRING}}
    assert [d.policyName for d in analyze(stub, tokens.RUN_SERVICE, service)] == ["cloud-run-invoker-iam-check"]


# --- the program's stacks through the wire ------------------------------------------------------------------


def analyzer_resource(record: dict[str, Any]) -> Any:
    return proto.AnalyzerResource(
        type=record["type"],
        properties=struct(record["inputs"]),
        urn=record["urn"],
        name=record["name"],
        parent=record.get("parent") or "",
        dependencies=record["dependencies"],
        propertyDependencies={
            key: proto.AnalyzerPropertyDependencies(urns=urns) for key, urns in record["propertyDependencies"].items()
        },
    )


@pytest.mark.parametrize("stack", program_dumps.STACKS)
def test_the_programs_stacks_pass_through_the_real_analyzer(stub: Any, stack: str) -> None:
    records = program_dumps.load(stack)
    for record in records:
        assert analyze(stub, record["type"], record["inputs"], record["name"]) == [], record["name"]
    resources = [analyzer_resource(r) for r in records]
    assert list(stub.AnalyzeStack(proto.AnalyzeStackRequest(resources=resources)).diagnostics) == []
    without_invoker = [r for r in resources if r.type != tokens.RUN_SERVICE_IAM_MEMBER]
    diagnostics = stub.AnalyzeStack(proto.AnalyzeStackRequest(resources=without_invoker)).diagnostics
    assert {d.policyName for d in diagnostics} == {"cloud-tasks-delivery-wiring"}
    assert all(d.enforcementLevel == proto.MANDATORY for d in diagnostics)
