"""The deployer identities: GitHub Actions previews and deploys the stacks as service accounts, with no key.

`DeployerIdentity` builds a Workload Identity pool with a GitHub OIDC provider that accepts tokens from
one repository only, and two accounts:

- the deployer, with the project roles `pulumi up` of cloudrun-tasks needs (README, "Prerequisites"),
  which only a job on the deploy branch running in one of the project's GitHub environments may
  impersonate (the environment's reviewers and branch rules guard it);
- the previewer, with read-only roles, which pull requests impersonate: a pull request runs its
  branch's own code, so whatever account it gets, that code gets.

The `deployer/` program runs it once per Google Cloud project, as an admin; the workflow then reads the
exported values.

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
    DEFAULT_PREVIEW_ACCOUNT_ID,
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
# - resourcemanager.projectIamAdmin, limited by an IAM condition to granting the Cloud Tasks service
#   agent's role: the stack's one project-level grant. Unlimited, it would let the deployer grant itself
#   any role on the project.
# - secretmanager.admin, limited by an IAM condition to granting secretAccessor: the runtime account's
#   grant on each secret named in service.secretEnv (setIamPolicy on a secret is in no narrower role).
# Never granted: workloadIdentityUser or serviceAccountTokenCreator at project level (either would let
# the federated identity impersonate every account in the project), nor any key.
DEPLOYER_ROLES = (
    "roles/serviceusage.serviceUsageAdmin",
    "roles/iam.serviceAccountAdmin",
    "roles/iam.serviceAccountUser",
    "roles/run.admin",
    "roles/cloudtasks.admin",
    "roles/resourcemanager.projectIamAdmin",
    "roles/secretmanager.admin",
)
# Role -> the only roles its holder may grant with it (IAM conditions on modifiedGrantsByRole). A call that
# grants nothing (reading a policy, creating a secret) has no such attribute and is not limited.
GRANT_LIMITS = {
    "roles/resourcemanager.projectIamAdmin": ("roles/cloudtasks.serviceAgent",),
    "roles/secretmanager.admin": ("roles/secretmanager.secretAccessor",),
}

# What `pulumi preview --refresh` of cloudrun-tasks reads, and nothing that writes: a pull request runs
# as this account. Each role's permissions are only get, list and getIamPolicy (Google's role pages,
# cloud.google.com/iam/docs/roles-permissions/<service>; permission lists as in iann0036/iam-dataset):
# - serviceusage.serviceUsageViewer: refreshing each enabled API (serviceusage.services.get).
# - iam.serviceAccountViewer: the invoker and runtime accounts, and the actAs grants on them
#   (iam.serviceAccounts.get and .getIamPolicy); also resourcemanager.projects.get, which the program's
#   project-number lookup needs.
# - run.viewer: the service and its invoker grant (run.services.get and .getIamPolicy).
# - cloudtasks.viewer: the queues (cloudtasks.queues.get). It also reads tasks (tasks.fullView): there
#   is no narrower predefined Cloud Tasks reader.
# - iam.securityReviewer: the IAM policies no viewer above reads: the queues' enqueuer grants
#   (cloudtasks.queues.getIamPolicy is otherwise only in queueAdmin and admin, which write), the
#   project's (the service agent's role) and the secrets' (secretmanager.secrets.getIamPolicy). It can
#   read every IAM policy in the project; it can change none.
# ServiceIdentity and RandomId read nothing on refresh (the provider has no read call for the first).
PREVIEW_ROLES = (
    "roles/serviceusage.serviceUsageViewer",
    "roles/iam.serviceAccountViewer",
    "roles/run.viewer",
    "roles/cloudtasks.viewer",
    "roles/iam.securityReviewer",
)

# A mapping that names a claim a token lacks fails the exchange: GitHub adds `environment` only to a job
# that names one (docs.github.com/en/actions/reference/security/oidc), so pull requests have none and
# every use of it is guarded by has(). google.subject is what Cloud Audit Logs show as the caller.
ATTRIBUTE_MAPPING = {
    "google.subject": "assertion.sub",
    "attribute.repository": "assertion.repository",
    "attribute.repository_owner": "assertion.repository_owner",
    "attribute.ref": "assertion.ref",
    "attribute.event_name": "assertion.event_name",
    "attribute.actor": "assertion.actor",
    "attribute.workflow_ref": "assertion.workflow_ref",
    # A principalSet names one attribute, so the two an account is bound to are built here from several
    # claims. ':' separates them: no repository or git ref can contain one, so the value parses one way.
    # "owner/repo:refs/heads/main:prod"; a job with no environment ends in ':', which no grant names.
    "attribute.repository_ref_environment": (
        "assertion.repository + ':' + assertion.ref + ':' + (has(assertion.environment) ? assertion.environment : '')"
    ),
    # "owner/repo:pull_request".
    "attribute.repository_event": "assertion.repository + ':' + assertion.event_name",
}


@dataclass(frozen=True)
class DeployerIdentityArgs:
    """The deployer project, the GitHub repository and environments it trusts, and the ids of what it creates."""

    project: pulumi.Input[str]
    # "owner/repo", as GitHub spells it: the OIDC claim is compared exactly.
    repository: str
    # GitHub environments whose jobs, on deploy_branch, may impersonate the deployer; no default (see
    # components.settings). Give each required reviewers and limit it to deploy_branch in GitHub.
    deploy_environments: tuple[str, ...]
    pool_id: str = DEFAULT_POOL_ID
    provider_id: str = DEFAULT_PROVIDER_ID
    account_id: str = DEFAULT_DEPLOY_ACCOUNT_ID
    preview_account_id: str = DEFAULT_PREVIEW_ACCOUNT_ID
    # The pool takes tokens from pushes to this branch and from pull requests, nothing else (a workflow
    # pushed to another branch gets none). Fork pull requests get no token from GitHub at all. Which
    # account a token may then impersonate is decided by each account's grant.
    deploy_branch: str = DEFAULT_DEPLOY_BRANCH
    roles: tuple[str, ...] = DEPLOYER_ROLES
    preview_roles: tuple[str, ...] = PREVIEW_ROLES
    apis: tuple[str, ...] = FEDERATION_APIS

    @classmethod
    def of(cls, settings: DeployerSettings) -> DeployerIdentityArgs:
        return cls(
            project=settings.project,
            repository=settings.repository,
            deploy_environments=settings.deploy_environments,
            pool_id=settings.pool_id,
            provider_id=settings.provider_id,
            account_id=settings.account_id,
            preview_account_id=settings.preview_account_id,
            deploy_branch=settings.deploy_branch,
        )


def attribute_condition(repository: str, deploy_branch: str) -> str:
    """The CEL condition every GitHub token must meet. Both values are validated: no quote reaches it."""
    return (
        f"assertion.repository == '{repository}'"
        f" && (assertion.ref == 'refs/heads/{deploy_branch}' || assertion.event_name == 'pull_request')"
    )


def deploy_principal_set(pool_name: str, repository: str, deploy_branch: str, environment: str) -> str:
    """The jobs of `repository` on `deploy_branch` that run in GitHub environment `environment`.

    `pool_name` is projects/NUMBER/locations/global/workloadIdentityPools/ID. Matches the value
    ATTRIBUTE_MAPPING builds in attribute.repository_ref_environment.
    """
    value = f"{repository}:refs/heads/{deploy_branch}:{environment}"
    return f"principalSet://iam.googleapis.com/{pool_name}/attribute.repository_ref_environment/{value}"


def preview_principal_set(pool_name: str, repository: str) -> str:
    """The jobs of `repository` that a pull_request event started (attribute.repository_event)."""
    return f"principalSet://iam.googleapis.com/{pool_name}/attribute.repository_event/{repository}:pull_request"


class DeployerIdentity(pulumi.ComponentResource):
    """Pool, GitHub provider, and two accounts (deployer, previewer), each with its grants and roles.

    `workload_identity_provider` and `service_account` / `preview_service_account` are the inputs of
    google-github-actions/auth; each resolves only once the grants that make it work exist.
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
            description=f"Runs pulumi up for {args.repository} from GitHub Actions; it has no keys.",
            opts=iam_api,
        )
        # On the account itself, for jobs on the deploy branch in one of the environments only: the
        # environment's required reviewers then stand between a merge and the project.
        impersonations = [
            gcp.serviceaccount.IAMMember(
                f"{name}-workload-identity-user-{environment}",
                service_account_id=account.name,
                role=WORKLOAD_IDENTITY_USER,
                member=pool.name.apply(
                    lambda pool_name, environment=environment: deploy_principal_set(
                        pool_name, args.repository, args.deploy_branch, environment
                    )
                ),
                opts=iam_api,
            )
            for environment in args.deploy_environments
        ]
        grants = self._project_roles(name, args, account, args.roles, apis)
        preview_account = gcp.serviceaccount.Account(
            f"{name}-preview",
            project=args.project,
            account_id=args.preview_account_id,
            display_name="Pulumi previewer",
            description=(
                f"Runs pulumi preview --refresh for pull requests of {args.repository}: read-only; it has no keys."
            ),
            opts=iam_api,
        )
        preview_impersonation = gcp.serviceaccount.IAMMember(
            f"{name}-preview-workload-identity-user",
            service_account_id=preview_account.name,
            role=WORKLOAD_IDENTITY_USER,
            member=pool.name.apply(lambda pool_name: preview_principal_set(pool_name, args.repository)),
            opts=iam_api,
        )
        preview_grants = self._project_roles(f"{name}-preview", args, preview_account, args.preview_roles, apis)
        # A token exchange needs STS and impersonation needs IAM Credentials, besides the grants.
        federation = [apis.apis[api] for api in (STS_API, IAM_CREDENTIALS_API)]
        deploys = [*impersonations, *grants, *federation]
        previews = [preview_impersonation, *preview_grants, *federation]
        self.workload_identity_provider: pulumi.Output[str] = _after_all(provider.name, [*deploys, *previews])
        self.service_account: pulumi.Output[str] = _after_all(account.email, deploys)
        self.preview_service_account: pulumi.Output[str] = _after_all(preview_account.email, previews)
        self.register_outputs(
            {
                "workload_identity_provider": self.workload_identity_provider,
                "service_account": self.service_account,
                "preview_service_account": self.preview_service_account,
            }
        )

    def _project_roles(
        self,
        prefix: str,
        args: DeployerIdentityArgs,
        account: gcp.serviceaccount.Account,
        roles: tuple[str, ...],
        apis: ProjectApis,
    ) -> list[pulumi.CustomResource]:
        # Additive members: an authoritative binding would strip the role from everyone else holding it.
        return [
            gcp.projects.IAMMember(
                f"{prefix}-{role.removeprefix('roles/').replace('.', '-')}",
                project=args.project,
                role=role,
                member=account.member,
                condition=_grant_limit(role),
                opts=self._after(apis.apis[RESOURCE_MANAGER_API]),
            )
            for role in roles
        ]

    def _after(self, *resources: pulumi.Resource) -> pulumi.ResourceOptions:
        """A child's options: parented here, after `resources` and after what the component waits for."""
        return pulumi.ResourceOptions.merge(self._child, pulumi.ResourceOptions(depends_on=list(resources)))


def _grant_limit(role: str) -> gcp.projects.IAMMemberConditionArgs | None:
    limit = GRANT_LIMITS.get(role)
    if limit is None:
        return None
    allowed = ", ".join(f"'{granted}'" for granted in limit)
    return gcp.projects.IAMMemberConditionArgs(
        title=f"grants only {', '.join(g.removeprefix('roles/') for g in limit)}",
        description="cloudrun-tasks deployer: the one role this stack grants with it",
        expression=f"api.getAttribute('iam.googleapis.com/modifiedGrantsByRole', []).hasOnly([{allowed}])",
    )


def _after_all(value: pulumi.Input[str], resources: list[pulumi.CustomResource]) -> pulumi.Output[str]:
    """`value`, resolved only once every one of `resources` exists."""
    return pulumi.Output.all(value, *(r.id for r in resources)).apply(lambda values: values[0])
