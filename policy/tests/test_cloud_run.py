"""Cloud Run rules: no public access through any IAM kind, the IAM check on, own runtime account, ingress."""

from __future__ import annotations

import json
from typing import Any

import pytest
from policy_args import UNKNOWN_ARRAY, UNKNOWN_BOOL, UNKNOWN_STRING, check

from guardrails import tokens
from guardrails.cloud_run import (
    validate_dedicated_runtime_account,
    validate_invoker_iam_check,
    validate_restricted_ingress,
)
from guardrails.iam import validate_no_public_access

INVOKER = "serviceAccount:invoker@p.iam.gserviceaccount.com"
RUNTIME = "run@p.iam.gserviceaccount.com"


def policy_data(*bindings: tuple[str, list[str]]) -> str:
    return json.dumps({"bindings": [{"role": role, "members": members} for role, members in bindings]})


# --- no public access ---------------------------------------------------------------------------------------

PUBLIC_CASES = [
    # (case id, type, props, expected (role, member) in each violation)
    ("v2 member allUsers", tokens.RUN_SERVICE_IAM_MEMBER, {"role": "roles/run.invoker", "member": "allUsers"},
     [("roles/run.invoker", "allUsers")]),
    ("v2 member allAuthenticatedUsers", tokens.RUN_SERVICE_IAM_MEMBER,
     {"role": "roles/run.invoker", "member": "allAuthenticatedUsers"},
     [("roles/run.invoker", "allAuthenticatedUsers")]),
    ("v2 member, another role", tokens.RUN_SERVICE_IAM_MEMBER, {"role": "roles/run.viewer", "member": "allUsers"},
     [("roles/run.viewer", "allUsers")]),
    ("v2 binding", tokens.RUN_SERVICE_IAM_BINDING,
     {"role": "roles/run.invoker", "members": [INVOKER, "allUsers", "allAuthenticatedUsers"]},
     [("roles/run.invoker", "allUsers"), ("roles/run.invoker", "allAuthenticatedUsers")]),
    ("v2 policy", tokens.RUN_SERVICE_IAM_POLICY,
     {"policyData": policy_data(("roles/run.invoker", [INVOKER]), ("roles/run.invoker", ["allUsers"]))},
     [("roles/run.invoker", "allUsers")]),
    ("v1 member", tokens.RUN_V1_IAM_MEMBER, {"role": "roles/run.invoker", "member": "allUsers"},
     [("roles/run.invoker", "allUsers")]),
    ("v1 binding", tokens.RUN_V1_IAM_BINDING, {"role": "roles/run.invoker", "members": ["allAuthenticatedUsers"]},
     [("roles/run.invoker", "allAuthenticatedUsers")]),
    ("v1 policy", tokens.RUN_V1_IAM_POLICY, {"policyData": policy_data(("roles/run.invoker", ["allUsers"]))},
     [("roles/run.invoker", "allUsers")]),
    ("v2 member, invoker account", tokens.RUN_SERVICE_IAM_MEMBER, {"role": "roles/run.invoker", "member": INVOKER},
     []),
    ("v2 binding, accounts only", tokens.RUN_SERVICE_IAM_BINDING,
     {"role": "roles/run.invoker", "members": [INVOKER, "group:ops@example.com"]}, []),
    ("v2 policy, no public member", tokens.RUN_SERVICE_IAM_POLICY,
     {"policyData": policy_data(("roles/run.invoker", [INVOKER]))}, []),
    ("empty policy", tokens.RUN_SERVICE_IAM_POLICY, {"policyData": "{}"}, []),
    ("unknown member", tokens.RUN_SERVICE_IAM_MEMBER, {"role": "roles/run.invoker", "member": UNKNOWN_STRING}, []),
    ("unknown members list", tokens.RUN_SERVICE_IAM_BINDING, {"role": "roles/run.invoker", "members": UNKNOWN_ARRAY},
     []),
    ("one unknown member of several", tokens.RUN_SERVICE_IAM_BINDING,
     {"role": "roles/run.invoker", "members": [UNKNOWN_STRING, "allUsers"]}, [("roles/run.invoker", "allUsers")]),
    ("unknown policy", tokens.RUN_SERVICE_IAM_POLICY, {"policyData": UNKNOWN_STRING}, []),
    ("not Cloud Run IAM", tokens.QUEUE_IAM_MEMBER, {"role": "roles/cloudtasks.enqueuer", "member": "allUsers"}, []),
]  # fmt: skip


@pytest.mark.parametrize(("resource_type", "props", "expected"), [c[1:] for c in PUBLIC_CASES],
                         ids=[c[0] for c in PUBLIC_CASES])  # fmt: skip
def test_no_public_access_through_any_cloud_run_iam_kind(
    resource_type: str, props: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    messages = check(validate_no_public_access, resource_type, props, name="grant")
    assert len(messages) == len(expected), messages
    for message, (role, member) in zip(messages, expected, strict=True):
        assert f"'grant' grants {role} to {member}: anyone could call the task handler." in message
        assert "Fix: remove the public member, and grant roles/run.invoker to the invoker service account" in message


def test_public_access_message_names_the_resource_and_the_fix() -> None:
    messages = check(validate_no_public_access, tokens.RUN_SERVICE_IAM_MEMBER,
                     {"role": "roles/run.invoker", "member": "allUsers"}, name="tasks-handler-public")  # fmt: skip
    assert messages == [
        "Cloud Run IAM member 'tasks-handler-public' grants roles/run.invoker to allUsers: anyone could call "
        "the task handler. Fix: remove the public member, and grant roles/run.invoker to the invoker service "
        "account only."
    ]


@pytest.mark.parametrize(
    ("policy", "problem"),
    [
        ("not json", "policyData is not JSON (Expecting value)"),
        ('["a list"]', "policyData is not an IAM policy (an object with a bindings list)"),
        ('{"bindings": [{"role": "r", "members": "allUsers"}]}', "policyData has a binding that is not"),
    ],
)
def test_a_policy_the_pack_cannot_read_fails_closed(policy: str, problem: str) -> None:
    messages = check(validate_no_public_access, tokens.RUN_SERVICE_IAM_POLICY, {"policyData": policy}, name="p")
    assert len(messages) == 1
    assert messages[0].startswith(f"Cloud Run IAM policy 'p': {problem}")
    fix = "so the pack cannot check what it grants. Fix: build policyData with gcp.organizations.get_iam_policy"
    assert fix in messages[0]


# --- invoker IAM check --------------------------------------------------------------------------------------

IAM_CHECK_CASES = [
    ("v2 disabled", tokens.RUN_SERVICE, {"invokerIamDisabled": True}, "invokerIamDisabled is True"),
    ("v1 annotation", tokens.RUN_SERVICE_V1,
     {"metadata": {"annotations": {"run.googleapis.com/invoker-iam-disabled": "true"}}},
     'annotation run.googleapis.com/invoker-iam-disabled is "true"'),
    ("v1 annotation, other case", tokens.RUN_SERVICE_V1,
     {"metadata": {"annotations": {"run.googleapis.com/invoker-iam-disabled": "True"}}},
     'annotation run.googleapis.com/invoker-iam-disabled is "True"'),
    ("v2 explicitly enabled", tokens.RUN_SERVICE, {"invokerIamDisabled": False}, None),
    ("v2 unset", tokens.RUN_SERVICE, {}, None),
    ("v2 unknown", tokens.RUN_SERVICE, {"invokerIamDisabled": UNKNOWN_BOOL}, None),
    ("v1 annotation false", tokens.RUN_SERVICE_V1,
     {"metadata": {"annotations": {"run.googleapis.com/invoker-iam-disabled": "false"}}}, None),
    ("v1 unknown annotation", tokens.RUN_SERVICE_V1,
     {"metadata": {"annotations": {"run.googleapis.com/invoker-iam-disabled": UNKNOWN_STRING}}}, None),
    ("another type", tokens.QUEUE, {"invokerIamDisabled": True}, None),
]  # fmt: skip


@pytest.mark.parametrize(("resource_type", "props", "problem"), [c[1:] for c in IAM_CHECK_CASES],
                         ids=[c[0] for c in IAM_CHECK_CASES])  # fmt: skip
def test_the_invoker_iam_check_stays_on(resource_type: str, props: dict[str, Any], problem: str | None) -> None:
    messages = check(validate_invoker_iam_check, resource_type, props, name="svc")
    if problem is None:
        assert messages == []
        return
    assert len(messages) == 1
    assert f"'svc': {problem}, which switches off the roles/run.invoker check" in messages[0]
    assert "and grant roles/run.invoker to the invoker service account." in messages[0]


def test_invoker_iam_check_message_is_exact() -> None:
    assert check(validate_invoker_iam_check, tokens.RUN_SERVICE, {"invokerIamDisabled": True}, name="h") == [
        "Cloud Run service 'h': invokerIamDisabled is True, which switches off the roles/run.invoker check: anyone "
        "who can reach the URL can call the task handler. Fix: set invoker_iam_disabled=False (or leave it unset), "
        "and grant roles/run.invoker to the invoker service account."
    ]


# --- dedicated runtime account ------------------------------------------------------------------------------

ACCOUNT_CASES = [
    ("v2 unset", tokens.RUN_SERVICE, {"template": {"timeout": "600s"}}, "template.serviceAccount is not set"),
    ("v2 no template", tokens.RUN_SERVICE, {}, "template.serviceAccount is not set"),
    ("v2 empty", tokens.RUN_SERVICE, {"template": {"serviceAccount": ""}}, "template.serviceAccount is not set"),
    ("v2 compute default", tokens.RUN_SERVICE,
     {"template": {"serviceAccount": "123456789012-compute@developer.gserviceaccount.com"}},
     "template.serviceAccount is 123456789012-compute@developer.gserviceaccount.com, a default service account"),
    ("v2 App Engine default", tokens.RUN_SERVICE, {"template": {"serviceAccount": "p@appspot.gserviceaccount.com"}},
     "template.serviceAccount is p@appspot.gserviceaccount.com, a default service account"),
    ("v1 unset", tokens.RUN_SERVICE_V1, {"template": {"spec": {}}}, "template.spec.serviceAccountName is not set"),
    ("v1 compute default", tokens.RUN_SERVICE_V1,
     {"template": {"spec": {"serviceAccountName": "1-compute@developer.gserviceaccount.com"}}},
     "template.spec.serviceAccountName is 1-compute@developer.gserviceaccount.com, a default service account"),
    ("v2 dedicated", tokens.RUN_SERVICE, {"template": {"serviceAccount": RUNTIME}}, None),
    ("v1 dedicated", tokens.RUN_SERVICE_V1, {"template": {"spec": {"serviceAccountName": RUNTIME}}}, None),
    ("v2 unknown (a new account's email)", tokens.RUN_SERVICE, {"template": {"serviceAccount": UNKNOWN_STRING}}, None),
]  # fmt: skip


@pytest.mark.parametrize(("resource_type", "props", "problem"), [c[1:] for c in ACCOUNT_CASES],
                         ids=[c[0] for c in ACCOUNT_CASES])  # fmt: skip
def test_services_run_as_a_dedicated_account(resource_type: str, props: dict[str, Any], problem: str | None) -> None:
    messages = check(validate_dedicated_runtime_account, resource_type, props, name="svc")
    if problem is None:
        assert messages == []
        return
    assert len(messages) == 1
    assert f"'svc': {problem}" in messages[0]
    assert "Fix: create a gcp.serviceaccount.Account for this service and set" in messages[0]


def test_runtime_account_message_is_exact() -> None:
    assert check(validate_dedicated_runtime_account, tokens.RUN_SERVICE, {}, name="h") == [
        "Cloud Run service 'h': template.serviceAccount is not set, so the service runs as the default compute "
        "account (Editor on the project in most projects). Fix: create a gcp.serviceaccount.Account for this "
        "service and set template.serviceAccount to its email."
    ]


# --- ingress ------------------------------------------------------------------------------------------------

INGRESS_CASES = [
    ("v2 all", tokens.RUN_SERVICE, {"ingress": "INGRESS_TRAFFIC_ALL"}, {}, 'ingress is "INGRESS_TRAFFIC_ALL"'),
    ("v2 unset", tokens.RUN_SERVICE, {}, {}, 'ingress is unset (so "INGRESS_TRAFFIC_ALL")'),
    ("v1 all", tokens.RUN_SERVICE_V1, {"metadata": {"annotations": {"run.googleapis.com/ingress": "all"}}}, {},
     'annotation run.googleapis.com/ingress is "all"'),
    ("v1 unset", tokens.RUN_SERVICE_V1, {"metadata": {}}, {},
     'annotation run.googleapis.com/ingress is unset (so "all")'),
    ("v2 internal", tokens.RUN_SERVICE, {"ingress": "INGRESS_TRAFFIC_INTERNAL_ONLY"}, {}, None),
    ("v2 internal + LB", tokens.RUN_SERVICE, {"ingress": "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER"}, {}, None),
    ("v1 internal", tokens.RUN_SERVICE_V1, {"metadata": {"annotations": {"run.googleapis.com/ingress": "internal"}}},
     {}, None),
    ("v2 unknown", tokens.RUN_SERVICE, {"ingress": UNKNOWN_STRING}, {}, None),
    ("v2 all, allowed by config", tokens.RUN_SERVICE, {"ingress": "INGRESS_TRAFFIC_ALL"}, {"allowAllIngress": True},
     None),
    ("v2 unset, allowed by config", tokens.RUN_SERVICE, {}, {"allowAllIngress": True}, None),
    ("v2 all, config says no", tokens.RUN_SERVICE, {"ingress": "INGRESS_TRAFFIC_ALL"}, {"allowAllIngress": False},
     'ingress is "INGRESS_TRAFFIC_ALL"'),
]  # fmt: skip


@pytest.mark.parametrize(("resource_type", "props", "config", "problem"), [c[1:] for c in INGRESS_CASES],
                         ids=[c[0] for c in INGRESS_CASES])  # fmt: skip
def test_ingress_is_restricted_unless_the_config_allows_all(
    resource_type: str, props: dict[str, Any], config: dict[str, Any], problem: str | None
) -> None:
    messages = check(validate_restricted_ingress, resource_type, props, name="svc", config=config)
    if problem is None:
        assert messages == []
        return
    assert len(messages) == 1
    assert f"'svc': {problem}: the service accepts requests from anywhere" in messages[0]
    assert "or set allowAllIngress: true in this policy's config." in messages[0]


def test_ingress_message_is_exact() -> None:
    assert check(validate_restricted_ingress, tokens.RUN_SERVICE, {"ingress": "INGRESS_TRAFFIC_ALL"}, name="h") == [
        "Cloud Run service 'h': ingress is \"INGRESS_TRAFFIC_ALL\": the service accepts requests from anywhere, "
        "guarded by IAM alone. Fix: set ingress to INGRESS_TRAFFIC_INTERNAL_ONLY (Cloud Tasks in the same project "
        "still reaches the run.app URL), or set allowAllIngress: true in this policy's config."
    ]
