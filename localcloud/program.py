"""Evaluate the real Pulumi program offline, with Pulumi's mocks standing in for the engine and GCP.

`evaluate` runs `__main__.py` with a given stack config and returns every resource registration as
the engine would receive it (type, inputs, parent, dependencies, options) plus the resolved stack
outputs. Tests assert on it; the local stack realises it; the policy pack checks it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import runpy
import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks

PROJECT_DIR = Path(__file__).resolve().parent.parent
PROGRAM = PROJECT_DIR / "__main__.py"
PROJECT_NAME = "cloudrun-tasks"


@dataclass(frozen=True)
class Registration:
    """One RegisterResource call, as the engine would see it."""

    urn: str
    type: str
    name: str
    custom: bool
    parent: str
    inputs: Mapping[str, Any]
    outputs: Mapping[str, Any]
    dependencies: tuple[str, ...]
    property_dependencies: Mapping[str, tuple[str, ...]]
    protect: bool
    ignore_changes: tuple[str, ...]


@dataclass(frozen=True)
class ProgramRun:
    resources: tuple[Registration, ...]
    outputs: Mapping[str, Any]
    # Output name -> URNs of the resources the value waits for (what a consumer cannot see it before).
    output_dependencies: Mapping[str, frozenset[str]]
    warnings: tuple[str, ...] = ()

    def documents(self) -> list[dict[str, Any]]:
        """Every registration as plain JSON-able data: what a policy pack in another environment reads."""
        return [
            {
                "urn": r.urn,
                "type": r.type,
                "name": r.name,
                "custom": r.custom,
                "parent": r.parent,
                "inputs": dict(r.inputs),
                "dependencies": list(r.dependencies),
                "propertyDependencies": {k: list(v) for k, v in r.property_dependencies.items()},
                "protect": r.protect,
                "ignoreChanges": list(r.ignore_changes),
            }
            for r in self.resources
        ]

    def of_type(self, type_: str) -> list[Registration]:
        return [r for r in self.resources if r.type == type_]

    def named(self, name: str) -> Registration:
        return next(r for r in self.resources if r.name == name)

    def by_urn(self, urn: str) -> Registration:
        return next(r for r in self.resources if r.urn == urn)

    def waits_for(self, resource: Registration) -> set[str]:
        """URNs the engine creates before `resource`: its dependencies and theirs, transitively.

        A parent's dependencies are not among them: the engine does not make children wait for those.
        """
        by_urn = {r.urn: r for r in self.resources}
        seen: set[str] = set()
        todo = [resource.urn]
        while todo:
            current = by_urn.get(todo.pop())
            if current is None:
                continue
            direct = set(current.dependencies).union(*current.property_dependencies.values())
            todo += [urn for urn in direct if urn not in seen]
            seen |= direct
        return seen


class ProgramError(Exception):
    """The program stopped with a user error (pulumi.RunError); `resources` is what it registered first."""

    def __init__(self, message: str, resources: tuple[Registration, ...]) -> None:
        super().__init__(message)
        self.resources = resources


def _short_hash(*parts: str, length: int = 6) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:length]


@dataclass
class SimulatedGcp(pulumi.runtime.Mocks):
    """Returns what GCP would compute for each resource (emails, URIs, names), deterministically.

    `service_url` decides each Cloud Run service's URL from its computed `name` and `id`: a run.app URL
    by default, a loopback URL in local mode.
    """

    project_number: str = "123456789012"
    service_url: Callable[[Mapping[str, Any]], str] | None = None
    random_hex: Callable[[str, int], str] = field(default=lambda name, size: _short_hash(name, length=2 * size))
    # Stack name -> its outputs, for programs that read another stack through a StackReference.
    stack_outputs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def new_resource(self, args: mocks.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        inputs = dict(args.inputs)
        computed = self._computed(args.typ, args.name, inputs)
        outputs = {**inputs, **computed}
        return computed.get("id", f"{args.name}-id"), outputs

    def _computed(self, typ: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        project = inputs.get("project", "")
        if typ == "gcp:serviceaccount/account:Account":
            email = f"{inputs['accountId']}@{project}.iam.gserviceaccount.com"
            return {
                "email": email,
                "member": f"serviceAccount:{email}",
                "name": f"projects/{project}/serviceAccounts/{email}",
                "uniqueId": str(int(_short_hash(email, length=12), 16)),
                "id": f"projects/{project}/serviceAccounts/{email}",
            }
        if typ == "gcp:projects/serviceIdentity:ServiceIdentity":
            agent = inputs["service"].split(".")[0]
            email = f"service-{self.project_number}@gcp-sa-{agent}.iam.gserviceaccount.com"
            return {"email": email, "member": f"serviceAccount:{email}"}
        if typ in ("gcp:cloudrunv2/service:Service", "gcp:cloudtasks/queue:Queue"):
            # The provider auto-names a resource given no name: the logical name plus a random suffix.
            physical = inputs.get("name") or f"{name}-{_short_hash(name, length=7)}"
            kind = "services" if typ.endswith("Service") else "queues"
            computed = {"name": physical, "id": f"projects/{project}/locations/{inputs['location']}/{kind}/{physical}"}
            if kind == "queues":
                return {**computed, "state": "RUNNING"}
            url = self.service_url(computed) if self.service_url else self._run_app_url(physical, inputs["location"])
            return {**computed, "uri": url, "urls": [url]}
        if typ == "gcp:monitoring/notificationChannel:NotificationChannel":
            # The provider's id is the channel's full name; N is a number Cloud Monitoring picks.
            channel = f"projects/{project}/notificationChannels/{int(_short_hash(name, length=8), 16)}"
            return {"name": channel, "id": channel}
        if typ == "pulumi:pulumi:StackReference":
            return {
                "name": inputs["name"],
                "outputs": dict(self.stack_outputs[inputs["name"]]),
                "secretOutputNames": [],
            }
        if typ == "random:index/randomId:RandomId":
            hex_ = self.random_hex(name, int(inputs["byteLength"]))
            return {"hex": hex_, "dec": str(int(hex_, 16))}
        return {}

    def _run_app_url(self, service: str, location: str) -> str:
        return f"https://{service}-{_short_hash(service, location, length=10)}-ew.a.run.app"

    def call(self, args: mocks.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        # No failures: the mock monitor iterates the list, so it is empty rather than None.
        if args.token == "gcp:organizations/getProject:getProject":
            return {"number": self.project_number, "projectId": args.args.get("projectId")}, []
        return {}, []


class _RecordingMonitor(mocks.MockMonitor):
    """The stock mock monitor, also keeping each request's dependencies and options."""

    def __init__(self, cloud: pulumi.runtime.Mocks) -> None:
        super().__init__(cloud)
        self.requests: dict[str, Any] = {}

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 - gRPC method name
        response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
        self.requests[response.urn] = request
        return response


def evaluate(
    config: Mapping[str, str],
    *,
    stack: str = "dev",
    cloud: pulumi.runtime.Mocks | None = None,
    preview: bool = False,
    program: Path = PROGRAM,
    project: str = PROJECT_NAME,
    secret_keys: Collection[str] = (),
) -> ProgramRun:
    """Run the program once with `config` (raw strings, as the CLI passes them, `secret_keys` the keys it
    marks secret) and return what it did."""
    cloud = cloud or SimulatedGcp()
    monitor = _RecordingMonitor(cloud)
    warnings = _WarningCollector()
    if str(PROJECT_DIR) not in sys.path:
        sys.path.insert(0, str(PROJECT_DIR))
    resolved: dict[str, Any] = {}
    dependencies: dict[str, frozenset[str]] = {}

    def run() -> asyncio.Future[None]:
        runpy.run_path(str(program), run_name="__main__")
        exported = getattr(pulumi.runtime.get_root_resource(), "outputs", {})
        return asyncio.ensure_future(_settle_exports(exported, resolved, dependencies))

    # An event loop of this run's own: the program's outputs resolve on it, and nothing is left behind.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        pulumi.runtime.reset_options()  # a fresh root stack per run, which set_mocks then creates
        pulumi.runtime.set_all_config(dict(config), list(secret_keys))
        pulumi.runtime.set_mocks(
            cloud, project=project, stack=stack, preview=preview, monitor=monitor, logger=warnings.logger
        )
        # Runs the program and waits for everything it started, as the language host does.
        pulumi.runtime.test(run)()  # type: ignore[no-untyped-call]  # the SDK leaves it untyped
    except pulumi.RunError as err:
        raise ProgramError(str(err), _registrations(monitor)) from None
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    return ProgramRun(_registrations(monitor), resolved, dependencies, tuple(warnings.messages))


async def _settle_exports(
    exported: Mapping[str, Any], resolved: dict[str, Any], dependencies: dict[str, frozenset[str]]
) -> None:
    """Resolve the stack outputs as the language host serializes them: each value walked once, the
    resources every Output waits for collected on the way. Values are kept only when all are known (a
    preview leaves them unknown, and `resolved` empty, as the engine would show them)."""
    urns: dict[pulumi.Resource, str] = {}
    all_known = True
    for name, value in exported.items():
        behind: set[pulumi.Resource] = set()
        plain, known = await _settle(value, behind)
        all_known = all_known and known
        for resource in behind - urns.keys():
            urns[resource] = str(await resource.urn.future())
        dependencies[name] = frozenset(urns[resource] for resource in behind)
        resolved[name] = plain
    if not all_known:
        resolved.clear()


async def _settle(value: Any, behind: set[pulumi.Resource]) -> tuple[Any, bool]:
    """`value` with every Output in it awaited, and whether all were known; their resources go to `behind`."""
    if isinstance(value, pulumi.Output):
        behind.update(await value.resources())
        if not await value.is_known():
            return None, False
        return await _settle(await value.future(), behind)
    if isinstance(value, dict):
        known = True
        plain = {}
        for key, item in value.items():
            plain[key], item_known = await _settle(item, behind)
            known = known and item_known
        return plain, known
    if isinstance(value, list):
        settled = [await _settle(item, behind) for item in value]
        return [item for item, _ in settled], all(known for _, known in settled)
    return value, True


class _WarningCollector(logging.Handler):
    """Receives what the program logs through `pulumi.log.warn` (the mock engine's logger)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.logger = logging.Logger("cloudrun-tasks-program")
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _registrations(monitor: _RecordingMonitor) -> tuple[Registration, ...]:
    found = []
    for urn, registered in monitor.resources.items():
        request = monitor.requests.get(urn)
        if request is None:  # read, not registered (a StackReference): nothing the program creates
            continue
        found.append(
            Registration(
                urn=urn,
                type=request.type,
                name=request.name,
                custom=request.custom,
                parent=request.parent,
                inputs=pulumi.runtime.rpc.deserialize_properties(request.object),
                outputs=registered.state,
                dependencies=tuple(request.dependencies),
                property_dependencies={k: tuple(v.urns) for k, v in request.propertyDependencies.items()},
                protect=request.protect,
                ignore_changes=tuple(request.ignoreChanges),
            )
        )
    return tuple(found)
