"""The whole stack: APIs, invoker identity, task handler service, queues, and the values consumers need."""

from __future__ import annotations

import shlex
from typing import Any

import pulumi
import pulumi_gcp as gcp
import pulumi_random as random

from components.apis import (
    CLOUD_RUN_API,
    CLOUD_TASKS_API,
    DEFAULT_APIS,
    IAM_API,
    MONITORING_API,
    SECRET_MANAGER_API,
    ProjectApis,
    ProjectApisArgs,
)
from components.handler_service import TaskHandlerService, TaskHandlerServiceArgs
from components.invoker import InvokerIdentity, InvokerIdentityArgs
from components.monitoring import Monitoring, MonitoringArgs
from components.settings import QUEUE_SUFFIX_HEX_LENGTH, QueueSettings, Settings
from components.task_queue import QueueRouting, TaskQueue, TaskQueueArgs
from contract import handler_env
from contract.outputs import OutputName, QueueField


class CloudRunTasks(pulumi.ComponentResource):
    """Everything Google's "Executing asynchronous tasks" guide sets up by hand, from one Settings value.

    `exports` maps each output name to its value. Values that let a consumer call something resolve only
    after the IAM that allows the call exists, so no consumer sees a URL it cannot yet use.
    """

    def __init__(self, name: str, settings: Settings, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cloudrun-tasks:index:CloudRunTasks", name, None, opts)
        s = settings
        secrets_used = bool(s.service.secret_env)
        optional_apis = ((SECRET_MANAGER_API, secrets_used), (MONITORING_API, s.monitoring.enabled))
        apis = ProjectApis(
            f"{name}-apis",
            ProjectApisArgs(project=s.project, services=(*DEFAULT_APIS, *(api for api, used in optional_apis if used))),
            opts=self._after(),
        )
        every_enqueuer = tuple(dict.fromkeys(m for q in s.queues for m in q.enqueuers))
        invoker = InvokerIdentity(
            f"{name}-invoker",
            InvokerIdentityArgs(project=s.project, account_id=s.invoker_service_account_id, enqueuers=every_enqueuer),
            opts=self._after(apis.apis[IAM_API], apis.apis[CLOUD_TASKS_API]),
        )
        queue_ids = {q.key: self._queue_id(name, s.name_prefix, q.key) for q in s.queues}
        audience = _deterministic_url(s)
        handler = TaskHandlerService(
            f"{name}-handler",
            _handler_args(s, queue_ids, invoker, audience),
            opts=self._after(
                apis.apis[CLOUD_RUN_API], apis.apis[IAM_API], *([apis.apis[SECRET_MANAGER_API]] if secrets_used else [])
            ),
        )
        queues = {
            q.key: TaskQueue(
                f"{name}-{q.key}",
                TaskQueueArgs(
                    project=s.project,
                    location=s.location,
                    queue_id=queue_ids[q.key],
                    rate_limits=q.rate_limits,
                    retry=q.retry,
                    log_sampling_ratio=q.log_sampling_ratio,
                    enqueuers=q.enqueuers,
                    routing=QueueRouting(handler.uri, q.path, invoker.email, audience)
                    if q.queue_level_routing
                    else None,
                    protect=s.deletion_protection,
                ),
                opts=self._after(apis.apis[CLOUD_TASKS_API]),
            )
            for q in s.queues
        }
        if s.monitoring.enabled:
            Monitoring(
                f"{name}-monitoring",
                MonitoringArgs(
                    project=s.project,
                    location=s.location,
                    queue_ids={key: queues[key].queue_id for key in queues},
                    service_name=handler.name,
                    settings=s.monitoring,
                    labels=dict(s.labels),
                    title=s.name_prefix,
                ),
                opts=self._after(apis.apis[MONITORING_API]),
            )
        # Calling the service needs run.invoker and the agent's actAs; creating tasks needs the queue grants.
        usable = [*handler.invoker_grants, *invoker.grants, *(g for q in queues.values() for g in q.grants)]
        self.exports: dict[str, pulumi.Output[Any]] = _exports(s, handler, invoker, queues, audience, usable)
        self.register_outputs(self.exports)

    def _after(self, *resources: pulumi.Resource) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self, depends_on=list(resources))

    def _queue_id(self, name: str, prefix: str, key: str) -> pulumi.Output[str]:
        # A random suffix, kept in state: a re-created queue (stack destroyed and re-created, queue
        # removed and re-added) gets a new id instead of one Cloud Tasks still blocks after deletion.
        suffix = random.RandomId(
            f"{name}-{key}-suffix", byte_length=QUEUE_SUFFIX_HEX_LENGTH // 2, opts=pulumi.ResourceOptions(parent=self)
        )
        hex_: pulumi.Output[str] = suffix.hex
        return hex_.apply(lambda value: f"{prefix}-{key}-{value}")


def _deterministic_url(s: Settings) -> pulumi.Output[str]:
    """The service's URL that Cloud Run derives from its name, project number and region: known before the
    service exists, and accepted as a token's audience as the random-hash URL is. Tokens carry it, and the
    handler checks it, so no audience is ever taken from the headers of a request."""
    number = gcp.organizations.get_project_output(project_id=s.project).number
    return pulumi.Output.concat("https://", s.service.name, "-", number, ".", s.location, ".run.app")


def _handler_args(
    s: Settings, queue_ids: dict[str, pulumi.Output[str]], invoker: InvokerIdentity, audience: pulumi.Output[str]
) -> TaskHandlerServiceArgs:
    service = s.service
    queue_table = pulumi.Output.all(**queue_ids).apply(
        lambda ids: handler_env.encode_queue_table(
            {
                ids[q.key]: handler_env.QueueEntry(
                    key=q.key,
                    max_attempts=q.retry.max_attempts,
                    dispatch_deadline_seconds=float(q.dispatch_deadline.seconds),
                )
                for q in s.queues
            }
        )
    )
    return TaskHandlerServiceArgs(
        project=s.project,
        location=s.location,
        service_name=service.name,
        image=service.image,
        runtime_account_id=service.service_account_id,
        invokers={"tasks-invoker": invoker.member},
        timeout=str(service.timeout),
        ingress=service.ingress,
        min_instances=service.min_instances,
        max_instances=service.max_instances,
        concurrency=service.concurrency,
        cpu=service.cpu,
        memory=service.memory,
        env={
            **dict(service.env),
            handler_env.QUEUES: queue_table,
            handler_env.INVOKER_EMAILS: invoker.email,
            handler_env.OIDC_AUDIENCE: audience,
            handler_env.PROJECT: s.project,
        },
        manage_image=service.manage_image,
        deletion_protection=s.deletion_protection,
        cpu_always_allocated=service.cpu_always_allocated,
        startup_cpu_boost=service.startup_cpu_boost,
        startup_probe=service.startup_probe,
        liveness_probe=service.liveness_probe,
        vpc=service.vpc,
        secret_env=service.secret_env,
        labels=dict(s.labels),
    )


def _exports(
    s: Settings,
    handler: TaskHandlerService,
    invoker: InvokerIdentity,
    queues: dict[str, TaskQueue],
    audience: pulumi.Output[str],
    usable: list[pulumi.CustomResource],
) -> dict[str, pulumi.Output[Any]]:
    def ready(value: pulumi.Input[Any]) -> pulumi.Output[Any]:
        return pulumi.Output.all(value, *(r.id for r in usable)).apply(lambda values: values[0])

    service_url = ready(handler.uri)
    queue_map = pulumi.Output.all(
        **{q.key: pulumi.Output.all(queues[q.key].queue_id, queues[q.key].path, service_url) for q in s.queues}
    ).apply(lambda parts: {q.key: _queue_entry(s, q, *parts[q.key]) for q in s.queues})
    default = queues[s.default_queue]
    return {
        OutputName.PROJECT: pulumi.Output.from_input(s.project),
        OutputName.LOCATION: pulumi.Output.from_input(s.location),
        OutputName.SERVICE_NAME: handler.name,
        OutputName.SERVICE_URL: service_url,
        OutputName.OIDC_AUDIENCE: ready(audience),
        OutputName.INVOKER_EMAIL: ready(invoker.email),
        OutputName.RUNTIME_EMAIL: handler.runtime_email,
        OutputName.QUEUES: queue_map,
        OutputName.DEFAULT_QUEUE: pulumi.Output.from_input(s.default_queue),
        OutputName.DEFAULT_QUEUE_PATH: ready(default.path),
        OutputName.CREATE_TASK_COMMAND: pulumi.Output.all(default.queue_id, service_url, invoker.email, audience).apply(
            lambda v: _gcloud_create_task(s, s.queue(s.default_queue), *v)
        ),
    }


def _queue_entry(s: Settings, q: QueueSettings, queue_id: str, path: str, service_url: str) -> dict[str, Any]:
    return {
        QueueField.ID: queue_id,
        QueueField.PATH: path,
        QueueField.LOCATION: s.location,
        QueueField.TASK_URL: service_url.rstrip("/") + q.path,
        QueueField.MAX_ATTEMPTS: q.retry.max_attempts,
        QueueField.DISPATCH_DEADLINE_SECONDS: float(q.dispatch_deadline.seconds),
        QueueField.QUEUE_LEVEL_ROUTING: q.queue_level_routing,
    }


def _gcloud_create_task(
    s: Settings, q: QueueSettings, queue_id: str, service_url: str, invoker_email: str, audience: str
) -> str:
    """A ready-to-run command that creates one task on the default queue, as the enqueuer would."""
    args = [
        "gcloud", "tasks", "create-http-task",
        f"--project={s.project}",
        f"--location={s.location}",
        f"--queue={queue_id}",
        f"--url={service_url.rstrip('/')}{q.path}",
        "--method=POST",
        "--header=Content-Type:application/json",
        '--body-content={"hello": "world"}',
        f"--oidc-service-account-email={invoker_email}",
        f"--oidc-token-audience={audience}",
    ]  # fmt: skip
    return shlex.join(args)
