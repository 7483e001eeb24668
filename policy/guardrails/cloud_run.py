"""Cloud Run service rules: the IAM check stays on, a dedicated runtime identity, restricted ingress.

Both pulumi-gcp Cloud Run APIs are covered, so switching to the v1 resource does not bypass a rule: v2
(`gcp:cloudrunv2/service:Service`) has fields, v1 (`gcp:cloudrun/service:Service`) has annotations.
"""

from __future__ import annotations

from pulumi_policy import ReportViolation, ResourceValidationArgs

from guardrails import tokens
from guardrails.iam import RUN_INVOKER
from guardrails.properties import MISSING, UNKNOWN, read, show

INGRESS_ALL = "INGRESS_TRAFFIC_ALL"
INGRESS_INTERNAL_ONLY = "INGRESS_TRAFFIC_INTERNAL_ONLY"
V1_INGRESS = "run.googleapis.com/ingress"
V1_INVOKER_IAM_DISABLED = "run.googleapis.com/invoker-iam-disabled"
V1_INGRESS_ALL = "all"
# Default accounts that hold Editor on the project in most projects (Compute Engine's, App Engine's).
DEFAULT_ACCOUNT_SUFFIXES = ("-compute@developer.gserviceaccount.com", "@appspot.gserviceaccount.com")


def _is_v1(args: ResourceValidationArgs) -> bool:
    return args.resource_type.lower() == tokens.RUN_SERVICE_V1.lower()


def validate_invoker_iam_check(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """`invokerIamDisabled` (v1: the invoker-iam-disabled annotation) is never true.

    Why: it switches Cloud Run's run.invoker check off, making the service public whatever its IAM says
    (pitfalls A4; GoogleCloudPlatform/magic-modules#13402).
    """
    if not tokens.is_one_of(args.resource_type, tokens.RUN_SERVICES):
        return
    if _is_v1(args):
        field, value = (
            f"annotation {V1_INVOKER_IAM_DISABLED}",
            read(args.props, "metadata.annotations", V1_INVOKER_IAM_DISABLED),
        )
        disabled = isinstance(value, str) and value.strip().lower() == "true"
        fix = f"remove the {V1_INVOKER_IAM_DISABLED} annotation"
    else:
        field, value = "invokerIamDisabled", read(args.props, "invokerIamDisabled")
        disabled = value is True
        fix = "set invoker_iam_disabled=False (or leave it unset)"
    if disabled:
        report_violation(
            f"{tokens.describe(args.resource_type, args.name)}: {field} is {show(value)}, which switches off the "
            f"{RUN_INVOKER} check: anyone who can reach the URL can call the task handler. Fix: {fix}, and grant "
            f"{RUN_INVOKER} to the invoker service account.",
            None,
        )


def validate_dedicated_runtime_account(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """The service runs as a service account of its own, never a default one.

    Why: unset means the default compute account, which holds Editor on the project in most projects, so
    any flaw in the handler would reach the whole project (STYLE: fabric's least-privilege runtime account).
    """
    if not tokens.is_one_of(args.resource_type, tokens.RUN_SERVICES):
        return
    field = "template.spec.serviceAccountName" if _is_v1(args) else "template.serviceAccount"
    account = read(args.props, field)
    what = tokens.describe(args.resource_type, args.name)
    fix = f"create a gcp.serviceaccount.Account for this service and set {field} to its email"
    if account is MISSING or account == "":
        report_violation(
            f"{what}: {field} is not set, so the service runs as the default compute account "
            f"(Editor on the project in most projects). Fix: {fix}.",
            None,
        )
    elif isinstance(account, str) and account.endswith(DEFAULT_ACCOUNT_SUFFIXES):
        report_violation(
            f"{what}: {field} is {account}, a default service account (Editor on the project in most "
            f"projects). Fix: {fix}.",
            None,
        )


def validate_restricted_ingress(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """Ingress is not "all traffic" unless the policy's config says `allowAllIngress: true` (advisory).

    Why: the handler is only called by Cloud Tasks, which counts as internal traffic when it is in the same
    project and calls the run.app URL (cloud-tasks.md 4): internal-only ingress adds a network layer to IAM.
    Unset counts as all traffic, the API's default.
    """
    if not tokens.is_one_of(args.resource_type, tokens.RUN_SERVICES) or args.get_config().get("allowAllIngress"):
        return
    if _is_v1(args):
        field, value = f"annotation {V1_INGRESS}", read(args.props, "metadata.annotations", V1_INGRESS)
        all_traffic, fix = V1_INGRESS_ALL, f'set the {V1_INGRESS} annotation to "internal"'
    else:
        field, value = "ingress", read(args.props, "ingress")
        all_traffic, fix = INGRESS_ALL, f"set ingress to {INGRESS_INTERNAL_ONLY}"
    if value is UNKNOWN or (value is not MISSING and value != all_traffic):
        return
    shown = f"unset (so {show(all_traffic)})" if value is MISSING else show(value)
    report_violation(
        f"{tokens.describe(args.resource_type, args.name)}: {field} is {shown}: the service accepts requests "
        f"from anywhere, guarded by IAM alone. Fix: {fix} (Cloud Tasks in the same project still reaches the "
        "run.app URL), or set allowAllIngress: true in this policy's config.",
        None,
    )
