"""The baseline for benchmarks/program.py: the same GCP resources as __main__.py, written by hand.

A flat pulumi-gcp script, as one would write it without this project: no settings validation, no
component resources, no derived outputs beyond the queue ids. It reads the same stack config keys
(gcp:project, gcp:region, cloudrun-tasks:enqueuers, cloudrun-tasks:queues) and registers, for that
config, the same resource types in the same counts as the real program: three APIs, the invoker and
runtime accounts, the Cloud Tasks service agent and the actAs grants on the invoker, the Cloud Run
service with its run.invoker grant, and per queue a random id suffix, the queue and one enqueuer grant
per enqueuer. The benchmark checks those counts before timing anything.
"""

import json

import pulumi
import pulumi_gcp as gcp
import pulumi_random as random

from contract import handler_env

gcp_config = pulumi.Config("gcp")
config = pulumi.Config("cloudrun-tasks")
project = gcp_config.require("project")
region = gcp_config.require("region")
enqueuers = config.get_object("enqueuers") or []
queues = config.require_object("queues")
prefix = f"tasks-{pulumi.get_stack()}"

apis = {
    api: gcp.projects.Service(api.split(".")[0], project=project, service=api, disable_on_destroy=False)
    for api in ("cloudtasks.googleapis.com", "run.googleapis.com", "iam.googleapis.com")
}
after_iam = pulumi.ResourceOptions(depends_on=[apis["iam.googleapis.com"]])

invoker = gcp.serviceaccount.Account("invoker", project=project, account_id=f"{prefix}-invoker", opts=after_iam)
agent = gcp.projects.ServiceIdentity("tasks-agent", project=project, service="cloudtasks.googleapis.com")
for principal_name, member in [("tasks-agent", agent.member), *((m, m) for m in enqueuers)]:
    gcp.serviceaccount.IAMMember(
        f"user-{principal_name}",
        service_account_id=invoker.name,
        role="roles/iam.serviceAccountUser",
        member=member,
    )

queue_ids = {
    key: random.RandomId(f"{key}-suffix", byte_length=3).hex.apply(lambda h, key=key: f"{prefix}-{key}-{h}")
    for key in queues
}
runtime = gcp.serviceaccount.Account("runtime", project=project, account_id=f"{prefix}-run", opts=after_iam)
service = gcp.cloudrunv2.Service(
    "handler",
    name=f"{prefix}-handler",
    project=project,
    location=region,
    deletion_protection=False,
    template=gcp.cloudrunv2.ServiceTemplateArgs(
        service_account=runtime.email,
        containers=[
            gcp.cloudrunv2.ServiceTemplateContainerArgs(
                image="us-docker.pkg.dev/cloudrun/container/hello",
                envs=[
                    # The handler needs the queue table, as in the real program.
                    gcp.cloudrunv2.ServiceTemplateContainerEnvArgs(
                        name=handler_env.QUEUES,
                        value=pulumi.Output.all(**queue_ids).apply(
                            lambda ids: json.dumps({ids[k]: {"key": k} for k in ids})
                        ),
                    ),
                ],
            )
        ],
    ),
    opts=pulumi.ResourceOptions(depends_on=[apis["run.googleapis.com"]]),
)
gcp.cloudrunv2.ServiceIamMember(
    "handler-invoker",
    project=project,
    location=region,
    name=service.name,
    role="roles/run.invoker",
    member=invoker.member,
)

after_tasks = pulumi.ResourceOptions(depends_on=[apis["cloudtasks.googleapis.com"]])
for key, settings in queues.items():
    settings = settings or {}
    retry = settings.get("retry", {})
    rates = settings.get("rateLimits", {})
    queue = gcp.cloudtasks.Queue(
        key,
        name=queue_ids[key],
        project=project,
        location=region,
        rate_limits=gcp.cloudtasks.QueueRateLimitsArgs(
            max_dispatches_per_second=rates.get("maxDispatchesPerSecond"),
            max_concurrent_dispatches=rates.get("maxConcurrentDispatches"),
        ),
        retry_config=gcp.cloudtasks.QueueRetryConfigArgs(max_attempts=retry.get("maxAttempts")),
        opts=after_tasks,
    )
    for member in enqueuers:
        gcp.cloudtasks.QueueIamMember(
            f"{key}-enqueuer-{member}",
            project=project,
            location=region,
            name=queue.name,
            role="roles/cloudtasks.enqueuer",
            member=member,
        )

pulumi.export("service_url", service.uri)
pulumi.export("queues", queue_ids)
