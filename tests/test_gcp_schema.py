"""Tests for gcp_schema: engine-style (camelCase) input dicts checked against pulumi-gcp Args classes."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pulumi.output import Unknown
from pulumi.runtime import rpc

from gcp_schema import schema_problems

QUEUE = "gcp:cloudtasks/queue:Queue"
RUN_SERVICE = "gcp:cloudrunv2/service:Service"

VALID_QUEUE: dict[str, Any] = {
    "location": "europe-west1",
    "rateLimits": {"maxDispatchesPerSecond": 5.5, "maxConcurrentDispatches": 10},
    "retryConfig": {
        "maxAttempts": 5,
        "minBackoff": "1s",
        "maxBackoff": "60s",
        "maxDoublings": 4,
        "maxRetryDuration": "3600s",
    },
    "stackdriverLoggingConfig": {"samplingRatio": 0.5},
    "httpTarget": {
        "uriOverride": {
            "scheme": "HTTPS",
            "host": "worker.example.com",
            "port": "443",  # a string in this provider
            "pathOverride": {"path": "/tasks"},
            "uriOverrideEnforceMode": "ALWAYS",
        },
        "httpMethod": "POST",
        "oidcToken": {"serviceAccountEmail": "sa@p.iam.gserviceaccount.com", "audience": "https://worker"},
    },
}

VALID_RUN_SERVICE: dict[str, Any] = {
    "location": "europe-west1",
    "template": {
        "serviceAccount": "sa@p.iam.gserviceaccount.com",
        "timeout": "900s",
        "containers": [
            {
                "image": "europe-docker.pkg.dev/p/r/worker:1",
                "ports": {"containerPort": 8080},
                "envs": [{"name": "MODE", "value": "worker"}],
                "resources": {"limits": {"cpu": "1", "memory": "512Mi"}},
            }
        ],
        "scaling": {"minInstanceCount": 0, "maxInstanceCount": 3},
        "maxInstanceRequestConcurrency": 1,
    },
    "ingress": "INGRESS_TRAFFIC_INTERNAL_ONLY",
    "deletionProtection": False,
}


DELETE = object()


def variant(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of `base` with the dotted `path` set to `value` (or removed when value is DELETE)."""
    result = copy.deepcopy(base)
    *parents, leaf = path.split(".")
    node: Any = result
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return result


VALID_CASES = [
    pytest.param(QUEUE, VALID_QUEUE, id="queue-valid"),
    pytest.param(QUEUE, variant(VALID_QUEUE, "rateLimits.maxDispatchesPerSecond", 5), id="queue-int-where-float"),
    pytest.param(QUEUE, variant(VALID_QUEUE, "retryConfig.maxAttempts", 5.0), id="queue-wire-int-as-float"),
    pytest.param(QUEUE, variant(VALID_QUEUE, "httpTarget.oidcToken.audience", Unknown()), id="queue-unknown-output"),
    pytest.param(QUEUE, variant(VALID_QUEUE, "location", rpc.UNKNOWN), id="queue-unknown-sentinel"),
    pytest.param(
        QUEUE,
        variant(VALID_QUEUE, "retryConfig", rpc.wrap_rpc_secret(VALID_QUEUE["retryConfig"])),
        id="queue-secret-wrapped",
    ),
    pytest.param(RUN_SERVICE, VALID_RUN_SERVICE, id="run-service-valid"),
    pytest.param(
        "gcp:projects/service:Service",
        {"service": "run.googleapis.com", "disableOnDestroy": False},
        id="project-service",
    ),
    pytest.param(
        "gcp:projects/serviceIdentity:ServiceIdentity",
        {"service": "cloudtasks.googleapis.com", "project": "p"},
        id="service-identity",
    ),
    pytest.param(
        "gcp:serviceaccount/account:Account", {"accountId": "worker", "displayName": "Worker"}, id="sa-account"
    ),
    pytest.param(
        "gcp:serviceaccount/iAMMember:IAMMember",
        {
            "serviceAccountId": "projects/p/serviceAccounts/sa@p.iam.gserviceaccount.com",
            "role": "roles/iam.serviceAccountUser",
            "member": "serviceAccount:x@p.iam.gserviceaccount.com",
        },
        id="sa-iam-member",
    ),
    pytest.param(
        "gcp:cloudrunv2/serviceIamMember:ServiceIamMember",
        {
            "name": "worker",
            "location": "europe-west1",
            "role": "roles/run.invoker",
            "member": "serviceAccount:x@p.iam.gserviceaccount.com",
        },
        id="run-service-iam-member",
    ),
    pytest.param(
        "gcp:cloudtasks/queueIamMember:QueueIamMember",
        {
            "name": "q",
            "location": "europe-west1",
            "role": "roles/cloudtasks.enqueuer",
            "member": "serviceAccount:x@p.iam.gserviceaccount.com",
        },
        id="queue-iam-member",
    ),
    pytest.param("random:index/randomId:RandomId", {"byteLength": 4, "anything": object()}, id="non-gcp-resource"),
    pytest.param("cloudrun-tasks:index:Foo", {"whatever": [1, 2]}, id="component"),
]


@pytest.mark.parametrize(("type_token", "inputs"), VALID_CASES)
def test_valid_inputs_have_no_problems(type_token: str, inputs: dict[str, Any]) -> None:
    assert schema_problems(type_token, inputs) == []


INVALID_CASES = [
    pytest.param(
        QUEUE,
        variant(VALID_QUEUE, "rateLimits.maxBurstSize", 100),
        "rateLimits.maxBurstSize: output-only property must not be set",
        id="queue-output-only-nested",
    ),
    pytest.param(
        QUEUE,
        {**VALID_QUEUE, "appEngineRoutingOverride": {"host": "h", "service": "s"}},
        "appEngineRoutingOverride.host: output-only property must not be set",
        id="queue-output-only-host",
    ),
    pytest.param(QUEUE, {**VALID_QUEUE, "foo": 1}, f"foo: unknown property for {QUEUE}", id="queue-unknown-top-level"),
    pytest.param(
        QUEUE,
        variant(VALID_QUEUE, "httpTarget.uriOverride.pathOverride.pathh", "/x"),
        "httpTarget.uriOverride.pathOverride.pathh: unknown property",
        id="queue-unknown-nested",
    ),
    pytest.param(
        QUEUE,
        variant(VALID_QUEUE, "rateLimits.max_dispatches_per_second", 1.0),
        "rateLimits.max_dispatches_per_second: unknown property",
        id="queue-python-name-is-not-engine-name",
    ),
    pytest.param(
        QUEUE,
        variant(VALID_QUEUE, "location", DELETE),
        "location: required property missing",
        id="queue-missing-location",
    ),
    pytest.param(
        QUEUE,
        variant(VALID_QUEUE, "retryConfig.maxAttempts", "5"),
        "retryConfig.maxAttempts: expected int, got str '5'",
        id="queue-str-where-int",
    ),
    pytest.param(
        QUEUE,
        variant(VALID_QUEUE, "retryConfig.maxAttempts", True),
        "retryConfig.maxAttempts: expected int, got bool True",
        id="queue-bool-where-int",
    ),
    pytest.param(
        QUEUE,
        variant(VALID_QUEUE, "retryConfig.maxAttempts", 2.5),
        "retryConfig.maxAttempts: expected int, got float 2.5",
        id="queue-fraction-where-int",
    ),
    pytest.param(
        QUEUE,
        variant(VALID_QUEUE, "httpTarget.uriOverride.port", 443),
        "httpTarget.uriOverride.port: expected str, got int 443",
        id="queue-int-where-str",
    ),
    pytest.param(
        QUEUE,
        variant(VALID_QUEUE, "rateLimits", "fast"),
        "rateLimits: expected an object, got str 'fast'",
        id="queue-scalar-where-object",
    ),
    pytest.param(
        QUEUE,
        variant(VALID_QUEUE, "httpTarget.headerOverrides", {"header": {"key": "k", "value": "v"}}),
        "httpTarget.headerOverrides: expected a list, got dict",
        id="queue-dict-where-list",
    ),
    pytest.param(
        QUEUE,
        variant(VALID_QUEUE, "httpTarget.headerOverrides", [{"header": {"key": "k"}}]),
        "httpTarget.headerOverrides[0].header.value: required property missing",
        id="queue-nested-required-in-list",
    ),
    pytest.param(
        QUEUE,
        variant(VALID_QUEUE, "retryConfig", rpc.wrap_rpc_secret({"maxAttempts": "5"})),
        "retryConfig.maxAttempts: expected int, got str '5'",
        id="queue-secret-still-checked",
    ),
    pytest.param(
        RUN_SERVICE,
        variant(VALID_RUN_SERVICE, "template.containers.0.ports", [{"containerPort": 8080}]),
        "template.containers[0].ports: expected an object, got list",
        id="run-ports-as-list",
    ),
    pytest.param(
        RUN_SERVICE,
        variant(VALID_RUN_SERVICE, "template.containers.0.envs.0.valeu", "x"),
        "template.containers[0].envs[0].valeu: unknown property",
        id="run-unknown-key-in-list-of-objects",
    ),
    pytest.param(
        RUN_SERVICE,
        variant(VALID_RUN_SERVICE, "template.containers.0.image", DELETE),
        "template.containers[0].image: required property missing",
        id="run-missing-nested-required",
    ),
    pytest.param(
        RUN_SERVICE,
        variant(VALID_RUN_SERVICE, "template.containers.0.resources.limits.cpu", 1),
        "template.containers[0].resources.limits.cpu: expected str, got int 1",
        id="run-map-value-type",
    ),
    pytest.param(
        RUN_SERVICE,
        variant(VALID_RUN_SERVICE, "template.containers", {"image": "x"}),
        "template.containers: expected a list, got dict",
        id="run-object-where-list",
    ),
    pytest.param(
        RUN_SERVICE,
        variant(VALID_RUN_SERVICE, "deletionProtection", "false"),
        "deletionProtection: expected bool, got str 'false'",
        id="run-str-where-bool",
    ),
    pytest.param(
        "gcp:projects/service:Service",
        {"service": "run.googleapis.com", "disableOnDestroy": 0},
        "disableOnDestroy: expected bool, got int 0",
        id="project-service-int-where-bool",
    ),
    pytest.param(
        "gcp:serviceaccount/iAMMember:IAMMember",
        {"serviceAccountId": "projects/p/serviceAccounts/x", "role": "roles/iam.serviceAccountUser"},
        "member: required property missing",
        id="sa-iam-member-missing-member",
    ),
]


@pytest.mark.parametrize(("type_token", "inputs", "expected"), INVALID_CASES)
def test_invalid_inputs_report_the_problem(type_token: str, inputs: dict[str, Any], expected: str) -> None:
    problems = schema_problems(type_token, inputs)
    assert len(problems) == 1, problems
    assert expected in problems[0]


def test_unknown_property_names_the_nested_args_class() -> None:
    problems = schema_problems(QUEUE, variant(VALID_QUEUE, "rateLimits.bogus", 1))
    assert problems == ["rateLimits.bogus: unknown property for QueueRateLimitsArgs"]


def test_several_problems_are_all_reported() -> None:
    inputs = {**variant(VALID_QUEUE, "location", DELETE), "foo": 1}
    inputs = variant(inputs, "rateLimits.maxBurstSize", 1)
    assert sorted(schema_problems(QUEUE, inputs)) == [
        f"foo: unknown property for {QUEUE}",
        "location: required property missing",
        "rateLimits.maxBurstSize: output-only property must not be set",
    ]


@pytest.mark.parametrize(
    "type_token",
    ["gcp:cloudtasks/queue:Quuee", "gcp:nosuchmodule/thing:Thing", "gcp:cloudtasks:Queue"],
)
def test_unresolvable_gcp_token_raises(type_token: str) -> None:
    with pytest.raises(ValueError, match="gcp"):
        schema_problems(type_token, {"location": "x"})
