"""A Cloud Tasks queue with its rate, retry, logging, optional routing and pause, and who may do what on it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import pulumi
import pulumi_gcp as gcp

from components.options import child_options
from components.settings import RateLimits, RetryPolicy

ENQUEUER = "roles/cloudtasks.enqueuer"
VIEWER = "roles/cloudtasks.viewer"
TASK_DELETER = "roles/cloudtasks.taskDeleter"
PAUSED = "PAUSED"


@dataclass(frozen=True)
class QueueRouting:
    """Queue-level HTTP target: every task goes to `service_url` + `path` with the invoker's token,
    whatever the producer put in the task, so producers need only the queue path."""

    service_url: pulumi.Input[str]
    path: str
    invoker_email: pulumi.Input[str]
    audience: pulumi.Input[str]


@dataclass(frozen=True)
class QueueGrant:
    """One role on this queue for one member. `label` names the grant's resource: the member itself when
    it is a string (a config value), or a stable word for a member another resource computes."""

    role: str
    member: pulumi.Input[str]
    label: str


@dataclass(frozen=True)
class TaskQueueArgs:
    """One queue: its id, rate, retry and logging, its optional routing and pause, and the grants on it."""

    project: str
    location: str
    # Physical queue id. Never reuse one: a deleted queue's id stays blocked for up to 7 days.
    queue_id: pulumi.Input[str]
    rate_limits: RateLimits
    retry: RetryPolicy
    log_sampling_ratio: float
    enqueuers: Sequence[str] = ()
    # Beyond roles/cloudtasks.enqueuer for the enqueuers: any role on this queue only.
    grants: Sequence[QueueGrant] = ()
    routing: QueueRouting | None = None
    # Held PAUSED: tasks can be added and read, none is dispatched (the dead-letter queue). Other queues leave
    # the state unset, so a queue an operator pauses in an incident is not resumed by the next `pulumi up`.
    paused: bool = False
    # Pulumi refuses to delete a protected queue, at preview time, before anything changes.
    protect: bool = True


class TaskQueue(pulumi.ComponentResource):
    """One queue; `roles/cloudtasks.enqueuer` for each enqueuer, and each other grant, on this queue only."""

    def __init__(self, name: str, args: TaskQueueArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cloudrun-tasks:index:TaskQueue", name, None, opts)
        child = child_options(self, opts)
        retry = args.retry
        self.queue = gcp.cloudtasks.Queue(
            name,
            name=args.queue_id,
            project=args.project,
            location=args.location,
            # max_burst_size is output-only: Cloud Tasks derives it from the rate.
            rate_limits=gcp.cloudtasks.QueueRateLimitsArgs(
                max_dispatches_per_second=args.rate_limits.max_dispatches_per_second,
                max_concurrent_dispatches=args.rate_limits.max_concurrent_dispatches,
            ),
            retry_config=gcp.cloudtasks.QueueRetryConfigArgs(
                max_attempts=retry.max_attempts,
                max_retry_duration=str(retry.max_retry_duration),
                min_backoff=str(retry.min_backoff),
                max_backoff=str(retry.max_backoff),
                max_doublings=retry.max_doublings,
            ),
            stackdriver_logging_config=gcp.cloudtasks.QueueStackdriverLoggingConfigArgs(
                sampling_ratio=args.log_sampling_ratio,
            ),
            http_target=_http_target(args.routing) if args.routing else None,
            desired_state=PAUSED if args.paused else None,
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(protect=args.protect)),
        )
        wanted = [*(QueueGrant(ENQUEUER, member, member) for member in args.enqueuers), *args.grants]
        # One resource per role and member, however many reasons ask for it (an operator who also enqueues).
        unique: dict[tuple[str, str], QueueGrant] = {}
        for grant in wanted:
            unique.setdefault((grant.role, grant.label), grant)
        self.grants: list[pulumi.CustomResource] = [
            gcp.cloudtasks.QueueIamMember(
                f"{name}-{grant.role.removeprefix('roles/cloudtasks.')}-{grant.label}",
                project=args.project,
                location=args.location,
                name=self.queue.name,
                role=grant.role,
                member=grant.member,
                opts=child,
            )
            for grant in unique.values()
        ]
        self.queue_id: pulumi.Output[str] = self.queue.name
        # One apply on the queue's name: project and location are config, known before anything runs.
        self.path: pulumi.Output[str] = self.queue.name.apply(
            lambda queue_id: queue_path(args.project, args.location, queue_id)
        )
        self.register_outputs({"path": self.path})


def queue_path(project: str, location: str, queue_id: str) -> str:
    """The queue's full name, as Cloud Tasks' API and the task client take it."""
    return f"projects/{project}/locations/{location}/queues/{queue_id}"


def _http_target(routing: QueueRouting) -> gcp.cloudtasks.QueueHttpTargetArgs:
    return gcp.cloudtasks.QueueHttpTargetArgs(
        http_method="POST",
        uri_override=pulumi.Output.from_input(routing.service_url).apply(lambda url: _uri_override(url, routing.path)),
        oidc_token=gcp.cloudtasks.QueueHttpTargetOidcTokenArgs(
            service_account_email=routing.invoker_email,
            # Explicit: left empty, Cloud Tasks would use each task's full URL, which Cloud Run refuses.
            audience=routing.audience,
        ),
    )


def _uri_override(service_url: str, path: str) -> gcp.cloudtasks.QueueHttpTargetUriOverrideArgs:
    url = urlsplit(service_url)
    return gcp.cloudtasks.QueueHttpTargetUriOverrideArgs(
        scheme=url.scheme.upper(),
        host=url.hostname,
        port=str(url.port) if url.port else None,
        path_override=gcp.cloudtasks.QueueHttpTargetUriOverridePathOverrideArgs(path=path),
        # ALWAYS: the queue decides where tasks go, whatever a producer writes in the task.
        uri_override_enforce_mode="ALWAYS",
    )
