"""Alert policies on the queues and the handler, the channels they notify, and a dashboard of both.

Metric and monitored-resource names are Google's "Google Cloud metrics" list
(cloud.google.com/monitoring/api/metrics_gcp: the `cloudtasks` and `run` sections). Every condition is a
filter-based threshold (`conditionThreshold`), the form pulumi-gcp's AlertPolicy schema types field by field;
the two share-of-traffic conditions are ratios (`filter` over `denominatorFilter`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_gcp as gcp

from components.options import child_options
from components.settings import MonitoringSettings
from contract import cloud_tasks, dead_letters

QUEUE_RESOURCE = "cloud_tasks_queue"
QUEUE_DEPTH = "cloudtasks.googleapis.com/queue/depth"
TASK_ATTEMPTS = "cloudtasks.googleapis.com/queue/task_attempt_count"
TASK_ATTEMPT_DELAYS = "cloudtasks.googleapis.com/queue/task_attempt_delays"
RUN_RESOURCE = "cloud_run_revision"
RUN_REQUESTS = "run.googleapis.com/request_count"
RUN_LATENCIES = "run.googleapis.com/request_latencies"  # milliseconds
# An attempt succeeded when its response_code is OK (or a 2xx, should a code be reported as HTTP):
# case-insensitive, so the alert does not depend on how the label spells it.
ATTEMPT_OK = "(?i)ok|2[0-9][0-9]"
ALIGNMENT = "60s"  # the metrics are sampled every 60 s; a shorter period only adds empty buckets
MARKDOWN = "text/markdown"


@dataclass(frozen=True)
class MonitoringArgs:
    """What to watch (the queues, the dead-letter queue, the service), the thresholds, and whom to notify."""

    project: str
    location: str
    # Queue key (as in the stack config) -> physical queue id.
    # Outputs, not Inputs: Output.from_input on an Output is an apply of its own, per queue.
    queue_ids: Mapping[str, pulumi.Output[str]]
    # The stack's dead-letter queue's id: any task in it is a task whose work was not done.
    dead_letter_queue_id: pulumi.Output[str]
    service_name: pulumi.Output[str]
    settings: MonitoringSettings
    labels: Mapping[str, str] = field(default_factory=dict)
    # Starts every policy's and the dashboard's display name, so a page says which stack it is about.
    title: str = "cloudrun-tasks"


class Monitoring(pulumi.ComponentResource):
    """One backlog and one failing-attempts policy per queue, the handler's 5xx and p99 latency policies, a
    policy on the dead-letter queue's depth, an email channel per address, a dashboard.

    Every policy notifies every channel: the existing ones named in settings and the email ones made here.
    """

    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cloudrun-tasks:index:Monitoring", name, None, opts)
        child = child_options(self, opts)
        s = args.settings
        self.email_channels = [
            gcp.monitoring.NotificationChannel(
                f"{name}-email-{address}",
                project=args.project,
                type="email",
                display_name=f"{args.title} alerts: {address}",
                labels={"email_address": address},
                user_labels=dict(args.labels),
                opts=child,
            )
            for address in s.emails
        ]
        self.channels: pulumi.Output[list[str]] = pulumi.Output.all(
            *s.notification_channels, *(c.name for c in self.email_channels)
        )
        service = args.service_name
        dead_letter_id = args.dead_letter_queue_id
        target = _Target(args.project, args.location)

        def policy(
            suffix: str,
            title: str,
            severity: str,
            condition: pulumi.Input[gcp.monitoring.AlertPolicyConditionArgs],
            content: pulumi.Input[str],
        ) -> gcp.monitoring.AlertPolicy:
            return gcp.monitoring.AlertPolicy(
                f"{name}-{suffix}",
                project=args.project,
                display_name=f"{args.title}: {title}",
                combiner="OR",
                severity=severity,
                conditions=[condition],
                documentation=gcp.monitoring.AlertPolicyDocumentationArgs(
                    content=content, mime_type=MARKDOWN, subject=f"{args.title}: {title}"
                ),
                notification_channels=self.channels,
                user_labels=dict(args.labels),
                opts=child,
            )

        def queue_policies(key: str, queue_id: pulumi.Output[str]) -> list[gcp.monitoring.AlertPolicy]:
            return [
                policy(
                    f"{key}-backlog",
                    f"queue {key} backlog",
                    "WARNING",
                    queue_id.apply(lambda q: backlog_condition(q, s)),
                    queue_id.apply(lambda q: target.backlog_doc(key, q, s)),
                ),
                policy(
                    f"{key}-failing-attempts",
                    f"queue {key} failing attempts",
                    "ERROR",
                    queue_id.apply(lambda q: failing_attempts_condition(q, s)),
                    queue_id.apply(lambda q: target.failing_attempts_doc(key, q, s)),
                ),
            ]

        self.policies: list[gcp.monitoring.AlertPolicy] = [
            made for key, queue_id in args.queue_ids.items() for made in queue_policies(key, queue_id)
        ]
        self.policies.append(
            policy(
                "handler-errors",
                "handler 5xx responses",
                "ERROR",
                service.apply(lambda n: handler_errors_condition(n, args.location, s)),
                service.apply(lambda n: target.handler_errors_doc(n, s)),
            )
        )
        self.policies.append(
            policy(
                "handler-latency",
                "handler p99 latency",
                "WARNING",
                service.apply(lambda n: handler_latency_condition(n, args.location, s)),
                service.apply(lambda n: target.handler_latency_doc(n, s)),
            )
        )
        self.policies.append(
            policy(
                "dead-letters",
                "tasks in the dead-letter queue",
                "ERROR",
                dead_letter_id.apply(dead_letter_condition),
                dead_letter_id.apply(target.dead_letter_doc),
            )
        )
        self.dashboard = gcp.monitoring.Dashboard(
            f"{name}-dashboard",
            project=args.project,
            # One flat Output.all: an Output of the id dict would be unwrapped again, key by key.
            dashboard_json=pulumi.Output.all(dead_letter_id, service, *args.queue_ids.values()).apply(
                lambda v: json.dumps(
                    dashboard(args.title, dict(zip(args.queue_ids, v[2:], strict=True)), v[0], v[1], args.location)
                )
            ),
            opts=child,
        )
        self.register_outputs({"channels": self.channels})


# --- filters and conditions: plain functions of resolved values, tested without Pulumi's engine ------


def queue_filter(metric: str, queue_id: str) -> str:
    return (
        f'resource.type = "{QUEUE_RESOURCE}" AND resource.labels.queue_id = "{queue_id}" AND metric.type = "{metric}"'
    )


def service_filter(metric: str, service_name: str, location: str) -> str:
    return (
        f'resource.type = "{RUN_RESOURCE}" AND resource.labels.service_name = "{service_name}"'
        f' AND resource.labels.location = "{location}" AND metric.type = "{metric}"'
    )


def _sum_rate(group_by: str) -> list[gcp.monitoring.AlertPolicyConditionConditionThresholdAggregationArgs]:
    return [
        gcp.monitoring.AlertPolicyConditionConditionThresholdAggregationArgs(
            alignment_period=ALIGNMENT,
            per_series_aligner="ALIGN_RATE",
            cross_series_reducer="REDUCE_SUM",
            group_by_fields=[group_by],
        )
    ]


def _denominator_sum_rate(
    group_by: str,
) -> list[gcp.monitoring.AlertPolicyConditionConditionThresholdDenominatorAggregationArgs]:
    return [
        gcp.monitoring.AlertPolicyConditionConditionThresholdDenominatorAggregationArgs(
            alignment_period=ALIGNMENT,
            per_series_aligner="ALIGN_RATE",
            cross_series_reducer="REDUCE_SUM",
            group_by_fields=[group_by],
        )
    ]


def backlog_condition(queue_id: str, s: MonitoringSettings) -> gcp.monitoring.AlertPolicyConditionArgs:
    return gcp.monitoring.AlertPolicyConditionArgs(
        display_name=f"{queue_id}: more than {s.backlog_threshold} tasks for {s.backlog_for}",
        condition_threshold=gcp.monitoring.AlertPolicyConditionConditionThresholdArgs(
            filter=queue_filter(QUEUE_DEPTH, queue_id),
            comparison="COMPARISON_GT",
            threshold_value=float(s.backlog_threshold),
            duration=str(s.backlog_for),
            aggregations=[
                gcp.monitoring.AlertPolicyConditionConditionThresholdAggregationArgs(
                    alignment_period=ALIGNMENT, per_series_aligner="ALIGN_MAX"
                )
            ],
        ),
    )


def failing_attempts_condition(queue_id: str, s: MonitoringSettings) -> gcp.monitoring.AlertPolicyConditionArgs:
    """A ratio: attempts answered other than OK over all attempts, per queue."""
    attempts = queue_filter(TASK_ATTEMPTS, queue_id)
    return _ratio_condition(
        f"{queue_id}: over {s.failing_attempts_ratio:.0%} of attempts fail for {s.failing_for}",
        f'{attempts} AND NOT metric.labels.response_code = monitoring.regex.full_match("{ATTEMPT_OK}")',
        attempts,
        "resource.labels.queue_id",
        s.failing_attempts_ratio,
        str(s.failing_for),
    )


def handler_errors_condition(
    service_name: str, location: str, s: MonitoringSettings
) -> gcp.monitoring.AlertPolicyConditionArgs:
    """A ratio: 5xx responses over all responses, across the service's revisions."""
    requests = service_filter(RUN_REQUESTS, service_name, location)
    return _ratio_condition(
        f"{service_name}: over {s.handler_error_ratio:.0%} of requests answered 5xx for {s.failing_for}",
        f'{requests} AND metric.labels.response_code_class = "5xx"',
        requests,
        "resource.labels.service_name",
        s.handler_error_ratio,
        str(s.failing_for),
    )


def _ratio_condition(
    display_name: str, numerator: str, denominator: str, group_by: str, threshold: float, duration: str
) -> gcp.monitoring.AlertPolicyConditionArgs:
    """`numerator` over `denominator`, both summed per `group_by`, above `threshold` for `duration`."""
    return gcp.monitoring.AlertPolicyConditionArgs(
        display_name=display_name,
        condition_threshold=gcp.monitoring.AlertPolicyConditionConditionThresholdArgs(
            filter=numerator,
            denominator_filter=denominator,
            comparison="COMPARISON_GT",
            threshold_value=threshold,
            duration=duration,
            aggregations=_sum_rate(group_by),
            denominator_aggregations=_denominator_sum_rate(group_by),
        ),
    )


def handler_latency_condition(
    service_name: str, location: str, s: MonitoringSettings
) -> gcp.monitoring.AlertPolicyConditionArgs:
    return gcp.monitoring.AlertPolicyConditionArgs(
        display_name=f"{service_name}: p99 latency above {s.latency_p99} for {s.failing_for}",
        condition_threshold=gcp.monitoring.AlertPolicyConditionConditionThresholdArgs(
            filter=service_filter(RUN_LATENCIES, service_name, location),
            comparison="COMPARISON_GT",
            threshold_value=latency_ms(s),
            duration=str(s.failing_for),
            # The distributions of every revision merged, then their 99th percentile.
            aggregations=[
                gcp.monitoring.AlertPolicyConditionConditionThresholdAggregationArgs(
                    alignment_period=ALIGNMENT,
                    per_series_aligner="ALIGN_DELTA",
                    cross_series_reducer="REDUCE_PERCENTILE_99",
                    group_by_fields=["resource.labels.service_name"],
                )
            ],
        ),
    )


def dead_letter_condition(queue_id: str) -> gcp.monitoring.AlertPolicyConditionArgs:
    return gcp.monitoring.AlertPolicyConditionArgs(
        display_name=f"{queue_id}: holds dead letters",
        condition_threshold=gcp.monitoring.AlertPolicyConditionConditionThresholdArgs(
            filter=queue_filter(QUEUE_DEPTH, queue_id),
            comparison="COMPARISON_GT",
            threshold_value=0.0,
            # At once: one dead letter is one task whose work was not done.
            duration="0s",
            aggregations=[
                gcp.monitoring.AlertPolicyConditionConditionThresholdAggregationArgs(
                    alignment_period=ALIGNMENT, per_series_aligner="ALIGN_MAX"
                )
            ],
        ),
    )


def latency_ms(s: MonitoringSettings) -> float:
    return float(s.latency_p99.seconds * 1000)


# --- documentation: what fired, where to look, what to run -------------------------------------------


@dataclass(frozen=True)
class _Target:
    """Where the runbooks' commands point: the stack's project and region."""

    project: str
    location: str

    def _queue_commands(self, queue_id: str) -> str:
        where = f"--project={self.project} --location={self.location}"
        logs = f'resource.type="{QUEUE_RESOURCE}" AND resource.labels.queue_id="{queue_id}"'
        return (
            "```sh\n"
            f"gcloud tasks queues describe {queue_id} {where} --format='yaml(state,rateLimits,retryConfig)'\n"
            f"gcloud tasks list --queue={queue_id} {where} --limit=10"
            " --format='table(name.basename(),scheduleTime,dispatchCount,responseCount,lastAttempt.responseStatus)'\n"
            f"gcloud logging read '{logs}' --project={self.project} --freshness=1h --limit=20\n"
            "```\n"
        )

    def backlog_doc(self, key: str, queue_id: str, s: MonitoringSettings) -> str:
        return (
            f"## Queue `{key}` (`{queue_id}`) has a backlog\n\n"
            f"More than {s.backlog_threshold} tasks have waited in the queue for {s.backlog_for}. No task is lost:"
            " they are late. Either dispatch has stopped, the handler refuses work, or producers outpace the"
            " queue's rate.\n\n"
            "### Look\n\n"
            f"{self._queue_commands(queue_id)}\n"
            "- `state` PAUSED or DISABLED: nothing is dispatched. Resume with"
            f" `gcloud tasks queues resume {queue_id} --project={self.project} --location={self.location}`.\n"
            "- Tasks with a `responseStatus`: attempts fail; see the queue's failing-attempts alert and the"
            " handler's 5xx alert.\n"
            "- No failures: producers create tasks faster than `rateLimits` or the service's"
            " `maxInstances` x `concurrency` allow. Raise them in the stack config and `pulumi up`, or wait.\n"
            "- The dashboard shows depth, attempts by response code and dispatch delays side by side.\n"
        )

    def failing_attempts_doc(self, key: str, queue_id: str, s: MonitoringSettings) -> str:
        return (
            f"## Queue `{key}` (`{queue_id}`): attempts are failing\n\n"
            f"Over {s.failing_attempts_ratio:.0%} of this queue's attempts were answered other than OK for"
            f" {s.failing_for}. Cloud Tasks retries them within the queue's retry window; a task that uses it up"
            " is dropped.\n\n"
            "### Look\n\n"
            f"{self._queue_commands(queue_id)}\n"
            "- 401/403 (UNAUTHENTICATED, PERMISSION_DENIED): the invoker lost `roles/run.invoker`, or the token"
            " audience is wrong. Check with"
            " `gcloud run services get-iam-policy SERVICE --region=" + self.location + "`; `pulumi up` restores"
            " the grant.\n"
            "- 404 (NOT_FOUND): the task URL's path has no handler; compare it with the queue's `path`.\n"
            "- 429/503 (UNAVAILABLE): the service is at `maxInstances` or starting; see the handler alerts.\n"
            "- 5xx from the handler: its logs say why; see the handler's 5xx alert.\n"
        )

    def _service_commands(self, service_name: str) -> str:
        logs = f'resource.type="{RUN_RESOURCE}" AND resource.labels.service_name="{service_name}" AND severity>=WARNING'
        return (
            "```sh\n"
            f"gcloud run services describe {service_name} --project={self.project} --region={self.location}\n"
            f"gcloud run revisions list --service={service_name} --project={self.project} --region={self.location}\n"
            f"gcloud logging read '{logs}' --project={self.project} --freshness=1h --limit=50\n"
            "```\n"
        )

    def handler_errors_doc(self, service_name: str, s: MonitoringSettings) -> str:
        return (
            f"## Handler `{service_name}` answers 5xx\n\n"
            f"Over {s.handler_error_ratio:.0%} of the service's requests were answered 5xx for {s.failing_for}."
            " Cloud Tasks retries each of those tasks, so the queues' backlogs grow next.\n\n"
            "### Look\n\n"
            f"{self._service_commands(service_name)}\n"
            "- Started with a new revision: roll back with `gcloud run services update-traffic"
            f" {service_name} --to-revisions=PREVIOUS_REVISION=100 --region={self.location}`.\n"
            "- A dependency (database, partner API) fails: the handler's logs name it.\n"
            "- 503 with no handler log: instances fail to start or are at `maxInstances`.\n"
        )

    def handler_latency_doc(self, service_name: str, s: MonitoringSettings) -> str:
        return (
            f"## Handler `{service_name}`: p99 latency above {s.latency_p99}\n\n"
            f"The slowest 1% of requests took longer than {s.latency_p99} for {s.failing_for}. At `service.timeout`"
            " Cloud Run ends a request and Cloud Tasks retries the task, so a slow handler turns into duplicate"
            " work and a backlog.\n\n"
            "### Look\n\n"
            f"{self._service_commands(service_name)}\n"
            "- A slow dependency: the handler's logs and traces show where the time goes.\n"
            "- CPU starved: raise `service.cpu`, or lower `service.concurrency`.\n"
            "- Cold starts: the dashboard's request count shows bursts; `service.minInstances` keeps instances"
            " warm.\n"
        )

    def dead_letter_doc(self, queue_id: str) -> str:
        where = f"--project={self.project} --location={self.location}"
        client = "python -m taskclient dead-letters"
        retention_days = round(cloud_tasks.TASK_RETENTION_S / 86400)
        return (
            f"## Tasks in the dead-letter queue (`{queue_id}`)\n\n"
            "Each task here is a dead letter: a task that failed for good (a permanent error, or its last attempt),"
            " recorded by the handler before Cloud Tasks deleted it. Its work was not done. The queue is paused:"
            f" nothing runs from it, and a dead letter is kept at most {retention_days} days (Cloud Tasks' task"
            " retention), then lost.\n\n"
            "### Look\n\n"
            "The stack's outputs name every queue (`pulumi stack output --json > outputs.json`).\n\n"
            "```sh\n"
            f"{client} list --outputs outputs.json\n"
            f"{client} show NAME --outputs outputs.json\n"
            f"gcloud tasks queues describe {queue_id} {where} --format='value(state)'\n"
            "```\n\n"
            f"- Why each one failed: its `{dead_letters.HEADER_REASON}` header (`show`), and the handler's log entry"
            " for the task (its `deadLetter` field).\n"
            f"- `{dead_letters.HEADER_FINAL}: false` is provisional: the handler could not tell whether Cloud Tasks"
            " would retry the task. If a later attempt succeeded (the handler's log says so), discard it.\n"
            "- `state` must stay `PAUSED`; if it is not, pause it again with"
            f" `gcloud tasks queues pause {queue_id} {where}`.\n\n"
            "### Act\n\n"
            "Fix the cause first (the handler's logs, the failing-attempts and 5xx alerts), then:\n\n"
            "```sh\n"
            f"{client} replay NAME --outputs outputs.json                # run one again on its own queue\n"
            f"{client} replay --all --queue KEY --outputs outputs.json   # every dead letter of queue KEY\n"
            f"{client} discard NAME --outputs outputs.json               # one that should not run\n"
            "```\n\n"
            "A replay creates the task again on its original queue, then deletes the dead letter; run again after"
            " an interruption, it creates nothing twice.\n"
        )


# --- the dashboard ----------------------------------------------------------------------------------


def _chart(title: str, filter_: str, aggregation: Mapping[str, Any], plot: str = "LINE") -> dict[str, Any]:
    return {
        "title": title,
        "xyChart": {
            "chartOptions": {"mode": "COLOR"},
            "dataSets": [
                {
                    "plotType": plot,
                    "minAlignmentPeriod": ALIGNMENT,
                    "timeSeriesQuery": {
                        "timeSeriesFilter": {
                            "filter": filter_,
                            "aggregation": {"alignmentPeriod": ALIGNMENT, **aggregation},
                        }
                    },
                }
            ],
        },
    }


def queue_widgets(key: str, queue_id: str) -> list[dict[str, Any]]:
    return [
        _chart(f"{key}: depth", queue_filter(QUEUE_DEPTH, queue_id), {"perSeriesAligner": "ALIGN_MAX"}),
        _chart(
            f"{key}: attempts by response code",
            queue_filter(TASK_ATTEMPTS, queue_id),
            {
                "perSeriesAligner": "ALIGN_RATE",
                "crossSeriesReducer": "REDUCE_SUM",
                "groupByFields": ["metric.labels.response_code"],
            },
            plot="STACKED_BAR",
        ),
        _chart(
            f"{key}: attempt delays (p99)",
            queue_filter(TASK_ATTEMPT_DELAYS, queue_id),
            {"perSeriesAligner": "ALIGN_DELTA", "crossSeriesReducer": "REDUCE_PERCENTILE_99"},
        ),
    ]


def handler_widgets(service_name: str, location: str) -> list[dict[str, Any]]:
    return [
        _chart(
            "handler: requests by response class",
            service_filter(RUN_REQUESTS, service_name, location),
            {
                "perSeriesAligner": "ALIGN_RATE",
                "crossSeriesReducer": "REDUCE_SUM",
                "groupByFields": ["metric.labels.response_code_class"],
            },
            plot="STACKED_BAR",
        ),
        _chart(
            "handler: latency (p99)",
            service_filter(RUN_LATENCIES, service_name, location),
            {"perSeriesAligner": "ALIGN_DELTA", "crossSeriesReducer": "REDUCE_PERCENTILE_99"},
        ),
    ]


def dead_letter_widgets(queue_id: str) -> list[dict[str, Any]]:
    return [_chart("dead letters: tasks held", queue_filter(QUEUE_DEPTH, queue_id), {"perSeriesAligner": "ALIGN_MAX"})]


def dashboard(
    title: str, queue_ids: Mapping[str, str], dead_letter_queue_id: str, service_name: str, location: str
) -> dict[str, Any]:
    """A row of three charts per queue, the dead-letter queue's depth, then the handler's two; mosaic layout,
    12 columns wide."""
    tiles: list[dict[str, Any]] = []
    rows = [queue_widgets(key, queue_id) for key, queue_id in queue_ids.items()]
    rows.append(dead_letter_widgets(dead_letter_queue_id))
    rows.append(handler_widgets(service_name, location))
    for row_index, row in enumerate(rows):
        width = 12 // len(row)
        tiles += [
            {"xPos": i * width, "yPos": row_index * 4, "width": width, "height": 4, "widget": widget}
            for i, widget in enumerate(row)
        ]
    return {"displayName": f"{title}: queues and handler", "mosaicLayout": {"columns": 12, "tiles": tiles}}
