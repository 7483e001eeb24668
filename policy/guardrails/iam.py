"""IAM rules: who may call the service, mint its tokens, administer the queues; no key files.

Each pulumi-gcp IAM resource comes in three kinds, and a rule must see through all of them, or it is bypassed
by switching kind: `*IamMember` (`role`, `member`), `*IamBinding` (`role`, `members`), `*IamPolicy`
(`policyData`, a JSON IAM policy with `bindings: [{role, members}]`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pulumi_policy import ReportViolation, ResourceValidationArgs

from guardrails import tokens
from guardrails.properties import MISSING, UNKNOWN, elements, read, show

RUN_INVOKER = "roles/run.invoker"
SERVICE_ACCOUNT_USER = "roles/iam.serviceAccountUser"
CLOUD_TASKS_ADMIN = "roles/cloudtasks.admin"
PUBLIC_MEMBERS = frozenset({"allusers", "allauthenticatedusers"})
SERVICE_ACCOUNT_PREFIX = "serviceAccount:"


@dataclass(frozen=True)
class Grant:
    """One role for one member; either may be UNKNOWN during preview."""

    role: Any
    member: Any


class PolicyDataError(ValueError):
    """`policyData` that is not a JSON IAM policy: the pack cannot tell what it grants."""


def grants(props: Mapping[str, Any]) -> list[Grant]:
    """Every (role, member) an IAM member, binding or policy resource grants. Raises PolicyDataError."""
    policy_data = read(props, "policyData")
    if policy_data is UNKNOWN:
        return []
    if policy_data is not MISSING:
        return _policy_grants(policy_data)
    role = read(props, "role")
    members = read(props, "members")
    if members is UNKNOWN:
        return [Grant(role, UNKNOWN)]
    if members is not MISSING:
        return [Grant(role, member) for member in elements(members)]
    return [Grant(role, read(props, "member"))]


def _policy_grants(policy_data: Any) -> list[Grant]:
    try:
        policy = json.loads(policy_data) if isinstance(policy_data, str) else None
    except json.JSONDecodeError as error:
        raise PolicyDataError(f"policyData is not JSON ({error.msg})") from None
    if not isinstance(policy, dict) or not isinstance(policy.get("bindings", []), list):
        raise PolicyDataError("policyData is not an IAM policy (an object with a bindings list)")
    found: list[Grant] = []
    for binding in policy.get("bindings", []):
        if not isinstance(binding, dict) or not isinstance(binding.get("members", []), list):
            raise PolicyDataError("policyData has a binding that is not {role, members: [...]}")
        found += [Grant(binding.get("role"), member) for member in binding.get("members", [])]
    return found


def named(value: Any, what: str) -> str:
    """A role or member as a message names it: as it is, or "an unknown member" during preview."""
    if value is UNKNOWN:
        return f"an unknown {what}"
    return value if isinstance(value, str) else show(value)


def is_public(member: Any) -> bool:
    return isinstance(member, str) and member.lower() in PUBLIC_MEMBERS


def is_service_account(member: Any) -> bool:
    return isinstance(member, str) and member.startswith(SERVICE_ACCOUNT_PREFIX)


def _grants_or_report(args: ResourceValidationArgs, report_violation: ReportViolation) -> list[Grant]:
    """The resource's grants; a `policyData` the pack cannot read is itself a violation (it fails closed)."""
    try:
        return grants(args.props)
    except PolicyDataError as error:
        report_violation(
            f"{tokens.describe(args.resource_type, args.name)}: {error}, so the pack cannot check what it grants. "
            "Fix: build policyData with gcp.organizations.get_iam_policy(bindings=[...]).",
            None,
        )
        return []


def validate_no_public_access(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """No Cloud Run IAM (v2 or v1, member, binding or policy) may name allUsers or allAuthenticatedUsers.

    Why: the handler is private by design; only the invoker account's OIDC tokens may reach it (pitfalls A4).
    Any role is refused, not only run.invoker, since a public member on the service has no legitimate use here.
    """
    if not tokens.is_one_of(args.resource_type, tokens.RUN_IAM):
        return
    for grant in _grants_or_report(args, report_violation):
        if is_public(grant.member):
            what, role = tokens.describe(args.resource_type, args.name), named(grant.role, "role")
            report_violation(
                f"{what} grants {role} to {grant.member}: anyone could call the task handler. Fix: remove the "
                f"public member, and grant {RUN_INVOKER} to the invoker service account only.",
                None,
            )


def validate_no_hierarchy_invoker_or_act_as(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """roles/run.invoker and roles/iam.serviceAccountUser never at project, folder or organization level.

    Why: project-wide Service Account User lets the holder mint tokens as any account in the project,
    including the default compute account (pitfalls A2); project-wide run.invoker opens every service.
    Grant both on the one resource instead: the invoker account, the task handler service.
    """
    if not tokens.is_one_of(args.resource_type, tokens.HIERARCHY_IAM):
        return
    fixes = {
        RUN_INVOKER: "grant it on the Cloud Run service (gcp.cloudrunv2.ServiceIamMember)",
        SERVICE_ACCOUNT_USER: "grant it on the one service account (gcp.serviceaccount.IAMMember)",
    }
    for grant in _grants_or_report(args, report_violation):
        if grant.role in fixes:
            what, member = tokens.describe(args.resource_type, args.name), named(grant.member, "member")
            report_violation(
                f"{what} grants {grant.role} to {member} on every resource below it. Fix: {fixes[grant.role]}.",
                None,
            )


def validate_no_tasks_admin_for_service_accounts(
    args: ResourceValidationArgs, report_violation: ReportViolation
) -> None:
    """roles/cloudtasks.admin never to a service account (an application identity), at any level.

    Why: an application needs only roles/cloudtasks.enqueuer on its queues (cloud-tasks.md 3.2); admin lets a
    compromised workload purge, pause or delete queues and rewrite their IAM. A deployer account that needs it
    can be listed in the policy's `exemptMembers` config.
    """
    if not tokens.is_one_of(args.resource_type, tokens.HIERARCHY_IAM | tokens.QUEUE_IAM):
        return
    exempt = set(args.get_config().get("exemptMembers", []))
    for grant in _grants_or_report(args, report_violation):
        if grant.role == CLOUD_TASKS_ADMIN and is_service_account(grant.member) and grant.member not in exempt:
            report_violation(
                f"{tokens.describe(args.resource_type, args.name)} grants {CLOUD_TASKS_ADMIN} to {grant.member}. "
                "Fix: grant roles/cloudtasks.enqueuer on the queues it uses (gcp.cloudtasks.QueueIamMember); "
                "if this is the deployer, list it in this policy's exemptMembers.",
                None,
            )


def validate_no_service_account_keys(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """No service account keys.

    Why: a key file is a long-lived credential that leaks and never expires by default; deployers use ADC or
    Workload Identity Federation, and workloads their attached service account.
    """
    if tokens.is_one_of(args.resource_type, tokens.SERVICE_ACCOUNT_KEYS):
        report_violation(
            f"{tokens.describe(args.resource_type, args.name)} creates a long-lived key file. Fix: remove it; "
            "run workloads as their service account and deploy with Workload Identity Federation.",
            None,
        )
