"""The invoker identity: the service account whose OIDC tokens Cloud Tasks attaches to each task."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from components.apis import CLOUD_TASKS_API
from components.options import child_options

SERVICE_ACCOUNT_USER = "roles/iam.serviceAccountUser"
TASKS_SERVICE_AGENT = "roles/cloudtasks.serviceAgent"


@dataclass(frozen=True)
class InvokerIdentityArgs:
    """The invoker account's project and id, and the principals who may act as it."""

    project: pulumi.Input[str]
    account_id: str
    # Principals that create tasks naming this account in their OIDC token (they need actAs on it).
    enqueuers: Sequence[str] = ()
    # Principals that replay dead letters: a replayed task carries this account's token, so they need actAs too.
    operators: Sequence[str] = ()


class InvokerIdentity(pulumi.ComponentResource):
    """The invoker account, and who may act as it: the Cloud Tasks service agent, the enqueuers, the operators.

    Every grant is on this one account, never project-wide: project-level Service Account User would
    let an enqueuer mint tokens as any account in the project.
    """

    def __init__(self, name: str, args: InvokerIdentityArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cloudrun-tasks:index:InvokerIdentity", name, None, opts)
        child = child_options(self, opts)
        self.account = gcp.serviceaccount.Account(
            name,
            project=args.project,
            account_id=args.account_id,
            display_name="Cloud Tasks invoker",
            description="Identity in the OIDC tokens Cloud Tasks sends to the task handler; holds run.invoker on it.",
            opts=child,
        )
        # The agent may not exist until the API is first used; asking for its identity creates it.
        tasks_agent = gcp.projects.ServiceIdentity(
            f"{name}-tasks-agent", project=args.project, service=CLOUD_TASKS_API, opts=child
        )
        # The agent's own role, which holds getOpenIdToken. Google grants it when the API is enabled, but not
        # to an agent that ServiceIdentity creates first. This is the stack's one project-level grant: a
        # service agent's role is granted on the project, as Google's own automatic grant is.
        agent_role = gcp.projects.IAMMember(
            f"{name}-tasks-agent-role",
            project=args.project,
            role=TASKS_SERVICE_AGENT,
            member=tasks_agent.member,
            opts=child,
        )
        # Current Google guide: the agent needs Service Account User on the account it mints tokens for.
        self.grants: list[pulumi.CustomResource] = [
            agent_role,
            self._act_as(f"{name}-tasks-agent-user", tasks_agent.member, child),
        ]
        self.grants += [
            self._act_as(f"{name}-user-{member}", member, child)
            for member in dict.fromkeys((*args.enqueuers, *args.operators))
        ]
        self.email: pulumi.Output[str] = self.account.email
        self.member: pulumi.Output[str] = self.account.member
        self.register_outputs({"email": self.email})

    def _act_as(self, name: str, member: pulumi.Input[str], opts: pulumi.ResourceOptions) -> pulumi.CustomResource:
        grant: pulumi.CustomResource = gcp.serviceaccount.IAMMember(
            name,
            # The fully qualified name (projects/.../serviceAccounts/EMAIL), not the email.
            service_account_id=self.account.name,
            role=SERVICE_ACCOUNT_USER,
            member=member,
            opts=opts,
        )
        return grant
