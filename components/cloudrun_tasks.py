"""The whole stack: APIs, invoker identity, task handler service, queues, the dead-letter queue, and the values
consumers need."""

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
from components.settings import QUEUE_SUFFIX_HEX_LENGTH, Duration, QueueSettings, RateLimits, RetryPolicy, Settings
from components.task_queue import (
    ENQUEUER,
    TASK_DELETER,
    VIEWER,
    QueueGrant,
    QueueRouting,
    TaskQueue,
    TaskQueueArgs,
    queue_path,
)
from contract import cloud_tasks, dead_letters, handler_env
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
            InvokerIdentityArgs(
                project=s.project,
                account_id=s.invoker_service_account_id,
                enqueuers=every_enqueuer,
                operators=s.operators,
            ),
            opts=self._after(apis.apis[IAM_API], apis.apis[CLOUD_TASKS_API]),
        )
        queue_ids = {q.key: self._queue_id(name, s.name_prefix, q.key) for q in s.queues}
        dead_letter_id = self._queue_id(name, s.name_prefix, dead_letters.QUEUE_KEY)
        audience = _deterministic_url(s)
        handler = TaskHandlerService(
            f"{name}-handler",
            _handler_args(s, queue_ids, _queue_path(s, dead_letter_id), invoker, audience),
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
                    # A replay creates the task again on its own queue; replaying a provisional dead letter
                    # first reads (BASIC view: no body) whether its task is still there.
                    grants=[QueueGrant(role, member, member) for member in s.operators for role in (ENQUEUER, VIEWER)],
                    routing=QueueRouting(handler.uri, q.path, invoker.email, audience)
                    if q.queue_level_routing
                    else None,
                    protect=s.deletion_protection,
                ),
                opts=self._after(apis.apis[CLOUD_TASKS_API]),
            )
            for q in s.queues
        }
        dead_letter_queue = TaskQueue(
            f"{name}-{dead_letters.QUEUE_KEY}",
            _dead_letter_args(s, dead_letter_id, handler.runtime_member),
            # After the queues whose tasks it records, so every listing of the stack's queues (the engine's, the
            # local stack's) puts the queues the handler serves first, in config order.
            opts=self._after(apis.apis[CLOUD_TASKS_API], *(q.queue for q in queues.values())),
        )
        if s.monitoring.enabled:
            Monitoring(
                f"{name}-monitoring",
                MonitoringArgs(
                    project=s.project,
                    location=s.location,
                    queue_ids={key: queues[key].queue_id for key in queues},
                    dead_letter_queue_id=dead_letter_queue.queue_id,
                    service_name=handler.name,
                    settings=s.monitoring,
                    labels=dict(s.labels),
                    title=s.name_prefix,
                ),
                opts=self._after(apis.apis[MONITORING_API]),
            )
        # Calling the service needs run.invoker and the agent's actAs; creating tasks needs the queue grants;
        # recording and working dead letters, the dead-letter queue's.
        usable = [
            *handler.invoker_grants,
            *invoker.grants,
            *(g for q in (*queues.values(), dead_letter_queue) for g in q.grants),
        ]
        self.exports: dict[str, pulumi.Output[Any]] = _exports(
            s, handler, invoker, queues, dead_letter_queue, audience, usable
        )
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


def _queue_path(s: Settings, queue_id: pulumi.Output[str]) -> pulumi.Output[str]:
    return queue_id.apply(lambda value: queue_path(s.project, s.location, value))


def _queue_entry_for_handler(q: QueueSettings) -> handler_env.QueueEntry:
    # The whole retry policy: the handler decides by it whether a failing attempt is the last (contract.retry).
    policy = q.retry.in_seconds()
    return handler_env.QueueEntry(
        key=q.key,
        max_attempts=policy.max_attempts,
        dispatch_deadline_seconds=float(q.dispatch_deadline.seconds),
        max_retry_duration_seconds=policy.max_retry_duration,
        min_backoff_seconds=policy.min_backoff,
        max_backoff_seconds=policy.max_backoff,
        max_doublings=policy.max_doublings,
        path=q.path,
    )


def _dead_letter_args(s: Settings, queue_id: pulumi.Input[str], runtime_member: pulumi.Input[str]) -> TaskQueueArgs:
    """The stack's dead-letter queue (contract.dead_letters): held paused, so nothing is dispatched from it.

    Should someone resume it by mistake, nothing may be lost: a dead letter carries no OIDC token, so the
    private service refuses each dispatch and Cloud Tasks retries it, without limit (-1 attempts, no duration:
    until the 31-day retention), one dispatch at a time at the slowest rate this stack accepts.
    """
    operator_roles = (
        VIEWER,  # list and get the dead letters
        TASK_DELETER,  # discard one, and delete it once replayed
        # Reading a task's body and headers needs cloudtasks.tasks.fullView, which no narrower predefined role
        # holds: only enqueuer, taskRunner and admin. Enqueuer also lets an operator add tasks here, which a
        # paused queue never dispatches.
        ENQUEUER,
    )
    return TaskQueueArgs(
        project=s.project,
        location=s.location,
        queue_id=queue_id,
        rate_limits=RateLimits(
            max_dispatches_per_second=cloud_tasks.MIN_DISPATCHES_PER_SECOND, max_concurrent_dispatches=1
        ),
        retry=RetryPolicy(
            max_attempts=cloud_tasks.UNLIMITED_ATTEMPTS,
            max_retry_duration=Duration.of(cloud_tasks.UNLIMITED_RETRY_DURATION_S),
            min_backoff=Duration.of(cloud_tasks.DEFAULT_MIN_BACKOFF_S),
            max_backoff=Duration.of(cloud_tasks.DEFAULT_MAX_BACKOFF_S),
            max_doublings=cloud_tasks.DEFAULT_MAX_DOUBLINGS,
        ),
        # Every operation logged: a dispatch from this queue is a mistake someone should see.
        log_sampling_ratio=1.0,
        grants=[
            # The handler records dead letters without an OIDC token, so it needs no actAs on any account.
            QueueGrant(ENQUEUER, runtime_member, "runtime"),
            *(QueueGrant(role, member, member) for member in s.operators for role in operator_roles),
        ],
        paused=True,
        protect=s.deletion_protection,
    )


def _handler_args(
    s: Settings,
    queue_ids: dict[str, pulumi.Output[str]],
    dead_letter_path: pulumi.Output[str],
    invoker: InvokerIdentity,
    audience: pulumi.Output[str],
) -> TaskHandlerServiceArgs:
    service = s.service
    queue_table = pulumi.Output.all(**queue_ids).apply(
        lambda ids: handler_env.encode_queue_table({ids[q.key]: _queue_entry_for_handler(q) for q in s.queues})
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
            handler_env.DEAD_LETTER_QUEUE: dead_letter_path,
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
    dead_letter_queue: TaskQueue,
    audience: pulumi.Output[str],
    usable: list[pulumi.CustomResource],
) -> dict[str, pulumi.Output[Any]]:
    # One gate for every value below: it resolves once all of `usable` exists (and carries them as dependencies),
    # so each value waits on one Output rather than on its own copy of the whole list.
    usable_ids = pulumi.Output.all(*(r.id for r in usable)).apply(lambda _: None)

    def ready(value: pulumi.Input[Any]) -> pulumi.Output[Any]:
        return pulumi.Output.all(value, usable_ids).apply(lambda values: values[0])

    service_url = ready(handler.uri)
    # One flat Output.all over the queue ids: a nested all per queue costs an apply per level and per value. Each
    # path is the queue's own (TaskQueue.path, from the same id and resource) derived from the id, not awaited.
    queue_ids = [queues[q.key].queue_id for q in s.queues]
    queue_map = pulumi.Output.all(service_url, *queue_ids).apply(lambda parts: _queue_map(s, parts[0], parts[1:]))
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
        OutputName.DEAD_LETTER_QUEUE: ready(dead_letter_queue.path),
        OutputName.CREATE_TASK_COMMAND: pulumi.Output.all(default.queue_id, service_url, invoker.email, audience).apply(
            lambda v: _gcloud_create_task(s, s.queue(s.default_queue), *v)
        ),
    }


def _queue_map(s: Settings, service_url: str, queue_ids: list[str]) -> dict[str, dict[str, Any]]:
    return {
        q.key: _queue_entry(s, q, queue_id, queue_path(s.project, s.location, queue_id), service_url)
        for q, queue_id in zip(s.queues, queue_ids, strict=True)
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
