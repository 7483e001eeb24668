"""The deployer identity: GitHub Actions deploys the stacks as a service account, with no key anywhere.

`DeployerIdentity` builds a Workload Identity pool with a GitHub OIDC provider that accepts tokens from
one repository only, the deployer service account that repository may impersonate, and the project
roles `pulumi up` of cloudrun-tasks needs (README, "Prerequisites"). The `deployer/` program runs it
once per Google Cloud project, as an admin; the workflow then reads the two exported values.

Its config is read by `components.settings.load_deployer_settings`; `DeployerIdentityArgs.of` turns
those settings into the component's args.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from components.apis import IAM_API, ProjectApis, ProjectApisArgs
from components.options import child_options
from components.settings import (
    DEFAULT_DEPLOY_ACCOUNT_ID,
    DEFAULT_DEPLOY_BRANCH,
    DEFAULT_POOL_ID,
    DEFAULT_PROVIDER_ID,
    DeployerSettings,
)

GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
WORKLOAD_IDENTITY_USER = "roles/iam.workloadIdentityUser"

IAM_CREDENTIALS_API = "iamcredentials.googleapis.com"  # generateAccessToken: impersonating the account
STS_API = "sts.googleapis.com"  # exchanging the GitHub token for a federated one
RESOURCE_MANAGER_API = "cloudresourcemanager.googleapis.com"  # project IAM policy (the role grants)
FEDERATION_APIS = (IAM_API, IAM_CREDENTIALS_API, STS_API, RESOURCE_MANAGER_API)

# What `pulumi up` of cloudrun-tasks needs on the project: README's deployer roles table, exactly.
# Each was weighed:
# - serviceusage.serviceUsageAdmin: enables the three APIs and creates the Cloud Tasks service identity
#   (services.generateServiceIdentity is in no narrower predefined role).
# - iam.serviceAccountAdmin: creates the invoker and runtime accounts and sets IAM on them.
# - iam.serviceAccountUser stays project-wide. Scoping it to the two accounts would need them to exist
#   before the first `pulumi up`, which creates them, and it would narrow nothing: serviceAccountAdmin
#   on the project already lets its holder grant itself actAs on any account there. The real narrowing
#   is an IAM condition on both roles limiting them to the stack's account names; not done here.
# - run.admin and cloudtasks.admin: the service, the queues, and IAM on each (setIamPolicy is only in
#   the admin roles; run.developer and cloudtasks.queueAdmin lack it).
# Never granted: workloadIdentityUser or serviceAccountTokenCreator at project level (either would let
# the federated identity impersonate every account in the project), nor any key.
DEPLOYER_ROLES = (
    "roles/serviceusage.serviceUsageAdmin",
    "roles/iam.serviceAccountAdmin",
    "roles/iam.serviceAccountUser",
    "roles/run.admin",
    "roles/cloudtasks.admin",
)

# GitHub's token claims that exist on every job; a mapping that names a claim a token lacks fails the
# exchange. google.subject is what Cloud Audit Logs show as the caller.
ATTRIBUTE_MAPPING = {
    "google.subject": "assertion.sub",
    "attribute.repository": "assertion.repository",
    "attribute.repository_owner": "assertion.repository_owner",
    "attribute.ref": "assertion.ref",
    "attribute.event_name": "assertion.event_name",
    "attribute.actor": "assertion.actor",
    "attribute.workflow_ref": "assertion.workflow_ref",
}


@dataclass(frozen=True)
class DeployerIdentityArgs:
    project: pulumi.Input[str]
    # "owner/repo", as GitHub spells it: the OIDC claim is compared exactly.
    repository: str
    pool_id: str = DEFAULT_POOL_ID
    provider_id: str = DEFAULT_PROVIDER_ID
    account_id: str = DEFAULT_DEPLOY_ACCOUNT_ID
    # Tokens are accepted from pushes to this branch and from pull requests, nothing else (a workflow
    # pushed to another branch gets none). Fork pull requests get no token from GitHub at all.
    deploy_branch: str = DEFAULT_DEPLOY_BRANCH
    roles: tuple[str, ...] = DEPLOYER_ROLES
    apis: tuple[str, ...] = FEDERATION_APIS

    @classmethod
    def of(cls, settings: DeployerSettings) -> DeployerIdentityArgs:
        return cls(
            project=settings.project,
            repository=settings.repository,
            pool_id=settings.pool_id,
            provider_id=settings.provider_id,
            account_id=settings.account_id,
            deploy_branch=settings.deploy_branch,
        )


def attribute_condition(repository: str, deploy_branch: str) -> str:
    """The CEL condition every GitHub token must meet. Both values are validated: no quote reaches it."""
    return (
        f"assertion.repository == '{repository}'"
        f" && (assertion.ref == 'refs/heads/{deploy_branch}' || assertion.event_name == 'pull_request')"
    )


def repository_principal_set(pool_name: str, repository: str) -> str:
    """Every identity the pool issues for `repository`'s workflows (`pool_name`: projects/N/.../pools/ID)."""
    return f"principalSet://iam.googleapis.com/{pool_name}/attribute.repository/{repository}"


class DeployerIdentity(pulumi.ComponentResource):
    """Pool, GitHub provider, deployer account, its impersonation grant, and its project roles.

    `workload_identity_provider` and `service_account` are the two inputs of
    google-github-actions/auth; both resolve only once the grants that make them work exist.
    """

    def __init__(self, name: str, args: DeployerIdentityArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("cloudrun-tasks:index:DeployerIdentity", name, None, opts)
        self._child = child_options(self, opts)
        apis = ProjectApis(f"{name}-apis", ProjectApisArgs(project=args.project, services=args.apis), self._child)
        iam_api = self._after(apis.apis[IAM_API])
        pool = gcp.iam.WorkloadIdentityPool(
            f"{name}-pool",
            project=args.project,
            workload_identity_pool_id=args.pool_id,
            display_name="GitHub Actions",
            description=f"GitHub Actions workflows of {args.repository}",
            opts=iam_api,
        )
        provider = gcp.iam.WorkloadIdentityPoolProvider(
            f"{name}-provider",
            project=args.project,
            workload_identity_pool_id=pool.workload_identity_pool_id,
            workload_identity_pool_provider_id=args.provider_id,
            display_name="GitHub",
            description=f"GitHub OIDC tokens of {args.repository}",
            attribute_mapping=ATTRIBUTE_MAPPING,
            # Google requires a condition for GitHub's shared issuer: without one, any repository on
            # GitHub could exchange its tokens in this pool.
            attribute_condition=attribute_condition(args.repository, args.deploy_branch),
            # No allowed_audiences: the default (this provider's own name) is what the auth action sends.
            oidc=gcp.iam.WorkloadIdentityPoolProviderOidcArgs(issuer_uri=GITHUB_ISSUER),
            opts=iam_api,
        )
        account = gcp.serviceaccount.Account(
            name,
            project=args.project,
            account_id=args.account_id,
            display_name="Pulumi deployer",
            description=f"Runs pulumi preview and up for {args.repository} from GitHub Actions; it has no keys.",
            opts=iam_api,
        )
        # On the account itself, for that repository's identities only.
        impersonation = gcp.serviceaccount.IAMMember(
            f"{name}-workload-identity-user",
            service_account_id=account.name,
            role=WORKLOAD_IDENTITY_USER,
            member=pool.name.apply(lambda pool_name: repository_principal_set(pool_name, args.repository)),
            opts=iam_api,
        )
        # Additive members: an authoritative binding would strip the role from everyone else holding it.
        grants = [
            gcp.projects.IAMMember(
                f"{name}-{role.removeprefix('roles/').replace('.', '-')}",
                project=args.project,
                role=role,
                member=account.member,
                opts=self._after(apis.apis[RESOURCE_MANAGER_API]),
            )
            for role in args.roles
        ]
        # A token exchange needs STS and impersonation needs IAM Credentials, besides the grants.
        usable = [impersonation, *grants, *(apis.apis[api] for api in (STS_API, IAM_CREDENTIALS_API))]
        self.workload_identity_provider: pulumi.Output[str] = _after_all(provider.name, usable)
        self.service_account: pulumi.Output[str] = _after_all(account.email, usable)
        self.register_outputs(
            {"workload_identity_provider": self.workload_identity_provider, "service_account": self.service_account}
        )

    def _after(self, *resources: pulumi.Resource) -> pulumi.ResourceOptions:
        """A child's options: parented here, after `resources` and after what the component waits for."""
        return pulumi.ResourceOptions.merge(self._child, pulumi.ResourceOptions(depends_on=list(resources)))


def _after_all(value: pulumi.Input[str], resources: list[pulumi.CustomResource]) -> pulumi.Output[str]:
    """`value`, resolved only once every one of `resources` exists."""
    return pulumi.Output.all(value, *(r.id for r in resources)).apply(lambda values: values[0])
