"""IAM rules: nothing project-wide that reaches the service or its tokens, no admin for apps, no keys."""

from __future__ import annotations

import json
from typing import Any

import pytest
from policy_args import UNKNOWN_STRING, check

from guardrails import tokens
from guardrails.iam import (
    validate_no_hierarchy_invoker_or_act_as,
    validate_no_service_account_keys,
    validate_no_tasks_admin_for_service_accounts,
)

APP = "serviceAccount:api@p.iam.gserviceaccount.com"
DEPLOYER = "serviceAccount:deployer@p.iam.gserviceaccount.com"


def policy_data(role: str, *members: str) -> str:
    return json.dumps({"bindings": [{"role": role, "members": list(members)}]})


# --- run.invoker and serviceAccountUser above the resource --------------------------------------------------

HIERARCHY_CASES = [
    ("project member invoker", tokens.PROJECT_IAM_MEMBER, {"role": "roles/run.invoker", "member": APP},
     [("roles/run.invoker", APP, "grant it on the Cloud Run service (gcp.cloudrunv2.ServiceIamMember)")]),
    ("project member actAs", tokens.PROJECT_IAM_MEMBER, {"role": "roles/iam.serviceAccountUser", "member": APP},
     [("roles/iam.serviceAccountUser", APP,
       "grant it on the one service account (gcp.serviceaccount.IAMMember)")]),
    ("project binding", tokens.PROJECT_IAM_BINDING,
     {"role": "roles/iam.serviceAccountUser", "members": [APP, "group:devs@example.com"]},
     [("roles/iam.serviceAccountUser", APP, "gcp.serviceaccount.IAMMember"),
      ("roles/iam.serviceAccountUser", "group:devs@example.com", "gcp.serviceaccount.IAMMember")]),
    ("project policy", tokens.PROJECT_IAM_POLICY, {"policyData": policy_data("roles/run.invoker", "allUsers")},
     [("roles/run.invoker", "allUsers", "gcp.cloudrunv2.ServiceIamMember")]),
    ("folder member", tokens.FOLDER_IAM_MEMBER, {"role": "roles/run.invoker", "member": APP},
     [("roles/run.invoker", APP, "gcp.cloudrunv2.ServiceIamMember")]),
    ("organization binding", tokens.ORGANIZATION_IAM_BINDING,
     {"role": "roles/iam.serviceAccountUser", "members": [APP]},
     [("roles/iam.serviceAccountUser", APP, "gcp.serviceaccount.IAMMember")]),
    ("organization policy", tokens.ORGANIZATION_IAM_POLICY,
     {"policyData": policy_data("roles/iam.serviceAccountUser", APP)},
     [("roles/iam.serviceAccountUser", APP, "gcp.serviceaccount.IAMMember")]),
    ("unknown member", tokens.PROJECT_IAM_MEMBER, {"role": "roles/run.invoker", "member": UNKNOWN_STRING},
     [("roles/run.invoker", "an unknown member", "gcp.cloudrunv2.ServiceIamMember")]),
    ("project member, other role", tokens.PROJECT_IAM_MEMBER, {"role": "roles/logging.logWriter", "member": APP}, []),
    ("unknown role", tokens.PROJECT_IAM_MEMBER, {"role": UNKNOWN_STRING, "member": APP}, []),
    ("on the one account (the program's way)", "gcp:serviceaccount/iAMMember:IAMMember",
     {"role": "roles/iam.serviceAccountUser", "member": APP}, []),
    ("on the one service", tokens.RUN_SERVICE_IAM_MEMBER, {"role": "roles/run.invoker", "member": APP}, []),
]  # fmt: skip


@pytest.mark.parametrize(("resource_type", "props", "expected"), [c[1:] for c in HIERARCHY_CASES],
                         ids=[c[0] for c in HIERARCHY_CASES])  # fmt: skip
def test_invoker_and_act_as_are_never_granted_above_the_resource(
    resource_type: str, props: dict[str, Any], expected: list[tuple[str, str, str]]
) -> None:
    messages = check(validate_no_hierarchy_invoker_or_act_as, resource_type, props, name="grant")
    assert len(messages) == len(expected), messages
    for message, (role, member, fix) in zip(messages, expected, strict=True):
        assert f"'grant' grants {role} to {member} on every resource below it. Fix: " in message
        assert fix in message


def test_hierarchy_message_is_exact() -> None:
    messages = check(validate_no_hierarchy_invoker_or_act_as, tokens.PROJECT_IAM_MEMBER,
                     {"role": "roles/iam.serviceAccountUser", "member": APP}, name="api-act-as")  # fmt: skip
    assert messages == [
        f"project IAM member 'api-act-as' grants roles/iam.serviceAccountUser to {APP} on every resource below "
        "it. Fix: grant it on the one service account (gcp.serviceaccount.IAMMember)."
    ]


# --- cloudtasks.admin for application identities ------------------------------------------------------------

ADMIN_CASES = [
    ("project member", tokens.PROJECT_IAM_MEMBER, {"role": "roles/cloudtasks.admin", "member": APP}, {}, [APP]),
    ("queue member", tokens.QUEUE_IAM_MEMBER, {"role": "roles/cloudtasks.admin", "member": APP}, {}, [APP]),
    ("queue binding, mixed members", tokens.QUEUE_IAM_BINDING,
     {"role": "roles/cloudtasks.admin", "members": ["user:ops@example.com", APP]}, {}, [APP]),
    ("queue policy", tokens.QUEUE_IAM_POLICY, {"policyData": policy_data("roles/cloudtasks.admin", APP)}, {}, [APP]),
    ("folder binding", tokens.FOLDER_IAM_BINDING, {"role": "roles/cloudtasks.admin", "members": [APP]}, {}, [APP]),
    ("organization member", tokens.ORGANIZATION_IAM_MEMBER, {"role": "roles/cloudtasks.admin", "member": APP}, {},
     [APP]),
    ("a person", tokens.PROJECT_IAM_MEMBER, {"role": "roles/cloudtasks.admin", "member": "user:ops@example.com"}, {},
     []),
    ("enqueuer on the queue (the program's way)", tokens.QUEUE_IAM_MEMBER,
     {"role": "roles/cloudtasks.enqueuer", "member": APP}, {}, []),
    ("unknown member", tokens.QUEUE_IAM_MEMBER, {"role": "roles/cloudtasks.admin", "member": UNKNOWN_STRING}, {}, []),
    ("exempt deployer", tokens.PROJECT_IAM_MEMBER, {"role": "roles/cloudtasks.admin", "member": DEPLOYER},
     {"exemptMembers": [DEPLOYER]}, []),
    ("exemption is per member", tokens.PROJECT_IAM_BINDING,
     {"role": "roles/cloudtasks.admin", "members": [DEPLOYER, APP]}, {"exemptMembers": [DEPLOYER]}, [APP]),
]  # fmt: skip


@pytest.mark.parametrize(("resource_type", "props", "config", "members"), [c[1:] for c in ADMIN_CASES],
                         ids=[c[0] for c in ADMIN_CASES])  # fmt: skip
def test_cloudtasks_admin_is_never_granted_to_a_service_account(
    resource_type: str, props: dict[str, Any], config: dict[str, Any], members: list[str]
) -> None:
    messages = check(validate_no_tasks_admin_for_service_accounts, resource_type, props, name="g", config=config)
    assert len(messages) == len(members), messages
    for message, member in zip(messages, members, strict=True):
        assert f"'g' grants roles/cloudtasks.admin to {member}. Fix: grant roles/cloudtasks.enqueuer" in message


def test_cloudtasks_admin_message_is_exact() -> None:
    messages = check(validate_no_tasks_admin_for_service_accounts, tokens.QUEUE_IAM_MEMBER,
                     {"role": "roles/cloudtasks.admin", "member": APP}, name="q-admin")  # fmt: skip
    assert messages == [
        f"queue IAM member 'q-admin' grants roles/cloudtasks.admin to {APP}. Fix: grant roles/cloudtasks.enqueuer "
        "on the queues it uses (gcp.cloudtasks.QueueIamMember); if this is the deployer, list it in this policy's "
        "exemptMembers."
    ]


# --- service account keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource_type", "violates"),
    [
        (tokens.SERVICE_ACCOUNT_KEY, True),
        ("gcp:serviceAccount/key:Key", True),  # the alias older pulumi-gcp registers
        ("gcp:serviceaccount/account:Account", False),
    ],
)
def test_no_service_account_keys(resource_type: str, violates: bool) -> None:
    messages = check(validate_no_service_account_keys, resource_type, {"serviceAccountId": UNKNOWN_STRING}, "k")
    expected = (
        "service account key 'k' creates a long-lived key file. Fix: remove it; run workloads as their service "
        "account and deploy with Workload Identity Federation."
    )
    assert messages == ([expected] if violates else [])
