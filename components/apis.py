"""The Google APIs this stack calls, enabled before anything that calls them."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

CLOUD_TASKS_API = "cloudtasks.googleapis.com"
CLOUD_RUN_API = "run.googleapis.com"
IAM_API = "iam.googleapis.com"
SECRET_MANAGER_API = "secretmanager.googleapis.com"  # only when the service reads secrets
MONITORING_API = "monitoring.googleapis.com"  # only when monitoring is enabled
DEFAULT_APIS = (CLOUD_TASKS_API, CLOUD_RUN_API, IAM_API)


@dataclass(frozen=True)
class ProjectApisArgs:
    """The project, and the APIs to enable in it."""

    project: pulumi.Input[str]
    services: tuple[str, ...] = DEFAULT_APIS


class ProjectApis(pulumi.ComponentResource):
    """One `projects.Service` per API; `apis[name]` is what a resource calling that API depends on."""

    def __init__(self, name: str, args: ProjectApisArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cloudrun-tasks:index:ProjectApis", name, None, opts)
        self.apis: dict[str, gcp.projects.Service] = {
            api: gcp.projects.Service(
                f"{name}-{api.split('.')[0]}",
                project=args.project,
                service=api,
                # Destroying this stack must never switch an API off for the whole project: other
                # workloads use it too. Both flags set explicitly rather than trusting provider defaults.
                disable_on_destroy=False,
                disable_dependent_services=False,
                opts=pulumi.ResourceOptions(parent=self),
            )
            for api in args.services
        }
        self.register_outputs({})
