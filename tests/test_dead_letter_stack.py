"""The stack side of the dead-letter queue, as the real program registers it under mocks: the paused queue, its
export and the handler's environment, and exactly who may do what on it (the runtime account, the operators)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import pytest

from contract import cloud_tasks, dead_letters, handler_env
from contract.outputs import OutputName, StackOutputs
from harness import run_stack
from localcloud.program import ProgramRun, Registration

QUEUE = "gcp:cloudtasks/queue:Queue"
QUEUE_IAM = "gcp:cloudtasks/queueIamMember:QueueIamMember"
ACCOUNT = "gcp:serviceaccount/account:Account"
ACCOUNT_IAM = "gcp:serviceaccount/iAMMember:IAMMember"
SERVICE = "gcp:cloudrunv2/service:Service"
SERVICE_IAM = "gcp:cloudrunv2/serviceIamMember:ServiceIamMember"
RANDOM_ID = "random:index/randomId:RandomId"
DEAD_LETTERS = f"tasks-{dead_letters.QUEUE_KEY}"  # the queue's logical name
ENQUEUER = "roles/cloudtasks.enqueuer"
VIEWER = "roles/cloudtasks.viewer"
TASK_DELETER = "roles/cloudtasks.taskDeleter"
ACT_AS = "roles/iam.serviceAccountUser"

ONCALL = "group:tasks-oncall@example.com"
OPERATOR_SA = "serviceAccount:ops-bot@my-tasks-dev.iam.gserviceaccount.com"
DEV_ENQUEUER = "serviceAccount:api-dev@my-tasks-dev.iam.gserviceaccount.com"


@pytest.fixture(scope="module")
def with_operators() -> ProgramRun:
    return run_stack("dev", operators=[ONCALL, OPERATOR_SA])


def dead_letter_queue(run: ProgramRun) -> Registration:
    (queue,) = [q for q in run.of_type(QUEUE) if q.name == DEAD_LETTERS]
    return queue


def task_queues(run: ProgramRun) -> list[Registration]:
    return [q for q in run.of_type(QUEUE) if q.name != DEAD_LETTERS]


def account(run: ProgramRun, suffix: str) -> Registration:
    return next(a for a in run.of_type(ACCOUNT) if a.inputs["accountId"].endswith(suffix))


def grants_of(run: ProgramRun, member: str) -> set[tuple[str, str, str]]:
    """Every (resource type, resource, role) the stack grants `member`, whatever kind of IAM resource."""
    found = set()
    for r in run.resources:
        if r.type.endswith(("IamMember", "IAMMember")) and r.inputs.get("member") == member:
            resource = r.inputs.get("name") or r.inputs.get("serviceAccountId") or r.inputs.get("project")
            found.add((r.type, str(resource), r.inputs["role"]))
    return found


def env(run: ProgramRun) -> dict[str, Any]:
    (service,) = run.of_type(SERVICE)
    return {e["name"]: e.get("value") for e in service.inputs["template"]["containers"][0]["envs"]}


# --- the queue ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_one_dead_letter_queue_per_stack_held_paused_and_never_losing_a_task(stack: str) -> None:
    run = run_stack(stack)
    queue = dead_letter_queue(run).inputs
    prefix = {"dev": "tasks-dev", "prod": "tasks"}[stack]
    head, _, suffix = queue["name"].rpartition("-")
    assert head == f"{prefix}-dead-letters"
    assert len(suffix) == 6 and int(suffix, 16) >= 0
    assert (queue["project"], queue["location"]) == (f"my-tasks-{stack}", "europe-west1")
    assert queue["desiredState"] == "PAUSED"
    # Resumed by mistake: unlimited retries, one dispatch at a time at the slowest rate the stack accepts.
    assert queue["retryConfig"]["maxAttempts"] == -1
    assert queue["retryConfig"]["maxRetryDuration"] == "0s"
    assert queue["rateLimits"] == {
        "maxDispatchesPerSecond": cloud_tasks.MIN_DISPATCHES_PER_SECOND,
        "maxConcurrentDispatches": 1,
    }
    # No queue-level routing: a dead letter carries no OIDC token, so a dispatch is refused, never run.
    assert "httpTarget" not in queue
    assert queue["stackdriverLoggingConfig"] == {"samplingRatio": 1.0}


def test_the_suffix_is_a_random_id_kept_in_state_like_the_other_queues(dev: ProgramRun) -> None:
    suffix = dev.named(f"{DEAD_LETTERS}-suffix")
    assert suffix.type == RANDOM_ID
    assert suffix.inputs["byteLength"] == 3
    assert dead_letter_queue(dev).inputs["name"].endswith("-" + suffix.outputs["hex"])


def test_only_the_dead_letter_queue_is_paused_so_an_operators_pause_survives_an_update(dev: ProgramRun) -> None:
    assert [q.name for q in dev.of_type(QUEUE) if "desiredState" in q.inputs] == [DEAD_LETTERS]


def test_it_is_declared_after_the_queues_whose_tasks_it_records(dev: ProgramRun) -> None:
    assert {q.urn for q in task_queues(dev)} <= dev.waits_for(dead_letter_queue(dev))
    assert [q.name for q in dev.of_type(QUEUE)] == ["tasks-default", "tasks-emails", DEAD_LETTERS]


@pytest.mark.parametrize(("stack", "protected"), [("dev", False), ("prod", True)])
def test_the_dead_letter_queue_is_protected_as_the_other_queues_are(stack: str, protected: bool) -> None:
    assert dead_letter_queue(run_stack(stack)).protect is protected


def test_a_user_queue_named_dead_letters_is_refused_before_any_resource() -> None:
    from localcloud.program import ProgramError

    with pytest.raises(ProgramError) as raised:
        run_stack("dev", queues={"default": {}, "dead-letters": {}})
    assert "queues.dead-letters: the queue name 'dead-letters' is reserved" in str(raised.value)
    assert raised.value.resources == ()


# --- the export and the handler's environment -----------------------------------------------------------


def test_the_dead_letter_queue_is_exported_as_its_full_path(dev: ProgramRun) -> None:
    outputs = StackOutputs.from_mapping(dev.outputs)
    queue_id = dead_letter_queue(dev).outputs["name"]
    assert outputs.dead_letter_queue == f"projects/my-tasks-dev/locations/europe-west1/queues/{queue_id}"
    assert dev.outputs[OutputName.DEAD_LETTER_QUEUE] == outputs.dead_letter_queue


def test_the_export_waits_for_the_grants_that_let_the_handler_and_operators_use_it(
    with_operators: ProgramRun,
) -> None:
    queue_id = dead_letter_queue(with_operators).outputs["name"]
    on_it = {g.urn for g in with_operators.of_type(QUEUE_IAM) if g.inputs["name"] == queue_id}
    assert len(on_it) == 1 + 2 * 3  # the runtime account's, and three for each operator
    assert on_it <= with_operators.output_dependencies[OutputName.DEAD_LETTER_QUEUE]
    assert dead_letter_queue(with_operators).urn in with_operators.output_dependencies[OutputName.DEAD_LETTER_QUEUE]


def test_the_handler_is_told_the_dead_letter_queue_and_not_to_serve_it(dev: ProgramRun) -> None:
    values = env(dev)
    assert values[handler_env.DEAD_LETTER_QUEUE] == dev.outputs[OutputName.DEAD_LETTER_QUEUE]
    table = handler_env.decode_queue_table(values[handler_env.QUEUES])
    assert dead_letter_queue(dev).outputs["name"] not in table
    assert sorted(entry.key for entry in table.values()) == ["default", "emails"]


def test_the_handler_is_told_each_queues_path_to_check_it_has_a_task_type_there(dev: ProgramRun) -> None:
    table = handler_env.decode_queue_table(env(dev)[handler_env.QUEUES])
    paths = {entry.key: entry.path for entry in table.values()}
    urls = {key: queue["task_url"] for key, queue in dev.outputs[OutputName.QUEUES].items()}
    assert paths == {key: urlsplit(url).path for key, url in urls.items()}
    assert paths["emails"] == "/tasks/send-email"


def test_the_handler_gets_each_queues_whole_retry_policy(prod: ProgramRun) -> None:
    table = handler_env.decode_queue_table(env(prod)[handler_env.QUEUES])
    policies = {entry.key: entry.retry for entry in table.values()}
    assert (policies["reports"].max_attempts, policies["reports"].max_retry_duration) == (-1, 86400.0)
    assert (policies["reports"].min_backoff, policies["reports"].max_backoff) == (60.0, 3600.0)
    assert policies["reports"].max_doublings == cloud_tasks.DEFAULT_MAX_DOUBLINGS
    assert (policies["work"].min_backoff, policies["work"].max_backoff, policies["work"].max_doublings) == (
        5.0,
        1800.0,
        5,
    )
    raw = json.loads(env(prod)[handler_env.QUEUES])
    assert all(isinstance(entry["maxRetryDurationSeconds"], float) for entry in raw.values())


# --- the runtime account: enqueuer on the dead-letter queue, nothing else -------------------------------


def test_the_runtime_account_may_add_dead_letters_and_nothing_else_from_the_queues(dev: ProgramRun) -> None:
    runtime = account(dev, "-run").outputs["member"]
    queue_id = dead_letter_queue(dev).outputs["name"]
    assert grants_of(dev, runtime) == {(QUEUE_IAM, queue_id, ENQUEUER)}
    (grant,) = [g for g in dev.of_type(QUEUE_IAM) if g.inputs["member"] == runtime]
    assert (grant.inputs["project"], grant.inputs["location"]) == ("my-tasks-dev", "europe-west1")


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_runtime_account_acts_as_no_one(stack: str) -> None:
    """It records dead letters without an OIDC token, so it needs no actAs: none anywhere, and no grant on the
    queues it serves (prod: beside its secretAccessor grants)."""
    run = run_stack(stack)
    runtime = account(run, "-run").outputs["member"]
    held = grants_of(run, runtime)
    assert not [g for g in held if g[2] == ACT_AS]
    task_queue_ids = {q.outputs["name"] for q in task_queues(run)}
    assert not [g for g in held if g[1] in task_queue_ids]
    assert {g for g in held if g[0] == QUEUE_IAM} == {(QUEUE_IAM, dead_letter_queue(run).outputs["name"], ENQUEUER)}


# --- operators: exactly what taskclient dead-letters needs, each on its one resource --------------------


@pytest.mark.parametrize("operator", [ONCALL, OPERATOR_SA])
def test_each_operator_gets_exactly_the_dead_letter_grants(with_operators: ProgramRun, operator: str) -> None:
    run = with_operators
    dlq = dead_letter_queue(run).outputs["name"]
    invoker = account(run, "-invoker").outputs["name"]
    assert grants_of(run, operator) == {
        (QUEUE_IAM, dlq, VIEWER),  # list, show
        (QUEUE_IAM, dlq, TASK_DELETER),  # discard, and the delete after a replay
        (QUEUE_IAM, dlq, ENQUEUER),  # cloudtasks.tasks.fullView: a dead letter's body and headers
        *((QUEUE_IAM, q.outputs["name"], ENQUEUER) for q in task_queues(run)),  # replay creates the task there
        # replaying a provisional letter first checks that its task is gone from the original queue
        *((QUEUE_IAM, q.outputs["name"], VIEWER) for q in task_queues(run)),
        (ACCOUNT_IAM, invoker, ACT_AS),  # the replayed task carries the invoker's token
    }
    for grant in run.of_type(QUEUE_IAM):
        if grant.inputs["member"] == operator:
            assert (grant.inputs["project"], grant.inputs["location"]) == ("my-tasks-dev", "europe-west1")


def test_no_operators_by_default_and_no_project_level_grant_for_them(dev: ProgramRun, with_operators: Any) -> None:
    assert not [g for g in dev.of_type(QUEUE_IAM) if g.inputs["role"] in (VIEWER, TASK_DELETER)]
    project_level = [r for r in with_operators.resources if r.type.startswith("gcp:projects/iAM")]
    assert [r.inputs["role"] for r in project_level] == ["roles/cloudtasks.serviceAgent"]
    assert not [g for g in with_operators.of_type(SERVICE_IAM) if g.inputs["member"] in (ONCALL, OPERATOR_SA)]


def test_an_operator_who_also_enqueues_gets_one_grant_per_role_and_resource() -> None:
    run = run_stack("dev", operators=[DEV_ENQUEUER])
    held = [
        (g.type, g.inputs.get("name") or g.inputs.get("serviceAccountId"), g.inputs["role"])
        for g in run.resources
        if g.type in (QUEUE_IAM, ACCOUNT_IAM) and g.inputs["member"] == DEV_ENQUEUER
    ]
    assert len(held) == len(set(held)) == 3 + 2 * len(task_queues(run)) + 1
    assert (ACCOUNT_IAM, account(run, "-invoker").outputs["name"], ACT_AS) in held
