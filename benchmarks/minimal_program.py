"""The baseline for benchmarks/program.py: the same GCP resources as __main__.py, written by hand.

A flat pulumi-gcp script, as one would write it without this project: no settings validation, no
component resources, literals where the real program derives values. It reads the same stack config keys
(gcp:project, gcp:region, cloudrun-tasks:enqueuers, cloudrun-tasks:queues, cloudrun-tasks:service) and
registers, for that config, the same resources with inputs of the same shape (every input property the
real program sets, nested alike; strings such as the runbooks are shorter):
- four APIs; the invoker and runtime accounts; the Cloud Tasks service agent, its project role and the
  actAs grants on the invoker;
- the Cloud Run service (probes, resources, scaling, its environment with the queue table) and its
  run.invoker grant;
- per queue a random id suffix, the queue, one enqueuer grant per enqueuer and two alert policies; the
  dead-letter queue with its suffix, the runtime's enqueuer grant on it and its alert; the handler's two
  alerts; one dashboard with a row of charts per queue.
The benchmark checks, before timing anything, that both programs register the same resource types in the
same counts with inputs of the same shape.
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
max_instances = (config.get_object("service") or {}).get("maxInstances", 3)
prefix = f"tasks-{pulumi.get_stack()}"
labels = {"managed-by": "cloudrun-tasks", "stack": pulumi.get_stack()}

apis = {
    api: gcp.projects.Service(
        api.split(".")[0], project=project, service=api, disable_on_destroy=False, disable_dependent_services=False
    )
    for api in ("cloudtasks.googleapis.com", "run.googleapis.com", "iam.googleapis.com", "monitoring.googleapis.com")
}
after_iam = pulumi.ResourceOptions(depends_on=[apis["iam.googleapis.com"]])
after_tasks = pulumi.ResourceOptions(depends_on=[apis["cloudtasks.googleapis.com"]])
after_monitoring = pulumi.ResourceOptions(depends_on=[apis["monitoring.googleapis.com"]])

invoker = gcp.serviceaccount.Account(
    "invoker",
    project=project,
    account_id=f"{prefix}-invoker",
    display_name="Cloud Tasks invoker",
    description="Identity in the OIDC tokens Cloud Tasks sends.",
    opts=after_iam,
)
runtime = gcp.serviceaccount.Account(
    "runtime",
    project=project,
    account_id=f"{prefix}-run",
    display_name="Task handler runtime",
    description="Identity the task handler runs as.",
    opts=after_iam,
)
agent = gcp.projects.ServiceIdentity("tasks-agent", project=project, service="cloudtasks.googleapis.com")
gcp.projects.IAMMember("tasks-agent-role", project=project, role="roles/cloudtasks.serviceAgent", member=agent.member)
for principal_name, member in [("tasks-agent", agent.member), *((m, m) for m in enqueuers)]:
    gcp.serviceaccount.IAMMember(
        f"user-{principal_name}", service_account_id=invoker.name, role="roles/iam.serviceAccountUser", member=member
    )

queue_ids = {
    key: random.RandomId(f"{key}-suffix", byte_length=3).hex.apply(lambda h, key=key: f"{prefix}-{key}-{h}")
    for key in [*queues, "dead-letters"]
}


def queue_path(queue_id):
    return f"projects/{project}/locations/{region}/queues/{queue_id}"


def queue_table(ids):
    return json.dumps(
        {
            ids[key]: {
                "key": key,
                "path": f"/tasks/{key}",
                "maxAttempts": (settings.get("retry") or {}).get("maxAttempts", 100),
                "maxRetryDurationSeconds": 600.0,
                "minBackoffSeconds": 0.1,
                "maxBackoffSeconds": 3600.0,
                "maxDoublings": 16,
                "dispatchDeadlineSeconds": 600.0,
            }
            for key, settings in queues.items()
        }
    )


def probe():
    return gcp.cloudrunv2.ServiceTemplateContainerStartupProbeArgs(
        http_get=gcp.cloudrunv2.ServiceTemplateContainerStartupProbeHttpGetArgs(path="/health", port=8080),
        initial_delay_seconds=0,
        period_seconds=10,
        timeout_seconds=1,
        failure_threshold=3,
    )


def liveness():
    return gcp.cloudrunv2.ServiceTemplateContainerLivenessProbeArgs(
        http_get=gcp.cloudrunv2.ServiceTemplateContainerLivenessProbeHttpGetArgs(path="/health", port=8080),
        initial_delay_seconds=0,
        period_seconds=10,
        timeout_seconds=1,
        failure_threshold=3,
    )


def env(name, value):
    return gcp.cloudrunv2.ServiceTemplateContainerEnvArgs(name=name, value=value)


# The service's deterministic URL needs the project's number, as in the real program.
number = gcp.organizations.get_project_output(project_id=project).number
audience = pulumi.Output.concat("https://", prefix, "-handler-", number, ".", region, ".run.app")
service = gcp.cloudrunv2.Service(
    "handler",
    name=f"{prefix}-handler",
    project=project,
    location=region,
    ingress="INGRESS_TRAFFIC_INTERNAL_ONLY",
    invoker_iam_disabled=False,
    deletion_protection=False,
    labels=labels,
    template=gcp.cloudrunv2.ServiceTemplateArgs(
        service_account=runtime.email,
        timeout="600s",
        max_instance_request_concurrency=80,
        scaling=gcp.cloudrunv2.ServiceTemplateScalingArgs(min_instance_count=0, max_instance_count=max_instances),
        containers=[
            gcp.cloudrunv2.ServiceTemplateContainerArgs(
                image="us-docker.pkg.dev/cloudrun/container/hello",
                ports=gcp.cloudrunv2.ServiceTemplateContainerPortsArgs(container_port=8080),
                resources=gcp.cloudrunv2.ServiceTemplateContainerResourcesArgs(
                    limits={"cpu": "1", "memory": "512Mi"}, cpu_idle=True, startup_cpu_boost=True
                ),
                startup_probe=probe(),
                liveness_probe=liveness(),
                envs=[
                    env(handler_env.PROJECT, project),
                    env(handler_env.DEAD_LETTER_QUEUE, queue_ids["dead-letters"].apply(queue_path)),
                    env(handler_env.INVOKER_EMAILS, invoker.email),
                    env(handler_env.OIDC_AUDIENCE, audience),
                    env(handler_env.QUEUES, pulumi.Output.all(**queue_ids).apply(queue_table)),
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


def task_queue(key, queue_id, rates, retry, **extra):
    queue = gcp.cloudtasks.Queue(
        key,
        name=queue_id,
        project=project,
        location=region,
        rate_limits=gcp.cloudtasks.QueueRateLimitsArgs(
            max_dispatches_per_second=rates.get("maxDispatchesPerSecond", 500),
            max_concurrent_dispatches=rates.get("maxConcurrentDispatches", 240),
        ),
        retry_config=gcp.cloudtasks.QueueRetryConfigArgs(
            max_attempts=retry.get("maxAttempts", 100),
            max_retry_duration=retry.get("maxRetryDuration", "0s"),
            min_backoff="0.1s",
            max_backoff="3600s",
            max_doublings=16,
        ),
        stackdriver_logging_config=gcp.cloudtasks.QueueStackdriverLoggingConfigArgs(sampling_ratio=1.0),
        opts=after_tasks,
        **extra,
    )
    return queue


def aggregation(aligner, group_by=None):
    if group_by is None:
        return gcp.monitoring.AlertPolicyConditionConditionThresholdAggregationArgs(
            alignment_period="60s", per_series_aligner=aligner
        )
    return gcp.monitoring.AlertPolicyConditionConditionThresholdAggregationArgs(
        alignment_period="60s",
        per_series_aligner=aligner,
        cross_series_reducer="REDUCE_SUM",
        group_by_fields=[group_by],
    )


def alert(name, severity, filter_, threshold, aggregations, denominator=None):
    ratio = {}
    if denominator is not None:
        ratio = {"denominator_filter": denominator, "denominator_aggregations": aggregations}
    gcp.monitoring.AlertPolicy(
        name,
        project=project,
        display_name=f"{prefix}: {name}",
        combiner="OR",
        severity=severity,
        user_labels=labels,
        notification_channels=[],
        documentation=gcp.monitoring.AlertPolicyDocumentationArgs(
            subject=f"{prefix}: {name}", mime_type="text/markdown", content=f"## {name}\n\nSee the dashboard."
        ),
        conditions=[
            gcp.monitoring.AlertPolicyConditionArgs(
                display_name=name,
                condition_threshold=gcp.monitoring.AlertPolicyConditionConditionThresholdArgs(
                    filter=filter_,
                    comparison="COMPARISON_GT",
                    threshold_value=threshold,
                    duration="300s",
                    aggregations=aggregations,
                    **ratio,
                ),
            )
        ],
        opts=after_monitoring,
    )


def queue_metric(metric):
    return lambda q: f'resource.labels.queue_id = "{q}" AND metric.type = "{metric}"'


def handler_metric(metric):
    return lambda n: f'resource.labels.service_name = "{n}" AND metric.type = "{metric}"'


depth = "cloudtasks.googleapis.com/queue/depth"
attempts = "cloudtasks.googleapis.com/queue/task_attempt_count"
for key, settings in queues.items():
    settings = settings or {}
    queue = task_queue(key, queue_ids[key], settings.get("rateLimits", {}), settings.get("retry", {}))
    for member in enqueuers:
        gcp.cloudtasks.QueueIamMember(
            f"{key}-enqueuer-{member}",
            project=project,
            location=region,
            name=queue.name,
            role="roles/cloudtasks.enqueuer",
            member=member,
        )
    alert(f"{key}-backlog", "WARNING", queue_ids[key].apply(queue_metric(depth)), 1000, [aggregation("ALIGN_MAX")])
    all_attempts = queue_ids[key].apply(queue_metric(attempts))
    alert(
        f"{key}-failing",
        "ERROR",
        all_attempts.apply(lambda f: f + ' AND NOT metric.labels.response_code = "OK"'),
        0.1,
        [aggregation("ALIGN_RATE", "resource.labels.queue_id")],
        denominator=all_attempts,
    )

dead_letters = task_queue(
    "dead-letters",
    queue_ids["dead-letters"],
    {"maxDispatchesPerSecond": 1 / 86400, "maxConcurrentDispatches": 1},
    {"maxAttempts": -1},
    desired_state="PAUSED",
)
gcp.cloudtasks.QueueIamMember(
    "dead-letters-enqueuer-runtime",
    project=project,
    location=region,
    name=dead_letters.name,
    role="roles/cloudtasks.enqueuer",
    member=runtime.member,
)
requests = service.name.apply(handler_metric("run.googleapis.com/request_count"))
alert(
    "handler-errors",
    "ERROR",
    requests.apply(lambda f: f + ' AND metric.labels.response_code_class = "5xx"'),
    0.05,
    [aggregation("ALIGN_RATE", "resource.labels.service_name")],
    denominator=requests,
)
latency = service.name.apply(handler_metric("run.googleapis.com/request_latencies"))
alert("handler-latency", "WARNING", latency, 480000, [aggregation("ALIGN_DELTA", "resource.labels.service_name")])
alert("dead-letters", "ERROR", queue_ids["dead-letters"].apply(queue_metric(depth)), 0, [aggregation("ALIGN_MAX")])


def chart(title, filter_):
    query = {"timeSeriesFilter": {"filter": filter_, "aggregation": {"alignmentPeriod": "60s"}}}
    return {"title": title, "xyChart": {"dataSets": [{"plotType": "LINE", "timeSeriesQuery": query}]}}


def dashboard_json(ids):
    tiles = []
    for row, (key, queue_id) in enumerate(ids.items()):
        for column, metric in enumerate((depth, attempts, "cloudtasks.googleapis.com/queue/task_attempt_delays")):
            widget = chart(f"{key}: {metric.rsplit('/', 1)[1]}", queue_metric(metric)(queue_id))
            tiles.append({"xPos": 4 * column, "yPos": 4 * row, "width": 4, "height": 4, "widget": widget})
    return json.dumps({"displayName": f"{prefix}: queues and handler", "mosaicLayout": {"columns": 12, "tiles": tiles}})


gcp.monitoring.Dashboard(
    "dashboard",
    project=project,
    dashboard_json=pulumi.Output.all(**queue_ids).apply(dashboard_json),
    opts=after_monitoring,
)

pulumi.export("service_url", service.uri)
pulumi.export("queues", {key: queue_id.apply(queue_path) for key, queue_id in queue_ids.items()})
