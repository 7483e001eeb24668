"""The task handler: a private Cloud Run service with its own runtime identity."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_gcp as gcp

from components.options import child_options
from components.settings import Ingress, ProbeSettings, SecretEnv, VpcEgress

RUN_INVOKER = "roles/run.invoker"
SECRET_ACCESSOR = "roles/secretmanager.secretAccessor"
CONTAINER_PORT = 8080
HEALTH_PATH = "/health"  # the handler's; Cloud Run reserves paths ending in "z"
# What CD tools change on the service when they deploy (gcloud run deploy, Cloud Deploy): the image, the
# revision name, the template's labels and annotations, and the client fields. Ignored when the stack does
# not manage the image, as cloud-foundation-fabric's cloud-run-v2 module does; Pulumi.yaml's
# `refresh: always` then keeps state at what runs, so an update never sends an old image back.
CD_MANAGED_FIELDS = [
    "client",
    "clientVersion",
    "template.revision",
    "template.labels",
    "template.annotations",
    "template.containers[*].image",
]


@dataclass(frozen=True)
class TaskHandlerServiceArgs:
    """The service, its runtime account and who may invoke it: image, scaling, resources, probes, environment."""

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
    # False bills CPU only while a request runs; True keeps it allocated (instance-based billing).
    cpu_always_allocated: bool
    startup_cpu_boost: bool
    startup_probe: ProbeSettings
    liveness_probe: ProbeSettings
    vpc: VpcEgress | None
    env: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    # Env vars read from Secret Manager; the runtime account may read each named secret, and nothing else.
    secret_env: Sequence[SecretEnv] = ()
    labels: Mapping[str, str] = field(default_factory=dict)


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
        # One grant per secret, however many variables read it (versions of a secret share its IAM).
        secrets = dict.fromkeys((secret.project, secret.secret) for secret in args.secret_env)
        secret_grants = [self._secret_grant(name, owner, secret, args.project, child) for owner, secret in secrets]
        self.service = gcp.cloudrunv2.Service(
            name,
            name=args.service_name,
            project=args.project,
            location=args.location,
            labels=dict(args.labels),
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
                vpc_access=_vpc_access(args.vpc) if args.vpc else None,
                containers=[
                    gcp.cloudrunv2.ServiceTemplateContainerArgs(
                        image=args.image,
                        ports=gcp.cloudrunv2.ServiceTemplateContainerPortsArgs(container_port=CONTAINER_PORT),
                        resources=gcp.cloudrunv2.ServiceTemplateContainerResourcesArgs(
                            limits={"cpu": args.cpu, "memory": args.memory},
                            # Explicit: once limits are set, leaving cpu_idle out allocates CPU all the time.
                            cpu_idle=not args.cpu_always_allocated,
                            startup_cpu_boost=args.startup_cpu_boost,
                        ),
                        startup_probe=gcp.cloudrunv2.ServiceTemplateContainerStartupProbeArgs(
                            **_probe_timing(args.startup_probe),
                            http_get=gcp.cloudrunv2.ServiceTemplateContainerStartupProbeHttpGetArgs(
                                path=HEALTH_PATH, port=CONTAINER_PORT
                            ),
                        ),
                        liveness_probe=gcp.cloudrunv2.ServiceTemplateContainerLivenessProbeArgs(
                            **_probe_timing(args.liveness_probe),
                            http_get=gcp.cloudrunv2.ServiceTemplateContainerLivenessProbeHttpGetArgs(
                                path=HEALTH_PATH, port=CONTAINER_PORT
                            ),
                        ),
                        envs=[
                            *(
                                gcp.cloudrunv2.ServiceTemplateContainerEnvArgs(name=key, value=value)
                                for key, value in sorted(args.env.items())
                            ),
                            *(_secret_env(secret) for secret in args.secret_env),
                        ],
                    )
                ],
            ),
            opts=pulumi.ResourceOptions.merge(
                child,
                pulumi.ResourceOptions(
                    ignore_changes=None if args.manage_image else CD_MANAGED_FIELDS,
                    # A revision whose account cannot read its secrets never starts.
                    depends_on=secret_grants,
                ),
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
        self.secret_grants = secret_grants
        self.uri: pulumi.Output[str] = self.service.uri
        self.name: pulumi.Output[str] = self.service.name
        self.runtime_email: pulumi.Output[str] = self.runtime_account.email
        self.runtime_member: pulumi.Output[str] = self.runtime_account.member
        self.register_outputs({"uri": self.uri, "runtime_email": self.runtime_email})

    def _secret_grant(
        self,
        name: str,
        owner: str | None,
        secret: str,
        project: pulumi.Input[str],
        opts: pulumi.ResourceOptions,
    ) -> pulumi.CustomResource:
        grant: pulumi.CustomResource = gcp.secretmanager.SecretIamMember(
            f"{name}-secret-{owner}-{secret}" if owner else f"{name}-secret-{secret}",
            project=owner or project,
            secret_id=secret,
            role=SECRET_ACCESSOR,
            member=self.runtime_account.member,
            opts=opts,
        )
        return grant


def _probe_timing(probe: ProbeSettings) -> dict[str, int]:
    return {
        "initial_delay_seconds": probe.initial_delay_seconds,
        "period_seconds": probe.period_seconds,
        "timeout_seconds": probe.timeout_seconds,
        "failure_threshold": probe.failure_threshold,
    }


def _secret_env(secret: SecretEnv) -> gcp.cloudrunv2.ServiceTemplateContainerEnvArgs:
    # A secret of the stack's own project by its id; another project's by its full name.
    reference = f"projects/{secret.project}/secrets/{secret.secret}" if secret.project else secret.secret
    return gcp.cloudrunv2.ServiceTemplateContainerEnvArgs(
        name=secret.name,
        value_source=gcp.cloudrunv2.ServiceTemplateContainerEnvValueSourceArgs(
            secret_key_ref=gcp.cloudrunv2.ServiceTemplateContainerEnvValueSourceSecretKeyRefArgs(
                secret=reference, version=secret.version
            )
        ),
    )


def _vpc_access(vpc: VpcEgress) -> gcp.cloudrunv2.ServiceTemplateVpcAccessArgs:
    """Direct VPC egress: the handler reaches private addresses (databases) through this network."""
    return gcp.cloudrunv2.ServiceTemplateVpcAccessArgs(
        egress=vpc.egress,
        network_interfaces=[
            gcp.cloudrunv2.ServiceTemplateVpcAccessNetworkInterfaceArgs(
                network=vpc.network, subnetwork=vpc.subnetwork, tags=list(vpc.network_tags) or None
            )
        ],
    )
