"""API enablement rule: destroying the stack never switches an API off for the whole project."""

from __future__ import annotations

from pulumi_policy import ReportViolation, ResourceValidationArgs

from guardrails import tokens
from guardrails.properties import MISSING, UNKNOWN, read, show


def validate_api_kept_on_destroy(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """`disableOnDestroy` is explicitly false on every `gcp:projects/service:Service`.

    Why: an API is shared by every workload in the project, so disabling it on destroy is a project-wide
    outage (pitfalls E1). Unset counts as a violation: the provider's default has flipped before
    (hashicorp/terraform-provider-google#18058), and a default is not a decision.
    """
    if not tokens.is_one_of(args.resource_type, tokens.PROJECT_APIS):
        return
    value = read(args.props, "disableOnDestroy")
    if value is False or value is UNKNOWN:
        return
    api = read(args.props, "service")
    shown = "unset" if value is MISSING else show(value)
    report_violation(
        f"{tokens.describe(args.resource_type, args.name)}"
        f"{f' ({api})' if isinstance(api, str) else ''}: disableOnDestroy is {shown}: destroying this stack "
        "could switch the API off for every workload in the project. Fix: set disable_on_destroy=False "
        "explicitly.",
        None,
    )
