"""The policies of the pack: name, default enforcement level, config schema, and the validator each runs.

Every policy is mandatory by default except ingress (advisory: IAM already keeps the service private). Any
level can be changed per stack with the CLI's policy config, e.g. `--policy-pack-config policy-config.json`:
    {"cloud-run-ingress-restricted": {"enforcementLevel": "mandatory"},
     "cloud-tasks-queue-bounded-retry": {"allowUnboundedRetries": true}}
"""

from __future__ import annotations

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    PolicyConfigSchema,
    ResourceValidationPolicy,
    StackValidationPolicy,
)

from guardrails import apis, cloud_run, dead_letters, delivery, iam, queues

PACK_NAME = "cloudrun-tasks-guardrails"

POLICIES: list[Policy] = [
    ResourceValidationPolicy(
        name="cloud-run-no-public-access",
        description="No Cloud Run IAM member, binding or policy grants to allUsers or allAuthenticatedUsers.",
        validate=iam.validate_no_public_access,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
    ResourceValidationPolicy(
        name="cloud-run-invoker-iam-check",
        description="Cloud Run services keep the run.invoker IAM check (invokerIamDisabled is never true).",
        validate=cloud_run.validate_invoker_iam_check,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
    ResourceValidationPolicy(
        name="cloud-run-dedicated-runtime-account",
        description="Cloud Run services run as a dedicated service account, never a default one.",
        validate=cloud_run.validate_dedicated_runtime_account,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
    ResourceValidationPolicy(
        name="cloud-run-ingress-restricted",
        description="Cloud Run services do not accept all traffic (ingress INGRESS_TRAFFIC_ALL) unless allowed.",
        validate=cloud_run.validate_restricted_ingress,
        enforcement_level=EnforcementLevel.ADVISORY,
        config_schema=PolicyConfigSchema(
            properties={
                "allowAllIngress": {
                    "type": "boolean",
                    "default": False,
                    "description": "Allow INGRESS_TRAFFIC_ALL (e.g. a service also called from outside Google).",
                }
            }
        ),
    ),
    ResourceValidationPolicy(
        name="iam-no-project-wide-invoker-or-act-as",
        description="roles/run.invoker and roles/iam.serviceAccountUser are never granted on a project, folder "
        "or organization.",
        validate=iam.validate_no_hierarchy_invoker_or_act_as,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
    ResourceValidationPolicy(
        name="iam-no-cloudtasks-admin-for-service-accounts",
        description="roles/cloudtasks.admin is never granted to a service account (project, folder, organization "
        "or queue IAM).",
        validate=iam.validate_no_tasks_admin_for_service_accounts,
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=PolicyConfigSchema(
            properties={
                "exemptMembers": {
                    "type": "array",
                    "items": {"type": "string"},
                    "default": [],
                    "description": "Members allowed the role anyway (a deployer): serviceAccount:EMAIL.",
                }
            }
        ),
    ),
    ResourceValidationPolicy(
        name="iam-no-service-account-keys",
        description="No service account keys (gcp.serviceaccount.Key).",
        validate=iam.validate_no_service_account_keys,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
    ResourceValidationPolicy(
        name="cloud-tasks-queue-within-limits",
        description="Queue rate limits and retry settings are within Cloud Tasks' bounds; maxBurstSize is not set.",
        validate=queues.validate_queue_limits,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
    ResourceValidationPolicy(
        name="cloud-tasks-queue-bounded-retry",
        description="Queues stop retrying a failing task (maxAttempts is not -1, or maxRetryDuration is above 0s), "
        "unless they are held PAUSED.",
        validate=queues.validate_bounded_retry,
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=PolicyConfigSchema(
            properties={
                "allowUnboundedRetries": {
                    "type": "boolean",
                    "default": False,
                    "description": "Allow queues that retry a task until its 31-day retention ends.",
                }
            }
        ),
    ),
    ResourceValidationPolicy(
        name="cloud-tasks-queue-logging",
        description="Queues set stackdriverLoggingConfig.samplingRatio (0 to 1).",
        validate=queues.validate_queue_logging,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
    ResourceValidationPolicy(
        name="apis-kept-on-destroy",
        description="API enablements set disableOnDestroy to false explicitly.",
        validate=apis.validate_api_kept_on_destroy,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
    StackValidationPolicy(
        name="cloud-tasks-delivery-wiring",
        description="Every queue's target Cloud Run service grants run.invoker to the queue's invoker account, "
        "and its request timeout covers the queue's dispatch deadline.",
        validate=delivery.validate_stack,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
    StackValidationPolicy(
        name="cloud-tasks-dead-letter-queue-paused",
        description="A task handler's dead-letter queue (TASKS_DEAD_LETTER_QUEUE) is a full queue path and, when "
        "the stack declares it, is held PAUSED and is not one of the queues the handler serves.",
        validate=dead_letters.validate_stack,
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
]
