"""Stack config -> typed, validated, frozen settings: the one place config is read.

`load_settings` takes the raw config map exactly as the Pulumi CLI hands it to the program
(`"namespace:key"` -> string; structured values as JSON text) and either returns `Settings` or raises
`SettingsError` listing every problem at once. Each problem names the config path, the bad value and
the rule. Limits come from Cloud Tasks and Cloud Run documentation (see README, "Configuration").
Pure Python: no Pulumi import, so every rule is unit-tested as a plain function.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

from contract import cloud_run, cloud_tasks, handler_env

NAMESPACE = "cloudrun-tasks"

# --- limits of this stack's own; Cloud Tasks' and Cloud Run's are in contract/ ---------------------
# Every name derived from the prefix is then valid: "-run" makes a 6-character account id at the least,
# "-invoker" a 28-character one at the most (limit 30).
MIN_NAME_PREFIX_LENGTH, MAX_NAME_PREFIX_LENGTH = 2, 20
QUEUE_SUFFIX_HEX_LENGTH = 6  # random suffix that keeps a re-created queue off a tombstoned name
CPU_CHOICES = ("1", "2", "4", "6", "8")
# Cloud Run: memory above N GiB needs at least M CPUs; CPUs above 2 need a memory floor.
MIN_CPU_FOR_MEMORY_GIB = ((24, 8), (16, 6), (8, 4), (4, 2))
MIN_MEMORY_GIB_FOR_CPU = {"4": 2, "6": 4, "8": 4}
MIN_MEMORY_MIB, MAX_MEMORY_MIB = 128, 32 * 1024

PUBLIC_MEMBERS = ("allUsers", "allAuthenticatedUsers")
MEMBER_PREFIXES = ("user:", "serviceAccount:", "group:", "domain:", "principal:", "principalSet:")

_DURATION = re.compile(r"[0-9]+(\.[0-9]{1,9})?s")
_QUEUE_KEY = cloud_tasks.QUEUE_ID  # the key is part of the queue id
SERVICE_ACCOUNT_ID_PATTERN = re.compile(r"[a-z](?:[-a-z0-9]{4,28}[a-z0-9])")
_SERVICE_NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
_NAME_PREFIX = re.compile(r"[a-z](?:[-a-z0-9]*[a-z0-9])?")
PROJECT_ID_PATTERN = re.compile(r"(?:[a-z][-a-z0-9.]*[a-z0-9]:)?[a-z][-a-z0-9]{4,28}[a-z0-9]")
_REGION = re.compile(r"[a-z]+-[a-z]+[0-9]+")
_PATH = re.compile(r"/[A-Za-z0-9\-._~/]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MEMORY = re.compile(r"([1-9][0-9]*)(Mi|Gi)")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


class Ingress(StrEnum):
    INTERNAL_ONLY = "INGRESS_TRAFFIC_INTERNAL_ONLY"
    INTERNAL_LOAD_BALANCER = "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER"
    ALL = "INGRESS_TRAFFIC_ALL"


class SettingsError(ValueError):
    """Stack config that cannot be deployed. `problems` lists every one, each a full sentence."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("invalid stack configuration:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class Duration:
    """A Cloud Tasks / Cloud Run duration such as "10s" or "0.5s"."""

    seconds: Decimal

    def __str__(self) -> str:
        return f"{self.seconds.normalize():f}s"

    @classmethod
    def of(cls, seconds: float | int | str) -> Duration:
        return cls(Decimal(str(seconds)))


def _seconds(seconds: float) -> str:
    """A default in seconds as the config writes it: 0.1 -> "0.1s", 600.0 -> "600s"."""
    return str(Duration.of(seconds))


@dataclass(frozen=True)
class RateLimits:
    max_dispatches_per_second: float
    max_concurrent_dispatches: int


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    max_retry_duration: Duration
    min_backoff: Duration
    max_backoff: Duration
    max_doublings: int


@dataclass(frozen=True)
class QueueSettings:
    key: str
    path: str
    dispatch_deadline: Duration
    queue_level_routing: bool
    log_sampling_ratio: float
    rate_limits: RateLimits
    retry: RetryPolicy
    enqueuers: tuple[str, ...]


@dataclass(frozen=True)
class ServiceSettings:
    name: str
    image: str
    manage_image: bool
    ingress: Ingress
    timeout: Duration
    min_instances: int
    max_instances: int
    concurrency: int
    cpu: str
    memory: str
    service_account_id: str
    env: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Settings:
    project: str
    location: str
    name_prefix: str
    deletion_protection: bool
    invoker_service_account_id: str
    service: ServiceSettings
    queues: tuple[QueueSettings, ...]
    default_queue: str
    warnings: tuple[str, ...] = ()

    def queue(self, key: str) -> QueueSettings:
        return next(q for q in self.queues if q.key == key)


# --- reading ------------------------------------------------------------------------------------

_MISSING = object()


class _Reader:
    """Reads one config object, recording problems instead of raising, so all are reported together."""

    def __init__(self, value: Any, path: str, problems: list[str], keys: tuple[str, ...]) -> None:
        self.path = path
        self.problems = problems
        self.value: Mapping[str, Any] = value if isinstance(value, Mapping) else {}
        if not isinstance(value, Mapping):
            problems.append(f"{path}: expected an object, got {_show(value)}")
        for unknown in sorted(set(self.value) - set(keys)):
            problems.append(f"{self._at(unknown)}: unknown key; allowed keys are {', '.join(keys)}")

    def _at(self, key: str) -> str:
        return f"{self.path}.{shown_key(key)}" if self.path else shown_key(key)

    def _get(self, key: str, kinds: tuple[type, ...], kind_name: str, default: Any) -> Any:
        value = self.value.get(key, _MISSING)
        if value is _MISSING or value is None:
            return default
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            hint = _NUMBER_HINT if isinstance(value, str) and int in kinds else ""
            self.problems.append(f"{self._at(key)}: expected {kind_name}, got {_show(value)}{hint}")
            return default
        return value

    def text(self, key: str, default: str) -> str:
        return str(self._get(key, (str,), "a string", default))

    def flag(self, key: str, default: bool) -> bool:
        return bool(self._get(key, (bool,), "true or false", default))

    def integer(self, key: str, default: int, low: int, high: int, rule: str = "") -> int:
        value = self._get(key, (int,), "a whole number", default)
        return int(self._bounded(key, value, default, low, high, rule))

    def number(self, key: str, default: float, low: float, high: float, rule: str = "") -> float:
        value = self._get(key, (int, float), "a number", default)
        if isinstance(value, float) and not math.isfinite(value):
            self.problems.append(f"{self._at(key)}: {value} is not a finite number")
            return default
        return float(self._bounded(key, value, default, low, high, rule))

    def _bounded(self, key: str, value: float, default: float, low: float, high: float, rule: str) -> float:
        problem = _range_problem(value, low, high, _number)
        if problem:
            self.problems.append(f"{self._at(key)}: {problem}{f' ({rule})' if rule else ''}")
            return default
        return value

    def duration(self, key: str, default: str, low_s: float, high_s: float, rule: str = "") -> Duration:
        raw = self.text(key, default)
        fallback = Duration(Decimal(default[:-1]))
        if not _DURATION.fullmatch(raw):
            self.problems.append(
                f"{self._at(key)}: {raw!r} is not a duration in Cloud Tasks form"
                ' (whole or decimal seconds with an "s" suffix, e.g. "10s" or "0.5s")'
            )
            return fallback
        value = Duration(Decimal(raw[:-1]))
        problem = _range_problem(value.seconds, Decimal(low_s), Decimal(high_s), lambda d: str(Duration(d)))
        if problem:
            self.problems.append(f"{self._at(key)}: {problem}{f' ({rule})' if rule else ''}")
            return fallback
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(key, default)
        if value not in choices:
            self.problems.append(f"{self._at(key)}: {value!r} is not one of {', '.join(choices)}")
            return default
        return value

    def matching(self, key: str, default: str | None, pattern: re.Pattern[str], rule: str) -> str:
        """The value of `key`, checked against `pattern`. Unset, it is `default`: a constant or a name
        derived from valid parts, so valid by construction, or None when an invalid part (reported on
        its own) left nothing to derive."""
        if self.value.get(key) is None:
            return default or ""
        value = self.text(key, default or "")
        if not pattern.fullmatch(value):
            self.problems.append(f"{self._at(key)}: {value!r} {rule}")
        return value

    def members(self, key: str) -> tuple[str, ...]:
        value = self._get(key, (list,), "a list of IAM members", [])
        found = []
        for i, member in enumerate(value):
            problem = member_problem(member)
            if problem:
                self.problems.append(f"{self._at(key)}[{i}]: {problem}")
            else:
                found.append(member)
        return tuple(dict.fromkeys(found))

    def child(self, key: str, keys: tuple[str, ...]) -> _Reader:
        value = self.value.get(key)
        return _Reader({} if value is None else value, self._at(key), self.problems, keys)


def _range_problem(value: Any, low: Any, high: Any, show: Callable[[Any], str]) -> str | None:
    if value < low:
        return f"{show(value)} is below the minimum of {show(low)}"
    if value > high:
        return f"{show(value)} is above the maximum of {show(high)}"
    return None


def _number(value: float) -> str:
    """500.0 -> "500", 0.5 -> "0.5": how the user wrote it, not how Python stores it."""
    if isinstance(value, int) or value.is_integer():
        return str(int(value))
    return repr(value)


# `pulumi config set --path` stores anything but integers and true/false as a string.
_NUMBER_HINT = " (write it unquoted in the stack file, or use `pulumi config set --path KEY VALUE --type float`)"


def shown_key(key: str) -> str:
    """A config key as a problem shows it: quoted and escaped when it holds a line break or other control
    character, so every problem stays one line that starts with its path."""
    return key if key.isprintable() else json.dumps(key)


def _show(value: Any) -> str:
    if value is None:
        return "null"
    kind = {bool: "boolean", int: "number", float: "number", str: "string", list: "list", dict: "object"}.get(
        type(value), type(value).__name__
    )
    return f"{kind} {json.dumps(value) if kind != 'object' else '{...}'}"


def member_problem(member: Any) -> str | None:
    """Why `member` cannot be granted a role by this stack, or None when it can."""
    if not isinstance(member, str):
        return f"expected an IAM member string, got {_show(member)}"
    if member in PUBLIC_MEMBERS or member.split(":", 1)[-1] in PUBLIC_MEMBERS:
        return f"{member!r} is public; this stack never grants roles to {' or '.join(PUBLIC_MEMBERS)}"
    prefix = next((p for p in MEMBER_PREFIXES if member.startswith(p)), None)
    if prefix is None:
        return (
            f"{member!r} has no member type prefix; use one of "
            f"{', '.join(MEMBER_PREFIXES)} (e.g. serviceAccount:api@my-project.iam.gserviceaccount.com)"
        )
    identity = member[len(prefix) :]
    if prefix in ("user:", "serviceAccount:", "group:") and not _EMAIL.fullmatch(identity):
        return f"{member!r}: {prefix[:-1]} members need an email address after the prefix"
    if not identity:
        return f"{member!r}: nothing after the {prefix!r} prefix"
    return None


# --- the config schema --------------------------------------------------------------------------

PROJECT_KEYS = (
    "namePrefix",
    "deletionProtection",
    "invokerServiceAccountId",
    "enqueuers",
    "defaultQueue",
    "service",
    "queues",
)
_TEXT_KEYS = ("namePrefix", "invokerServiceAccountId", "defaultQueue")
SERVICE_KEYS = (
    "name",
    "image",
    "manageImage",
    "ingress",
    "timeout",
    "minInstances",
    "maxInstances",
    "concurrency",
    "cpu",
    "memory",
    "serviceAccountId",
    "env",
)
QUEUE_KEYS = (
    "path",
    "dispatchDeadline",
    "queueLevelRouting",
    "logSamplingRatio",
    "rateLimits",
    "retry",
    "enqueuers",
)
RATE_LIMIT_KEYS = ("maxDispatchesPerSecond", "maxConcurrentDispatches")
RETRY_KEYS = ("maxAttempts", "maxRetryDuration", "minBackoff", "maxBackoff", "maxDoublings")

# A public sample that answers 200 to any request, so a first `pulumi up` works end to end.
DEFAULT_IMAGE = "us-docker.pkg.dev/cloudrun/container/hello"
# Env vars Cloud Run sets itself, or that the component sets for the handler: never user-supplied.
RESERVED_ENV = (*handler_env.CLOUD_RUN_SET, *handler_env.STACK_SET)


def load_settings(config: Mapping[str, str], stack: str) -> Settings:
    """Typed settings from the raw config map the CLI passes, or SettingsError with every problem."""
    problems: list[str] = []
    project = _gcp_key(config, "project", PROJECT_ID_PATTERN, "is not a Google Cloud project id", problems)
    location = _gcp_key(config, "region", _REGION, "is not a region such as europe-west1", problems)

    top = _Reader(_project_values(config), "", problems, PROJECT_KEYS)
    prefix = _name_prefix(top, stack)
    deletion_protection = top.flag("deletionProtection", True)
    enqueuers = top.members("enqueuers")
    service_reader = top.child("service", SERVICE_KEYS)
    scale = _Scale(
        # 10 caps cost and protects downstream systems; Cloud Run's own default is 100.
        max_instances=service_reader.integer(
            "maxInstances", 10, 1, 1000, "Cloud Run instance limit this stack accepts"
        ),
        # Cloud Run's default requests per instance.
        concurrency=service_reader.integer(
            "concurrency", 80, 1, cloud_run.MAX_INSTANCE_CONCURRENCY, "Cloud Run per-instance limit"
        ),
    )
    queues = _queues(top, prefix, enqueuers, scale.capacity, problems)
    service = _service(service_reader, prefix, queues, scale)
    invoker_id = top.matching(
        "invokerServiceAccountId", _derived(prefix, "-invoker"), SERVICE_ACCOUNT_ID_PATTERN, SERVICE_ACCOUNT_ID_RULE
    )
    if invoker_id and invoker_id == service.service_account_id:
        problems.append(
            f"invokerServiceAccountId: {invoker_id!r} is also service.serviceAccountId;"
            " the invoker and the runtime identity must be different accounts"
        )
    default_queue = top.text("defaultQueue", queues[0].key if queues else "")
    if queues and default_queue not in {q.key for q in queues}:
        problems.append(
            f"defaultQueue: {default_queue!r} is not one of the configured queues ({', '.join(q.key for q in queues)})"
        )
    if problems:
        raise SettingsError(problems)
    return Settings(
        project=project,
        location=location,
        name_prefix=prefix or "",
        deletion_protection=deletion_protection,
        invoker_service_account_id=invoker_id,
        service=service,
        queues=tuple(queues),
        default_queue=default_queue,
        warnings=tuple(_capacity_warnings(queues, scale.capacity)),
    )


SERVICE_ACCOUNT_ID_RULE = (
    "is not a service account id (6-30 characters: lowercase letters, digits, hyphens;"
    " starts with a letter, ends with a letter or digit)"
)


def _gcp_key(config: Mapping[str, str], key: str, pattern: re.Pattern[str], rule: str, problems: list[str]) -> str:
    value = config.get(f"gcp:{key}", "")
    if not value:
        problems.append(f"gcp:{key}: missing; set it with `pulumi config set gcp:{key} <value>`")
    elif not pattern.fullmatch(value):
        problems.append(f"gcp:{key}: {value!r} {rule}")
    return value


def _project_values(config: Mapping[str, str]) -> dict[str, Any]:
    """This project's keys, decoded as the CLI encodes them: structured values arrive as JSON text."""
    values: dict[str, Any] = {}
    for full_key, raw in config.items():
        namespace, _, key = full_key.partition(":")
        if namespace != NAMESPACE:
            continue
        values[key] = raw if key in _TEXT_KEYS else _decode(raw)
    return values


def _decode(raw: str) -> Any:
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        return raw  # reported by the reader as a string where another type belongs


def _name_prefix(top: _Reader, stack: str) -> str | None:
    """The prefix of every physical name, or None when it is invalid (names derived from it are then
    not checked: the one problem is the prefix)."""
    derived = "tasks-" + re.sub(r"[^a-z0-9]+", "-", stack.lower()).strip("-")
    prefix = top.text("namePrefix", derived)
    origin = "" if top.value.get("namePrefix") is not None else f" (derived from stack {stack!r}; set namePrefix)"
    if _NAME_PREFIX.fullmatch(prefix) and MIN_NAME_PREFIX_LENGTH <= len(prefix) <= MAX_NAME_PREFIX_LENGTH:
        return prefix
    top.problems.append(
        f"namePrefix: {prefix!r}{origin} must be {MIN_NAME_PREFIX_LENGTH}-{MAX_NAME_PREFIX_LENGTH} lowercase"
        " letters, digits and hyphens, starting with a letter and not ending with a hyphen"
    )
    return None


def _derived(prefix: str | None, suffix: str) -> str | None:
    return None if prefix is None else prefix + suffix


@dataclass(frozen=True)
class _Scale:
    max_instances: int
    concurrency: int

    @property
    def capacity(self) -> int:
        """Requests the service takes at once; more concurrent dispatches only earn 429s (cold starts)."""
        return self.max_instances * self.concurrency


def _queues(
    top: _Reader, prefix: str | None, enqueuers: tuple[str, ...], capacity: int, problems: list[str]
) -> list[QueueSettings]:
    raw = top.value.get("queues")
    if raw is None:
        problems.append("queues: missing; configure at least one queue, e.g. `queues: {default: {}}`")
        return []
    if not isinstance(raw, Mapping) or not raw:
        problems.append(f"queues: expected an object of one or more queues, got {_show(raw)}")
        return []
    # The queue id is "<prefix>-<key>-<suffix>", and Cloud Tasks allows 100 characters.
    longest_id = cloud_tasks.MAX_QUEUE_ID_LENGTH
    longest_key = longest_id - len(prefix or "") - QUEUE_SUFFIX_HEX_LENGTH - 2
    queues = []
    for key, value in raw.items():
        if not _QUEUE_KEY.fullmatch(key):
            problems.append(f"queues.{shown_key(key)}: queue names use only letters, digits and hyphens (1-100)")
        elif prefix is not None and len(key) > longest_key:
            problems.append(
                f"queues.{key}: {len(key)} characters is too long; with namePrefix {prefix!r} and the"
                f" random suffix the queue id must stay within {longest_id} (at most {longest_key})"
            )
        # A key with nothing under it (YAML `default:`) is a queue with every default.
        reader = _Reader({} if value is None else value, f"queues.{shown_key(key)}", problems, QUEUE_KEYS)
        queues.append(_queue(reader, key, enqueuers, capacity))
    return queues


def _queue(q: _Reader, key: str, enqueuers: tuple[str, ...], capacity: int) -> QueueSettings:
    path = q.matching(
        "path",
        f"/tasks/{key}" if _QUEUE_KEY.fullmatch(key) else None,
        _PATH,
        "is not a URL path (starts with '/'; letters, digits, -._~/)",
    )
    deadline = q.duration(
        "dispatchDeadline",
        _seconds(cloud_tasks.DEFAULT_DISPATCH_DEADLINE_S),
        cloud_tasks.MIN_DISPATCH_DEADLINE_S,
        cloud_tasks.MAX_DISPATCH_DEADLINE_S,
        "Cloud Tasks HTTP dispatch deadline range",
    )
    rates = q.child("rateLimits", RATE_LIMIT_KEYS)
    rate_limits = RateLimits(
        # Cloud Tasks' default and ceiling; the real brake is the concurrency cap below.
        max_dispatches_per_second=_positive_rate(rates),
        max_concurrent_dispatches=rates.integer(
            # Default: what the service can absorb (max instances x concurrency), within Cloud Tasks' default.
            "maxConcurrentDispatches",
            min(cloud_tasks.DEFAULT_CONCURRENT_DISPATCHES, capacity),
            1,
            cloud_tasks.MAX_CONCURRENT_DISPATCHES,
            "Cloud Tasks limit",
        ),
    )
    return QueueSettings(
        key=key,
        path=path,
        dispatch_deadline=deadline,
        # Opt-in: producers then need only the queue path, and the queue pins URL and token.
        queue_level_routing=q.flag("queueLevelRouting", False),
        # Cloud Tasks logs nothing by default (0.0), which makes failed attempts invisible.
        log_sampling_ratio=q.number("logSamplingRatio", 1.0, 0.0, 1.0, "fraction of operations logged"),
        rate_limits=rate_limits,
        retry=_retry(q.child("retry", RETRY_KEYS)),
        enqueuers=tuple(dict.fromkeys(enqueuers + q.members("enqueuers"))),
    )


def _positive_rate(rates: _Reader) -> float:
    rate = rates.number(
        "maxDispatchesPerSecond",
        cloud_tasks.DEFAULT_DISPATCHES_PER_SECOND,
        0.0,
        cloud_tasks.MAX_DISPATCHES_PER_SECOND,
        "Cloud Tasks limit per queue",
    )
    if rate == 0:
        rates.problems.append(
            f"{rates._at('maxDispatchesPerSecond')}: 0 would never dispatch; it must be above 0 (pause a queue instead)"
        )
    return rate


def _retry(r: _Reader) -> RetryPolicy:
    # Defaults are Cloud Tasks' own, so behaviour matches Google's documentation.
    retention = cloud_tasks.TASK_RETENTION_S
    policy = RetryPolicy(
        max_attempts=r.integer(
            "maxAttempts",
            cloud_tasks.DEFAULT_MAX_ATTEMPTS,
            cloud_tasks.UNLIMITED_ATTEMPTS,
            cloud_tasks.MAX_INT32,
            "-1 means unlimited",
        ),
        max_retry_duration=r.duration(
            "maxRetryDuration",
            _seconds(cloud_tasks.DEFAULT_MAX_RETRY_DURATION_S),
            0,
            retention,
            "0s means unlimited; tasks live at most 31 days",
        ),
        min_backoff=r.duration("minBackoff", _seconds(cloud_tasks.DEFAULT_MIN_BACKOFF_S), 0, retention),
        max_backoff=r.duration("maxBackoff", _seconds(cloud_tasks.DEFAULT_MAX_BACKOFF_S), 0, retention),
        max_doublings=r.integer(
            "maxDoublings", cloud_tasks.DEFAULT_MAX_DOUBLINGS, 0, cloud_tasks.MAX_INT32, "must not be negative"
        ),
    )
    if policy.min_backoff.seconds > policy.max_backoff.seconds:
        r.problems.append(
            f"{r.path}.minBackoff: {policy.min_backoff} is above maxBackoff {policy.max_backoff};"
            " the first retry delay cannot exceed the cap"
        )
    if policy.max_attempts == -1 and policy.max_retry_duration.seconds == 0:
        r.problems.append(
            f"{r.path}: maxAttempts -1 with maxRetryDuration 0s retries a failing task for the whole"
            ' 31-day retention; bound one of them (e.g. maxRetryDuration: "86400s")'
        )
    return policy


def _service(s: _Reader, prefix: str | None, queues: list[QueueSettings], scale: _Scale) -> ServiceSettings:
    cpu = s.choice("cpu", "1", CPU_CHOICES)
    memory = s.matching("memory", "512Mi", _MEMORY, "is not a memory size such as 512Mi or 2Gi")
    _check_cpu_memory(s, cpu, memory)
    min_instances = s.integer("minInstances", 0, 0, 1000, "0 scales to zero")
    if min_instances > scale.max_instances:
        s.problems.append(f"service.minInstances: {min_instances} is above maxInstances {scale.max_instances}")
    return ServiceSettings(
        name=s.matching(
            "name",
            _derived(prefix, "-handler"),
            _SERVICE_NAME,
            "is not a Cloud Run service name (1-63 lowercase letters, digits, hyphens; starts with a letter)",
        ),
        image=s.matching("image", DEFAULT_IMAGE, re.compile(r"\S+"), "is not a container image reference"),
        manage_image=s.flag("manageImage", True),
        ingress=Ingress(s.choice("ingress", Ingress.INTERNAL_ONLY.value, tuple(i.value for i in Ingress))),
        timeout=_timeout(s, queues),
        min_instances=min_instances,
        max_instances=scale.max_instances,
        concurrency=scale.concurrency,
        cpu=cpu,
        memory=memory,
        service_account_id=s.matching(
            "serviceAccountId", _derived(prefix, "-run"), SERVICE_ACCOUNT_ID_PATTERN, SERVICE_ACCOUNT_ID_RULE
        ),
        env=_env(s),
    )


def _timeout(s: _Reader, queues: list[QueueSettings]) -> Duration:
    """The request timeout: by default the longest dispatch deadline, and never below it.

    A timeout below a queue's deadline makes Cloud Run end a request Cloud Tasks is still waiting for;
    the retry then runs beside the first attempt.
    """
    slowest = max(queues, key=lambda q: q.dispatch_deadline.seconds, default=None)
    default = slowest.dispatch_deadline if slowest else Duration.of(cloud_tasks.DEFAULT_DISPATCH_DEADLINE_S)
    timeout = s.duration("timeout", str(default), 1, cloud_run.MAX_REQUEST_TIMEOUT_S, "Cloud Run request timeout range")
    if slowest and timeout.seconds < slowest.dispatch_deadline.seconds:
        s.problems.append(
            f"service.timeout: {timeout} is below queues.{slowest.key}.dispatchDeadline {slowest.dispatch_deadline};"
            " Cloud Run would end requests Cloud Tasks still waits for"
        )
    return timeout


def _check_cpu_memory(s: _Reader, cpu: str, memory: str) -> None:
    match = _MEMORY.fullmatch(memory)
    if not match:
        return
    mib = int(match[1]) * (1024 if match[2] == "Gi" else 1)
    problem = _range_problem(mib, MIN_MEMORY_MIB, MAX_MEMORY_MIB, lambda m: f"{m}Mi" if m % 1024 else f"{m // 1024}Gi")
    if problem:
        s.problems.append(f"service.memory: {problem} (Cloud Run memory limits)")
        return
    for above_gib, min_cpu in MIN_CPU_FOR_MEMORY_GIB:
        if mib > above_gib * 1024 and int(cpu) < min_cpu:
            s.problems.append(
                f"service.cpu: {cpu} is too few for memory {memory}; Cloud Run needs at least"
                f" {min_cpu} CPUs above {above_gib}Gi"
            )
            break
    floor = MIN_MEMORY_GIB_FOR_CPU.get(cpu)
    if floor and mib < floor * 1024:
        s.problems.append(f"service.memory: {memory} is too little for {cpu} CPUs; Cloud Run needs at least {floor}Gi")


def _env(s: _Reader) -> tuple[tuple[str, str], ...]:
    raw = s._get("env", (dict,), "an object of NAME: value strings", {})
    env = []
    for name, value in raw.items():
        where = f"service.env.{shown_key(name)}"
        if not _ENV_NAME.fullmatch(name):
            s.problems.append(f"{where}: not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
        elif name in RESERVED_ENV:
            s.problems.append(f"{where}: reserved; Cloud Run or this stack sets it")
        elif not isinstance(value, str):
            s.problems.append(f"{where}: expected a string, got {_show(value)} (quote numbers and booleans)")
        else:
            env.append((name, value))
    return tuple(env)


def _capacity_warnings(queues: list[QueueSettings], capacity: int) -> list[str]:
    return [
        f"queues.{q.key}.rateLimits.maxConcurrentDispatches: {q.rate_limits.max_concurrent_dispatches}"
        f" is above what the service takes at once ({capacity} = maxInstances x concurrency);"
        " the excess is answered with 429 and retried with backoff"
        for q in queues
        if q.rate_limits.max_concurrent_dispatches > capacity
    ]


# --- the deployer project's config (deployer/, run once per Google Cloud project) ------------------

DEPLOYER_NAMESPACE = "cloudrun-tasks-deployer"
DEFAULT_POOL_ID = "github"
DEFAULT_PROVIDER_ID = "github"
DEFAULT_DEPLOY_ACCOUNT_ID = "pulumi-deployer"
DEFAULT_DEPLOY_BRANCH = "main"

DEPLOYER_KEYS = ("repository", "deployBranch", "poolId", "providerId", "serviceAccountId")

_OWNER = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}")
_REPO_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")
_IDENTITY_ID = re.compile(r"[a-z0-9-]{4,32}")
_BRANCH_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")

REPOSITORY_RULE = (
    "is not a GitHub repository in owner/repo form (owner: 1-39 letters, digits and single inner"
    " hyphens; repo: 1-100 letters, digits, '.', '_', '-')"
)
IDENTITY_ID_RULE = "must be 4-32 lowercase letters, digits and hyphens, not starting with 'gcp-' (reserved by Google)"
BRANCH_RULE = "is not a branch name (letters, digits, '.', '_', '-', and '/' between parts; no '..')"


def repository_problem(value: str) -> str | None:
    owner, slash, repo = value.partition("/")
    valid = slash and _OWNER.fullmatch(owner) and _REPO_NAME.fullmatch(repo) and repo not in (".", "..")
    return None if valid else f"{value!r} {REPOSITORY_RULE}"


def identity_id_problem(value: str) -> str | None:
    """A Workload Identity pool or provider id."""
    valid = _IDENTITY_ID.fullmatch(value) and not value.startswith("gcp-")
    return None if valid else f"{value!r} {IDENTITY_ID_RULE}"


def service_account_id_problem(value: str) -> str | None:
    return None if SERVICE_ACCOUNT_ID_PATTERN.fullmatch(value) else f"{value!r} {SERVICE_ACCOUNT_ID_RULE}"


def branch_problem(value: str) -> str | None:
    valid = all(_BRANCH_PART.fullmatch(part) for part in value.split("/")) and ".." not in value
    return None if valid else f"{value!r} {BRANCH_RULE}"


@dataclass(frozen=True)
class DeployerSettings:
    project: str
    repository: str  # "owner/repo", as GitHub spells it
    deploy_branch: str
    pool_id: str
    provider_id: str
    account_id: str


def load_deployer_settings(config: Mapping[str, str]) -> DeployerSettings:
    """The deployer project's settings from the raw config map the CLI passes, or SettingsError."""
    problems: list[str] = []
    project = config.get("gcp:project", "")
    if not project:
        problems.append("gcp:project: missing; set it with `pulumi config set gcp:project <project-id>`")
    elif not PROJECT_ID_PATTERN.fullmatch(project):
        problems.append(f"gcp:project: {project!r} is not a Google Cloud project id")
    values = {
        key.partition(":")[2]: value for key, value in config.items() if key.partition(":")[0] == DEPLOYER_NAMESPACE
    }
    for unknown in sorted(set(values) - set(DEPLOYER_KEYS)):
        problems.append(f"{shown_key(unknown)}: unknown key; allowed keys are {', '.join(DEPLOYER_KEYS)}")

    def checked(key: str, default: str, problem: Callable[[str], str | None]) -> str:
        value = values.get(key) or default
        found = problem(value)
        if found:
            problems.append(f"{key}: {found}")
        return value

    repository = values.get("repository", "")
    if not repository:
        problems.append("repository: missing; set it with `pulumi config set repository <owner>/<repo>`")
    settings = DeployerSettings(
        project=project,
        repository=checked("repository", "", repository_problem) if repository else "",
        deploy_branch=checked("deployBranch", DEFAULT_DEPLOY_BRANCH, branch_problem),
        pool_id=checked("poolId", DEFAULT_POOL_ID, identity_id_problem),
        provider_id=checked("providerId", DEFAULT_PROVIDER_ID, identity_id_problem),
        account_id=checked("serviceAccountId", DEFAULT_DEPLOY_ACCOUNT_ID, service_account_id_problem),
    )
    if problems:
        raise SettingsError(problems)
    return settings


def stack_config() -> dict[str, str]:
    """Every config key the CLI passed to this program, as raw strings (for `load_settings`).

    Pulumi's `Config` object reads one key at a time; a typo'd key would then pass silently, so the
    whole map is read from the runtime (set in-process or by the language host's PULUMI_CONFIG).
    """
    from pulumi.runtime import config as runtime_config

    return {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
