"""The local stack: the Pulumi program evaluated offline, then realised on this machine.

What the program declares becomes real on loopback: each `gcp.cloudtasks.Queue` a queue on the
emulator (rate, retry, routing and pause as configured, so the dead-letter queue is held paused), the
`gcp.cloudrunv2.Service` the handler process with the environment the program gave it (pointed at the
emulator, where its dead-letter sink records), and the run.invoker grants the set of accounts whose tokens
that service accepts. Cloud Run checks the token's signature, audience and invoker role before a request
reaches the container; locally the handler does the same checks, against the emulator's signing keys.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import grpc
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from contract import cloud_tasks, handler_env
from contract.outputs import StackOutputs
from localcloud.program import PROJECT_DIR, PROJECT_NAME, ProgramError, ProgramRun, SimulatedGcp, evaluate

QUEUE = "gcp:cloudtasks/queue:Queue"
SERVICE = "gcp:cloudrunv2/service:Service"
SERVICE_IAM = "gcp:cloudrunv2/serviceIamMember:ServiceIamMember"
RUN_INVOKER = "roles/run.invoker"
DEFAULT_HANDLER = (sys.executable, "-m", "handler")  # the project's own handler, with its task types
READY = re.compile(r"emulator ready grpc=(\S+) http=(\S+)")
CONSOLE = re.compile(r" console=(\S+)")
STARTUP_TIMEOUT_S = 60


class LocalStackError(RuntimeError):
    """The local stack could not start; the message says which part and why."""


@dataclass(frozen=True)
class ServicePlan:
    name: str
    url: str
    port: int
    env: Mapping[str, str]  # as the program declared it for the container
    invokers: frozenset[str]  # emails holding roles/run.invoker on this service
    # Env vars the program reads from Secret Manager: there is none locally, so each is taken from this
    # machine's environment under the same name when it is set there, and left unset otherwise.
    secret_env: tuple[str, ...] = ()


@dataclass(frozen=True)
class LocalPlan:
    queues: tuple[tasks_v2.Queue, ...]
    service: ServicePlan
    outputs: Mapping[str, Any]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stack_config(stack: str) -> dict[str, str]:
    """The stack file's config as the Pulumi CLI hands it to the program."""
    import yaml

    path = PROJECT_DIR / f"Pulumi.{stack}.yaml"
    if not path.exists():
        raise LocalStackError(f"no stack file {path.name}; create it with `pulumi stack init {stack}`")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path.name}:{mark.line + 1}:{mark.column + 1}" if mark else path.name
        raise LocalStackError(f"{where}: not YAML: {err.problem or err}") from None
    except yaml.YAMLError as err:
        raise LocalStackError(f"{path.name}: not YAML: {err}") from None
    config = document.get("config") if isinstance(document, dict) else None
    if not isinstance(config, dict):
        raise LocalStackError(f"{path.name}: no `config:` mapping")
    # The Pulumi CLI namespaces every key; one without a namespace is a typo the program would never read.
    for key in config:
        if ":" not in str(key):
            raise LocalStackError(
                f"{path.name}: config key {key!r} has no namespace: write '{PROJECT_NAME}:{key}' (this project's"
                " keys) or 'gcp:{key}' (the provider's)"
            )
    return {str(key): value if isinstance(value, str) else json.dumps(value) for key, value in config.items()}


def plan(config: Mapping[str, str], stack: str, handler_port: int) -> LocalPlan:
    """Evaluates the program with the service at http://127.0.0.1:<handler_port> and reads what it declares."""
    url = f"http://127.0.0.1:{handler_port}"
    try:
        run = evaluate(config, stack=stack, cloud=SimulatedGcp(service_url=lambda _: url))
    except ProgramError as err:
        raise LocalStackError(f"Pulumi.{stack}.yaml: {err}") from None
    for warning in run.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return LocalPlan(queues=tuple(_queues(run)), service=_service(run, url, handler_port), outputs=run.outputs)


def _service(run: ProgramRun, url: str, port: int) -> ServicePlan:
    services = run.of_type(SERVICE)
    if len(services) != 1:
        raise LocalStackError(f"the program declares {len(services)} Cloud Run services; the local stack runs one")
    inputs = services[0].inputs
    container = inputs["template"]["containers"][0]
    envs = container.get("envs", [])
    env = {e["name"]: e["value"] for e in envs if "value" in e}
    secret_env = tuple(e["name"] for e in envs if "valueSource" in e)
    invokers = frozenset(
        grant.inputs["member"].removeprefix("serviceAccount:")
        for grant in run.of_type(SERVICE_IAM)
        if grant.inputs["role"] == RUN_INVOKER and grant.inputs["name"] == inputs["name"]
    )
    return ServicePlan(name=inputs["name"], url=url, port=port, env=env, invokers=invokers, secret_env=secret_env)


def _queues(run: ProgramRun) -> Iterator[tasks_v2.Queue]:
    for registration in run.of_type(QUEUE):
        yield queue_from_inputs(registration.inputs)


def queue_from_inputs(inputs: Mapping[str, Any]) -> tasks_v2.Queue:
    """The Cloud Tasks queue a `gcp.cloudtasks.Queue` with these (engine, camelCase) inputs creates."""
    # A key the program leaves out gets Cloud Tasks' default, as the real service gives it.
    rates, retry = inputs.get("rateLimits", {}), inputs.get("retryConfig", {})
    queue = tasks_v2.Queue(
        name=f"projects/{inputs['project']}/locations/{inputs['location']}/queues/{inputs['name']}",
        rate_limits=tasks_v2.RateLimits(
            max_dispatches_per_second=rates.get("maxDispatchesPerSecond", cloud_tasks.DEFAULT_DISPATCHES_PER_SECOND),
            max_concurrent_dispatches=int(
                rates.get("maxConcurrentDispatches", cloud_tasks.DEFAULT_CONCURRENT_DISPATCHES)
            ),
        ),
        retry_config=tasks_v2.RetryConfig(
            max_attempts=int(retry.get("maxAttempts", cloud_tasks.DEFAULT_MAX_ATTEMPTS)),
            max_retry_duration=_duration(retry.get("maxRetryDuration"), cloud_tasks.DEFAULT_MAX_RETRY_DURATION_S),
            min_backoff=_duration(retry.get("minBackoff"), cloud_tasks.DEFAULT_MIN_BACKOFF_S),
            max_backoff=_duration(retry.get("maxBackoff"), cloud_tasks.DEFAULT_MAX_BACKOFF_S),
            max_doublings=int(retry.get("maxDoublings", cloud_tasks.DEFAULT_MAX_DOUBLINGS)),
        ),
        stackdriver_logging_config=tasks_v2.StackdriverLoggingConfig(
            sampling_ratio=inputs.get("stackdriverLoggingConfig", {}).get(
                "samplingRatio", cloud_tasks.DEFAULT_LOG_SAMPLING_RATIO
            )
        ),
        # The declared desiredState. CreateQueue takes state as output only (a new queue is RUNNING), so
        # `_create_queues` creates the queue, then pauses it.
        state=getattr(tasks_v2.Queue.State, inputs.get("desiredState") or "RUNNING"),
    )
    target = inputs.get("httpTarget")
    if target:
        queue.http_target = _http_target(target)
    return queue


def _http_target(target: Mapping[str, Any]) -> tasks_v2.HttpTarget:
    http_target = tasks_v2.HttpTarget(http_method=getattr(tasks_v2.HttpMethod, target.get("httpMethod", "POST")))
    override = target.get("uriOverride")
    if override:
        http_target.uri_override = tasks_v2.UriOverride(
            scheme=getattr(tasks_v2.UriOverride.Scheme, override.get("scheme", "HTTPS")),
            host=override.get("host", ""),
            port=int(override["port"]) if override.get("port") else 0,
            path_override=tasks_v2.PathOverride(path=override.get("pathOverride", {}).get("path", "")),
            uri_override_enforce_mode=getattr(
                tasks_v2.UriOverride.UriOverrideEnforceMode, override.get("uriOverrideEnforceMode", "ALWAYS")
            ),
        )
    oidc = target.get("oidcToken")
    if oidc:
        http_target.oidc_token = tasks_v2.OidcToken(
            service_account_email=oidc["serviceAccountEmail"], audience=oidc.get("audience", "")
        )
    return http_target


def _duration(text: str | None, default_seconds: float) -> timedelta:
    return timedelta(seconds=float(text.removesuffix("s")) if text is not None else default_seconds)


@dataclass
class RunningStack:
    """The emulator and the handler, running; `emulator_host` is what CLOUD_TASKS_EMULATOR_HOST takes."""

    plan: LocalPlan
    emulator_host: str
    certs_url: str
    processes: list[subprocess.Popen[str]]
    console_url: str = ""  # the emulator's web console, when `running` was given a console port
    waiting: int = 0  # tasks the emulator held when it started: left from the last run on its data dir
    emulator_http: str = ""  # the emulator's HTTP port (keys, BufferTask): what CLOUD_TASKS_EMULATOR_HTTP takes

    def export_line(self) -> str:
        """The shell line that points the task client at this stack's emulator: gRPC, and HTTP for BufferTask."""
        return (
            f"export {cloud_tasks.EMULATOR_HOST_ENV}={self.emulator_host}"
            f" {cloud_tasks.EMULATOR_HTTP_ENV}={self.emulator_http}"
        )

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


@contextmanager
def running(
    stack: str,
    *,
    emulator_port: int = 0,
    handler_port: int = 0,
    http_port: int = 0,
    on_line: Callable[[str, str], None] | None = None,
    handler_command: Sequence[str] = DEFAULT_HANDLER,
    console_port: int | None = None,
    outputs_path: Path | None = None,
    data_dir: Path | None = None,
) -> Iterator[RunningStack]:
    """Starts the emulator, the handler and the queues; stops everything on exit.

    Every line the two processes print goes to `on_line(source, line)` ("emulator" or "handler").
    `handler_command` runs the service (tests pass a probe); it gets `--port <handler port>` appended and the
    environment the program declares for the service. Given `console_port` (0: a free one), the emulator serves
    its web console there, replaying dead letters with the outputs at `outputs_path`. Given `data_dir`, the
    emulator keeps its state there (what it finds from the last run is kept; the declared queues are updated);
    without, it starts empty and keeps everything in memory.
    """
    config = stack_config(stack)
    # The config before the ports: a mistake in it is the thing to fix, whichever ports are free.
    local = plan(config, stack, handler_port or free_port())
    _check_free(
        (emulator_port, "the emulator's gRPC port", "--emulator-port"),
        (http_port, "the token signing keys' port", "--http-port"),
        (handler_port, "the task handler's port", "--handler-port"),
        (console_port or 0, "the emulator console's port", "--console-port"),
    )
    handler_port = local.service.port
    if tuple(handler_command) == DEFAULT_HANDLER:
        for warning in unserved_queue_warnings(StackOutputs.from_mapping(local.outputs)):
            print(f"warning: {warning}", file=sys.stderr)
    processes: list[subprocess.Popen[str]] = []
    stack_run = RunningStack(local, "", "", processes)
    try:
        emulator = _start(
            [
                sys.executable,
                "-m",
                "localcloud",
                "emulator",
                "--port",
                str(emulator_port or free_port()),
                "--http-port",
                str(http_port or free_port()),
                *(["--console-port", str(console_port)] if console_port is not None else []),
                *(["--outputs", str(outputs_path)] if outputs_path is not None else []),
                *(["--data-dir", str(data_dir)] if data_dir is not None else []),
            ],
            {},
            processes,
        )
        ready = _wait_for_ready(emulator)
        stack_run.emulator_host, stack_run.certs_url = ready[0], ready[1] + "/oauth2/v1/certs"
        stack_run.console_url = ready[2]
        stack_run.emulator_http = ready[1]
        _forward(emulator, "emulator", on_line)
        handler = _start(
            [*handler_command, "--port", str(handler_port)],
            _handler_env(local.service, stack_run.certs_url, stack_run.emulator_host),
            processes,
        )
        _forward(handler, "handler", on_line)
        if data_dir is not None:
            stack_run.waiting = _count_tasks(stack_run.emulator_host, local.queues)
        _create_queues(stack_run.emulator_host, local.queues)
        _wait_for_health(local.service.url, handler)
        yield stack_run
    finally:
        stack_run.stop()


def _handler_env(service: ServicePlan, certs_url: str, emulator_host: str | None = None) -> dict[str, str]:
    # Cloud Run's checks, done by the handler: signature (emulator keys), audience (the service's
    # deterministic URL, which the program declares in the env as it does in every token), and the invoker
    # role, taken from the run.invoker grants the program declares rather than from its own env. The
    # dead-letter queue (TASKS_DEAD_LETTER_QUEUE, from the program) is on the emulator, as every queue is:
    # `emulator_host` points the handler's dead-letter sink there.
    return {
        **{name: os.environ[name] for name in service.secret_env if name in os.environ},
        **service.env,
        handler_env.VERIFY_OIDC: "true",
        handler_env.OIDC_CERTS_URL: certs_url,
        handler_env.INVOKER_EMAILS: ",".join(sorted(service.invokers)),
        handler_env.PORT: str(service.port),
        **({cloud_tasks.EMULATOR_HOST_ENV: emulator_host} if emulator_host else {}),
    }


def unserved_queue_warnings(outputs: StackOutputs) -> list[str]:
    """A warning for each queue whose tasks go to a path where the project's handler has no task type: each of
    them would be dead-lettered at its first attempt."""
    from handler.task_types import router

    paths = {key: urlsplit(queue.task_url).path for key, queue in outputs.queues.items()}
    warnings = (router.no_task_type_warning(key, path) for key, path in paths.items())
    return [warning for warning in warnings if warning]


def _check_free(*ports: tuple[int, str, str]) -> None:
    """Each chosen port (0: any free one) can be listened on, or LocalStackError naming it and its flag."""
    for port, what, flag in ports:
        if not port:
            continue
        with socket.socket() as sock:
            # As the servers bind: a port that only closed connections linger on (TIME_WAIT, a minute after a
            # stop) is free to them, and one with a listener is not.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                raise LocalStackError(
                    f"port {port} ({what}) is in use, by another `localcloud up` perhaps: stop that, or choose"
                    f" another with {flag}"
                ) from None


# Linux's prctl(PR_SET_PDEATHSIG, SIGTERM), looked up once here: a child the local stack starts gets SIGTERM
# when its parent dies, even by SIGKILL, which leaves no chance to stop it. The child calls only this function
# pointer between fork and exec.
_PR_SET_PDEATHSIG = 1
_prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None) if sys.platform == "linux" else None


def _die_with_parent() -> None:
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _start(command: list[str], env: Mapping[str, str], processes: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    full_env = {**os.environ, "PYTHONPATH": str(PROJECT_DIR), "PYTHONUNBUFFERED": "1", **env}
    process = subprocess.Popen(
        command,
        env=full_env,
        cwd=PROJECT_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_die_with_parent,  # one libc call through a pointer resolved before the fork
    )
    processes.append(process)
    return process


def _wait_for_ready(emulator: subprocess.Popen[str]) -> tuple[str, str, str]:
    """The emulator's gRPC address, its keys' URL and its console's URL ("" without one), from its ready line."""
    assert emulator.stdout is not None
    seen = []
    for line in emulator.stdout:
        match = READY.search(line)
        if match:
            console = CONSOLE.search(line)
            return match[1], match[2], console[1] if console else ""
        seen.append(line)
    refusal = next((line for line in seen if line.startswith("emulator: cannot start: ")), None)
    if refusal is not None:  # its own one-line reason (a port, a data dir): enough on its own
        raise LocalStackError(refusal.removeprefix("emulator: ").strip())
    raise LocalStackError("the emulator stopped before it was ready:\n" + "".join(seen[-20:]))


def _forward(process: subprocess.Popen[str], source: str, on_line: Callable[[str, str], None] | None) -> None:
    def pump(stream: IO[str]) -> None:
        for line in stream:
            if on_line is not None:
                on_line(source, line.rstrip("\n"))

    assert process.stdout is not None
    threading.Thread(target=pump, args=(process.stdout,), daemon=True, name=f"{source}-output").start()


def _create_queues(emulator_host: str, queues: tuple[tasks_v2.Queue, ...]) -> None:
    """Each declared queue created, or updated to its declared settings and state when the emulator kept it from
    the last run (its tasks stay): UpdateQueue creates a queue that does not exist, as in Cloud Tasks."""
    channel = grpc.insecure_channel(emulator_host)
    client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
    try:
        for queue in queues:
            # As the provider does for desired_state: state is output only in UpdateQueue, so the update
            # (every field: an empty mask) comes first, then a pause or a resume when the state differs.
            declared = tasks_v2.Queue(queue)
            tasks_v2.Queue.pb(declared).ClearField("state")
            applied = client.update_queue(queue=declared)
            if queue.state == tasks_v2.Queue.State.PAUSED and applied.state != queue.state:
                client.pause_queue(name=queue.name)
            elif queue.state == tasks_v2.Queue.State.RUNNING and applied.state != queue.state:
                client.resume_queue(name=queue.name)
    finally:
        channel.close()


def _count_tasks(emulator_host: str, queues: tuple[tasks_v2.Queue, ...]) -> int:
    """The tasks on every queue of the emulator in the locations of `queues` (BASIC view: no bodies)."""
    channel = grpc.insecure_channel(emulator_host)
    client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
    try:
        locations = sorted({queue.name.rsplit("/queues/", 1)[0] for queue in queues})
        return sum(
            1
            for location in locations
            for queue in client.list_queues(parent=location)
            for _ in client.list_tasks(request={"parent": queue.name, "page_size": 1000})
        )
    finally:
        channel.close()


def _wait_for_health(url: str, handler: subprocess.Popen[str]) -> None:
    deadline = threading.Event()
    timer = threading.Timer(STARTUP_TIMEOUT_S, deadline.set)
    timer.start()
    try:
        while not deadline.is_set():
            if handler.poll() is not None:
                raise LocalStackError(f"the handler exited with status {handler.returncode}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                deadline.wait(0.05)  # still starting: poll its port again
        raise LocalStackError(f"the handler did not answer {url}/health within {STARTUP_TIMEOUT_S} s")
    finally:
        timer.cancel()


def write_outputs(outputs: Mapping[str, Any], path: Path) -> None:
    """The outputs in the shape of `pulumi stack output --json`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(outputs, indent=2, sort_keys=True) + "\n")
