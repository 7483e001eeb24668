"""The task handler: a private Cloud Run service with its own runtime identity."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_gcp as gcp

from components.options import child_options
from components.settings import Ingress

RUN_INVOKER = "roles/run.invoker"
CONTAINER_PORT = 8080
# Fields CD tooling changes when it deploys a new image; ignored when the stack does not manage the image.
IMAGE_FIELDS = ["template.containers[0].image", "client", "clientVersion"]


@dataclass(frozen=True)
class TaskHandlerServiceArgs:
    project: pulumi.Input[str]
    location: str
    service_name: str
    image: str
    runtime_account_id: str
    # Stable label -> member granted roles/run.invoker on this service (and nothing else).
    invokers: Mapping[str, pulumi.Input[str]]
    # No defaults here: components/settings.py decides each one, once, and says why.
    timeout: str
    ingress: Ingress
    min_instances: int
    max_instances: int
    concurrency: int
    cpu: str
    memory: str
    manage_image: bool
    deletion_protection: bool
    env: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)


class TaskHandlerService(pulumi.ComponentResource):
    """The Cloud Run service, its runtime account, and run.invoker for the invokers on this service only."""

    def __init__(self, name: str, args: TaskHandlerServiceArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cloudrun-tasks:index:TaskHandlerService", name, None, opts)
        child = child_options(self, opts)
        # Never the default compute account, which holds Editor on the project in most projects.
        self.runtime_account = gcp.serviceaccount.Account(
            f"{name}-runtime",
            project=args.project,
            account_id=args.runtime_account_id,
            display_name="Task handler runtime",
            description="Identity the task handler runs as; grant it only what the task work needs.",
            opts=child,
        )
        self.service = gcp.cloudrunv2.Service(
            name,
            name=args.service_name,
            project=args.project,
            location=args.location,
            ingress=args.ingress.value,
            # Explicitly off: true would switch the IAM check off and make the service public.
            invoker_iam_disabled=False,
            deletion_protection=args.deletion_protection,
            template=gcp.cloudrunv2.ServiceTemplateArgs(
                service_account=self.runtime_account.email,
                timeout=args.timeout,
                max_instance_request_concurrency=args.concurrency,
                scaling=gcp.cloudrunv2.ServiceTemplateScalingArgs(
                    min_instance_count=args.min_instances,
                    max_instance_count=args.max_instances,
                ),
                containers=[
                    gcp.cloudrunv2.ServiceTemplateContainerArgs(
                        image=args.image,
                        ports=gcp.cloudrunv2.ServiceTemplateContainerPortsArgs(container_port=CONTAINER_PORT),
                        resources=gcp.cloudrunv2.ServiceTemplateContainerResourcesArgs(
                            limits={"cpu": args.cpu, "memory": args.memory},
                        ),
                        envs=[
                            gcp.cloudrunv2.ServiceTemplateContainerEnvArgs(name=key, value=value)
                            for key, value in sorted(args.env.items())
                        ],
                    )
                ],
            ),
            opts=pulumi.ResourceOptions.merge(
                child, pulumi.ResourceOptions(ignore_changes=None if args.manage_image else IMAGE_FIELDS)
            ),
        )
        self.invoker_grants: list[pulumi.CustomResource] = [
            gcp.cloudrunv2.ServiceIamMember(
                f"{name}-{label}",
                project=args.project,
                location=args.location,
                name=self.service.name,
                role=RUN_INVOKER,
                member=member,
                opts=child,
            )
            for label, member in args.invokers.items()
        ]
        self.uri: pulumi.Output[str] = self.service.uri
        self.name: pulumi.Output[str] = self.service.name
        self.runtime_email: pulumi.Output[str] = self.runtime_account.email
        self.register_outputs({"uri": self.uri, "runtime_email": self.runtime_email})
