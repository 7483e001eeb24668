"""What a first real `pulumi up` needs right: refresh and CD fields, CPU billing, probes, the service agent's
role, secrets, VPC egress, labels and the token audience, as the program registers them under mocks."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from contract import handler_env
from contract.outputs import OutputName, StackOutputs
from harness import run_stack, stack_file_config
from localcloud.program import PROJECT_DIR, ProgramError, ProgramRun, Registration, evaluate

SERVICE = "gcp:cloudrunv2/service:Service"
AGENT = "gcp:projects/serviceIdentity:ServiceIdentity"
PROJECT_IAM = "gcp:projects/iAMMember:IAMMember"
SECRET_IAM = "gcp:secretmanager/secretIamMember:SecretIamMember"
API = "gcp:projects/service:Service"
QUEUE = "gcp:cloudtasks/queue:Queue"


def service(run: ProgramRun) -> Registration:
    (found,) = run.of_type(SERVICE)
    return found


def container(run: ProgramRun) -> dict[str, Any]:
    containers: list[dict[str, Any]] = service(run).inputs["template"]["containers"]
    assert len(containers) == 1
    return containers[0]


def envs(run: ProgramRun) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(run).get("envs", [])}


# --- 1. a CD-managed image never rolls back --------------------------------------------------------


def test_pulumi_refreshes_before_every_update() -> None:
    project = yaml.safe_load((PROJECT_DIR / "Pulumi.yaml").read_text())
    assert project["options"]["refresh"] == "always"


def test_with_cd_managing_the_image_every_field_cd_changes_is_ignored(dev: ProgramRun, prod: ProgramRun) -> None:
    assert service(dev).ignore_changes == ()
    assert set(service(prod).ignore_changes) == {
        "client",
        "clientVersion",
        "template.revision",
        "template.labels",
        "template.annotations",
        "template.containers[*].image",
    }


# --- 2. CPU billed only while a request runs ---------------------------------------------------------


def test_cpu_is_allocated_only_during_requests_with_a_startup_boost_by_default(dev: ProgramRun) -> None:
    resources = container(dev)["resources"]
    assert resources["cpuIdle"] is True
    assert resources["startupCpuBoost"] is True


def test_always_allocated_cpu_and_no_boost_are_choices() -> None:
    run = run_stack("dev", service={"cpuAlwaysAllocated": True, "startupCpuBoost": False})
    resources = container(run)["resources"]
    assert (resources["cpuIdle"], resources["startupCpuBoost"]) == (False, False)


# --- 3. probes on /health ------------------------------------------------------------------------------


def test_startup_and_liveness_probes_get_the_handlers_health_path(dev: ProgramRun) -> None:
    port = container(dev)["ports"]["containerPort"]
    for probe in ("startupProbe", "livenessProbe"):
        settings = container(dev)[probe]
        assert settings["httpGet"] == {"path": "/health", "port": port}
        assert (settings["periodSeconds"], settings["timeoutSeconds"], settings["failureThreshold"]) == (10, 1, 3)


def test_probe_settings_come_from_config() -> None:
    probes = {"startup": {"periodSeconds": 5, "failureThreshold": 12}, "liveness": {"periodSeconds": 30}}
    run = run_stack("dev", service={"probes": probes})
    assert container(run)["startupProbe"]["periodSeconds"] == 5
    assert container(run)["startupProbe"]["failureThreshold"] == 12
    assert container(run)["livenessProbe"]["periodSeconds"] == 30


# --- 4. the Cloud Tasks service agent's role: the one project-level grant -----------------------------


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_service_agent_holds_its_role_and_it_is_the_only_project_level_grant(stack: str) -> None:
    run = run_stack(stack)
    (agent,) = run.of_type(AGENT)
    (grant,) = run.of_type(PROJECT_IAM)
    assert grant.inputs == {
        "project": agent.inputs["project"],
        "role": "roles/cloudtasks.serviceAgent",
        "member": agent.outputs["member"],
    }
    assert agent.urn in run.waits_for(grant)
    assert not [
        r.type for r in run.resources if r.type.startswith("gcp:") and r.type.endswith(("IAMPolicy", "IAMBinding"))
    ]


# --- 5. secrets from Secret Manager, never in plain text -------------------------------------------------


SECRETS = {"DB_PASSWORD": "db-password", "API_KEY": "api-key:3", "PARTNER_TOKEN": "projects/shared-p/secrets/partner"}


@pytest.fixture(scope="module")
def with_secrets() -> ProgramRun:
    return run_stack("dev", service={"secretEnv": SECRETS})


def test_secret_env_is_mounted_from_secret_manager(with_secrets: ProgramRun) -> None:
    env = envs(with_secrets)
    assert {name: env[name]["valueSource"]["secretKeyRef"] for name in SECRETS} == {
        "DB_PASSWORD": {"secret": "db-password", "version": "latest"},
        "API_KEY": {"secret": "api-key", "version": "3"},
        "PARTNER_TOKEN": {"secret": "projects/shared-p/secrets/partner", "version": "latest"},
    }
    assert not [name for name in SECRETS if "value" in env[name]]


def test_the_runtime_account_may_read_each_named_secret_only(with_secrets: ProgramRun) -> None:
    runtime = service(with_secrets).inputs["template"]["serviceAccount"]
    grants = {(g.inputs["project"], g.inputs["secretId"]): g for g in with_secrets.of_type(SECRET_IAM)}
    assert set(grants) == {("my-tasks-dev", "db-password"), ("my-tasks-dev", "api-key"), ("shared-p", "partner")}
    for grant in grants.values():
        assert (grant.inputs["role"], grant.inputs["member"]) == (
            "roles/secretmanager.secretAccessor",
            f"serviceAccount:{runtime}",
        )
        # A revision that cannot read its secrets never starts: the service waits for the grants.
        assert grant.urn in with_secrets.waits_for(service(with_secrets))


def test_secret_manager_is_enabled_only_when_secrets_are_used(dev: ProgramRun, with_secrets: ProgramRun) -> None:
    def apis(run: ProgramRun) -> set[str]:
        return {r.inputs["service"] for r in run.of_type(API)}

    assert "secretmanager.googleapis.com" not in apis(dev)
    assert "secretmanager.googleapis.com" in apis(with_secrets)
    (api,) = [r for r in with_secrets.of_type(API) if r.inputs["service"] == "secretmanager.googleapis.com"]
    for grant in with_secrets.of_type(SECRET_IAM):
        assert api.urn in with_secrets.waits_for(grant)


# --- VPC egress and labels -----------------------------------------------------------------------------


def test_direct_vpc_egress_reaches_the_template() -> None:
    vpc = {"network": "default", "subnetwork": "tasks", "egress": "ALL_TRAFFIC", "networkTags": ["tasks-handler"]}
    run = run_stack("dev", service={"vpc": vpc})
    assert service(run).inputs["template"]["vpcAccess"] == {
        "egress": "ALL_TRAFFIC",
        "networkInterfaces": [{"network": "default", "subnetwork": "tasks", "tags": ["tasks-handler"]}],
    }


def test_labels_are_merged_with_the_defaults_on_the_service(dev: ProgramRun) -> None:
    assert service(dev).inputs["labels"] == {"managed-by": "cloudrun-tasks", "stack": "dev"}
    run = run_stack("dev", labels={"team": "payments", "cost-center": "cc-42"})
    assert service(run).inputs["labels"] == {
        "managed-by": "cloudrun-tasks",
        "stack": "dev",
        "team": "payments",
        "cost-center": "cc-42",
    }


# --- 11. the audience tokens carry, known before the service exists ------------------------------------


DETERMINISTIC = "https://tasks-dev-handler-123456789012.europe-west1.run.app"


def test_the_audience_is_the_services_deterministic_url_everywhere(dev: ProgramRun) -> None:
    outputs = StackOutputs.from_mapping(dev.outputs)
    assert outputs.oidc_audience == DETERMINISTIC
    assert envs(dev)[handler_env.OIDC_AUDIENCE]["value"] == DETERMINISTIC
    routed = next(q for q in dev.of_type(QUEUE) if "httpTarget" in q.inputs).inputs["httpTarget"]
    assert routed["oidcToken"]["audience"] == DETERMINISTIC
    assert f"--oidc-token-audience={DETERMINISTIC}" in dev.outputs[OutputName.CREATE_TASK_COMMAND]


def test_a_secret_config_value_never_becomes_a_plain_env_value() -> None:
    """`pulumi config set --secret --path service.env.X` marks the whole service key secret: refused, by name."""
    config = {**stack_file_config("dev"), "cloudrun-tasks:service": json.dumps({"env": {"API_TOKEN": "s3cr3t"}})}
    with pytest.raises(ProgramError) as raised:
        evaluate(config, stack="dev", secret_keys=["cloudrun-tasks:service"])
    assert "service.env" in str(raised.value) and "service.secretEnv" in str(raised.value)
    assert "s3cr3t" not in str(raised.value)
    assert raised.value.resources == ()


def test_the_redis_idempotency_store_is_turned_on_from_a_secret() -> None:
    """The store's URL may hold a password: it comes from Secret Manager, as the stack-owned
    TASKS_IDEMPOTENCY_REDIS_URL, and the runtime account may read that secret only."""
    run = run_stack("dev", service={"idempotencyRedisUrlSecret": "tasks-redis-url:2"})
    assert envs(run)[handler_env.IDEMPOTENCY_REDIS_URL]["valueSource"]["secretKeyRef"] == {
        "secret": "tasks-redis-url",
        "version": "2",
    }
    assert [g.inputs["secretId"] for g in run.of_type(SECRET_IAM)] == ["tasks-redis-url"]
    assert handler_env.IDEMPOTENCY_REDIS_URL not in envs(run_stack("dev"))
