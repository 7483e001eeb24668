"""Monitoring as code: alert policies, channels and the dashboard as the real program registers them under
mocks, and the `monitoring` settings' validation rules."""

from __future__ import annotations

import json
from typing import Any

import pytest

from components.monitoring import QUEUE_DEPTH, queue_filter
from components.settings import SettingsError, load_settings
from harness import run_stack
from localcloud.program import ProgramRun, Registration

POLICY = "gcp:monitoring/alertPolicy:AlertPolicy"
CHANNEL = "gcp:monitoring/notificationChannel:NotificationChannel"
DASHBOARD = "gcp:monitoring/dashboard:Dashboard"
API = "gcp:projects/service:Service"
QUEUE = "gcp:cloudtasks/queue:Queue"
MONITORING_TYPES = (POLICY, CHANNEL, DASHBOARD)
EXISTING = "projects/my-tasks-dev/notificationChannels/4242"
EMAILS = ["oncall@example.com", "tasks-team@example.com"]


@pytest.fixture(scope="module")
def run() -> ProgramRun:
    return run_stack(
        "dev",
        monitoring={
            "notificationChannels": [EXISTING],
            "emails": EMAILS,
            "backlogThreshold": 250,
            "backlogFor": "600s",
            "failingAttemptsRatio": 0.2,
            "handlerErrorRatio": 0.02,
            "latencyP99": "30s",
            "failingFor": "120s",
        },
    )


DEAD_LETTERS = "tasks-dead-letters"  # the dead-letter queue's logical name


def queue_ids(run: ProgramRun) -> dict[str, str]:
    """Configured queue key -> physical queue id (the logical name is `tasks-<key>`)."""
    return {q.name.removeprefix("tasks-"): q.outputs["name"] for q in run.of_type(QUEUE) if q.name != DEAD_LETTERS}


def dead_letter_id(run: ProgramRun) -> str:
    (queue,) = [q for q in run.of_type(QUEUE) if q.name == DEAD_LETTERS]
    queue_id: str = queue.outputs["name"]
    return queue_id


def policy(run: ProgramRun, suffix: str) -> Registration:
    return run.named(f"tasks-monitoring-{suffix}")


def threshold(p: Registration) -> dict[str, Any]:
    (condition,) = p.inputs["conditions"]
    found: dict[str, Any] = condition["conditionThreshold"]
    return found


def test_each_queue_has_a_backlog_policy_on_its_own_depth(run: ProgramRun) -> None:
    ids = queue_ids(run)
    assert set(ids) == {"default", "emails"}
    for key, queue_id in ids.items():
        t = threshold(policy(run, f"{key}-backlog"))
        assert 'metric.type = "cloudtasks.googleapis.com/queue/depth"' in t["filter"]
        assert 'resource.type = "cloud_tasks_queue"' in t["filter"]
        assert f'resource.labels.queue_id = "{queue_id}"' in t["filter"]
        assert (t["comparison"], t["thresholdValue"], t["duration"]) == ("COMPARISON_GT", 250.0, "600s")


def test_each_queue_has_a_failing_attempts_ratio_policy(run: ProgramRun) -> None:
    for key, queue_id in queue_ids(run).items():
        t = threshold(policy(run, f"{key}-failing-attempts"))
        attempts = (
            f'resource.type = "cloud_tasks_queue" AND resource.labels.queue_id = "{queue_id}"'
            ' AND metric.type = "cloudtasks.googleapis.com/queue/task_attempt_count"'
        )
        assert t["denominatorFilter"] == attempts
        assert t["filter"].startswith(attempts + " AND NOT metric.labels.response_code = ")
        assert (t["thresholdValue"], t["duration"]) == (0.2, "120s")
        assert t["aggregations"][0]["groupByFields"] == t["denominatorAggregations"][0]["groupByFields"]


def test_the_handlers_5xx_share_and_p99_latency_are_alerted_on(run: ProgramRun) -> None:
    service = run.of_type("gcp:cloudrunv2/service:Service")[0].outputs["name"]
    on_service = f'resource.type = "cloud_run_revision" AND resource.labels.service_name = "{service}"'
    errors = threshold(policy(run, "handler-errors"))
    assert errors["filter"].startswith(on_service)
    assert 'metric.type = "run.googleapis.com/request_count"' in errors["filter"]
    assert errors["filter"].endswith('AND metric.labels.response_code_class = "5xx"')
    assert errors["denominatorFilter"] == errors["filter"].removesuffix(
        ' AND metric.labels.response_code_class = "5xx"'
    )
    assert (errors["thresholdValue"], errors["duration"]) == (0.02, "120s")
    latency = threshold(policy(run, "handler-latency"))
    assert latency["filter"].startswith(on_service)
    assert 'metric.type = "run.googleapis.com/request_latencies"' in latency["filter"]
    assert latency["thresholdValue"] == 30_000.0  # milliseconds, the metric's unit
    assert latency["aggregations"][0]["crossSeriesReducer"] == "REDUCE_PERCENTILE_99"


def test_latency_defaults_to_most_of_the_service_timeout() -> None:
    run = run_stack("dev", monitoring={})
    service = run.of_type("gcp:cloudrunv2/service:Service")[0]
    timeout_s = float(service.inputs["template"]["timeout"].removesuffix("s"))
    assert threshold(policy(run, "handler-latency"))["thresholdValue"] == timeout_s * 0.8 * 1000


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_stacks_own_dead_letter_queue_alerts_on_its_first_task_with_no_config(stack: str) -> None:
    run = run_stack(stack)  # no monitoring key in either stack file
    t = threshold(policy(run, "dead-letters"))
    queue_id = dead_letter_id(run)
    assert queue_id.startswith({"dev": "tasks-dev-dead-letters-", "prod": "tasks-dead-letters-"}[stack])
    assert t["filter"] == (
        f'resource.type = "cloud_tasks_queue" AND resource.labels.queue_id = "{queue_id}"'
        ' AND metric.type = "cloudtasks.googleapis.com/queue/depth"'
    )
    assert (t["comparison"], t["thresholdValue"], t["duration"]) == ("COMPARISON_GT", 0.0, "0s")
    assert policy(run, "dead-letters").inputs["severity"] == "ERROR"
    # The dead-letter queue gets this alert, not the backlog and failing-attempts ones of a working queue.
    assert not [p.name for p in run.of_type(POLICY) if "dead-letters-" in p.name]


def test_the_dead_letter_runbook_says_how_to_list_read_replay_and_discard(run: ProgramRun) -> None:
    content = policy(run, "dead-letters").inputs["documentation"]["content"]
    queue_id = dead_letter_id(run)
    for step in (
        "python -m taskclient dead-letters list --outputs outputs.json",
        "python -m taskclient dead-letters show NAME",
        "python -m taskclient dead-letters replay NAME",
        "python -m taskclient dead-letters replay --all --queue KEY",
        "python -m taskclient dead-letters discard NAME",
        "pulumi stack output --json > outputs.json",
        "Fix the cause first",
        "X-Dead-Letter-Reason",
        "the handler's log entry",
        "at most 31 days",
        f"gcloud tasks queues pause {queue_id} --project=my-tasks-dev --location=europe-west1",
    ):
        assert step in content, step


def test_emails_become_channels_and_every_policy_notifies_every_channel(run: ProgramRun) -> None:
    channels = run.of_type(CHANNEL)
    assert sorted((c.inputs["type"], c.inputs["labels"]["email_address"]) for c in channels) == [
        ("email", address) for address in EMAILS
    ]
    expected = {EXISTING, *(c.outputs["name"] for c in channels)}
    policies = run.of_type(POLICY)
    assert len(policies) == 2 * 2 + 2 + 1  # per queue, the handler's two, the dead-letter queue's
    for p in policies:
        assert set(p.inputs["notificationChannels"]) == expected, p.name


def test_every_policy_has_a_runbook_naming_what_fired(run: ProgramRun) -> None:
    ids = queue_ids(run)
    for p in run.of_type(POLICY):
        doc = p.inputs["documentation"]
        assert doc["mimeType"] == "text/markdown"
        # Commands to run first: gcloud, or for dead letters the task client.
        first = "python -m taskclient " if p.name.endswith("-dead-letters") else "gcloud "
        assert "### Look" in doc["content"] and f"```sh\n{first}" in doc["content"], p.name
    for key, queue_id in ids.items():
        content = policy(run, f"{key}-backlog").inputs["documentation"]["content"]
        assert f"gcloud tasks queues describe {queue_id} --project=my-tasks-dev --location=europe-west1" in content


def test_the_dashboard_has_a_row_of_charts_per_queue_and_the_handler(run: ProgramRun) -> None:
    (board,) = run.of_type(DASHBOARD)
    tiles = json.loads(board.inputs["dashboardJson"])["mosaicLayout"]["tiles"]
    filters = [t["widget"]["xyChart"]["dataSets"][0]["timeSeriesQuery"]["timeSeriesFilter"]["filter"] for t in tiles]
    for queue_id in queue_ids(run).values():
        on_queue = [f for f in filters if f'queue_id = "{queue_id}"' in f]
        assert sorted(f.rsplit('metric.type = "', 1)[1] for f in on_queue) == [
            'cloudtasks.googleapis.com/queue/depth"',
            'cloudtasks.googleapis.com/queue/task_attempt_count"',
            'cloudtasks.googleapis.com/queue/task_attempt_delays"',
        ]
    on_dead_letters = [f for f in filters if f'queue_id = "{dead_letter_id(run)}"' in f]
    assert on_dead_letters == [queue_filter(QUEUE_DEPTH, dead_letter_id(run))]
    on_service = sorted(f.rsplit('metric.type = "', 1)[1] for f in filters if "cloud_run_revision" in f)
    assert on_service == ['run.googleapis.com/request_count"', 'run.googleapis.com/request_latencies"']
    assert all(t["xPos"] + t["width"] <= 12 for t in tiles)


def test_each_dashboard_chart_named_for_a_queue_shows_that_queue(run: ProgramRun) -> None:
    (board,) = run.of_type(DASHBOARD)
    tiles = json.loads(board.inputs["dashboardJson"])["mosaicLayout"]["tiles"]
    charts = {t["widget"]["title"]: t["widget"]["xyChart"]["dataSets"][0]["timeSeriesQuery"] for t in tiles}
    ids = queue_ids(run)
    assert len(ids) >= 2  # one queue alone could not be paired with another's id
    for key, queue_id in ids.items():
        assert charts[f"{key}: depth"]["timeSeriesFilter"]["filter"] == queue_filter(QUEUE_DEPTH, queue_id)


def test_every_monitoring_resource_waits_for_the_monitoring_api(run: ProgramRun) -> None:
    (api,) = [a for a in run.of_type(API) if a.inputs["service"] == "monitoring.googleapis.com"]
    assert api.inputs["disableOnDestroy"] is False
    made = [r for t in MONITORING_TYPES for r in run.of_type(t)]
    assert len(made) == 2 + 7 + 1
    for resource in made:
        assert api.urn in run.waits_for(resource), resource.name
        assert run.by_urn(resource.parent).type == "cloudrun-tasks:index:Monitoring"


def test_disabled_creates_nothing_and_leaves_the_api_alone() -> None:
    run = run_stack("dev", monitoring={"enabled": False, "emails": EMAILS})
    assert [r.name for t in MONITORING_TYPES for r in run.of_type(t)] == []
    assert "monitoring.googleapis.com" not in {a.inputs["service"] for a in run.of_type(API)}
    assert not [r for r in run.resources if r.type == "cloudrun-tasks:index:Monitoring"]


# --- settings ----------------------------------------------------------------------------------------

BASE = {"gcp:project": "my-tasks-dev", "gcp:region": "europe-west1", "cloudrun-tasks:queues": '{"default": {}}'}


def problems(monitoring: Any) -> tuple[str, ...]:
    try:
        load_settings({**BASE, "cloudrun-tasks:monitoring": json.dumps(monitoring)}, "dev")
    except SettingsError as error:
        return error.problems
    return ()


REJECTED = [
    pytest.param({"enabled": "yes"}, "monitoring.enabled", "true or false", id="enabled-not-bool"),
    pytest.param({"backlogThreshold": 0}, "monitoring.backlogThreshold", "below the minimum of 1", id="backlog-0"),
    pytest.param({"backlogThreshold": "1000"}, "monitoring.backlogThreshold", "a whole number", id="backlog-text"),
    pytest.param({"backlogFor": "5m"}, "monitoring.backlogFor", "not a duration", id="backlog-for-form"),
    pytest.param({"backlogFor": "90s"}, "monitoring.backlogFor", "whole number of minutes", id="backlog-for-step"),
    pytest.param({"failingFor": "172800s"}, "monitoring.failingFor", "above the maximum", id="failing-for-long"),
    pytest.param({"failingAttemptsRatio": 0}, "monitoring.failingAttemptsRatio", "above 0", id="ratio-0"),
    pytest.param({"failingAttemptsRatio": 1.5}, "monitoring.failingAttemptsRatio", "above the maximum", id="ratio>1"),
    pytest.param({"handlerErrorRatio": -0.1}, "monitoring.handlerErrorRatio", "above 0", id="error-ratio-neg"),
    pytest.param({"latencyP99": "0s"}, "monitoring.latencyP99", "above 0s", id="latency-0"),
    pytest.param({"latencyP99": "601s"}, "monitoring.latencyP99", "at most service.timeout", id="latency>timeout"),
    pytest.param(
        {"notificationChannels": ["123"]}, "monitoring.notificationChannels[0]", "'123'", id="channel-bare-number"
    ),
    pytest.param(
        {"notificationChannels": ["projects/p/notificationChannels/x"]},
        "monitoring.notificationChannels[0]",
        "notification channel id",
        id="channel-not-number",
    ),
    pytest.param({"notificationChannels": "projects/p"}, "monitoring.notificationChannels", "a list", id="not-list"),
    pytest.param({"emails": ["oncall"]}, "monitoring.emails[0]", "not an email address", id="email-bad"),
    pytest.param({"emails": [7]}, "monitoring.emails[0]", "expected a string", id="email-number"),
    # Gone: the alert is always on the stack's own dead-letter queue.
    pytest.param({"deadLetterQueueIds": ["dlq"]}, "monitoring.deadLetterQueueIds", "unknown key", id="dlq-ids-gone"),
    pytest.param({"alertAfter": "60s"}, "monitoring.alertAfter", "unknown key", id="unknown-key"),
    pytest.param(["x"], "monitoring", "expected an object", id="not-object"),
]


@pytest.mark.parametrize(("monitoring", "path", "fragment"), REJECTED)
def test_rejected(monitoring: Any, path: str, fragment: str) -> None:
    (problem,) = problems(monitoring)
    assert problem.startswith(f"{path}: ") and fragment in problem, problem


def test_valid_monitoring_settings_are_read() -> None:
    raw = {
        "enabled": False,
        "backlogThreshold": 5,
        "backlogFor": "0s",
        "latencyP99": "0.5s",
        "notificationChannels": [EXISTING, EXISTING, "projects/123456/notificationChannels/9"],
        "emails": EMAILS,
    }
    m = load_settings({**BASE, "cloudrun-tasks:monitoring": json.dumps(raw)}, "dev").monitoring
    assert (m.enabled, m.backlog_threshold, str(m.backlog_for), str(m.latency_p99)) == (False, 5, "0s", "0.5s")
    assert m.notification_channels == (EXISTING, "projects/123456/notificationChannels/9")
    assert m.emails == tuple(EMAILS)
