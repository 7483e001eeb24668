"""The real program, evaluated under Pulumi's mocks with the stack files' config: what the engine would get."""

from __future__ import annotations

import json

import pytest

from components.settings import load_settings
from contract import handler_env
from contract.outputs import OutputName, StackOutputs
from gcp_schema import schema_problems
from harness import run_stack, stack_file_config
from localcloud.program import ProgramError, ProgramRun, Registration, evaluate

API = "gcp:projects/service:Service"
ACCOUNT = "gcp:serviceaccount/account:Account"
ACCOUNT_IAM = "gcp:serviceaccount/iAMMember:IAMMember"
AGENT = "gcp:projects/serviceIdentity:ServiceIdentity"
SERVICE = "gcp:cloudrunv2/service:Service"
SERVICE_IAM = "gcp:cloudrunv2/serviceIamMember:ServiceIamMember"
QUEUE = "gcp:cloudtasks/queue:Queue"
QUEUE_IAM = "gcp:cloudtasks/queueIamMember:QueueIamMember"

# Which API each resource type calls, and so must be enabled before it is created.
API_OF_TYPE = {
    QUEUE: "cloudtasks.googleapis.com",
    QUEUE_IAM: "cloudtasks.googleapis.com",
    AGENT: "cloudtasks.googleapis.com",
    SERVICE: "run.googleapis.com",
    SERVICE_IAM: "run.googleapis.com",
    ACCOUNT: "iam.googleapis.com",
    ACCOUNT_IAM: "iam.googleapis.com",
    "gcp:monitoring/alertPolicy:AlertPolicy": "monitoring.googleapis.com",
    "gcp:monitoring/notificationChannel:NotificationChannel": "monitoring.googleapis.com",
    "gcp:monitoring/dashboard:Dashboard": "monitoring.googleapis.com",
}
DEV_ENQUEUER = "serviceAccount:api-dev@my-tasks-dev.iam.gserviceaccount.com"
DETERMINISTIC_URL = "https://tasks-dev-handler-123456789012.europe-west1.run.app"


def one(run: ProgramRun, type_: str) -> Registration:
    found = run.of_type(type_)
    assert len(found) == 1, [r.name for r in found]
    return found[0]


def invoker_account(run: ProgramRun) -> Registration:
    return next(r for r in run.of_type(ACCOUNT) if r.inputs["accountId"].endswith("-invoker"))


def runtime_account(run: ProgramRun) -> Registration:
    return next(r for r in run.of_type(ACCOUNT) if r.inputs["accountId"].endswith("-run"))


def queue_named(run: ProgramRun, key: str) -> Registration:
    return next(r for r in run.of_type(QUEUE) if r.name == f"tasks-{key}")


def task_queues(run: ProgramRun) -> list[Registration]:
    """The configured queues, without the stack's dead-letter queue (tests/test_dead_letter_stack.py)."""
    return [r for r in run.of_type(QUEUE) if r.name != "tasks-dead-letters"]


# --- APIs ---------------------------------------------------------------------------------------


def test_each_api_is_enabled_and_left_on_at_destroy(dev: ProgramRun) -> None:
    apis = {r.inputs["service"]: r.inputs for r in dev.of_type(API)}
    assert set(apis) == set(API_OF_TYPE.values())
    for inputs in apis.values():
        assert inputs["project"] == "my-tasks-dev"
        assert inputs["disableOnDestroy"] is False
        assert inputs["disableDependentServices"] is False


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_every_resource_that_calls_an_api_waits_for_its_enablement(stack: str) -> None:
    run = run_stack(stack)
    api_urn = {r.inputs["service"]: r.urn for r in run.of_type(API)}
    checked = 0
    for resource in run.resources:
        if resource.type in API_OF_TYPE:
            assert api_urn[API_OF_TYPE[resource.type]] in run.waits_for(resource), resource.name
            checked += 1
    assert checked >= 11


# --- the service --------------------------------------------------------------------------------


def test_service_is_private_and_runs_as_its_own_account(dev: ProgramRun) -> None:
    service = one(dev, SERVICE).inputs
    assert service["name"] == "tasks-dev-handler"
    assert service["location"] == "europe-west1"
    assert service["ingress"] == "INGRESS_TRAFFIC_INTERNAL_ONLY"
    assert service["invokerIamDisabled"] is False
    assert "defaultUriDisabled" not in service  # Cloud Tasks reaches the service through its run.app URL
    assert service["template"]["serviceAccount"] == runtime_account(dev).outputs["email"]
    assert "compute@developer" not in service["template"]["serviceAccount"]


def test_service_timeout_covers_the_longest_dispatch_deadline(dev: ProgramRun, prod: ProgramRun) -> None:
    # dev: queues at 600s and 120s; prod: 900s and 1800s.
    assert one(dev, SERVICE).inputs["template"]["timeout"] == "600s"
    assert one(prod, SERVICE).inputs["template"]["timeout"] == "1800s"


def test_service_scaling_and_resources_follow_config(prod: ProgramRun) -> None:
    template = one(prod, SERVICE).inputs["template"]
    assert template["scaling"] == {"minInstanceCount": 1, "maxInstanceCount": 20}
    assert template["maxInstanceRequestConcurrency"] == 40
    container = template["containers"][0]
    assert container["image"] == "europe-west1-docker.pkg.dev/my-tasks-prod/tasks/handler:1.0.0"
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "1Gi"}
    assert container["ports"] == {"containerPort": 8080}


def test_service_env_tells_the_handler_each_queue_retry_policy_and_its_invoker(dev: ProgramRun) -> None:
    env = {e["name"]: e["value"] for e in one(dev, SERVICE).inputs["template"]["containers"][0]["envs"]}
    queues = dev.outputs[OutputName.QUEUES]
    # The whole retry policy (Pulumi.dev.yaml, Cloud Tasks' defaults for what it leaves out), in seconds.
    assert json.loads(env[handler_env.QUEUES]) == {
        queues["default"]["id"]: {
            "key": "default",
            "maxAttempts": 15,
            "dispatchDeadlineSeconds": 600.0,
            "maxRetryDurationSeconds": 0.0,
            "minBackoffSeconds": 1.0,
            "maxBackoffSeconds": 60.0,
            "maxDoublings": 3,
            "path": "/tasks/default",
        },
        queues["emails"]["id"]: {
            "key": "emails",
            "maxAttempts": 10,
            "dispatchDeadlineSeconds": 120.0,
            "maxRetryDurationSeconds": 3600.0,
            "minBackoffSeconds": 0.1,
            "maxBackoffSeconds": 3600.0,
            "maxDoublings": 16,
            "path": "/tasks/send-email",
        },
    }
    assert env[handler_env.INVOKER_EMAILS] == invoker_account(dev).outputs["email"]
    assert env[handler_env.PROJECT] == "my-tasks-dev"


def test_user_env_is_passed_beside_the_stack_env(prod: ProgramRun) -> None:
    envs = one(prod, SERVICE).inputs["template"]["containers"][0]["envs"]
    env = {e["name"]: e["value"] for e in envs if "value" in e}
    assert env["LOG_LEVEL"] == "info"
    assert {handler_env.QUEUES, handler_env.INVOKER_EMAILS} <= set(env)


def test_deletion_protection_is_per_stack(dev: ProgramRun, prod: ProgramRun) -> None:
    assert one(dev, SERVICE).inputs["deletionProtection"] is False
    assert one(prod, SERVICE).inputs["deletionProtection"] is True
    assert [q.protect for q in dev.of_type(QUEUE)] == [False, False, False]  # the dead-letter queue too
    assert [q.protect for q in prod.of_type(QUEUE)] == [True, True, True]


def test_image_is_left_to_cd_only_when_the_stack_says_so(dev: ProgramRun, prod: ProgramRun) -> None:
    assert one(dev, SERVICE).ignore_changes == ()
    assert "template.containers[*].image" in one(prod, SERVICE).ignore_changes


# --- identities and IAM -------------------------------------------------------------------------


def test_invoker_holds_run_invoker_on_the_one_service_only(dev: ProgramRun) -> None:
    grant = one(dev, SERVICE_IAM).inputs
    assert grant["role"] == "roles/run.invoker"
    assert grant["member"] == invoker_account(dev).outputs["member"]
    assert grant["name"] == one(dev, SERVICE).inputs["name"]
    assert grant["location"] == "europe-west1"


def test_tasks_service_agent_may_act_as_the_invoker(dev: ProgramRun) -> None:
    agent = one(dev, AGENT)
    assert agent.inputs["service"] == "cloudtasks.googleapis.com"
    grants = [g.inputs for g in dev.of_type(ACCOUNT_IAM) if g.inputs["member"] == agent.outputs["member"]]
    assert grants == [
        {
            "serviceAccountId": invoker_account(dev).outputs["name"],
            "role": "roles/iam.serviceAccountUser",
            "member": "serviceAccount:service-123456789012@gcp-sa-cloudtasks.iam.gserviceaccount.com",
        }
    ]


def test_enqueuers_get_enqueuer_on_each_queue_and_act_as_on_the_invoker(dev: ProgramRun) -> None:
    queue_grants = [g.inputs for g in dev.of_type(QUEUE_IAM) if g.inputs["member"] == DEV_ENQUEUER]
    # On each configured queue, never on the dead-letter queue.
    assert sorted(g["name"] for g in queue_grants) == sorted(q.inputs["name"] for q in task_queues(dev))
    assert {g["role"] for g in queue_grants} == {"roles/cloudtasks.enqueuer"}
    act_as = [g.inputs for g in dev.of_type(ACCOUNT_IAM) if g.inputs["member"] == DEV_ENQUEUER]
    assert act_as == [
        {
            "serviceAccountId": invoker_account(dev).outputs["name"],
            "role": "roles/iam.serviceAccountUser",
            "member": DEV_ENQUEUER,
        }
    ]


def test_queue_level_enqueuers_are_granted_on_their_queue_only(prod: ProgramRun) -> None:
    reporting = "serviceAccount:reporting@my-tasks-prod.iam.gserviceaccount.com"
    granted_on = [g.inputs["name"] for g in prod.of_type(QUEUE_IAM) if g.inputs["member"] == reporting]
    assert granted_on == [queue_named(prod, "reports").inputs["name"]]


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_no_project_level_iam_but_the_service_agents_role_and_no_public_member(stack: str) -> None:
    run = run_stack(stack)
    project_level = [r.inputs["role"] for r in run.resources if r.type.startswith("gcp:projects/iAM")]
    assert project_level == ["roles/cloudtasks.serviceAgent"]
    iam = [r for r in run.resources if r.type in (ACCOUNT_IAM, SERVICE_IAM, QUEUE_IAM)]
    assert len(iam) >= 4
    for grant in iam:
        assert grant.inputs["member"].split(":")[0] in ("serviceAccount", "user", "group", "domain")
        assert "allUsers" not in json.dumps(grant.inputs)
        assert "allAuthenticatedUsers" not in json.dumps(grant.inputs)


def test_runtime_and_invoker_are_distinct_dedicated_accounts(dev: ProgramRun) -> None:
    assert sorted(a.inputs["accountId"] for a in dev.of_type(ACCOUNT)) == ["tasks-dev-invoker", "tasks-dev-run"]


# --- queues -------------------------------------------------------------------------------------


def test_queue_settings_reach_the_queue(dev: ProgramRun) -> None:
    emails = queue_named(dev, "emails").inputs
    assert emails["location"] == "europe-west1"
    assert emails["project"] == "my-tasks-dev"
    assert emails["rateLimits"] == {"maxDispatchesPerSecond": 5, "maxConcurrentDispatches": 20}
    assert emails["retryConfig"] == {
        "maxAttempts": 10,
        "maxRetryDuration": "3600s",
        "minBackoff": "0.1s",
        "maxBackoff": "3600s",
        "maxDoublings": 16,
    }
    assert emails["stackdriverLoggingConfig"] == {"samplingRatio": 1.0}


def test_queue_concurrency_defaults_to_what_the_service_can_take(dev: ProgramRun) -> None:
    # dev: maxInstances 3 x concurrency 80 = 240 requests at once.
    assert queue_named(dev, "default").inputs["rateLimits"]["maxConcurrentDispatches"] == 240


def test_queue_ids_carry_a_random_suffix_so_a_recreated_queue_gets_a_new_id(dev: ProgramRun) -> None:
    ids = [q.inputs["name"] for q in task_queues(dev)]
    assert len(ids) == 2
    for key, queue_id in zip(("default", "emails"), sorted(ids), strict=True):
        prefix, _, suffix = queue_id.rpartition("-")
        assert prefix == f"tasks-dev-{key}"
        assert len(suffix) == 6 and int(suffix, 16) >= 0


def test_queue_level_routing_pins_url_and_token(dev: ProgramRun) -> None:
    routed = queue_named(dev, "emails").inputs["httpTarget"]
    service_url = dev.outputs[OutputName.SERVICE_URL]
    assert routed == {
        "httpMethod": "POST",
        "uriOverride": {
            "scheme": "HTTPS",
            "host": service_url.removeprefix("https://"),
            "pathOverride": {"path": "/tasks/send-email"},
            "uriOverrideEnforceMode": "ALWAYS",
        },
        "oidcToken": {"serviceAccountEmail": invoker_account(dev).outputs["email"], "audience": DETERMINISTIC_URL},
    }
    assert "httpTarget" not in queue_named(dev, "default").inputs


def test_burst_size_is_never_set(prod: ProgramRun) -> None:
    assert all("maxBurstSize" not in q.inputs["rateLimits"] for q in prod.of_type(QUEUE))


# --- what the provider would accept ---------------------------------------------------------------


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_every_resource_matches_pulumi_gcp_schema(stack: str) -> None:
    run = run_stack(stack)
    problems = {r.name: schema_problems(r.type, r.inputs) for r in run.resources}
    assert {name: p for name, p in problems.items() if p} == {}
    assert len([r for r in run.resources if r.type.startswith("gcp:")]) >= 14


# --- exports ------------------------------------------------------------------------------------


def test_exports_carry_every_value_a_producer_needs(dev: ProgramRun) -> None:
    outputs = StackOutputs.from_mapping(dev.outputs)
    service_url = outputs.service_url
    assert service_url.startswith("https://tasks-dev-handler-") and service_url.endswith(".run.app")
    assert outputs.project == "my-tasks-dev"
    assert outputs.location == "europe-west1"
    assert outputs.service_name == "tasks-dev-handler"
    # Explicit, and known before the service exists: the deterministic URL, never a task URL with a path.
    assert outputs.oidc_audience == DETERMINISTIC_URL
    assert outputs.invoker_email == "tasks-dev-invoker@my-tasks-dev.iam.gserviceaccount.com"
    assert outputs.runtime_email == "tasks-dev-run@my-tasks-dev.iam.gserviceaccount.com"
    assert outputs.default_queue == "default"
    emails = outputs.queues["emails"]
    assert emails.path == f"projects/my-tasks-dev/locations/europe-west1/queues/{emails.id}"
    assert emails.task_url == f"{service_url}/tasks/send-email"
    assert (emails.max_attempts, emails.dispatch_deadline_seconds, emails.queue_level_routing) == (10, 120.0, True)
    assert outputs.default_queue_path == outputs.queues["default"].path


def test_create_task_command_is_ready_to_run(dev: ProgramRun) -> None:
    outputs = StackOutputs.from_mapping(dev.outputs)
    command = outputs.create_task_command
    assert command.startswith("gcloud tasks create-http-task ")
    for part in (
        f"--queue={outputs.queues['default'].id}",
        "--location=europe-west1",
        "--project=my-tasks-dev",
        f"--url={outputs.service_url}/tasks/default",
        f"--oidc-service-account-email={outputs.invoker_email}",
        f"--oidc-token-audience={outputs.oidc_audience}",
        "--header=Content-Type:application/json",
    ):
        assert part in command


@pytest.mark.parametrize(
    "output",
    [
        OutputName.SERVICE_URL,
        OutputName.OIDC_AUDIENCE,
        OutputName.INVOKER_EMAIL,
        OutputName.QUEUES,
        OutputName.DEFAULT_QUEUE_PATH,
        OutputName.DEAD_LETTER_QUEUE,
    ],
)
def test_usable_outputs_wait_for_the_iam_that_makes_them_usable(dev: ProgramRun, output: str) -> None:
    needed = {r.urn for r in dev.resources if r.type in (SERVICE_IAM, ACCOUNT_IAM, QUEUE_IAM)}
    # run.invoker, 2 x actAs (agent, enqueuer), 2 x enqueuer, the runtime account's on the dead-letter queue.
    assert len(needed) == 6
    assert needed <= dev.output_dependencies[output]


# --- bad input ----------------------------------------------------------------------------------


def test_bad_config_stops_the_program_with_every_problem_and_registers_nothing() -> None:
    config = stack_file_config("dev")
    config["cloudrun-tasks:queues"] = json.dumps({"emails": {"rateLimits": {"maxDispatchesPerSecond": 900}}})
    config["cloudrun-tasks:enqueuers"] = json.dumps(["allUsers"])
    with pytest.raises(ProgramError) as raised:
        evaluate(config)
    message = str(raised.value)
    assert "queues.emails.rateLimits.maxDispatchesPerSecond: 900 is above the maximum of 500" in message
    assert "enqueuers[0]: 'allUsers' is public" in message
    assert "Traceback" not in message
    assert raised.value.resources == ()


def test_missing_project_is_refused_before_any_resource() -> None:
    config = stack_file_config("dev")
    del config["gcp:project"]
    with pytest.raises(ProgramError, match=r"gcp:project: missing") as raised:
        evaluate(config)
    assert raised.value.resources == ()


def test_capacity_warning_reaches_the_engine_log() -> None:
    run = run_stack("dev", service={"maxInstances": 1, "concurrency": 10})
    assert any("queues.emails.rateLimits.maxConcurrentDispatches: 20" in w for w in run.warnings)


# --- config exactly as the CLI passes it -------------------------------------------------------------


def test_settings_read_the_cli_config_bag(monkeypatch: pytest.MonkeyPatch) -> None:
    import pulumi

    from components.settings import stack_config

    # The language host passes the stack's config in PULUMI_CONFIG; nothing is set in-process.
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps(stack_file_config("prod")))
    pulumi.runtime.set_all_config({})
    settings = load_settings(stack_config(), "prod")
    assert settings.name_prefix == "tasks"
    assert [q.key for q in settings.queues] == ["work", "reports"]
    assert settings.default_queue == "work"
