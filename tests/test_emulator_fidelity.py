"""Fidelity of the emulator's dispatch engine to Cloud Tasks' documented behaviour, on a manual clock.

Everything runs through `Simulator` (discrete events, no real time): rate limits, concurrency, the retry law and
its stop conditions, schedule times, deadlines, live queue changes, RunTask, tombstones, queue-level routing and
the exact headers of each attempt.
"""

from __future__ import annotations

import datetime
import itertools
import math
from typing import Any

import grpc
import pytest
from emulator_support import T0, add_queue, add_task, new_core, retry
from google.cloud import tasks_v2
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.retry import RetryPolicy, backoff_delay
from localcloud.emulator.core import CloudTasksCore, CloudTasksError
from localcloud.emulator.engine import Attempt
from localcloud.emulator.errors import TASK_TOMBSTONE_MESSAGE
from localcloud.emulator.simulation import SimulationReport, Simulator, simulate

DAY = 24 * 3600.0


def ok(attempt: Attempt) -> tuple[int | None, float]:
    return 200, 0.001


def always(status: int | None, duration: float = 0.0) -> object:
    return lambda attempt: (status, duration)


def dispatch_times(report: SimulationReport, task_name: str | None = None) -> list[float]:
    return [a.dispatch_time for a, _, _ in report.attempts if task_name is None or a.task_name == task_name]


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


def at(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(T0 + seconds, tz=datetime.UTC)


def get_task(core: CloudTasksCore, name: str, view: int = 1) -> tasks_v2.Task:
    return core.get_task(tasks_v2.GetTaskRequest(name=name, response_view=view))


def assert_gone(core: CloudTasksCore, name: str) -> None:
    with pytest.raises(CloudTasksError) as caught:
        get_task(core, name)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.message == TASK_TOMBSTONE_MESSAGE


# ----- rate limits and concurrency -----


def test_rate_is_within_five_percent_of_the_setting_after_the_initial_burst() -> None:
    # Measured as the number of dispatches in the 10 s window [t0+1, t0+11): the burst (the full bucket at t0)
    # is over by then and the bucket refills at the set rate, so 50/s gives 500 +- 5%.
    core, _, _ = new_core()
    queue = add_queue(core, rate_limits={"max_dispatches_per_second": 50})
    for _ in range(1000):
        add_task(core, queue)
    report = simulate(core, ok, T0 + 30)
    times = dispatch_times(report)
    assert sum(1 for t in times if t == T0) == 50  # the initial burst = max_burst_size
    steady = sum(1 for t in times if T0 + 1 <= t < T0 + 11)
    assert abs(steady - 500) <= 25
    assert all(gap == pytest.approx(0.02, abs=1e-5) for gap in gaps(times[50:]))


def test_a_fractional_rate_dispatches_one_task_every_two_seconds() -> None:
    core, _, _ = new_core()
    queue = add_queue(core, rate_limits={"max_dispatches_per_second": 0.5})
    assert core.get_queue(tasks_v2.GetQueueRequest(name=queue)).rate_limits.max_burst_size == 1
    for _ in range(5):
        add_task(core, queue)
    report = simulate(core, ok, T0 + 60)
    assert dispatch_times(report) == [T0, T0 + 2, T0 + 4, T0 + 6, T0 + 8]


def test_the_concurrency_cap_is_reached_and_never_exceeded() -> None:
    core, _, _ = new_core()
    queue = add_queue(core, rate_limits={"max_concurrent_dispatches": 3})
    for _ in range(30):
        add_task(core, queue)
    report = simulate(core, always(200, 1.0), T0 + 100)
    intervals = [(a.dispatch_time, done) for a, _, done in report.attempts]
    most = max(sum(1 for start, end in intervals if start <= t < end) for t, _ in intervals)
    assert most == 3
    assert report.max_in_flight == 3
    assert report.end_time == T0 + 10  # 30 tasks, 3 at a time, 1 s each


# ----- the retry law -----


def test_backoff_follows_the_docs_example() -> None:
    # queue.py RetryConfig.max_doublings: min 10 s, max 300 s, 3 doublings -> 10, 20, 40, 80, 160, 240, 300, 300.
    core, _, _ = new_core()
    queue = add_queue(core, retry_config=retry(10, 300, max_attempts=9, max_doublings=3))
    task = add_task(core, queue)
    report = simulate(core, always(500), T0 + DAY)
    assert gaps(dispatch_times(report)) == [10, 20, 40, 80, 160, 240, 300, 300]
    assert_gone(core, task.name)


def test_backoff_with_the_default_retry_config() -> None:
    core, _, _ = new_core()
    queue = add_queue(core)
    add_task(core, queue)
    report = simulate(core, always(503), T0 + 30 * DAY)
    expected = [min(0.1 * 2**k, 3600.0) for k in range(99)]  # 100 attempts; 16 doublings pass 3600 s first
    assert gaps(dispatch_times(report)) == pytest.approx(expected, abs=1e-5)


def test_the_next_attempt_is_scheduled_from_the_completion_time() -> None:
    core, _, _ = new_core()
    queue = add_queue(core, retry_config=retry(10, 10, max_attempts=2))
    add_task(core, queue)
    report = simulate(core, always(500, 4.0), T0 + DAY)
    assert dispatch_times(report) == [T0, T0 + 14]


def test_every_non_2xx_status_is_retried_including_redirects() -> None:
    core, _, _ = new_core()
    queue = add_queue(core, retry_config=retry(1, 1))
    statuses = iter([302, 404, 429, 503, 204])
    task = add_task(core, queue)
    report = simulate(core, lambda attempt: (next(statuses), 0.0), T0 + DAY)
    assert report.statuses(task.name) == [302, 404, 429, 503, 204]
    assert_gone(core, task.name)


@pytest.mark.parametrize(
    ("max_attempts", "duration", "attempts"),
    [
        pytest.param(4, 0, 4, id="attempts-only"),
        pytest.param(1, 10, 11, id="duration-only"),
        pytest.param(5, 10, 11, id="both-duration-last"),
        pytest.param(20, 10, 20, id="both-attempts-last"),
        pytest.param(-1, 10, 11, id="unlimited-attempts-with-duration"),
    ],
)
def test_retrying_stops_when_every_configured_limit_is_used_up(max_attempts: int, duration: int, attempts: int) -> None:
    # Fixed 1 s backoff and instant failures: attempt n fails (n-1) s after the first dispatch.
    core, _, _ = new_core()
    config = retry(1, 1, max_attempts=max_attempts, max_retry_duration=f"{duration}s")
    queue = add_queue(core, retry_config=config)
    task = add_task(core, queue)
    report = simulate(core, always(500), T0 + DAY)
    assert len(report.attempts) == attempts
    assert_gone(core, task.name)


def test_with_both_limits_unlimited_the_31_day_retention_ends_retries() -> None:
    core, _, _ = new_core()
    queue = add_queue(core, retry_config=retry(3600, 3600, max_attempts=-1))
    task = add_task(core, queue)
    report = simulate(core, always(500), T0 + 60 * DAY)
    times = dispatch_times(report)
    assert len(times) == 31 * 24  # hourly attempts; the one due at exactly 31 days is not made
    assert times[-1] - T0 < 31 * DAY
    assert_gone(core, task.name)


def test_a_task_level_retry_config_overrides_the_queues() -> None:
    core, _, _ = new_core()
    queue = add_queue(core, retry_config=retry(1, 1, max_attempts=10))
    special = add_task(core, queue, retry_config=retry(7, 7, max_attempts=2))
    plain = add_task(core, queue)
    report = simulate(core, always(500), T0 + DAY)
    assert gaps(dispatch_times(report, special.name)) == [7]
    assert len(dispatch_times(report, plain.name)) == 10


# ----- schedule times and deadlines -----


def test_schedule_times_are_honoured_in_schedule_order() -> None:
    core, _, _ = new_core()
    queue = add_queue(core)
    late = add_task(core, queue, schedule_time=at(100))
    early = add_task(core, queue, schedule_time=at(50.25))
    past = add_task(core, queue, schedule_time=at(-100))
    assert past.schedule_time.timestamp() == T0  # a past schedule time becomes now
    report = simulate(core, ok, T0 + DAY)
    assert [(a.task_name, a.dispatch_time) for a, _, _ in report.attempts] == [
        (past.name, T0),
        (early.name, T0 + 50.25),
        (late.name, T0 + 100),
    ]
    assert report.attempts[1][0].headers["X-CloudTasks-TaskETA"] == f"{T0 + 50.25:.6f}"


def test_the_dispatch_deadline_is_the_timeout_and_no_response_reports_504() -> None:
    core, _, _ = new_core(strict_deadlines=False)
    queue = add_queue(core, retry_config=retry(1, 1))
    hanging = add_task(core, queue, dispatch_deadline="0.5s")
    default = add_task(core, queue)
    answers = {hanging.name: iter([(200, 5.0), (200, 0.0)]), default.name: iter([(200, 0.0)])}
    report = simulate(core, lambda attempt: next(answers[attempt.task_name]), T0 + DAY)
    first, second = [(a, status, done) for a, status, done in report.attempts if a.task_name == hanging.name]
    assert first[0].timeout == 0.5
    assert (first[1], first[2]) == (None, T0 + 0.5)  # cut at the deadline
    assert second[0].dispatch_time == T0 + 1.5
    assert second[0].headers["X-CloudTasks-TaskPreviousResponse"] == "504"
    assert second[0].headers["X-CloudTasks-TaskExecutionCount"] == "0"
    assert [a.timeout for a, _, _ in report.attempts if a.task_name == default.name] == [600.0]


# ----- live queue changes and RunTask -----


def test_pause_and_resume_apply_mid_run() -> None:
    core, clock, _ = new_core()
    queue = add_queue(core, rate_limits={"max_dispatches_per_second": 1})
    for _ in range(10):
        add_task(core, queue)
    simulator = Simulator(core, ok)
    simulator.run(T0 + 3.5)
    assert dispatch_times(simulator.report) == [T0, T0 + 1, T0 + 2, T0 + 3]
    core.pause_queue(tasks_v2.PauseQueueRequest(name=queue))
    simulator.run(T0 + 20)
    assert len(simulator.report.attempts) == 4
    clock.set(T0 + 20)
    core.resume_queue(tasks_v2.ResumeQueueRequest(name=queue))
    simulator.run(T0 + 100)
    assert dispatch_times(simulator.report)[4:] == [T0 + 20 + k for k in range(6)]


def test_purge_applies_mid_run_and_ignores_attempts_in_flight() -> None:
    core, clock, _ = new_core()
    queue = add_queue(core, rate_limits={"max_dispatches_per_second": 1})
    for _ in range(10):
        add_task(core, queue)
    simulator = Simulator(core, always(500, 0.8))
    simulator.run(T0 + 2.5)  # dispatched at t0, t0+1, t0+2; the last one is still in flight
    purged = core.purge_queue(tasks_v2.PurgeQueueRequest(name=queue))
    assert purged.purge_time.timestamp() == pytest.approx(T0 + 2.5)
    simulator.run(T0 + 50)
    assert len(simulator.report.attempts) == 3  # the in-flight attempt completed (at t0+2.8) without a retry
    assert clock.now() == T0 + 2.8
    assert list(core.list_tasks(tasks_v2.ListTasksRequest(parent=queue)).tasks) == []
    after = add_task(core, queue)
    simulator.respond = ok
    simulator.run(T0 + 100)
    assert [a.task_name for a, _, _ in simulator.report.attempts[3:]] == [after.name]
    assert simulator.report.attempts[-1][0].dispatch_time == T0 + 3  # the next token after the one used at t0+2


def test_update_queue_rate_applies_mid_run() -> None:
    core, _, _ = new_core()
    queue = add_queue(core, rate_limits={"max_dispatches_per_second": 1})
    for _ in range(20):
        add_task(core, queue)
    simulator = Simulator(core, ok)
    simulator.run(T0 + 4.5)
    assert len(simulator.report.attempts) == 5
    update = tasks_v2.Queue(name=queue, rate_limits={"max_dispatches_per_second": 10})
    mask = {"paths": ["rate_limits.max_dispatches_per_second"]}
    core.update_queue(tasks_v2.UpdateQueueRequest(queue=update, update_mask=mask))
    simulator.run(T0 + 100)
    times = dispatch_times(simulator.report)
    assert T0 + 4.5 < times[5] <= T0 + 4.6
    assert gaps(times[5:]) == pytest.approx([0.1] * 14, abs=1e-5)


def test_update_queue_retry_config_applies_mid_run() -> None:
    core, clock, _ = new_core()
    queue = add_queue(core, retry_config=retry(1, 1, max_attempts=100))
    task = add_task(core, queue)
    simulator = Simulator(core, always(500))
    simulator.run(T0 + 2.5)
    assert len(simulator.report.attempts) == 3
    update = tasks_v2.Queue(name=queue, retry_config={"max_attempts": 3})
    core.update_queue(tasks_v2.UpdateQueueRequest(queue=update, update_mask={"paths": ["retry_config.max_attempts"]}))
    simulator.run(T0 + DAY)
    assert len(simulator.report.attempts) == 4  # the retry already scheduled runs; then 4 >= 3 ends it
    assert_gone(core, task.name)
    assert clock.now() == T0 + 3


def test_run_task_dispatches_on_a_paused_queue_and_reschedules_from_the_run_time() -> None:
    core, clock, _ = new_core()
    queue = add_queue(core, retry_config=retry(10, 10))
    core.pause_queue(tasks_v2.PauseQueueRequest(name=queue))
    task = add_task(core, queue)
    simulator = Simulator(core, always(500, 3.0))
    simulator.run(T0 + 5)
    assert simulator.report.attempts == []
    assert clock.now() == T0  # idle at once: a paused queue dispatches nothing and has no wakeup
    clock.set(T0 + 5)
    ran = core.run_task(tasks_v2.RunTaskRequest(name=task.name))
    assert ran.dispatch_count == 1
    assert ran.last_attempt.dispatch_time.timestamp() == T0 + 5
    simulator.run(T0 + 1000)
    assert dispatch_times(simulator.report) == [T0 + 5]
    after = get_task(core, task.name)
    # "the task's schedule_time will be reset to the time that RunTask was called plus the retry delay"
    assert after.schedule_time.timestamp() == T0 + 15
    assert (after.dispatch_count, after.response_count) == (1, 1)
    assert after.last_attempt.response_status.code == 13  # HTTP 500 -> INTERNAL
    assert after.first_attempt.dispatch_time.timestamp() == T0 + 5
    assert clock.now() == T0 + 8


def test_run_task_ignores_the_rate_limit() -> None:
    core, _, _ = new_core()
    queue = add_queue(core, rate_limits={"max_dispatches_per_second": 0.5})
    add_task(core, queue)
    second = add_task(core, queue)
    assert len(core.take_due(T0)) == 1  # the only token went to the first task
    assert core.take_due(T0) == []
    core.run_task(tasks_v2.RunTaskRequest(name=second.name))
    assert [a.task_name for a in core.take_due(T0)] == [second.name]


def test_changes_notify_subscribers_so_a_waiting_driver_wakes() -> None:
    core, _, _ = new_core()
    calls: list[str] = []
    unsubscribe = core.subscribe(lambda: calls.append("changed"))
    queue = add_queue(core)
    task = add_task(core, queue)
    core.pause_queue(tasks_v2.PauseQueueRequest(name=queue))
    core.resume_queue(tasks_v2.ResumeQueueRequest(name=queue))
    core.run_task(tasks_v2.RunTaskRequest(name=task.name))
    assert calls == ["changed"] * 5
    unsubscribe()
    add_task(core, queue)
    assert len(calls) == 5


# ----- tombstones -----


@pytest.mark.parametrize("status", [200, 500])
def test_a_completed_or_permanently_failed_task_leaves_a_tombstone(status: int) -> None:
    core, clock, _ = new_core(task_tombstone_ttl=3600)
    queue = add_queue(core, retry_config={"max_attempts": 1})
    task = add_task(core, queue, "job-1")
    simulate(core, always(status), T0 + 10)
    assert_gone(core, task.name)
    with pytest.raises(CloudTasksError) as caught:
        add_task(core, queue, "job-1")
    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
    clock.set(T0 + 3601)
    assert add_task(core, queue, "job-1").name == task.name


def test_deleting_a_task_in_flight_drops_its_outcome() -> None:
    core, _, _ = new_core()
    queue = add_queue(core)
    task = add_task(core, queue)
    (attempt,) = core.take_due(T0)
    core.delete_task(tasks_v2.DeleteTaskRequest(name=task.name))
    core.complete(attempt, 500, T0 + 1)
    assert core.next_wakeup(T0 + 1) is None
    add_task(core, queue)
    assert len(core.take_due(T0 + 1)) == 1  # the concurrency slot was given back


# ----- queue-level routing (http_target) -----


def routed(core: CloudTasksCore, queue: str, **task_fields: Any) -> Attempt:
    add_task(core, queue, **task_fields)
    (attempt,) = core.take_due(core.clock.now())
    return attempt


def test_uri_override_always_replaces_every_given_part() -> None:
    core, _, _ = new_core()
    override = {"scheme": "HTTP", "host": "override.local", "port": 9000, "path_override": {"path": "/new"}}
    override["query_override"] = {"query_params": "a=1"}
    queue = add_queue(core, http_target={"uri_override": override})
    attempt = routed(core, queue, url="https://task.host:8443/old?x=2")
    assert attempt.url == "http://override.local:9000/new?a=1"


def test_uri_override_if_not_exists_only_fills_missing_parts() -> None:
    core, _, _ = new_core()
    override = {"scheme": "HTTP", "host": "override.local", "port": 9000, "path_override": {"path": "/new"}}
    override |= {"query_override": {"query_params": "a=1"}, "uri_override_enforce_mode": "IF_NOT_EXISTS"}
    queue = add_queue(core, http_target={"uri_override": override})
    assert routed(core, queue, url="https://task.host/old").url == "https://task.host:9000/old?a=1"
    assert routed(core, queue, url="https://task.host:8443/?x=2").url == "https://task.host:8443/new?x=2"


def test_tasks_may_omit_the_url_on_a_queue_with_a_uri_override() -> None:
    core, _, _ = new_core()
    queue = add_queue(core, http_target={"uri_override": {"host": "worker.local", "path_override": {"path": "/p"}}})
    assert routed(core, queue, http_request={"body": b"x"}).url == "https://worker.local/p"  # scheme defaults to HTTPS


def test_queue_method_and_header_overrides() -> None:
    core, _, _ = new_core()
    target = {"http_method": "GET", "header_overrides": [{"header": {"key": "X-Env", "value": "queue"}}]}
    queue = add_queue(core, http_target=target)
    request = {"url": "http://w.local/", "body": b"payload", "headers": {"x-env": "task", "X-Keep": "1"}}
    attempt = routed(core, queue, http_request=request)
    assert (attempt.method, attempt.body) == ("GET", b"")  # "if the value is set to GET the body ... ignored"
    assert attempt.headers["X-Env"] == "queue"
    assert "x-env" not in attempt.headers
    assert attempt.headers["X-Keep"] == "1"


def test_queue_oidc_token_overrides_the_tasks() -> None:
    core, _, minter = new_core()
    oidc = {"service_account_email": "queue@p.iam.gserviceaccount.com", "audience": "https://aud.example"}
    queue = add_queue(core, http_target={"oidc_token": oidc})
    task_oidc = {"service_account_email": "task@p.iam.gserviceaccount.com", "audience": "https://task.example"}
    attempt = routed(core, queue, http_request={"url": "http://w.local/x", "oidc_token": task_oidc})
    assert attempt.headers["Authorization"] == "Bearer token-for:queue@p.iam.gserviceaccount.com:https://aud.example"
    assert minter.calls == [("queue@p.iam.gserviceaccount.com", "https://aud.example")]


def test_oidc_audience_defaults_to_the_final_task_url() -> None:
    core, _, minter = new_core()
    queue = add_queue(core, http_target={"uri_override": {"host": "routed.local", "scheme": "HTTP"}})
    oidc = {"service_account_email": "sa@p.iam.gserviceaccount.com"}
    routed(core, queue, http_request={"url": "https://task.host/path?q=1", "oidc_token": oidc})
    assert minter.calls == [("sa@p.iam.gserviceaccount.com", "http://routed.local/path?q=1")]


def test_a_queue_http_target_change_reroutes_pending_tasks() -> None:
    core, clock, _ = new_core()
    queue = add_queue(core)
    add_task(core, queue, url="http://old.local/work", schedule_time=at(10))
    update = tasks_v2.Queue(name=queue, http_target={"uri_override": {"host": "new.local"}})
    core.update_queue(tasks_v2.UpdateQueueRequest(queue=update, update_mask={"paths": ["http_target"]}))
    clock.set(T0 + 10)
    (attempt,) = core.take_due(T0 + 10)
    assert attempt.url == "http://new.local/work"


# ----- headers -----


def test_the_exact_header_set_across_a_retry_sequence() -> None:
    core, _, _ = new_core()
    queue = add_queue(core, "hdr", retry_config=retry(1, 1))
    spoofed = {"User-Agent": "evil", "X-CloudTasks-TaskRetryCount": "99", "x-cloudtasks-queuename": "spoof"}
    headers = {"Content-Type": "application/json", "X-Custom": "v", "Host": "evil.example", **spoofed}
    task = add_task(core, queue, "t1", http_request={"url": "http://w.local/", "headers": headers, "body": b"{}"})
    outcomes = iter([(503, 0.0), (404, 0.0), (500, 0.0), (None, 0.0), (200, 0.0)])
    report = simulate(core, lambda attempt: next(outcomes), T0 + DAY)
    executions = ["0", "0", "1", "1", "1"]  # 404 is an execution; 5xx and no response are not
    previous = [None, "503", "404", "500", "504"]
    for k, (attempt, _, _) in enumerate(report.attempts):
        expected = {
            "Content-Type": "application/json",
            "X-Custom": "v",
            "User-Agent": "Google-Cloud-Tasks",
            "X-CloudTasks-QueueName": "hdr",
            "X-CloudTasks-TaskName": "t1",
            "X-CloudTasks-TaskRetryCount": str(k),
            "X-CloudTasks-TaskExecutionCount": executions[k],
            "X-CloudTasks-TaskETA": f"{T0 + k:.6f}",
        }
        if previous[k] is not None:
            expected |= {"X-CloudTasks-TaskPreviousResponse": previous[k], "X-CloudTasks-TaskRetryReason": ""}
        assert attempt.headers == expected, f"attempt {k + 1}"
    assert len(report.attempts) == 5
    assert_gone(core, task.name)


def test_no_content_type_is_added_and_counts_are_reported_on_the_task() -> None:
    core, _, _ = new_core()
    queue = add_queue(core, retry_config=retry(1, 1))
    task = add_task(core, queue, http_request={"url": "http://w.local/", "body": b"raw"})
    outcomes = iter([(503, 0.0), (404, 0.0)])
    simulator = Simulator(core, lambda attempt: next(outcomes))
    simulator.run(T0 + 1.5)
    assert "Content-Type" not in simulator.report.attempts[0][0].headers
    stored = get_task(core, task.name)
    assert (stored.dispatch_count, stored.response_count) == (2, 2)
    assert stored.last_attempt.response_status.code == 5  # 404 -> NOT_FOUND
    assert stored.schedule_time.timestamp() == T0 + 2


# ----- property-based: the backoff law -----


def iterative_backoff(policy: RetryPolicy, attempt: int) -> float:
    """The law as the docs tell it, step by step: start at min, double `max_doublings` times, then add
    2^max_doublings * min per retry; each interval is capped at max_backoff."""
    interval = policy.min_backoff
    for step in range(1, attempt):
        interval = (
            interval * 2 if step <= policy.max_doublings else interval + policy.min_backoff * 2**policy.max_doublings
        )
    return min(interval, policy.max_backoff)


policies = st.builds(
    lambda low, extra, doublings: RetryPolicy(min_backoff=low, max_backoff=low + extra, max_doublings=doublings),
    st.floats(min_value=0.001, max_value=100),
    st.floats(min_value=0, max_value=5000),
    st.integers(min_value=0, max_value=20),
)


@given(policy=policies, attempt=st.integers(min_value=1, max_value=200))
def test_backoff_delay_matches_the_step_by_step_law(policy: RetryPolicy, attempt: int) -> None:
    assert backoff_delay(policy, attempt) == pytest.approx(iterative_backoff(policy, attempt), rel=1e-9)


@given(policy=policies, attempt=st.integers(min_value=1, max_value=200))
def test_backoff_never_shrinks_and_stays_within_bounds(policy: RetryPolicy, attempt: int) -> None:
    delay = backoff_delay(policy, attempt)
    assert policy.min_backoff <= delay <= policy.max_backoff
    assert backoff_delay(policy, attempt + 1) >= delay


@settings(max_examples=30, deadline=None)
@given(
    low=st.integers(min_value=1, max_value=20),
    extra=st.integers(min_value=0, max_value=500),
    doublings=st.integers(min_value=1, max_value=6),
    attempts=st.integers(min_value=2, max_value=12),
)
def test_simulated_retries_follow_the_law(low: int, extra: int, doublings: int, attempts: int) -> None:
    core, _, _ = new_core()
    config = retry(low, low + extra, max_attempts=attempts, max_doublings=doublings)
    add_task(core, add_queue(core, retry_config=config))
    report = simulate(core, always(500), T0 + 30 * DAY)
    policy = RetryPolicy(min_backoff=low, max_backoff=low + extra, max_doublings=doublings)
    assert gaps(dispatch_times(report)) == [iterative_backoff(policy, n) for n in range(1, attempts)]


@settings(max_examples=40, deadline=None)
@given(
    backoff=st.integers(min_value=1, max_value=5),
    max_attempts=st.sampled_from([-1, 1, 2, 3, 5, 8, 13]),
    duration=st.integers(min_value=0, max_value=40),
)
def test_simulated_stop_conditions_need_every_configured_limit(backoff: int, max_attempts: int, duration: int) -> None:
    if max_attempts == -1 and duration == 0:
        duration = 1  # both unlimited: the 31-day retention case has its own test
    core, _, _ = new_core()
    config = retry(backoff, backoff, max_attempts=max_attempts, max_retry_duration=f"{duration}s")
    add_task(core, add_queue(core, retry_config=config))
    report = simulate(core, always(500), T0 + 30 * DAY)
    # Attempt n fails (n-1)*backoff after the first: the duration limit is used up once that reaches it.
    by_attempts = max_attempts if max_attempts != -1 else 1
    by_duration = math.ceil(duration / backoff) + 1 if duration else 1
    assert len(report.attempts) == max(by_attempts, by_duration)


def test_ten_thousand_dispatches_simulate_quickly_and_completely() -> None:
    core, _, _ = new_core()
    queue = add_queue(core)
    for _ in range(2000):
        add_task(core, queue)
    outcomes = itertools.cycle([500, 500, 500, 500, 200])  # every fifth answer completes some task
    report = simulate(core, lambda attempt: (next(outcomes), 0.05), T0 + DAY)
    assert len(report.attempts) == 10_000
    assert core.list_tasks(tasks_v2.ListTasksRequest(parent=queue)).tasks == []
