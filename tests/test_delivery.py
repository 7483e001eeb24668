"""The delivery pipeline: .github/workflows/deploy.yml, and the deployer program (deployer/) it relies on.

The workflow is validated against GitHub's workflow schema (check-jsonschema's vendored copy, offline),
then its shape is checked: triggers, least permissions, keyless auth, pinned actions, previews with the
policy pack, `pulumi up` only on main, one deploy job per `Pulumi.<stack>.yaml`, dev before prod.
The deployer program runs under Pulumi's mocks, like the main program (localcloud.program.evaluate),
and the Workload Identity provider it registers is exercised: its CEL attribute mapping and condition
run (cel-python) on GitHub-shaped token claims, to show which job may impersonate which account.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from components.deployer import DEPLOYER_ROLES, GITHUB_ISSUER, GRANT_LIMITS, PREVIEW_ROLES
from components.settings import (
    DEFAULT_DEPLOY_ACCOUNT_ID,
    DEFAULT_DEPLOY_BRANCH,
    DEFAULT_POOL_ID,
    DEFAULT_PREVIEW_ACCOUNT_ID,
    DEFAULT_PROVIDER_ID,
    DEPLOYER_KEYS,
    DEPLOYER_NAMESPACE,
    branch_problem,
    environment_problem,
    repository_problem,
)
from gcp_schema import schema_problems
from harness import cli_value
from localcloud.program import PROJECT_DIR, ProgramError, ProgramRun, Registration, SimulatedGcp, evaluate

WORKFLOW_PATH = PROJECT_DIR / ".github" / "workflows" / "deploy.yml"
DEPLOYER_DIR = PROJECT_DIR / "deployer"
DEPLOYER_PROGRAM = DEPLOYER_DIR / "__main__.py"

# The environment stacks: one per stack file beside Pulumi.yaml.
STACKS = sorted(path.name.removeprefix("Pulumi.").removesuffix(".yaml") for path in PROJECT_DIR.glob("Pulumi.*.yaml"))
AUTH_ACTION = "google-github-actions/auth"
PULUMI_ACTION = "pulumi/actions"
FIRST_PARTY = ("actions/", "github/")


# --- reading the workflow -------------------------------------------------------------------------


def load_workflow(text: str | None = None) -> dict[str, Any]:
    document: dict[Any, Any] = yaml.safe_load(WORKFLOW_PATH.read_text() if text is None else text)
    # YAML 1.1 reads the key `on` as the boolean true.
    if True in document:
        document["on"] = document.pop(True)
    return document


WORKFLOW = load_workflow()
JOBS: dict[str, dict[str, Any]] = WORKFLOW["jobs"]


def steps(job: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps", []))


def action(step: Mapping[str, Any]) -> str:
    """`owner/repo` of a step's action ('' for a run step)."""
    return str(step.get("uses", "")).partition("@")[0]


def commands(job: Mapping[str, Any]) -> list[str]:
    return [str(step["run"]) for step in steps(job) if "run" in step]


def runs_pulumi(step: Mapping[str, Any], verb: str = "") -> bool:
    return bool(re.search(rf"(^|\s)pulumi {verb}", str(step.get("run", ""))))


def jobs_running(verb: str) -> dict[str, dict[str, Any]]:
    return {name: job for name, job in JOBS.items() if any(runs_pulumi(s, verb) for s in steps(job))}


def needs(job: Mapping[str, Any]) -> list[str]:
    value = job.get("needs", [])
    return [value] if isinstance(value, str) else list(value)


def upstream(name: str) -> set[str]:
    """Every job `name` waits for, transitively."""
    seen: set[str] = set()
    todo = needs(JOBS[name])
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += needs(JOBS[current])
    return seen


def step_index(job: Mapping[str, Any], predicate: Any) -> int:
    return next(i for i, step in enumerate(steps(job)) if predicate(step))


def deploy_jobs() -> dict[str, str]:
    """Stack -> the job that runs `pulumi up` for it (its STACK variable)."""
    return {job["env"]["STACK"]: name for name, job in jobs_running("up").items()}


def every_step() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, job in JOBS.items():
        for step in steps(job):
            yield name, step


def check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- schema -----------------------------------------------------------------------------------------


def test_workflow_is_valid_against_githubs_workflow_schema() -> None:
    result = check_jsonschema(WORKFLOW_PATH)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("broken", "replacement"),
    [
        ("    runs-on: ubuntu-latest\n", "    runz-on: ubuntu-latest\n"),
        ("      id-token: write", "      id-token: admin"),
        ("on: [push, pull_request]", "on: [push, pull_requests]"),
    ],
)
def test_the_schema_check_rejects_a_broken_workflow(tmp_path: Path, broken: str, replacement: str) -> None:
    text = WORKFLOW_PATH.read_text()
    assert broken in text
    copy = tmp_path / "deploy.yml"
    copy.write_text(text.replace(broken, replacement, 1))
    assert check_jsonschema(copy).returncode != 0


# --- triggers and order ------------------------------------------------------------------------------


def test_tests_run_on_every_push_and_pull_request_with_python_3_11() -> None:
    triggers = WORKFLOW["on"]
    assert sorted(triggers) == ["pull_request", "push"]
    if isinstance(triggers, dict):  # no branch or path filters
        assert all(not value for value in triggers.values())
    test = JOBS["test"]
    assert "if" not in test and not needs(test)
    assert [action(s) for s in steps(test)[:2]] == ["actions/checkout", "actions/setup-python"]
    assert steps(test)[1]["with"]["python-version"] == "3.11"
    assert commands(test) == ["make test"]


def test_make_test_runs_before_any_preview_or_up() -> None:
    pulumi_jobs = jobs_running("")
    assert set(pulumi_jobs) == {*jobs_running("preview"), *jobs_running("up")}
    assert len(pulumi_jobs) == 1 + len(STACKS)
    for name in pulumi_jobs:
        assert "test" in upstream(name), name
        assert "make test" not in commands(JOBS[name])  # tested once, in the job they wait for


def test_python_dependencies_are_installed_by_make_before_pulumi_runs() -> None:
    for name, job in jobs_running("").items():
        setup_python = step_index(job, lambda s: action(s) == "actions/setup-python")
        make_deps = step_index(job, lambda s: s.get("run") == "make deps")
        first_pulumi = step_index(job, runs_pulumi)
        assert setup_python < make_deps < first_pulumi, name
        assert steps(job)[setup_python]["with"]["python-version"] == "3.11"


def test_the_make_target_the_workflow_calls_exists() -> None:
    make_runs = [str(step["run"]) for _, step in every_step() if str(step.get("run", "")).startswith("make ")]
    targets = {command.split()[1] for command in make_runs}
    assert targets == {"test", "deps"}
    for target in targets:
        dry_run = subprocess.run(["make", "-n", target], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=60)
        assert dry_run.returncode == 0, f"make {target}: {dry_run.stderr}"


# --- permissions and credentials ---------------------------------------------------------------------


def test_permissions_are_least_and_id_token_only_where_auth_happens() -> None:
    assert WORKFLOW["permissions"] == {}
    for name, job in JOBS.items():
        authenticates = any(action(s) == AUTH_ACTION for s in steps(job))
        expected = {"contents": "read", "id-token": "write"} if authenticates else {"contents": "read"}
        assert job.get("permissions") == expected, name
    assert {name for name, job in JOBS.items() if "id-token" in job["permissions"]} == set(jobs_running(""))


def test_no_service_account_key_anywhere() -> None:
    text = WORKFLOW_PATH.read_text()
    for forbidden in ("credentials_json", "GOOGLE_CREDENTIALS", "GOOGLE_APPLICATION_CREDENTIALS", "private_key"):
        assert forbidden not in text
    auth_steps = [step for _, step in every_step() if action(step) == AUTH_ACTION]
    assert len(auth_steps) == 1 + len(STACKS)
    for step in auth_steps:
        assert set(step["with"]) == {"workload_identity_provider", "service_account"}
        for value in step["with"].values():
            assert re.fullmatch(r"\$\{\{ vars[.\[].*\}\}", value), value  # variables: they are not secret


def test_the_only_secret_is_the_pulumi_token_and_only_steps_running_pulumi_get_it() -> None:
    assert set(re.findall(r"secrets\.(\w+)", WORKFLOW_PATH.read_text())) == {"PULUMI_ACCESS_TOKEN"}
    for name, job in JOBS.items():
        assert "secrets." not in json.dumps(job.get("env", {})), name
    for name, step in every_step():
        has_token = step.get("env", {}).get("PULUMI_ACCESS_TOKEN") == "${{ secrets.PULUMI_ACCESS_TOKEN }}"
        assert has_token == runs_pulumi(step), (name, step)


def test_auth_reads_the_variables_named_for_the_jobs_stack() -> None:
    for stack, name in deploy_jobs().items():
        auth = next(s for s in steps(JOBS[name]) if action(s) == AUTH_ACTION)
        assert auth["with"] == {
            "workload_identity_provider": f"${{{{ vars.GCP_WORKLOAD_IDENTITY_PROVIDER_{stack.upper()} }}}}",
            "service_account": f"${{{{ vars.GCP_SERVICE_ACCOUNT_{stack.upper()} }}}}",
        }
    for job in jobs_running("preview").values():
        auth = next(s for s in steps(job) if action(s) == AUTH_ACTION)
        assert auth["with"] == {
            "workload_identity_provider": "${{ vars[format('GCP_WORKLOAD_IDENTITY_PROVIDER_{0}', matrix.stack)] }}",
            "service_account": "${{ vars[format('GCP_PREVIEW_SERVICE_ACCOUNT_{0}', matrix.stack)] }}",
        }


def test_auth_happens_after_installing_and_before_pulumi() -> None:
    for name, job in jobs_running("").items():
        auth = step_index(job, lambda s: action(s) == AUTH_ACTION)
        assert step_index(job, lambda s: s.get("run") == "make deps") < auth < step_index(job, runs_pulumi), name


def test_checkout_does_not_keep_the_github_token() -> None:
    checkouts = [step for _, step in every_step() if action(step) == "actions/checkout"]
    assert len(checkouts) == len(JOBS)
    assert all(step["with"]["persist-credentials"] is False for step in checkouts)


# --- pinning -------------------------------------------------------------------------------------------

_SHA = re.compile(r"[0-9a-f]{40}")
_VERSION_TAG = re.compile(r"v[0-9]+(\.[0-9]+){0,2}")


def test_every_action_is_pinned_to_a_commit_or_a_version() -> None:
    lines = [line.strip() for line in WORKFLOW_PATH.read_text().splitlines() if re.match(r"\s*-? *uses:", line)]
    assert len(lines) == len([s for _, s in every_step() if "uses" in s]) > 0
    for line in lines:
        reference = line.split("uses:", 1)[1].split("#", 1)[0].strip()
        name, at, ref = reference.partition("@")
        assert at and re.fullmatch(r"[\w.-]+/[\w.-]+(/[\w./-]+)?", name), line
        if _SHA.fullmatch(ref):
            assert re.search(r"#\s*v[0-9]", line), f"a SHA needs its version as a comment: {line}"
        else:
            assert _VERSION_TAG.fullmatch(ref), f"not a commit SHA or a version tag: {line}"


def test_the_pulumi_cli_is_the_version_of_the_pinned_sdk() -> None:
    sdk = re.search(r"^pulumi==(\S+)$", (PROJECT_DIR / "requirements.txt").read_text(), re.MULTILINE)
    assert sdk is not None
    installs = [step for _, step in every_step() if action(step) == PULUMI_ACTION]
    assert len(installs) == len(jobs_running(""))
    for step in installs:
        assert step["with"] == {"pulumi-version": sdk[1]}  # exact, and no command: the run steps say what runs


# --- preview and up --------------------------------------------------------------------------------------


def test_previews_run_every_stack_with_the_policy_pack_on_pull_requests_only() -> None:
    previews = jobs_running("preview")
    assert list(previews) == ["preview"]
    job = previews["preview"]
    assert job["if"] == "github.event_name == 'pull_request'"
    assert sorted(job["strategy"]["matrix"]["stack"]) == STACKS
    assert job["strategy"]["fail-fast"] is False  # one stack's failure still shows the others' plans
    assert job["env"]["STACK"] == "${{ matrix.stack }}"
    [preview] = [c for c in commands(job) if c.startswith("pulumi preview")]
    assert re.search(r"--policy-pack policy(\s|$)", preview)
    assert '--stack "$STACK"' in preview
    assert not jobs_running("up").keys() & previews.keys()


def test_pulumi_up_runs_only_on_pushes_to_main() -> None:
    ups = jobs_running("up")
    assert ups
    for name, job in ups.items():
        condition = job["if"]
        assert "github.event_name == 'push'" in condition and "github.ref == 'refs/heads/main'" in condition, name
        assert "||" not in condition, name
        [up] = [c for c in commands(job) if c.startswith("pulumi up")]
        assert "--yes" in up.split() and '--stack "$STACK"' in up and "--policy-pack policy" in up
    destructive = [name for name, job in JOBS.items() for c in commands(job) if re.search(r"pulumi (destroy|rm)", c)]
    assert destructive == []


def test_main_is_the_branch_the_deployer_lets_deploy() -> None:
    for job in jobs_running("up").values():
        assert f"github.ref == 'refs/heads/{DEFAULT_DEPLOY_BRANCH}'" in job["if"]


def test_one_deploy_job_per_stack_file_each_in_its_environment() -> None:
    deploys = deploy_jobs()
    assert sorted(deploys) == STACKS
    assert len(deploys) == len(jobs_running("up"))
    for stack, name in deploys.items():
        environment = JOBS[name]["environment"]
        assert (environment if isinstance(environment, str) else environment["name"]) == stack


def test_dev_deploys_before_prod() -> None:
    deploys = deploy_jobs()
    assert deploys["dev"] in upstream(deploys["prod"])
    assert deploys["prod"] not in upstream(deploys["dev"])
    assert upstream(deploys["dev"]) == {"test"}


def test_two_deploys_of_one_stack_never_overlap() -> None:
    groups = []
    for stack, name in deploy_jobs().items():
        concurrency = JOBS[name]["concurrency"]
        assert concurrency["cancel-in-progress"] is False  # an update is never stopped halfway
        assert stack in concurrency["group"] and "${{" not in concurrency["group"]
        groups.append(concurrency["group"])
    assert len(set(groups)) == len(groups)
    preview = JOBS["preview"]["concurrency"]
    assert "matrix.stack" in preview["group"] and "pull_request.number" in preview["group"]
    assert preview["group"] not in groups


# --- the deployer program ------------------------------------------------------------------------------

POOL = "gcp:iam/workloadIdentityPool:WorkloadIdentityPool"
PROVIDER = "gcp:iam/workloadIdentityPoolProvider:WorkloadIdentityPoolProvider"
ACCOUNT = "gcp:serviceaccount/account:Account"
ACCOUNT_IAM = "gcp:serviceaccount/iAMMember:IAMMember"
PROJECT_IAM = "gcp:projects/iAMMember:IAMMember"
API = "gcp:projects/service:Service"
REPOSITORY = "octo-org/tasks"
PROJECT_NUMBER = "123456789012"
POOL_NAME = f"projects/{PROJECT_NUMBER}/locations/global/workloadIdentityPools/github"
BASE_CONFIG = {
    "gcp:project": "my-tasks-dev",
    f"{DEPLOYER_NAMESPACE}:repository": REPOSITORY,
    f"{DEPLOYER_NAMESPACE}:deployEnvironments": cli_value(["dev"]),
}


class FederationGcp(SimulatedGcp):
    """Also computes the full names GCP gives pools and providers (projects/NUMBER/...)."""

    def _computed(self, typ: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        pools = f"projects/{self.project_number}/locations/global/workloadIdentityPools"
        pool = f"{pools}/{inputs.get('workloadIdentityPoolId')}"
        if typ == POOL:
            return {"name": pool, "state": "ACTIVE"}
        if typ == PROVIDER:
            return {"name": f"{pool}/providers/{inputs['workloadIdentityPoolProviderId']}", "state": "ACTIVE"}
        return super()._computed(typ, name, inputs)


def run_deployer(config: Mapping[str, str] = BASE_CONFIG, **keys: Any) -> ProgramRun:
    """The deployer program with `config`, deployer keys replaced by `keys` (None removes one)."""
    merged = dict(config)
    for key, value in keys.items():
        merged.pop(f"{DEPLOYER_NAMESPACE}:{key}", None)
        if value is not None:
            merged[f"{DEPLOYER_NAMESPACE}:{key}"] = cli_value(value)
    return evaluate(
        merged, program=DEPLOYER_PROGRAM, project=DEPLOYER_NAMESPACE, cloud=FederationGcp(project_number=PROJECT_NUMBER)
    )


@pytest.fixture(scope="module")
def deployer() -> ProgramRun:
    return run_deployer()


def one(run: ProgramRun, type_: str) -> Registration:
    found = run.of_type(type_)
    assert len(found) == 1, [r.name for r in found]
    return found[0]


def documented_deployer_roles() -> list[str]:
    """The roles in README's "The deployer needs these roles on the project" table."""
    readme = (PROJECT_DIR / "README.md").read_text()
    section = readme.split("The deployer needs these roles on the project", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\s*\|\s*`(roles/[^`]+)`\s*\|", section, re.MULTILINE)


def test_pool_and_github_provider(deployer: ProgramRun) -> None:
    pool = one(deployer, POOL)
    assert pool.inputs["project"] == "my-tasks-dev"
    assert pool.inputs["workloadIdentityPoolId"] == "github"
    provider = one(deployer, PROVIDER).inputs
    assert provider["project"] == "my-tasks-dev"
    assert provider["workloadIdentityPoolId"] == "github"
    assert provider["workloadIdentityPoolProviderId"] == "github"
    assert provider["oidc"] == {"issuerUri": GITHUB_ISSUER}  # default audience: what the auth action sends
    mapping = provider["attributeMapping"]
    assert mapping["google.subject"] == "assertion.sub"
    assert mapping["attribute.repository"] == "assertion.repository"
    assert mapping["attribute.ref"] == "assertion.ref"
    assert pool.urn in one(deployer, PROVIDER).property_dependencies["workloadIdentityPoolId"]


def test_attribute_condition_pins_the_repository_and_the_deploy_branch(deployer: ProgramRun) -> None:
    condition = one(deployer, PROVIDER).inputs["attributeCondition"]
    assert condition == (
        f"assertion.repository == '{REPOSITORY}'"
        " && (assertion.ref == 'refs/heads/main' || assertion.event_name == 'pull_request')"
    )
    other = one(run_deployer(deployBranch="release/v2"), PROVIDER).inputs["attributeCondition"]
    assert "assertion.ref == 'refs/heads/release/v2'" in other
    assert other.startswith(f"assertion.repository == '{REPOSITORY}' && ")


def test_each_account_is_impersonated_by_its_own_principal_set_only(deployer: ProgramRun) -> None:
    deploy, preview = (account_named(deployer, a) for a in ("pulumi-deployer", "pulumi-previewer"))
    attribute = f"principalSet://iam.googleapis.com/{POOL_NAME}/attribute"
    assert sorted(
        (g.inputs["serviceAccountId"], g.inputs["role"], g.inputs["member"]) for g in deployer.of_type(ACCOUNT_IAM)
    ) == sorted(
        [
            (
                deploy.outputs["name"],
                "roles/iam.workloadIdentityUser",
                f"{attribute}.repository_ref_environment/{REPOSITORY}:refs/heads/main:dev",
            ),
            (
                preview.outputs["name"],
                "roles/iam.workloadIdentityUser",
                f"{attribute}.repository_event/{REPOSITORY}:pull_request",
            ),
        ]
    )
    two = run_deployer(deployEnvironments=["staging", "prod"], deployBranch="release/v2")
    assert sorted(impersonators(two, "pulumi-deployer")) == [
        f"{attribute}.repository_ref_environment/{REPOSITORY}:refs/heads/release/v2:{environment}"
        for environment in ("prod", "staging")
    ]


def documented_preview_roles() -> list[str]:
    """The roles in README's "The preview account holds these roles on the project" table."""
    readme = (PROJECT_DIR / "README.md").read_text()
    section = readme.split("The preview account holds these roles on the project", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\s*\|\s*`(roles/[^`]+)`\s*\|", section, re.MULTILINE)


def roles_of(run: ProgramRun, account_id: str) -> list[str]:
    member = account_named(run, account_id).outputs["member"]
    return sorted(g.inputs["role"] for g in run.of_type(PROJECT_IAM) if g.inputs["member"] == member)


def test_project_roles_are_exactly_the_documented_lists(deployer: ProgramRun) -> None:
    documented = documented_deployer_roles()
    assert len(documented) == 7
    assert roles_of(deployer, "pulumi-deployer") == sorted(documented) == sorted(DEPLOYER_ROLES)
    assert roles_of(deployer, "pulumi-previewer") == sorted(documented_preview_roles()) == sorted(PREVIEW_ROLES)
    grants = deployer.of_type(PROJECT_IAM)
    assert len(grants) == len(DEPLOYER_ROLES) + len(PREVIEW_ROLES)  # no grant to anyone else
    for grant in grants:
        assert grant.inputs["project"] == "my-tasks-dev"
        assert ("condition" in grant.inputs) == (grant.inputs["role"] in GRANT_LIMITS)


def test_the_roles_that_grant_may_grant_only_what_the_stack_grants(deployer: ProgramRun) -> None:
    """Project IAM admin unlimited would let the deployer grant itself any role on the project."""
    limited = {
        g.inputs["role"]: g.inputs["condition"]["expression"]
        for g in deployer.of_type(PROJECT_IAM)
        if "condition" in g.inputs
    }
    assert limited == {
        "roles/resourcemanager.projectIamAdmin": "api.getAttribute('iam.googleapis.com/modifiedGrantsByRole', [])"
        ".hasOnly(['roles/cloudtasks.serviceAgent'])",
        "roles/secretmanager.admin": "api.getAttribute('iam.googleapis.com/modifiedGrantsByRole', [])"
        ".hasOnly(['roles/secretmanager.secretAccessor'])",
    }


def test_no_project_level_impersonation_and_no_authoritative_iam(deployer: ProgramRun) -> None:
    project_roles = {g.inputs["role"] for g in deployer.of_type(PROJECT_IAM)}
    assert "roles/iam.workloadIdentityUser" not in project_roles
    assert "roles/iam.serviceAccountTokenCreator" not in project_roles
    authoritative = [r.type for r in deployer.resources if re.search(r"iAM(Binding|Policy)|IamPolicy", r.type)]
    assert authoritative == []


def test_no_service_account_key_is_created(deployer: ProgramRun) -> None:
    assert deployer.of_type("gcp:serviceaccount/key:Key") == []
    assert [r.type for r in deployer.resources if "key" in r.type.lower()] == []


def test_federation_apis_are_enabled_and_left_on_at_destroy(deployer: ProgramRun) -> None:
    apis = {r.inputs["service"]: r.inputs for r in deployer.of_type(API)}
    assert set(apis) == {
        "iam.googleapis.com",
        "iamcredentials.googleapis.com",
        "sts.googleapis.com",
        "cloudresourcemanager.googleapis.com",
    }
    for inputs in apis.values():
        assert (inputs["project"], inputs["disableOnDestroy"], inputs["disableDependentServices"]) == (
            "my-tasks-dev",
            False,
            False,
        )


def test_every_resource_waits_for_the_api_it_calls(deployer: ProgramRun) -> None:
    api = {r.inputs["service"].split(".")[0]: r.urn for r in deployer.of_type(API)}
    calls = {POOL: "iam", PROVIDER: "iam", ACCOUNT: "iam", ACCOUNT_IAM: "iam", PROJECT_IAM: "cloudresourcemanager"}
    checked = 0
    for resource in deployer.resources:
        if resource.type in calls:
            assert api[calls[resource.type]] in deployer.waits_for(resource), resource.name
            checked += 1
    assert checked == 2 + 2 + 2 + len(DEPLOYER_ROLES) + len(PREVIEW_ROLES)  # pool, provider, accounts, grants


def test_every_deployer_resource_matches_pulumi_gcp_schema(deployer: ProgramRun) -> None:
    problems = {r.name: schema_problems(r.type, r.inputs) for r in deployer.resources}
    assert {name: p for name, p in problems.items() if p} == {}
    apis, federation, accounts = 4, 2, 2 + 2  # pool and provider; each account and its impersonation grant
    assert len([r for r in deployer.resources if r.type.startswith("gcp:")]) == (
        apis + federation + accounts + len(DEPLOYER_ROLES) + len(PREVIEW_ROLES)
    )


def test_deployer_is_one_component_owning_every_resource(deployer: ProgramRun) -> None:
    component = one(deployer, "cloudrun-tasks:index:DeployerIdentity")
    for resource in deployer.resources:
        if resource is component:
            continue
        assert resource.name.startswith(component.name), resource.name
        ancestor = resource
        while ancestor.parent != component.urn:
            ancestor = deployer.by_urn(ancestor.parent)  # raises when the chain leaves the program
    assert [r.type for r in deployer.resources if r.parent == component.parent] == [component.type]


def test_exports_are_exactly_the_values_the_workflow_needs(deployer: ProgramRun) -> None:
    assert dict(deployer.outputs) == {
        "workload_identity_provider": f"{POOL_NAME}/providers/github",
        "service_account": "pulumi-deployer@my-tasks-dev.iam.gserviceaccount.com",
        "preview_service_account": "pulumi-previewer@my-tasks-dev.iam.gserviceaccount.com",
    }
    # Each output has its repository variable per stack (GCP_<OUTPUT>_<STACK>), and every variable an
    # auth step reads is one of them.
    expected = {f"GCP_{output.upper()}_" for output in deployer.outputs}
    read = {
        re.sub(r"(DEV|PROD|\{0\})$", "", name)
        for _, step in every_step()
        if action(step) == AUTH_ACTION
        for value in step["with"].values()
        for name in re.findall(r"GCP_[A-Z_]+(?:\{0\})?", value)
    }
    assert read == expected


def test_exports_wait_for_the_grants_and_apis_that_make_them_work(deployer: ProgramRun) -> None:
    federation = {
        r.urn for r in deployer.of_type(API) if r.inputs["service"].split(".")[0] in ("sts", "iamcredentials")
    }

    def grants_of(account_id: str) -> set[str]:
        account = account_named(deployer, account_id)
        on_it = {
            r.urn for r in deployer.of_type(ACCOUNT_IAM) if r.inputs["serviceAccountId"] == account.outputs["name"]
        }
        return on_it | {r.urn for r in deployer.of_type(PROJECT_IAM) if r.inputs["member"] == account.outputs["member"]}

    deploys, previews = grants_of("pulumi-deployer"), grants_of("pulumi-previewer")
    assert (len(deploys), len(previews), len(federation)) == (1 + len(DEPLOYER_ROLES), 1 + len(PREVIEW_ROLES), 2)
    assert deploys | federation <= deployer.output_dependencies["service_account"]
    assert previews | federation <= deployer.output_dependencies["preview_service_account"]
    assert deploys | previews | federation <= deployer.output_dependencies["workload_identity_provider"]


# --- who may impersonate which account: the real attribute mapping and condition, run as CEL ---------
#
# Google evaluates the provider's attribute mapping and condition as CEL over the token's claims, then
# admits a token to an account whose workloadIdentityUser members name one of its attributes.
# cel-python evaluates the very expressions the program registers; a claim a token lacks raises here as
# it fails the exchange there ("no such key").

PREVIEW_ACCOUNT_ID = "pulumi-previewer"  # the documented defaults, spelled out
DEPLOY_ACCOUNT_ID = "pulumi-deployer"
# Predefined roles whose permissions are all get/list/getIamPolicy: reading, never writing.
READ_ONLY_ROLES = frozenset(
    {
        "roles/serviceusage.serviceUsageViewer",
        "roles/iam.serviceAccountViewer",
        "roles/iam.securityReviewer",
        "roles/run.viewer",
        "roles/cloudtasks.viewer",
    }
)


def github_token(event: str, ref: str, environment: str | None = None, repository: str = REPOSITORY) -> dict[str, str]:
    """A job's OIDC token claims as GitHub issues them (docs.github.com/en/actions/reference/security/oidc):
    `environment` only when the job names one, and then `sub` says so instead of the ref."""
    if environment is not None:
        context = f"environment:{environment}"
    elif event == "pull_request":
        context = "pull_request"
    else:
        context = f"ref:{ref}"
    claims = {
        "sub": f"repo:{repository}:{context}",
        "repository": repository,
        "repository_owner": repository.partition("/")[0],
        "ref": ref,
        "ref_type": "branch",
        "event_name": event,
        "actor": "octocat",
        "workflow_ref": f"{repository}/.github/workflows/deploy.yml@{ref}",
        "job_workflow_ref": f"{repository}/.github/workflows/deploy.yml@{ref}",
    }
    if environment is not None:
        claims["environment"] = environment
    return claims


PULL_REQUEST = github_token("pull_request", "refs/pull/7/merge")
PULL_REQUEST_IN_PROD = github_token("pull_request", "refs/pull/7/merge", environment="prod")
PUSH_TO_MAIN = github_token("push", "refs/heads/main")
PUSH_TO_MAIN_IN_DEV = github_token("push", "refs/heads/main", environment="dev")
PUSH_TO_MAIN_IN_PROD = github_token("push", "refs/heads/main", environment="prod")
PUSH_TO_BRANCH_IN_PROD = github_token("push", "refs/heads/feature", environment="prod")


def cel(expression: str, activation: Mapping[str, Any]) -> Any:
    environment = celpy.Environment()
    return environment.program(environment.compile(expression)).evaluate(dict(activation))


def exchange(run: ProgramRun, claims: Mapping[str, str]) -> dict[str, str] | None:
    """The attributes the provider maps from `claims`, or None when its condition refuses the token."""
    provider = one(run, PROVIDER).inputs
    assertion = celpy.json_to_cel(dict(claims))
    attributes = {
        key: str(cel(expression, {"assertion": assertion})) for key, expression in provider["attributeMapping"].items()
    }
    custom = {
        key.removeprefix("attribute."): value for key, value in attributes.items() if key.startswith("attribute.")
    }
    google = {key.removeprefix("google."): value for key, value in attributes.items() if key.startswith("google.")}
    activation = {"assertion": assertion, "attribute": celpy.json_to_cel(custom), "google": celpy.json_to_cel(google)}
    return attributes if bool(cel(provider["attributeCondition"], activation)) else None


def admits(member: str, attributes: Mapping[str, str]) -> bool:
    """Whether an IAM member of the pool names the identity with these attributes."""
    principal_set = f"principalSet://iam.googleapis.com/{POOL_NAME}/"
    principal = f"principal://iam.googleapis.com/{POOL_NAME}/subject/"
    if member == f"{principal_set}*":
        return True
    if member.startswith(f"{principal_set}attribute."):
        name, _, value = member.removeprefix(principal_set).partition("/")
        return attributes.get(name) == value
    if member.startswith(principal):
        return attributes.get("google.subject") == member.removeprefix(principal)
    raise AssertionError(f"not a member of this pool, or a form this test does not model: {member}")


def account_named(run: ProgramRun, account_id: str) -> Registration:
    [account] = [a for a in run.of_type(ACCOUNT) if a.inputs["accountId"] == account_id]
    return account


def impersonators(run: ProgramRun, account_id: str) -> list[str]:
    """The members holding workloadIdentityUser on that account."""
    name = account_named(run, account_id).outputs["name"]
    return [
        grant.inputs["member"]
        for grant in run.of_type(ACCOUNT_IAM)
        if grant.inputs["serviceAccountId"] == name and grant.inputs["role"] == "roles/iam.workloadIdentityUser"
    ]


def may_impersonate(run: ProgramRun, account_id: str, claims: Mapping[str, str]) -> bool:
    attributes = exchange(run, claims)
    return attributes is not None and any(admits(m, attributes) for m in impersonators(run, account_id))


def deployer_stack(stack: str) -> ProgramRun:
    """That deployer stack file's program, with the tokens' repository in place of the sample's."""
    config = stack_config(DEPLOYER_DIR / f"Pulumi.{stack}.yaml")
    config[f"{DEPLOYER_NAMESPACE}:repository"] = REPOSITORY
    return evaluate(
        config,
        stack=stack,
        program=DEPLOYER_PROGRAM,
        project=DEPLOYER_NAMESPACE,
        cloud=FederationGcp(project_number=PROJECT_NUMBER),
    )


@pytest.fixture(scope="module")
def prod_deployer() -> ProgramRun:
    return deployer_stack("prod")


@pytest.mark.parametrize("claims", [PULL_REQUEST, PULL_REQUEST_IN_PROD], ids=["plain", "naming-prod"])
def test_a_pull_request_cannot_impersonate_the_deployer(prod_deployer: ProgramRun, claims: dict[str, str]) -> None:
    assert exchange(prod_deployer, claims) is not None  # the pool still takes the token: previews need it
    assert not may_impersonate(prod_deployer, DEPLOY_ACCOUNT_ID, claims)


@pytest.mark.parametrize(
    "claims", [PUSH_TO_MAIN, PUSH_TO_MAIN_IN_DEV, PUSH_TO_BRANCH_IN_PROD], ids=["no-environment", "dev", "other-branch"]
)
def test_only_mains_prod_environment_reaches_the_prod_deployer(
    prod_deployer: ProgramRun, claims: dict[str, str]
) -> None:
    assert not may_impersonate(prod_deployer, DEPLOY_ACCOUNT_ID, claims)
    assert may_impersonate(prod_deployer, DEPLOY_ACCOUNT_ID, PUSH_TO_MAIN_IN_PROD)  # the deploy job itself still can


def test_pull_requests_and_only_they_get_the_preview_identity(prod_deployer: ProgramRun) -> None:
    assert may_impersonate(prod_deployer, PREVIEW_ACCOUNT_ID, PULL_REQUEST)
    for claims in (
        PUSH_TO_MAIN,
        PUSH_TO_MAIN_IN_PROD,
        github_token("pull_request", "refs/pull/7/merge", repository="octo-org/fork"),
    ):
        assert not may_impersonate(prod_deployer, PREVIEW_ACCOUNT_ID, claims), claims


def test_the_mapping_evaluates_for_every_kind_of_job(prod_deployer: ProgramRun) -> None:
    # A mapping that reads a claim some tokens lack (`environment` on pull requests) fails their exchange.
    for claims in (
        PULL_REQUEST,
        PUSH_TO_MAIN,
        PUSH_TO_MAIN_IN_PROD,
        github_token("workflow_dispatch", "refs/heads/main"),
    ):
        exchange(prod_deployer, claims)
    with pytest.raises(celpy.CELEvalError):
        cel("assertion.environment", {"assertion": celpy.json_to_cel(PULL_REQUEST)})  # what the guard prevents


def test_another_repository_is_refused_by_the_condition(prod_deployer: ProgramRun) -> None:
    for claims in (PULL_REQUEST, PUSH_TO_MAIN_IN_PROD):
        assert exchange(prod_deployer, {**claims, "repository": "octo-org/other"}) is None


def test_the_preview_account_holds_only_read_only_roles(deployer: ProgramRun) -> None:
    member = account_named(deployer, PREVIEW_ACCOUNT_ID).outputs["member"]
    roles = {g.inputs["role"] for g in deployer.of_type(PROJECT_IAM) if g.inputs["member"] == member}
    assert roles and roles <= READ_ONLY_ROLES, roles - READ_ONLY_ROLES
    # Nor anything on an account: no actAs, no token minting, no admin over the deployer.
    assert [g.inputs["role"] for g in deployer.of_type(ACCOUNT_IAM) if g.inputs["member"] == member] == []


def test_pull_request_previews_authenticate_as_the_preview_identity() -> None:
    for name, job in jobs_running("preview").items():
        auth = next(s for s in steps(job) if action(s) == AUTH_ACTION)
        assert "GCP_PREVIEW_SERVICE_ACCOUNT_" in auth["with"]["service_account"], name
    for name, job in jobs_running("up").items():
        auth = next(s for s in steps(job) if action(s) == AUTH_ACTION)
        assert "PREVIEW" not in auth["with"]["service_account"], name


def test_every_preview_and_up_refreshes_first() -> None:
    # A CD-managed image changes outside Pulumi; an update planned on stale state would revert it.
    pulumi_commands = [c for job in jobs_running("").values() for c in commands(job) if runs_pulumi({"run": c})]
    assert len(pulumi_commands) == 1 + len(STACKS)
    for command in pulumi_commands:
        assert "--refresh" in command.split(), command


# --- refused config ------------------------------------------------------------------------------------

REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"repository": "not-a-repo"}, "repository: 'not-a-repo' is not a GitHub repository in owner/repo form"),
    ({"repository": None}, "repository: missing; set it with `pulumi config set repository <owner>/<repo>`"),
    ({"repository": "octo-org/tasks' || true || '"}, "repository: \"octo-org/tasks' || true || '\" is not a GitHub"),
    ({"repository": "-octo/tasks"}, "repository: '-octo/tasks' is not a GitHub repository"),
    ({"poolId": "gcp-github"}, "poolId: 'gcp-github' must be 4-32 lowercase letters"),
    ({"poolId": "gh"}, "poolId: 'gh' must be 4-32"),
    ({"providerId": "GitHub"}, "providerId: 'GitHub' must be 4-32 lowercase letters"),
    ({"serviceAccountId": "deploy"}, ""),  # valid: 6 characters
    ({"serviceAccountId": "dep"}, "serviceAccountId: 'dep' is not a service account id"),
    ({"deployBranch": "main' || true || '"}, "deployBranch: \"main' || true || '\" is not a branch name"),
    ({"deployBranch": "a..b"}, "deployBranch: 'a..b' is not a branch name"),
    ({"repo": "octo-org/tasks"}, "repo: unknown key; allowed keys are repository, deployBranch, deployEnvironments"),
    ({"deployEnvironments": None}, "deployEnvironments: missing; the GitHub environments whose jobs may deploy"),
    (
        {"deployEnvironments": []},
        "deployEnvironments: expected a non-empty list of GitHub environment names, got list []",
    ),
    (
        {"deployEnvironments": "prod"},
        "deployEnvironments: expected a non-empty list of GitHub environment names, got string",
    ),
    ({"deployEnvironments": ["prod", "prod"]}, "deployEnvironments[1]: 'prod' is listed twice"),
    ({"deployEnvironments": ["prod", 7]}, "deployEnvironments[1]: expected a GitHub environment name, got number 7"),
    ({"deployEnvironments": ["pro d"]}, "deployEnvironments[0]: 'pro d' is not a GitHub environment name"),
    ({"deployEnvironments": ["prod/eu"]}, "deployEnvironments[0]: 'prod/eu' is not a GitHub environment name"),
    ({"deployEnvironments": ["Prod_1.eu-west"]}, ""),  # valid
    ({"previewServiceAccountId": "pre"}, "previewServiceAccountId: 'pre' is not a service account id"),
    (
        {"previewServiceAccountId": "pulumi-deployer"},
        "previewServiceAccountId: 'pulumi-deployer' is also serviceAccountId",
    ),
]


@pytest.mark.parametrize(("keys", "message"), REFUSED, ids=[json.dumps(k) for k, _ in REFUSED])
def test_bad_config_is_refused_naming_the_key_and_registers_nothing(keys: dict[str, Any], message: str) -> None:
    if not message:
        run_deployer(**keys)
        return
    with pytest.raises(ProgramError) as raised:
        run_deployer(**keys)
    assert message in str(raised.value)
    assert "Traceback" not in str(raised.value)
    assert raised.value.resources == ()


def test_missing_project_and_repository_are_reported_together() -> None:
    with pytest.raises(ProgramError) as raised:
        run_deployer({})
    assert "gcp:project: missing" in str(raised.value)
    assert "repository: missing" in str(raised.value)
    assert raised.value.resources == ()


@pytest.mark.parametrize(
    "repository", ["octo/tasks", "Octo-Org/my.repo_v2", "a/b", f"{'o' * 39}/{'r' * 100}", "octo/.github"]
)
def test_valid_repositories_are_accepted(repository: str) -> None:
    assert repository_problem(repository) is None


@pytest.mark.parametrize(
    "repository",
    ["octo", "octo/", "/tasks", "octo/tasks/more", "octo--org/tasks", "octo-/tasks", f"{'o' * 40}/r", "o/..", "o/t s"],
)
def test_invalid_repositories_are_refused(repository: str) -> None:
    assert repository_problem(repository) is not None


@hyp_settings(max_examples=200, deadline=None, database=None)
@given(
    before=st.sampled_from(["", "octo-org/", "octo-org/tasks", "release/"]) | st.text(max_size=20),
    breakout=st.sampled_from(["'", '"', "\\", " ", "\n", "\t"]),
    after=st.sampled_from(["", "tasks", " || true || '"]) | st.text(max_size=20),
)
def test_nothing_that_could_break_out_of_the_cel_string_is_accepted(before: str, breakout: str, after: str) -> None:
    # Both values are written between single quotes in the attribute condition; an environment ends a
    # principalSet after a ':' and a '/'.
    value = before + breakout + after
    assert repository_problem(value) is not None
    assert branch_problem(value) is not None
    assert environment_problem(value) is not None
    assert environment_problem(f"{value}/x:y") is not None


# --- the deployer project files ------------------------------------------------------------------------


def test_deployer_project_uses_the_repository_virtualenv_and_declares_its_keys() -> None:
    project = yaml.safe_load((DEPLOYER_DIR / "Pulumi.yaml").read_text())
    assert project["name"] == DEPLOYER_NAMESPACE
    makefile_venv = re.search(r"^VENV := (\S+)$", (PROJECT_DIR / "Makefile").read_text(), re.MULTILINE)
    assert makefile_venv is not None
    assert project["runtime"] == {
        "name": "python",
        "options": {"toolchain": "pip", "virtualenv": f"../{makefile_venv[1]}"},
    }
    assert list(project["config"]) == list(DEPLOYER_KEYS)
    # The CLI refuses a stack lacking a declared key that has no default: only the required keys lack one,
    # and every default is the code's.
    defaults = {
        "deployBranch": DEFAULT_DEPLOY_BRANCH,
        "poolId": DEFAULT_POOL_ID,
        "providerId": DEFAULT_PROVIDER_ID,
        "serviceAccountId": DEFAULT_DEPLOY_ACCOUNT_ID,
        "previewServiceAccountId": DEFAULT_PREVIEW_ACCOUNT_ID,
    }
    for key, spec in project["config"].items():
        kind = {"type": "array", "items": {"type": "string"}} if key == "deployEnvironments" else {"type": "string"}
        default = {"default": defaults[key]} if key in defaults else {}
        assert spec == {**kind, **default, "description": spec["description"]}, key
    assert set(defaults) == set(DEPLOYER_KEYS) - {"repository", "deployEnvironments"}


def stack_config(path: Path) -> dict[str, str]:
    return {key: cli_value(value) for key, value in yaml.safe_load(path.read_text())["config"].items()}


def test_each_project_a_stack_deploys_to_has_exactly_one_deployer_stack() -> None:
    deployer_projects = [stack_config(path)["gcp:project"] for path in DEPLOYER_DIR.glob("Pulumi.*.yaml")]
    assert len(set(deployer_projects)) == len(deployer_projects)  # one pool per project: a second would clash
    stack_projects = {stack_config(PROJECT_DIR / f"Pulumi.{stack}.yaml")["gcp:project"] for stack in STACKS}
    assert set(deployer_projects) == stack_projects


def test_each_deployer_accepts_exactly_the_environment_of_the_job_deploying_to_its_project() -> None:
    # dev's deployer must not take prod's jobs, nor prod's deployer dev's (which has no reviewers).
    environment_of = {}
    for stack, name in deploy_jobs().items():
        environment = JOBS[name]["environment"]
        project = stack_config(PROJECT_DIR / f"Pulumi.{stack}.yaml")["gcp:project"]
        environment_of[project] = environment if isinstance(environment, str) else environment["name"]
    for path in DEPLOYER_DIR.glob("Pulumi.*.yaml"):
        config = stack_config(path)
        accepted = json.loads(config[f"{DEPLOYER_NAMESPACE}:deployEnvironments"])
        assert accepted == [environment_of[config["gcp:project"]]], path.name


@pytest.mark.parametrize("path", sorted(DEPLOYER_DIR.glob("Pulumi.*.yaml")), ids=lambda path: path.name)
def test_each_deployer_stack_file_runs(path: Path) -> None:
    config = stack_config(path)
    stack = path.name.removeprefix("Pulumi.").removesuffix(".yaml")
    run = evaluate(config, stack=stack, program=DEPLOYER_PROGRAM, project=DEPLOYER_NAMESPACE, cloud=FederationGcp())
    assert run.outputs["service_account"].endswith(f"@{config['gcp:project']}.iam.gserviceaccount.com")
