"""The emulator's web console: its JSON API (Starlette's test client over a manual-clock core, and the real
server), then the page itself in a real headless Chromium, against a real emulator dispatching to a real
loopback HTTP server that fails tasks, with queues and tasks made through the stock google-cloud-tasks client.

Browser tests wait on what the page shows (Playwright's auto-waiting `expect`), never on fixed sleeps.
`UPDATE_SCREENSHOT=1` writes the screenshot to docs/console.png; otherwise it goes to pytest's tmp_path.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx2 as httpx
import pytest
from emulator_support import LOCATION, RecordingServer, add_queue, add_task, new_core, queue_path, retry
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport
from starlette.testclient import TestClient

from contract.dead_letters import DeadLetterMeta, dead_letter_task_id
from contract.outputs import OutputName, QueueField
from localcloud.emulator.console.app import create_app
from localcloud.emulator.console.dead_letters import ConsoleDeadLetters
from localcloud.emulator.console.rates import DispatchRates
from localcloud.emulator.core import CloudTasksCore
from localcloud.emulator.service import CloudTasksEmulator
from localcloud.program import PROJECT_DIR

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 15_000  # how long `expect` waits for the page to show something: far above what it takes
PORT = 8125  # the test client's console port (no socket: only the Origin the app expects)
CONSOLE = f"http://127.0.0.1:{PORT}"
SCREENSHOT = PROJECT_DIR / "docs" / "console.png"

# The stack's names, as `localcloud up` creates them.
ORDERS = queue_path("tasks-dev-orders-4c1d2e")
EMAILS = queue_path("tasks-dev-emails-9a7f03")
REPORTS = queue_path("tasks-dev-reports-51be88")
DEAD_LETTERS = queue_path("tasks-dev-dead-letters-e20b6a")


# ----- the API, through Starlette's test client -----


def console_client(core: CloudTasksCore, dead_letters: ConsoleDeadLetters | None = None) -> TestClient:
    app = create_app(core, dead_letters or ConsoleDeadLetters(core, "127.0.0.1:9", None), port=PORT)
    return TestClient(app, base_url=CONSOLE)


def api_path(name: str) -> str:
    return f"/api/{name}"


def one_line_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert "\n" not in response.text
    error = response.json()["error"]
    assert isinstance(error, str)
    return error


def test_paging_walks_10000_tasks_once_each_in_creation_order_even_when_tasks_go_meanwhile() -> None:
    core, _, _ = new_core()
    queue = add_queue(core, "big")
    created = [add_task(core, queue).name for _ in range(10_000)]
    client = console_client(core)
    seen: list[str] = []
    cursor = ""
    deleted: list[str] = []
    pages = 0
    while True:
        page = client.get(api_path(queue) + "/tasks", params={"cursor": cursor} if cursor else {}).json()
        assert page["total"] == 10_000 - len(deleted)
        assert page["offset"] == len(seen) - sum(1 for name in deleted if name in seen)
        assert len(page["tasks"]) <= 100
        seen += [task["name"] for task in page["tasks"]]
        pages += 1
        if pages == 3:  # a task already seen and one not yet seen leave between two pages
            for name in (created[10], created[5_000]):
                core.delete_task(tasks_v2.DeleteTaskRequest(name=name))
                deleted.append(name)
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == [name for name in created if name != created[5_000]]
    assert pages == 100


def test_a_page_has_the_size_asked_for_within_1_to_1000() -> None:
    core, _, _ = new_core()
    queue = add_queue(core, "q")
    for _ in range(1_200):
        add_task(core, queue)
    client = console_client(core)
    assert len(client.get(api_path(queue) + "/tasks", params={"limit": "1000"}).json()["tasks"]) == 1000
    assert len(client.get(api_path(queue) + "/tasks", params={"limit": "7"}).json()["tasks"]) == 7


@pytest.mark.parametrize(
    ("path", "params", "status", "names"),
    [
        ("/api/projects/p/locations/l/queues/nope/tasks", {}, 404, "'projects/p/locations/l/queues/nope'"),
        ("/tasks", {"cursor": "abc"}, 400, "cursor: 'abc'"),
        ("/tasks", {"cursor": "-5"}, 400, "cursor: '-5'"),
        ("/tasks", {"limit": "0"}, 400, "limit: '0' is not a whole number in 1..1000"),
        ("/tasks", {"limit": "1001"}, 400, "limit: '1001'"),
        ("/tasks", {"state": "sleeping"}, 400, "state: 'sleeping' is not one of running, retrying, waiting"),
        ("/tasks/missing", {}, 404, "task: 'projects/p/locations/l/queues/q/tasks/missing'"),
        ("/api/finished", {"queue": "projects/p/locations/l/queues/nope"}, 404, "queue: 'projects/p/"),
        ("/api/dead-letters", {"cursor": "x"}, 400, "cursor: 'x'"),
        ("/api/queues/nope", {}, 404, "no such endpoint: GET /api/queues/nope"),
    ],
)
def test_bad_input_gets_its_status_and_one_line_of_json_naming_the_value(
    path: str, params: dict[str, str], status: int, names: str
) -> None:
    core, _, _ = new_core()
    queue = add_queue(core, "q")
    url = path if path.startswith("/api/") else api_path(queue) + path
    assert names in one_line_error(console_client(core).get(url, params=params), status)


def test_actions_go_through_the_core_and_refuse_what_the_core_refuses() -> None:
    core, _, _ = new_core()
    queue = add_queue(core, "q")
    task = add_task(core, queue, "t").name
    client = console_client(core)
    assert client.post(api_path(queue) + "/pause").status_code == 200
    assert core.get_queue(tasks_v2.GetQueueRequest(name=queue)).state == tasks_v2.Queue.State.PAUSED
    assert client.post(api_path(queue) + "/resume").status_code == 200
    assert core.get_queue(tasks_v2.GetQueueRequest(name=queue)).state == tasks_v2.Queue.State.RUNNING
    assert client.post(api_path(task) + "/run").status_code == 200
    assert core.take_due(core.clock.now())[0].task_name == task
    assert client.post(api_path(task) + "/delete").status_code == 200
    assert "tasks/t" in one_line_error(client.post(api_path(task) + "/delete"), 404)
    assert "'explode' is not one of pause, resume, purge" in one_line_error(
        client.post(api_path(queue) + "/explode"), 404
    )
    assert "no such endpoint: GET /api/projects/p/locations/l/queues/q/pause" in one_line_error(
        client.get(api_path(queue) + "/pause"), 404
    )


def test_a_post_from_another_site_is_refused_and_changes_nothing() -> None:
    core, _, _ = new_core()
    queue = add_queue(core, "q")
    add_task(core, queue)
    client = console_client(core)
    refusals = [
        {"Origin": "https://evil.example"},
        {"Origin": "http://127.0.0.1:9999"},  # another local port is another site
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": CONSOLE},
    ]
    for headers in refusals:
        error = one_line_error(client.post(api_path(queue) + "/purge", headers=headers), 403)
        assert error.startswith("cross-site request refused")
    assert len(core.list_tasks(tasks_v2.ListTasksRequest(parent=queue)).tasks) == 1
    # A name rebound to 127.0.0.1 by a page elsewhere still says whose it is.
    assert "Host 'evil.example'" in one_line_error(client.get("/api/queues", headers={"Host": "evil.example"}), 400)
    same_site = {"Origin": CONSOLE, "Sec-Fetch-Site": "same-origin"}
    assert client.post(api_path(queue) + "/purge", headers=same_site).status_code == 200
    assert core.list_tasks(tasks_v2.ListTasksRequest(parent=queue)).tasks == []


def test_queues_show_depth_in_flight_task_states_and_the_backoff_schedule_of_their_retry_policy() -> None:
    core, clock, _ = new_core()
    queue = add_queue(
        core, "q", rate_limits={"max_concurrent_dispatches": 1}, retry_config=retry(1, 60, max_attempts=5)
    )
    first, running, waiting = (add_task(core, queue, name).name for name in ("first", "running", "waiting"))
    add_task(core, queue, "later", schedule_time=datetime.fromtimestamp(clock.now() + 3600, UTC))
    (attempt,) = core.take_due(clock.now())
    clock.advance(0.25)
    core.complete(attempt, 503, clock.now())
    assert core.take_due(clock.now())[0].task_name == running
    client = console_client(core)
    (shown,) = client.get("/api/queues").json()["queues"]
    assert shown["depth"] == 4
    assert shown["inFlight"] == 1
    assert shown["dispatched"] == 2
    assert shown["counts"] == {"running": 1, "retrying": 1, "waiting": 1, "scheduled": 1}
    assert shown["retry"]["backoffSchedule"] == [1, 2, 4, 8]  # then max_attempts ends the retries
    assert shown["retry"]["maxAttempts"] == 5
    assert shown["rateLimits"]["maxConcurrentDispatches"] == 1
    retrying = client.get(api_path(queue) + "/tasks", params={"state": "retrying"}).json()
    assert [t["name"] for t in retrying["tasks"]] == [first]
    assert retrying["tasks"][0]["lastAttempt"]["status"] == 503
    waiting_page = client.get(api_path(queue) + "/tasks", params={"state": "waiting"}).json()
    assert [t["name"] for t in waiting_page["tasks"]] == [waiting]


def test_a_task_timeline_shows_each_attempt_with_its_status_latency_and_the_backoff_the_retry_law_gave() -> None:
    core, clock, _ = new_core()
    queue = add_queue(core, "q", retry_config=retry(0.5, 60, max_attempts=4, max_doublings=5))
    task = add_task(core, queue, "t", http_request={"url": "http://worker.local/work", "body": b"\xff\x00binary"}).name
    statuses = [500, None, 429]
    for status in statuses:
        (attempt,) = core.take_due(clock.now())
        clock.advance(0.125)  # the attempt's latency
        core.complete(attempt, status, clock.now())
        clock.set(core.next_wakeup(clock.now()) or clock.now())
    client = console_client(core)
    detail = client.get(api_path(task)).json()
    timeline = detail["timeline"]
    assert [a["status"] for a in timeline] == statuses
    assert [a["outcome"] for a in timeline] == ["failed", "no response", "failed"]
    assert [a["latency"] for a in timeline] == [0.125, 0.125, 0.125]
    assert [a["backoff"] for a in timeline] == [0.5, 1.0, 2.0]
    assert [a["lawBackoff"] for a in timeline] == [0.5, 1.0, 2.0]
    assert detail["task"]["state"] == "retrying"
    assert [u["backoff"] for u in detail["upcoming"]] == []  # attempt 4 is the last
    assert detail["request"]["body"] == {"size": 8, "text": None, "hex": "ff 00 62 69 6e 61 72 79", "cut": False}
    (attempt,) = core.take_due(clock.now())
    core.complete(attempt, 500, clock.now())
    ended = client.get(api_path(task)).json()  # gone from its queue: read from the finished tasks
    assert ended["ending"] == "failed"
    assert len(ended["timeline"]) == 4
    assert ended["timeline"][-1]["backoff"] is None
    finished = client.get("/api/finished", params={"queue": queue}).json()["tasks"]
    assert [(t["name"], t["ending"], t["attempts"]) for t in finished] == [(task, "failed", 4)]


def test_a_task_shows_its_headers_and_its_body_as_text_when_it_is_utf8() -> None:
    core, _, _ = new_core()
    queue = add_queue(core, "q")
    body = "{'order': 7, 'note': 'déjà vu'}".encode()
    request = {"url": "http://worker.local/orders", "headers": {"X-Trace": "abc"}, "body": body}
    task = add_task(core, queue, "t", http_request=request).name
    shown = console_client(core).get(api_path(task)).json()["request"]
    assert shown["body"] == {"size": len(body), "text": body.decode(), "hex": None, "cut": False}
    assert ["X-Trace", "abc"] in shown["headers"]
    assert (shown["method"], shown["url"]) == ("POST", "http://worker.local/orders")


def test_dispatch_rate_is_counted_over_the_last_seconds_and_starts_over_for_a_recreated_queue() -> None:
    rates = DispatchRates(window=10, min_gap=0.5)
    assert rates.observe(100.0, {"q": 0}) == {"q": None}
    assert rates.observe(101.0, {"q": 20}) == {"q": 20.0}
    assert rates.observe(111.0, {"q": 120}) == {"q": 10.0}
    assert rates.observe(116.0, {"q": 120}) == {"q": pytest.approx(100 / 15)}  # since the sample 10 s back
    assert rates.observe(117.0, {"q": 3}) == {"q": None}  # re-created: its counter started again
    assert rates.observe(117.0, {}) == {}


# ----- the real emulator: dead letters through the library, over gRPC -----


def stock_client(address: str) -> tuple[tasks_v2.CloudTasksClient, grpc.Channel]:
    channel = grpc.insecure_channel(address)
    return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel)), channel


def outputs_document(service_url: str) -> dict[str, Any]:
    """The stack outputs (`pulumi stack output --json`) for the orders and emails queues on the emulator."""

    def entry(path: str) -> dict[str, Any]:
        return {
            QueueField.ID: path.rsplit("/", 1)[-1],
            QueueField.PATH: path,
            QueueField.LOCATION: "l",
            QueueField.TASK_URL: f"{service_url}/tasks/{path.rsplit('-', 2)[-2]}",
            QueueField.MAX_ATTEMPTS: 5,
            QueueField.DISPATCH_DEADLINE_SECONDS: 60,
            QueueField.QUEUE_LEVEL_ROUTING: False,
        }

    return {
        OutputName.PROJECT: "p",
        OutputName.LOCATION: "l",
        OutputName.SERVICE_NAME: "tasks-dev-handler",
        OutputName.SERVICE_URL: service_url,
        OutputName.OIDC_AUDIENCE: "https://tasks-dev-handler-123456789.l.run.app",
        OutputName.INVOKER_EMAIL: "tasks-dev-invoker@p.iam.gserviceaccount.com",
        OutputName.RUNTIME_EMAIL: "tasks-dev-runtime@p.iam.gserviceaccount.com",
        OutputName.QUEUES: {"orders": entry(ORDERS), "emails": entry(EMAILS)},
        OutputName.DEFAULT_QUEUE: "orders",
        OutputName.DEFAULT_QUEUE_PATH: ORDERS,
        OutputName.DEAD_LETTER_QUEUE: DEAD_LETTERS,
        OutputName.CREATE_TASK_COMMAND: "python -m taskclient send",
    }


def put_dead_letter(
    client: tasks_v2.CloudTasksClient, queue: str, task_id: str, body: bytes, reason: str, attempt: int = 5
) -> str:
    """A dead letter as the handler records one (contract/dead_letters.py) on the paused dead-letter queue."""
    meta = DeadLetterMeta(
        queue=queue.rsplit("/", 1)[-1],
        task=task_id,
        attempt=attempt,
        reason=reason,
        recorded_at=datetime.now(UTC),
        size=len(body),
        sha256=hashlib.sha256(body).hexdigest(),
    )
    key = queue.rsplit("-", 2)[-2]
    letter = tasks_v2.Task(
        name=f"{DEAD_LETTERS}/tasks/{dead_letter_task_id(meta.queue, task_id)}",
        http_request=tasks_v2.HttpRequest(
            url=f"https://tasks-dev-handler-123456789.l.run.app/tasks/{key}",
            headers={"Content-Type": "application/json", **meta.headers()},
            body=body,
        ),
    )
    return client.create_task(parent=DEAD_LETTERS, task=letter).name


def create_queue(client: tasks_v2.CloudTasksClient, name: str, **fields: Any) -> None:
    client.create_queue(parent=LOCATION, queue=tasks_v2.Queue(name=name, **fields))


@pytest.fixture
def worker() -> Iterator[RecordingServer]:
    """The service: fails every task whose path has /fail, answers 200 to the rest."""
    with RecordingServer(lambda request, index: 500 if "/fail" in request.path else 200) as server:
        yield server


def test_without_outputs_dead_letters_are_listed_and_replay_is_off_with_the_reason(tmp_path: Path) -> None:
    with CloudTasksEmulator(port=0, console_port=0) as emulator:
        client, channel = stock_client(emulator.address)
        try:
            create_queue(client, ORDERS)
            create_queue(client, DEAD_LETTERS)
            client.pause_queue(name=DEAD_LETTERS)
            name = put_dead_letter(client, ORDERS, "order-7", b'{"order": 7}', "card declined")
            url = emulator.console_url
            assert url is not None
            page = httpx.get(url + "api/dead-letters").json()
            assert page["queue"] == DEAD_LETTERS
            (letter,) = page["letters"]
            assert (letter["name"], letter["task"], letter["reason"]) == (name, "order-7", "card declined")
            assert letter["preview"] == {"kind": "text", "text": '{"order": 7}', "cut": False}
            assert page["replay"]["enabled"] is False
            assert "--outputs" in page["replay"]["reason"]
            refused = httpx.post(url + f"api/dead-letters/{letter['id']}/replay")
            assert "not replayed: the emulator was started without --outputs" in one_line_error(refused, 409)
            assert client.get_task(name=name).name == name
        finally:
            channel.close()


def test_the_emulator_command_serves_the_console_and_names_its_url_in_the_ready_line() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "localcloud", "emulator", "--port", "0", "--console-port", "0"],
        cwd=PROJECT_DIR,
        env={**os.environ, "PYTHONPATH": str(PROJECT_DIR)},
        stdout=subprocess.PIPE,
        text=True,
    )
    with process:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r" console=(http://127\.0\.0\.1:\d+/)$", line.strip())
        assert match, line
        assert httpx.get(match[1] + "api/queues").json()["queues"] == []
        assert 'type="module"' in httpx.get(match[1]).text
        process.terminate()
        assert process.wait(timeout=30) == 0


@pytest.mark.parametrize(
    ("value", "says"),
    [("70000", "--console-port: 70000 is outside 0..65535"), ("in-use", "cannot listen on 127.0.0.1:")],
)
def test_a_bad_or_busy_console_port_gets_one_line(value: str, says: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = str(busy.getsockname()[1]) if value == "in-use" else value
        result = subprocess.run(
            [sys.executable, "-m", "localcloud", "emulator", "--port", "0", "--console-port", port],
            cwd=PROJECT_DIR,
            env={**os.environ, "PYTHONPATH": str(PROJECT_DIR)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    assert says in result.stderr
    assert "Traceback" not in result.stderr


def test_the_local_stack_serves_the_console_with_its_queues_and_replays_with_the_outputs_up_writes(
    tmp_path: Path,
) -> None:
    from localcloud.stack import running, write_outputs

    outputs = tmp_path / "outputs.json"
    with running("dev", console_port=0, outputs_path=outputs) as local:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", local.console_url)
        api = local.console_url + "api/"
        before = httpx.get(api + "dead-letters").json()
        assert before["replay"]["enabled"] is False  # up writes the outputs once the stack is up
        write_outputs(local.plan.outputs, outputs)
        queues = httpx.get(api + "queues").json()["queues"]
        dead_letters = local.plan.outputs[OutputName.DEAD_LETTER_QUEUE]
        assert {q["name"] for q in queues} == {q.name for q in local.plan.queues}
        assert [q["name"] for q in queues if q["deadLetters"]] == [dead_letters]
        after = httpx.get(api + "dead-letters").json()
        assert (after["queue"], after["replay"]) == (dead_letters, {"enabled": True, "reason": None})


def test_up_prints_the_console_url(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "localcloud", "up", "--outputs", str(tmp_path / "outputs.json")]
    for flag in ("--emulator-port", "--handler-port", "--http-port", "--console-port"):
        command += [flag, "0"]
    process = subprocess.Popen(
        command,
        cwd=PROJECT_DIR,
        env={**os.environ, "PYTHONPATH": str(PROJECT_DIR)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    with process:
        assert process.stdout is not None
        printed = []
        for line in process.stdout:
            printed.append(line)
            if line.startswith("console: ") or line.startswith("Ctrl-C"):
                break
        assert printed and printed[-1].startswith("console: "), printed
        url = printed[-1].removeprefix("console: ").strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url), printed
        assert httpx.get(url + "api/dead-letters").json()["replay"]["enabled"] is True
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0


# ----- the page, in a real headless Chromium (last: Playwright's sync API keeps an event loop on this thread
# while its browser is open, so tests that run one of their own come before) -----


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Debian's Chromium through Playwright (never `playwright install`: no internet), fresh profile."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make chromium` installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1480, "height": 1000},
            timezone_id="UTC",
        )
        context.set_default_timeout(WAIT_MS)
        try:
            yield context
        finally:
            context.close()


class Stack:
    """A real emulator with its console, the worker it dispatches to, the stock client, and outputs on disk."""

    def __init__(self, emulator: CloudTasksEmulator, worker: RecordingServer, client: tasks_v2.CloudTasksClient):
        self.emulator = emulator
        self.worker = worker
        self.client = client
        assert emulator.console_url is not None
        self.url = emulator.console_url


@pytest.fixture
def stack(worker: RecordingServer, tmp_path: Path) -> Iterator[Stack]:
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(outputs_document(worker.url)))
    with CloudTasksEmulator(port=0, console_port=0, outputs_path=outputs) as emulator:
        client, channel = stock_client(emulator.address)
        try:
            create_queue(client, DEAD_LETTERS)
            client.pause_queue(name=DEAD_LETTERS)
            yield Stack(emulator, worker, client)
        finally:
            channel.close()


def task_to(client: tasks_v2.CloudTasksClient, queue: str, url: str, body: bytes = b"{}", **fields: Any) -> str:
    task = tasks_v2.Task(
        http_request=tasks_v2.HttpRequest(url=url, headers={"Content-Type": "application/json"}, body=body), **fields
    )
    return client.create_task(parent=queue, task=task).name


def later(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def quick_retries(min_backoff: float, max_attempts: int) -> tasks_v2.RetryConfig:
    return tasks_v2.RetryConfig(
        max_attempts=max_attempts,
        min_backoff=timedelta(seconds=min_backoff),
        max_backoff=timedelta(seconds=60),
        max_doublings=8,
    )


def queue_row(page: Any, queue: str) -> Any:
    return page.locator(f'#queues tr[data-key="{queue}"]')


def test_the_page_shows_each_queue_with_its_depth_and_loads_nothing_from_outside(
    stack: Stack, browser_context: Any
) -> None:
    from playwright.sync_api import expect

    create_queue(stack.client, ORDERS)
    for _ in range(3):
        task_to(stack.client, ORDERS, f"{stack.worker.url}/tasks/orders", schedule_time=later(3600))
    page = browser_context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(stack.url)
    row = queue_row(page, ORDERS)
    expect(row.locator(".depth")).to_have_text("3")
    expect(row.locator(".state")).to_have_text("RUNNING")
    expect(row.locator(".counts")).to_have_text("3 scheduled")
    expect(queue_row(page, DEAD_LETTERS).locator(".queue-name")).to_contain_text("dead letters")
    task_to(stack.client, ORDERS, f"{stack.worker.url}/tasks/orders", schedule_time=later(3600))
    expect(row.locator(".depth")).to_have_text("4")  # live: the next poll shows it
    assert requested, "the page made no request"
    assert all(url.startswith(stack.url) for url in requested), [u for u in requested if not u.startswith(stack.url)]
    page.close()


def test_a_failing_task_shows_its_retries_on_its_timeline_with_statuses_and_growing_backoff(
    stack: Stack, browser_context: Any
) -> None:
    from playwright.sync_api import expect

    create_queue(stack.client, EMAILS, retry_config=quick_retries(0.1, 4))
    task = task_to(stack.client, EMAILS, f"{stack.worker.url}/tasks/emails/fail", b'{"to": "ada@example.com"}')
    page = browser_context.new_page()
    page.goto(stack.url)
    queue_row(page, EMAILS).locator(".queue-name a").click()
    page.locator(f'#tasks tr[data-key="{task}"] a').click()
    timeline = page.locator("#timeline tbody tr")
    expect(timeline).to_have_count(4)
    expect(page.locator("#task-state")).to_have_text("failed")  # four attempts: retrying is over
    expect(timeline.locator(".status")).to_have_text(["500", "500", "500", "500"])
    backoffs = [
        float(cell)
        for cell in timeline.locator(".backoff").evaluate_all("cells => cells.map(c => c.dataset.seconds)")[:3]
    ]
    assert backoffs == pytest.approx([0.1, 0.2, 0.4])  # min_backoff, doubled, doubled again
    expect(timeline.locator(".backoff")).to_have_text(["100 ms", "200 ms", "400 ms", "retrying stopped"])
    expect(page.locator("#task-request pre.body")).to_have_text('{"to": "ada@example.com"}')
    expect(page.locator("#finished tbody tr").first).to_contain_text("failed")
    assert len(stack.worker.requests) == 4
    page.close()


def test_pause_resume_and_purge_from_the_page_change_the_queue(stack: Stack, browser_context: Any) -> None:
    from playwright.sync_api import expect

    create_queue(stack.client, REPORTS)
    for _ in range(5):
        task_to(stack.client, REPORTS, f"{stack.worker.url}/tasks/reports", schedule_time=later(3600))
    page = browser_context.new_page()
    page.goto(stack.url)
    row = queue_row(page, REPORTS)
    row.get_by_role("button", name="Pause").click()
    expect(row.locator(".state")).to_have_text("PAUSED")
    assert stack.client.get_queue(name=REPORTS).state == tasks_v2.Queue.State.PAUSED
    row.get_by_role("button", name="Resume").click()
    expect(row.locator(".state")).to_have_text("RUNNING")
    assert stack.client.get_queue(name=REPORTS).state == tasks_v2.Queue.State.RUNNING
    expect(row.locator(".depth")).to_have_text("5")
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Purge").click()
    expect(row.locator(".depth")).to_have_text("0")
    assert list(stack.client.list_tasks(parent=REPORTS)) == []
    page.close()


def test_a_dead_letter_is_listed_and_replay_moves_it_back_to_its_queue(stack: Stack, browser_context: Any) -> None:
    from playwright.sync_api import expect

    create_queue(stack.client, ORDERS)
    body = b'{"order": 7, "amount": 1250}'
    letter = put_dead_letter(stack.client, ORDERS, "order-7", body, "payment provider said 402: card declined")
    page = browser_context.new_page()
    page.goto(stack.url + "#dead-letters")
    row = page.locator(f'#dead-letters tr[data-key="{letter}"]')
    expect(row).to_contain_text("order-7")
    expect(row).to_contain_text("orders")  # the stack's key of its queue, from the outputs
    expect(row.locator(".reason")).to_have_text("payment provider said 402: card declined")
    expect(row.get_by_role("button", name="Replay")).to_be_enabled()
    row.get_by_role("button", name="Replay").click()
    expect(row).to_have_count(0)
    expect(page.locator("#no-letters")).to_be_visible()
    (delivered,) = stack.worker.wait_for(1)
    assert (delivered.path, delivered.body) == ("/tasks/orders", body)
    assert list(stack.client.list_tasks(parent=DEAD_LETTERS)) == []
    page.close()


def test_screenshot_of_a_populated_console(stack: Stack, browser_context: Any, tmp_path: Path) -> None:
    """A realistic view: queues busy, paused and retrying, a failing task's timeline open, two dead letters."""
    from playwright.sync_api import expect

    client, worker = stack.client, stack.worker
    create_queue(client, ORDERS, rate_limits=tasks_v2.RateLimits(max_dispatches_per_second=20))
    create_queue(client, EMAILS, retry_config=quick_retries(0.2, 12))
    create_queue(client, REPORTS, rate_limits=tasks_v2.RateLimits(max_concurrent_dispatches=4))
    client.pause_queue(name=REPORTS)
    for number in range(12):
        task_to(client, ORDERS, f"{worker.url}/tasks/orders", json.dumps({"order": 100 + number}).encode())
    for number in range(30):
        task_to(client, ORDERS, f"{worker.url}/tasks/orders", b"{}", schedule_time=later(600 + 30 * number))
    for number in range(40):
        task_to(client, REPORTS, f"{worker.url}/tasks/reports", json.dumps({"report": number}).encode())
    for number in range(3):
        task_to(client, EMAILS, f"{worker.url}/tasks/emails", json.dumps({"to": f"user{number}@example.com"}).encode())
    for number in range(6):
        digest = json.dumps({"digest": "weekly", "to": f"team{number}@example.com"}).encode()
        task_to(client, EMAILS, f"{worker.url}/tasks/emails", digest, schedule_time=later(900 + 3600 * number))
    failing = task_to(
        client, EMAILS, f"{worker.url}/tasks/emails/fail", b'{"to": "ada@example.com", "template": "welcome"}'
    )
    put_dead_letter(
        client, ORDERS, "order-7", b'{"order": 7, "amount": 1250}', "payment provider said 402: card declined"
    )
    put_dead_letter(client, EMAILS, "bounce-31", bytes(range(200, 256)) * 4, "template 'invoice' not found", attempt=12)
    page = browser_context.new_page()
    page.goto(f"{stack.url}#queue={EMAILS}&task={failing}")
    expect(page.locator("#timeline tbody tr")).to_have_count(5)
    expect(page.locator("#dead-letters tbody tr")).to_have_count(2)
    expect(queue_row(page, ORDERS).locator(".counts")).to_have_text("30 scheduled")
    target = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOT") == "1" else tmp_path / "console.png"
    page.screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 10_000
    page.close()
