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
import unicodedata
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

from contract import cloud_run, cloud_tasks, dead_letters, handler_env
from contract import retry as retry_law

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

PUBLIC_MEMBERS = ("allUsers", "allAuthenticatedUsers", "principalSet://goog/public:all")
MEMBER_PREFIXES = ("user:", "serviceAccount:", "group:", "domain:", "principal:", "principalSet:")

# Patterns are text, compiled by `re` on first use and kept in its cache: most guard config a stack does not set
# (principals, VPC, secrets, the deployer's keys), and compiling all two dozen at import was a quarter of this
# module's import time, paid by every run of the program.
_DURATION = r"[0-9]+(\.[0-9]{1,9})?s"
_QUEUE_KEY = cloud_tasks.QUEUE_ID  # the key is part of the queue id
SERVICE_ACCOUNT_ID_PATTERN = r"[a-z](?:[-a-z0-9]{4,28}[a-z0-9])"
_SERVICE_NAME = r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?"
_NAME_PREFIX = r"[a-z](?:[-a-z0-9]*[a-z0-9])?"
PROJECT_ID_PATTERN = r"(?:[a-z][-a-z0-9.]*[a-z0-9]:)?[a-z][-a-z0-9]{4,28}[a-z0-9]"
_REGION = r"[a-z]+-[a-z]+[0-9]+"
_PATH = r"/[A-Za-z0-9\-._~/]*"
_ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_MEMORY = r"([1-9][0-9]*)(Mi|Gi)"

# --- IAM members, as the IAM "Principal identifiers" page writes them for allow policies
# (cloud.google.com/iam/docs/principal-identifiers).
_DNS_LABEL = r"[A-Za-z0-9](?:[-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
# Labels, dot-separated; the top-level one alphabetic or an IDN ("xn--") label. At most 253 characters.
_DNS_DOMAIN = rf"(?:{_DNS_LABEL}\.)+(?:[A-Za-z]{{2,63}}|xn--[-A-Za-z0-9]{{1,59}})"
_EMAIL = rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~.-]{{1,64}}@{_DNS_DOMAIN}"
_DOMAIN = _DNS_DOMAIN
# A GKE Kubernetes service account: serviceAccount:PROJECT_ID.svc.id.goog[NAMESPACE/KSA].
_KUBERNETES_SA = rf"{PROJECT_ID_PATTERN}\.svc\.id\.goog\[[a-z0-9-]{{1,63}}/[a-z0-9.-]{{1,253}}\]"
# A workload pool's id is 4-32 lowercase letters, digits and hyphens (GKE's is PROJECT_ID.svc.id.goog); a
# workforce pool's 6-63, starting with a letter. Pools live in "global" only.
_POOL = (
    r"(?:projects/[0-9]{1,19}/locations/global/workloadIdentityPools/"
    rf"(?:[a-z0-9-]{{4,32}}|{PROJECT_ID_PATTERN}\.svc\.id\.goog)"
    r"|locations/global/workforcePools/[a-z][-a-z0-9]{4,61}[a-z0-9])"
)
# Attribute values (google.subject and the rest) are at most 127 bytes; a subject may hold '/' and ':'.
_ATTRIBUTE_VALUE = r"\S{1,127}"
_PRINCIPAL = (
    rf"principal://iam\.googleapis\.com/{_POOL}/subject/{_ATTRIBUTE_VALUE}"
    rf"|principal://goog/subject/{_EMAIL}"
)
_PRINCIPAL_SET = (
    rf"principalSet://iam\.googleapis\.com/{_POOL}/"
    rf"(?:group/[^\s/]+|attribute\.[a-z0-9_]{{1,100}}/{_ATTRIBUTE_VALUE}|\*)"
)
PRINCIPAL_RULE = (
    "is not a principal identifier this stack grants to; use"
    " principal://iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/subject/SUBJECT,"
    " principal://iam.googleapis.com/locations/global/workforcePools/POOL/subject/SUBJECT,"
    " principal://goog/subject/EMAIL, or principalSet://iam.googleapis.com/<one of those pools>/"
    "group/GROUP, .../attribute.NAME/VALUE or .../*"
)
# principalSet://cloudresourcemanager.googleapis.com/{organizations,folders,projects}/N/type/ServiceAccount
# means every service account there, which may be anyone's; this stack grants to named identities and
# identity-pool sets only.
_RESOURCE_SET_PREFIX = "principalSet://cloudresourcemanager.googleapis.com/"
_RESOURCE_SET_KINDS = {"organizations": "an organization", "folders": "a folder", "projects": "a project"}


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
    """How fast a queue dispatches: tasks started a second, and attempts running at once."""

    max_dispatches_per_second: float
    max_concurrent_dispatches: int


@dataclass(frozen=True)
class RetryPolicy:
    """A queue's retry config: how many attempts for how long, and the backoff between them."""

    max_attempts: int
    max_retry_duration: Duration
    min_backoff: Duration
    max_backoff: Duration
    max_doublings: int

    def in_seconds(self) -> retry_law.RetryPolicy:
        """The same policy in float seconds, as the retry law (contract.retry) computes with it."""
        return retry_law.RetryPolicy(
            max_attempts=self.max_attempts,
            max_retry_duration=float(self.max_retry_duration.seconds),
            min_backoff=float(self.min_backoff.seconds),
            max_backoff=float(self.max_backoff.seconds),
            max_doublings=self.max_doublings,
        )


@dataclass(frozen=True)
class QueueSettings:
    """One entry of `queues`: where its tasks go, how fast, how they are retried, and who may create them."""

    key: str
    path: str
    dispatch_deadline: Duration
    queue_level_routing: bool
    log_sampling_ratio: float
    rate_limits: RateLimits
    retry: RetryPolicy
    enqueuers: tuple[str, ...]


@dataclass(frozen=True)
class ProbeSettings:
    """The timing of a Cloud Run startup or liveness probe, in whole seconds."""

    initial_delay_seconds: int
    period_seconds: int
    timeout_seconds: int
    failure_threshold: int


@dataclass(frozen=True)
class SecretEnv:
    """An env var whose value Cloud Run reads from Secret Manager at start-up."""

    name: str
    secret: str  # the secret id
    project: str | None  # None: the stack's project
    version: str  # "latest" or a version number


@dataclass(frozen=True)
class VpcEgress:
    """Direct VPC egress: the network interface the service sends through."""

    network: str | None
    subnetwork: str | None
    egress: str  # PRIVATE_RANGES_ONLY or ALL_TRAFFIC
    network_tags: tuple[str, ...]


@dataclass(frozen=True)
class ServiceSettings:
    """The task handler's Cloud Run service: its image, scaling, resources, probes, environment and network."""

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
    cpu_always_allocated: bool
    startup_cpu_boost: bool
    startup_probe: ProbeSettings
    liveness_probe: ProbeSettings
    secret_env: tuple[SecretEnv, ...]
    vpc: VpcEgress | None


@dataclass(frozen=True)
class MonitoringSettings:
    """Alert policies, their notification channels and a dashboard (components/monitoring.py)."""

    enabled: bool
    backlog_threshold: int  # tasks in one queue
    backlog_for: Duration
    failing_attempts_ratio: float  # share of a queue's attempts answered other than OK
    handler_error_ratio: float  # share of the service's requests answered 5xx
    latency_p99: Duration
    failing_for: Duration  # how long the failing-attempts, 5xx and latency conditions must hold
    notification_channels: tuple[str, ...]  # existing channels: projects/P/notificationChannels/N
    emails: tuple[str, ...]  # an email channel is created for each


@dataclass(frozen=True)
class Settings:
    """The stack's whole config, validated: everything the CloudRunTasks component is built from."""

    project: str
    location: str
    name_prefix: str
    deletion_protection: bool
    invoker_service_account_id: str
    service: ServiceSettings
    queues: tuple[QueueSettings, ...]
    default_queue: str
    monitoring: MonitoringSettings
    # Members who work the dead-letter queue (taskclient dead-letters): list, read, replay, discard.
    operators: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()  # sorted by key; the stack's own two among them
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
        fallback = Duration(Decimal(default[:-1]))
        given = self.value.get(key)
        if isinstance(given, int | float) and not isinstance(given, bool):
            self.problems.append(
                f'{self._at(key)}: {given} is a number; a duration is a string with an "s" suffix: write "{given}s"'
            )
            return fallback
        raw = self.text(key, default)
        if not re.fullmatch(_DURATION, raw):
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

    def matching(self, key: str, default: str | None, pattern: str, rule: str) -> str:
        """The value of `key`, checked against `pattern`. Unset, it is `default`: a constant or a name
        derived from valid parts, so valid by construction, or None when an invalid part (reported on
        its own) left nothing to derive."""
        if self.value.get(key) is None:
            return default or ""
        value = self.text(key, default or "")
        if not re.fullmatch(pattern, value):
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
    """Why `member` cannot be granted a role by this stack, or None when it can: each member kind is checked
    against its grammar on IAM's "Principal identifiers" page, so nothing rides along after a valid prefix."""
    if not isinstance(member, str):
        return f"expected an IAM member string, got {_show(member)}"
    if any(c.isspace() or not c.isprintable() for c in member):
        return f"{member!r} has whitespace or a control character; a member is one identifier without either"
    if member in PUBLIC_MEMBERS or member.split(":", 1)[-1] in PUBLIC_MEMBERS:
        return f"{member!r} is public; this stack never grants roles to {', '.join(PUBLIC_MEMBERS)}"
    if member.startswith(_RESOURCE_SET_PREFIX):
        kind = _RESOURCE_SET_KINDS.get(member[len(_RESOURCE_SET_PREFIX) :].split("/", 1)[0], "a resource")
        return (
            f"{member!r} names every service account of {kind}; this stack grants roles to named identities"
            " and identity-pool sets only (list the service accounts instead)"
        )
    prefix = next((p for p in MEMBER_PREFIXES if member.startswith(p)), None)
    if prefix is None:
        return (
            f"{member!r} has no member type prefix; use one of "
            f"{', '.join(MEMBER_PREFIXES)} (e.g. serviceAccount:api@my-project.iam.gserviceaccount.com)"
        )
    identity = member[len(prefix) :]
    if prefix in ("user:", "group:") and not re.fullmatch(_EMAIL, identity):
        return f"{member!r}: {prefix[:-1]} members need an email address after the prefix"
    if prefix == "serviceAccount:" and not (re.fullmatch(_EMAIL, identity) or re.fullmatch(_KUBERNETES_SA, identity)):
        return (
            f"{member!r}: serviceAccount members need an email address after the prefix"
            " (or a Kubernetes service account, PROJECT_ID.svc.id.goog[NAMESPACE/NAME])"
        )
    if not identity:
        return f"{member!r}: nothing after the {prefix!r} prefix"
    if prefix == "domain:" and not (re.fullmatch(_DOMAIN, identity) and len(identity) <= 253):
        return f"{member!r}: domain members need a DNS domain after the prefix, such as example.com"
    if prefix == "principal:" and not re.fullmatch(_PRINCIPAL, member):
        return f"{member!r} {PRINCIPAL_RULE}"
    if prefix == "principalSet:" and not re.fullmatch(_PRINCIPAL_SET, member):
        return f"{member!r} {PRINCIPAL_RULE}"
    return None


# --- the config schema --------------------------------------------------------------------------

PROJECT_KEYS = (
    "namePrefix",
    "deletionProtection",
    "invokerServiceAccountId",
    "enqueuers",
    "operators",
    "defaultQueue",
    "labels",
    "service",
    "queues",
    "monitoring",
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
    "secretEnv",
    "cpuAlwaysAllocated",
    "startupCpuBoost",
    "probes",
    "vpc",
    "idempotencyRedisUrlSecret",
)
PROBES_KEYS = ("startup", "liveness")
PROBE_KEYS = ("initialDelaySeconds", "periodSeconds", "timeoutSeconds", "failureThreshold")
VPC_KEYS = ("network", "subnetwork", "egress", "networkTags")
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
MONITORING_KEYS = (
    "enabled",
    "backlogThreshold",
    "backlogFor",
    "failingAttemptsRatio",
    "handlerErrorRatio",
    "latencyP99",
    "failingFor",
    "notificationChannels",
    "emails",
)

# A public sample that answers 200 to any request, so a first `pulumi up` works end to end.
DEFAULT_IMAGE = "us-docker.pkg.dev/cloudrun/container/hello"
# Env vars Cloud Run sets itself, or that the component sets for the handler: never user-supplied.
RESERVED_ENV = (*handler_env.CLOUD_RUN_SET, *handler_env.STACK_SET)
# Nor any name the stack owns (handler_env.STACK_PREFIX: the handler reads them; one would switch token checks
# off, another point them at someone else's signing keys), nor these:
# - loader variables: LD_* for the dynamic linker (LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT) and PYTHON* for the
#   interpreter (PYTHONPATH, PYTHONHOME, PYTHONSTARTUP, ...) change what code the container runs; linker and
#   interpreter options belong in the image.
# - credential and trust variables, which change who the service is or whom it trusts: ADC's key file
#   (GOOGLE_APPLICATION_CREDENTIALS; the runtime account is the service's identity), gcloud's settings
#   (CLOUDSDK_*), the metadata server google-auth takes tokens from (GCE_METADATA_HOST, GCE_METADATA_IP,
#   GCE_METADATA_ROOT), and the CA bundles of OpenSSL, requests, curl and gRPC.
# Proxy variables stay allowed: egress through a proxy is a real need, and a proxy cannot forge the
# Google-signed tokens the handler checks (set NO_PROXY=metadata.google.internal,169.254.169.254 with them).
LOADER_ENV_PREFIXES = ("LD_", "PYTHON")
TRUST_ENV_PREFIXES = ("CLOUDSDK_",)
TRUST_ENV = (
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GCE_METADATA_HOST",
    "GCE_METADATA_IP",
    "GCE_METADATA_ROOT",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
)

# Direct VPC egress (Cloud Run "Direct VPC egress with a VPC network"): what leaves through the network.
VPC_EGRESS_CHOICES = ("PRIVATE_RANGES_ONLY", "ALL_TRAFFIC")
_NETWORK_NAME = r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?"  # RFC 1035, as every Compute Engine name
_NETWORK = rf"{_NETWORK_NAME}|projects/{PROJECT_ID_PATTERN}/global/networks/{_NETWORK_NAME}"
_SUBNETWORK = (
    rf"{_NETWORK_NAME}"
    rf"|projects/{PROJECT_ID_PATTERN}/regions/(?P<region>[a-z]+-[a-z]+[0-9]+)/subnetworks/{_NETWORK_NAME}"
)
_NETWORK_TAG = _NETWORK_NAME

# Secret Manager: a secret id is 1-255 letters, digits, '-' and '_'; a version "latest" or a number from 1.
_SECRET_ID = r"[A-Za-z0-9_-]{1,255}"
_SECRET_VERSION = r"latest|[1-9][0-9]{0,18}"
_SECRET_SHORT = rf"(?P<secret>{_SECRET_ID})(?::(?P<version>{_SECRET_VERSION}))?"
_SECRET_PATH = (
    rf"projects/(?P<project>{PROJECT_ID_PATTERN}|[0-9]{{1,19}})/secrets/(?P<secret>{_SECRET_ID})"
    rf"(?:/versions/(?P<version>{_SECRET_VERSION}))?"
)
SECRET_RULE = (
    "is not a Secret Manager secret: SECRET_ID, SECRET_ID:VERSION, projects/PROJECT/secrets/SECRET_ID or"
    " projects/PROJECT/secrets/SECRET_ID/versions/VERSION (an id is 1-255 letters, digits, '-', '_';"
    " a version is latest or a number from 1)"
)

# Labels (Resource Manager "Requirements for labels"): at most 64 on a resource; keys 1-63 and values 0-63
# characters of lowercase letters, international characters, digits, '_' and '-'; a key starts with a
# lowercase letter or an international character.
MAX_LABELS = 64
MAX_LABEL_LENGTH = 63
MANAGED_BY_LABEL = "managed-by"
STACK_LABEL = "stack"
MANAGED_BY = "cloudrun-tasks"


def load_settings(config: Mapping[str, str], stack: str, *, secret_keys: Collection[str] = ()) -> Settings:
    """Typed settings from the raw config map the CLI passes, or SettingsError with every problem.

    `secret_keys` are the full config keys the CLI marks secret (`secret_config_keys()`); a value under one
    of them may not end up in plain text on the service (env values, labels).
    """
    problems: list[str] = []
    project = _gcp_key(config, "project", PROJECT_ID_PATTERN, "is not a Google Cloud project id", problems)
    location = _gcp_key(config, "region", _REGION, "is not a region such as europe-west1", problems)

    top = _Reader(_project_values(config), "", problems, PROJECT_KEYS)
    prefix = _name_prefix(top, stack)
    deletion_protection = top.flag("deletionProtection", True)
    enqueuers = top.members("enqueuers")
    operators = top.members("operators")
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
    service = _service(service_reader, prefix, queues, scale, location)
    labels = _labels(top, stack)
    _check_secret_sources(secret_keys, service, labels, problems)
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
    monitoring = _monitoring(top.child("monitoring", MONITORING_KEYS), service.timeout)
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
        monitoring=monitoring,
        operators=operators,
        labels=labels,
        warnings=(*_capacity_warnings(queues, scale.capacity), *_final_attempt_warnings(queues)),
    )


def _check_secret_sources(
    secret_keys: Collection[str], service: ServiceSettings, labels: tuple[tuple[str, str], ...], problems: list[str]
) -> None:
    """`pulumi config set --secret --path service.env.X` marks the whole `service` key secret: its env values
    would then be stored in plain text on the Cloud Run revision, where anyone who can view the service reads
    them. Secrets belong in Secret Manager, named in service.secretEnv."""
    if f"{NAMESPACE}:service" in secret_keys and service.env:
        problems.append(
            f"service.env: {NAMESPACE}:service is a secret config value, and its {len(service.env)} env"
            " value(s) would be stored in plain text on the Cloud Run service; put the secret in Secret Manager"
            " and name it in service.secretEnv, and keep service free of secret config values"
        )
    user_labels = [key for key, _ in labels if key not in (MANAGED_BY_LABEL, STACK_LABEL)]
    if f"{NAMESPACE}:labels" in secret_keys and user_labels:
        problems.append(
            f"labels: {NAMESPACE}:labels is a secret config value, and labels are plain text on every"
            " resource they mark; set them without --secret"
        )


SERVICE_ACCOUNT_ID_RULE = (
    "is not a service account id (6-30 characters: lowercase letters, digits, hyphens;"
    " starts with a letter, ends with a letter or digit)"
)


def _gcp_key(config: Mapping[str, str], key: str, pattern: str, rule: str, problems: list[str]) -> str:
    value = config.get(f"gcp:{key}", "")
    if not value:
        problems.append(f"gcp:{key}: missing; set it with `pulumi config set gcp:{key} <value>`")
    elif not re.fullmatch(pattern, value):
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
    if re.fullmatch(_NAME_PREFIX, prefix) and MIN_NAME_PREFIX_LENGTH <= len(prefix) <= MAX_NAME_PREFIX_LENGTH:
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
    """Instances and requests per instance, read first: their capacity caps the default maxConcurrentDispatches."""

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
        elif key == dead_letters.QUEUE_KEY:
            problems.append(
                f"queues.{key}: the queue name {key!r} is reserved for the stack's own dead-letter queue"
                f" (<namePrefix>-{key}-<6 hex>, which the stack always creates); choose another name"
            )
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
        -math.inf,
        cloud_tasks.MAX_DISPATCHES_PER_SECOND,
        "Cloud Tasks limit per queue",
    )
    at, lowest = rates._at("maxDispatchesPerSecond"), cloud_tasks.MIN_DISPATCHES_PER_SECOND_TEXT
    if rate == 0:
        rates.problems.append(f"{at}: 0 would never dispatch; the slowest rate is {lowest} (pause a queue instead)")
    elif rate < cloud_tasks.MIN_DISPATCHES_PER_SECOND:
        rates.problems.append(f"{at}: {_number(rate)} is below the minimum of {lowest}; pause a queue instead")
    return rate


def _retry(r: _Reader) -> RetryPolicy:
    # Defaults are Cloud Tasks' own, so behaviour matches Google's documentation.
    retention = cloud_tasks.TASK_RETENTION_S
    problems_before = len(r.problems)
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
    if len(r.problems) == problems_before:
        _check_retry_window(r, policy)
    return policy


def _check_retry_window(r: _Reader, policy: RetryPolicy) -> None:
    """A queue must keep retrying for as long as a new IAM binding can take to apply: until the invoker's
    run.invoker grant has, Cloud Run answers 401/403, and a queue whose retries end sooner drops the first
    tasks after a first deploy."""
    window = retry_law.retry_window(policy.in_seconds())
    least = _seconds(cloud_run.IAM_PROPAGATION_S)
    if window < cloud_run.IAM_PROPAGATION_S:
        r.problems.append(
            f"{r.path}: a task that keeps failing is retried for {_seconds(round(window, 3))} after its first"
            f" attempt, less than the {least} new IAM bindings can take to apply (IAM access change propagation),"
            " so the first tasks after a first deploy would be refused (401/403) and dropped; widen the window to"
            f' at least {least}: more maxAttempts, a higher maxBackoff, or maxRetryDuration: "{least}"'
        )


def _service(
    s: _Reader, prefix: str | None, queues: list[QueueSettings], scale: _Scale, location: str
) -> ServiceSettings:
    cpu = s.choice("cpu", "1", CPU_CHOICES)
    memory = s.matching("memory", "512Mi", _MEMORY, "is not a memory size such as 512Mi or 2Gi")
    _check_cpu_memory(s, cpu, memory)
    min_instances = s.integer("minInstances", 0, 0, 1000, "0 scales to zero")
    if min_instances > scale.max_instances:
        s.problems.append(f"service.minInstances: {min_instances} is above maxInstances {scale.max_instances}")
    env = _env(s)
    probes = s.child("probes", PROBES_KEYS)
    return ServiceSettings(
        name=s.matching(
            "name",
            _derived(prefix, "-handler"),
            _SERVICE_NAME,
            "is not a Cloud Run service name (1-63 lowercase letters, digits, hyphens; starts with a letter)",
        ),
        image=s.matching("image", DEFAULT_IMAGE, r"\S+", "is not a container image reference"),
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
        env=env,
        # CPU only while a request runs (Cloud Run's request-based billing): tasks are requests, so nothing
        # runs between them, and an idle instance costs nothing.
        cpu_always_allocated=s.flag("cpuAlwaysAllocated", False),
        # More CPU while an instance starts shortens cold starts, which a burst of tasks meets first.
        startup_cpu_boost=s.flag("startupCpuBoost", True),
        startup_probe=_probe(probes.child("startup", PROBE_KEYS), cloud_run.MAX_STARTUP_PROBE_S, startup=True),
        liveness_probe=_probe(probes.child("liveness", PROBE_KEYS), cloud_run.MAX_LIVENESS_PROBE_S, startup=False),
        secret_env=(*_secret_env(s, {name for name, _ in env}), *_redis_url_secret(s)),
        vpc=_vpc(s, location),
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
    match = re.fullmatch(_MEMORY, memory)
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
        problem = env_name_problem(name)
        if problem:
            s.problems.append(f"{where}: {problem}")
        elif not isinstance(value, str):
            s.problems.append(f"{where}: expected a string, got {_show(value)} (quote numbers and booleans)")
        elif control := _control_character(value):
            s.problems.append(f"{where}: {control}")
        else:
            env.append((name, value))
    return tuple(env)


def env_name_problem(name: str) -> str | None:
    """Why `name` may not be set from service.env or service.secretEnv, or None when it may."""
    if not re.fullmatch(_ENV_NAME, name):
        return "not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)"
    if name in RESERVED_ENV:
        return "reserved; Cloud Run or this stack sets it"
    if name.startswith(handler_env.STACK_PREFIX):
        return f"the stack owns every {handler_env.STACK_PREFIX}* name (the handler reads them); choose another name"
    if name.startswith(LOADER_ENV_PREFIXES):
        return (
            f"{name} is a loader variable ({', '.join(p + '*' for p in LOADER_ENV_PREFIXES)}), which changes what"
            " code the container runs; set linker and interpreter options in the image"
        )
    if name in TRUST_ENV or name.startswith(TRUST_ENV_PREFIXES):
        return (
            f"{name} sets the service's credentials or the certificates it trusts; the runtime service"
            " account is the service's identity, and the image's CA store its trust"
        )
    return None


def _control_character(value: str) -> str | None:
    """A value with a C0 control character or DEL: a line break or NUL in an env value splits or truncates it
    on its way into the container. The value itself is not shown (it may be meant to be private)."""
    for position, char in enumerate(value):
        if ord(char) < 0x20 or ord(char) == 0x7F:
            return (
                f"the value has control character U+{ord(char):04X} at position {position}; values are text"
                " without C0 control characters or DEL"
            )
    return None


def _secret_env(s: _Reader, plain: set[str]) -> tuple[SecretEnv, ...]:
    raw = s._get("secretEnv", (dict,), "an object of NAME: secret strings", {})
    found = []
    for name, reference in raw.items():
        where = f"service.secretEnv.{shown_key(name)}"
        problem = env_name_problem(name)
        if problem:
            s.problems.append(f"{where}: {problem}")
        elif name in plain:
            s.problems.append(f"{where}: also set in service.env; a variable takes its value from one of the two")
        elif not isinstance(reference, str):
            s.problems.append(f"{where}: expected a string naming a secret, got {_show(reference)}")
        elif match := re.fullmatch(_SECRET_SHORT, reference) or re.fullmatch(_SECRET_PATH, reference):
            groups = match.groupdict()
            found.append(
                SecretEnv(
                    name=name,
                    secret=groups["secret"],
                    project=groups.get("project"),
                    # Cloud Run resolves "latest" when an instance starts: a new version reaches new instances.
                    version=groups["version"] or "latest",
                )
            )
        else:
            s.problems.append(f"{where}: {reference!r} {SECRET_RULE}")
    return tuple(found)


def _redis_url_secret(s: _Reader) -> tuple[SecretEnv, ...]:
    """The handler's shared idempotency store: its URL (which may hold a password) from Secret Manager, as
    the stack-owned TASKS_IDEMPOTENCY_REDIS_URL. Unset: the in-memory store."""
    reference = s.text("idempotencyRedisUrlSecret", "")
    if not reference:
        return ()
    match = re.fullmatch(_SECRET_SHORT, reference) or re.fullmatch(_SECRET_PATH, reference)
    if match is None:
        s.problems.append(f"service.idempotencyRedisUrlSecret: {reference!r} {SECRET_RULE}")
        return ()
    groups = match.groupdict()
    return (
        SecretEnv(
            name=handler_env.IDEMPOTENCY_REDIS_URL,
            secret=groups["secret"],
            project=groups.get("project"),
            version=groups["version"] or "latest",
        ),
    )


def _probe(p: _Reader, longest: int, *, startup: bool) -> ProbeSettings:
    """A probe's timing. Defaults are Cloud Run's own for a probe that sets none: every 10 s, 1 s to answer,
    3 failures in a row, from the start (a startup budget of 30 s, ample for the handler's image)."""
    limit = f"Cloud Run {'startup' if startup else 'liveness'} probe limit"
    probe = ProbeSettings(
        initial_delay_seconds=p.integer(
            "initialDelaySeconds", cloud_run.DEFAULT_PROBE_INITIAL_DELAY_S, 0, longest, limit
        ),
        period_seconds=p.integer("periodSeconds", cloud_run.DEFAULT_PROBE_PERIOD_S, 1, longest, limit),
        timeout_seconds=p.integer("timeoutSeconds", cloud_run.DEFAULT_PROBE_TIMEOUT_S, 1, longest, limit),
        failure_threshold=p.integer(
            "failureThreshold", cloud_run.DEFAULT_PROBE_FAILURE_THRESHOLD, 1, cloud_tasks.MAX_INT32, "at least 1"
        ),
    )
    if probe.timeout_seconds > probe.period_seconds:
        p.problems.append(
            f"{p.path}.timeoutSeconds: {probe.timeout_seconds} is above periodSeconds {probe.period_seconds};"
            " Cloud Run needs a probe's period to be at least its timeout"
        )
    budget = probe.initial_delay_seconds + probe.period_seconds * probe.failure_threshold
    if startup and budget > longest:
        p.problems.append(
            f"{p.path}: initialDelaySeconds + periodSeconds x failureThreshold is {budget}s, above the {longest}s"
            " Cloud Run gives a container to start; lower the period or the threshold"
        )
    return probe


def _vpc(s: _Reader, location: str) -> VpcEgress | None:
    if s.value.get("vpc") is None:
        return None
    v = s.child("vpc", VPC_KEYS)
    network = v.matching("network", None, _NETWORK, "is not a VPC network: a name or projects/P/global/networks/N")
    subnetwork = v.matching(
        "subnetwork", None, _SUBNETWORK, "is not a subnetwork: a name or projects/P/regions/R/subnetworks/S"
    )
    if isinstance(s.value.get("vpc"), Mapping) and v.value.get("network") is None and v.value.get("subnetwork") is None:
        v.problems.append(f"{v.path}: set network, subnetwork or both (the interface Direct VPC egress sends through)")
    in_region = re.fullmatch(_SUBNETWORK, subnetwork)
    region = in_region["region"] if in_region else None
    if region and location and region != location:
        v.problems.append(
            f"{v.path}.subnetwork: {subnetwork!r} is in {region}; Direct VPC egress needs a subnetwork in the"
            f" service's region, {location}"
        )
    return VpcEgress(
        network=network or None,
        subnetwork=subnetwork or None,
        # Only private addresses go through the network; public ones keep Cloud Run's own, faster path.
        egress=v.choice("egress", "PRIVATE_RANGES_ONLY", VPC_EGRESS_CHOICES),
        network_tags=_network_tags(v),
    )


def _network_tags(v: _Reader) -> tuple[str, ...]:
    raw = v._get("networkTags", (list,), "a list of network tags", [])
    tags = []
    for i, tag in enumerate(raw):
        if isinstance(tag, str) and re.fullmatch(_NETWORK_TAG, tag):
            tags.append(tag)
        else:
            v.problems.append(
                f"{v.path}.networkTags[{i}]: {_show(tag)} is not a network tag (1-63 lowercase letters, digits"
                " and hyphens; starts with a letter, ends with a letter or digit)"
            )
    return tuple(dict.fromkeys(tags))


def _labels(top: _Reader, stack: str) -> tuple[tuple[str, str], ...]:
    """The user's labels and the stack's own two (who manages a resource, and which stack), sorted by key."""
    stack_value = re.sub(r"[^a-z0-9_-]", "-", stack.lower())[:MAX_LABEL_LENGTH]
    own = {MANAGED_BY_LABEL: MANAGED_BY, STACK_LABEL: stack_value}
    raw = top._get("labels", (dict,), "an object of key: value strings", {})
    labels = dict(own)
    for key, value in raw.items():
        where = f"labels.{shown_key(key)}"
        if key in own:
            top.problems.append(f"{where}: set by the stack ({key}: {own[key]}); choose another key")
        elif problem := _label_problem(key, is_key=True):
            top.problems.append(f"{where}: the key {problem}")
        elif not isinstance(value, str):
            top.problems.append(f"{where}: expected a string, got {_show(value)} (quote numbers and booleans)")
        elif problem := _label_problem(value, is_key=False):
            top.problems.append(f"{where}: the value {problem}")
        else:
            labels[key] = value
    if len(raw) + len(own) > MAX_LABELS:
        top.problems.append(
            f"labels: {len(raw)} labels and the stack's {len(own)} ({', '.join(own)}) are more than the"
            f" {MAX_LABELS} Google allows on a resource"
        )
    return tuple(sorted(labels.items()))


def _label_problem(text: str, *, is_key: bool) -> str | None:
    shortest = 1 if is_key else 0
    starts = "; starts with a lowercase letter or an international character" if is_key else ""
    rule = f"{shortest}-{MAX_LABEL_LENGTH} lowercase letters, international characters, digits, '_' and '-'{starts}"
    if not shortest <= len(text) <= MAX_LABEL_LENGTH or not all(_label_character(c) for c in text):
        return f"{text!r} is not a label {'key' if is_key else 'value'} ({rule})"
    if is_key and unicodedata.category(text[0]) not in ("Ll", "Lo"):
        return f"{text!r} is not a label key ({rule})"
    return None


def _label_character(char: str) -> bool:
    # Ll: lowercase letters (a-z, é, ß). Google's "international characters": letters without case (Lo: CJK,
    # Arabic), modifier letters (Lm: the Japanese long-vowel mark) and the combining marks of scripts such as
    # Devanagari (Mn, Mc). Uppercase letters are never allowed.
    return char in "_-" or ("0" <= char <= "9") or unicodedata.category(char) in ("Ll", "Lo", "Lm", "Mn", "Mc")


def _capacity_warnings(queues: list[QueueSettings], capacity: int) -> list[str]:
    return [
        f"queues.{q.key}.rateLimits.maxConcurrentDispatches: {q.rate_limits.max_concurrent_dispatches}"
        f" is above what the service takes at once ({capacity} = maxInstances x concurrency);"
        " the excess is answered with 429 and retried with backoff"
        for q in queues
        if q.rate_limits.max_concurrent_dispatches > capacity
    ]


def _final_attempt_warnings(queues: list[QueueSettings]) -> list[str]:
    """Queues on which the handler may not know whether a failing attempt is the last one.

    Cloud Tasks stops retrying only when both limits are used up (contract.retry), and sends no header with
    the first attempt's time. The attempt count is exact; the time since the first attempt is known only
    from below (the backoff schedule) unless the producer set X-Tasks-Not-Before. So a queue with a
    maxRetryDuration that can outlast its attempt limit leaves the handler guessing: it then records a
    provisional dead letter and asks for a retry, which loses no task but leaves a record to sort out.
    """
    warnings = []
    for q in queues:
        policy = q.retry.in_seconds()
        if policy.max_retry_duration <= cloud_tasks.UNLIMITED_RETRY_DURATION_S:
            continue  # decided by attempts alone: the count is exact
        where = f"queues.{q.key}.retry.maxRetryDuration: {q.retry.max_retry_duration}"
        if policy.max_attempts == cloud_tasks.UNLIMITED_ATTEMPTS:
            when = "with maxAttempts -1 (unlimited) ends retries by time alone: until"
            fix = "set maxAttempts to a number and maxRetryDuration to 0s to decide by attempts alone"
        else:
            last = retry_law.time_of_attempt(policy, policy.max_attempts)
            if last >= policy.max_retry_duration:
                continue  # used up by the time of the last attempt by count: the count decides
            when = (
                f"outlasts maxAttempts {policy.max_attempts} (attempt {policy.max_attempts} may come"
                f" {_seconds(round(last, 3))} after the first): from attempt {policy.max_attempts} on, until"
            )
            fix = "set maxRetryDuration to 0s to decide by attempts alone"
        warnings.append(
            f"{where} {when} the backoff schedule alone passes it, the handler cannot tell whether a failing"
            " attempt is the last one (Cloud Tasks sends no header with the first attempt's time) except for"
            f" tasks whose producer set {dead_letters.HEADER_NOT_BEFORE} (taskclient does; gcloud does not);"
            " it then records a provisional dead letter and asks for a retry, losing nothing but leaving a"
            f" record to sort out; {fix}, or create this queue's tasks with taskclient"
        )
    return warnings


# --- monitoring: alert thresholds and where alerts go ----------------------------------------------

# Cloud Monitoring accepts a condition's duration only as "a multiple of a minute--e.g., 0, 60, 120, or 300
# seconds" (AlertPolicy conditionThreshold.duration); longer than a day would page nobody in time.
ALERT_DURATION_STEP_S = 60
MAX_ALERT_DURATION_S = 86400
# At Cloud Tasks' default rate (500 dispatches a second) a draining queue clears 1000 tasks in 2 s, so 1000
# still waiting after backlogFor means dispatch has stalled or the handler refuses work. Raise it for a queue
# that is slow by design.
DEFAULT_BACKLOG_THRESHOLD = 1000
MAX_BACKLOG_THRESHOLD = 1_000_000_000
# Five minutes rides out a producer's burst and a cold start, and is the shortest a person acts on.
DEFAULT_ALERT_FOR = "300s"
# A deploy or a cold start makes a few attempts fail (429, 503) and Cloud Tasks retries them; one in ten for
# five minutes is an outage, not noise.
DEFAULT_FAILING_ATTEMPTS_RATIO = 0.1
# The handler answers 5xx only for failures it wants retried; one request in twenty is a broken dependency.
DEFAULT_HANDLER_ERROR_RATIO = 0.05
# At service.timeout Cloud Run ends a request and Cloud Tasks retries it: a p99 at 80% of it means the
# slowest tasks are about to be cut off.
DEFAULT_LATENCY_SHARE_OF_TIMEOUT = Decimal("0.8")
_NOTIFICATION_CHANNEL = rf"projects/(?:{PROJECT_ID_PATTERN}|[0-9]{{1,19}})/notificationChannels/[0-9]{{1,20}}"
NOTIFICATION_CHANNEL_RULE = (
    "is not a notification channel id (projects/PROJECT/notificationChannels/NUMBER, as"
    " `gcloud beta monitoring channels list --format='value(name)'` prints it)"
)


def _monitoring(m: _Reader, timeout: Duration) -> MonitoringSettings:
    latency_default = Duration((timeout.seconds * DEFAULT_LATENCY_SHARE_OF_TIMEOUT).quantize(Decimal("0.001")))
    latency = m.duration(
        "latencyP99",
        str(latency_default),
        0,
        float(timeout.seconds),
        "at most service.timeout, where Cloud Run ends a request",
    )
    if latency.seconds == 0:
        m.problems.append(f"{m._at('latencyP99')}: 0s would alert on every request; use a latency above 0s")
    return MonitoringSettings(
        enabled=m.flag("enabled", True),
        backlog_threshold=m.integer(
            "backlogThreshold", DEFAULT_BACKLOG_THRESHOLD, 1, MAX_BACKLOG_THRESHOLD, "tasks waiting in one queue"
        ),
        backlog_for=_alert_duration(m, "backlogFor"),
        failing_attempts_ratio=_ratio(m, "failingAttemptsRatio", DEFAULT_FAILING_ATTEMPTS_RATIO),
        handler_error_ratio=_ratio(m, "handlerErrorRatio", DEFAULT_HANDLER_ERROR_RATIO),
        latency_p99=latency,
        failing_for=_alert_duration(m, "failingFor"),
        notification_channels=_strings(m, "notificationChannels", _NOTIFICATION_CHANNEL, NOTIFICATION_CHANNEL_RULE),
        emails=_strings(m, "emails", _EMAIL, "is not an email address"),
    )


def _ratio(m: _Reader, key: str, default: float) -> float:
    ratio = m.number(key, default, -math.inf, 1.0, "a share of 1")
    if ratio <= 0:
        m.problems.append(f"{m._at(key)}: {_number(ratio)} would alert on every sample; use a share above 0, up to 1")
        return default
    return ratio


def _alert_duration(m: _Reader, key: str) -> Duration:
    value = m.duration(key, DEFAULT_ALERT_FOR, 0, MAX_ALERT_DURATION_S, "Cloud Monitoring condition duration")
    if value.seconds % ALERT_DURATION_STEP_S:
        m.problems.append(
            f"{m._at(key)}: {value} is not a whole number of minutes; Cloud Monitoring accepts a condition"
            ' duration in steps of 60s (e.g. "60s", "300s")'
        )
        return Duration(Decimal(DEFAULT_ALERT_FOR[:-1]))
    return value


def _strings(m: _Reader, key: str, pattern: str, rule: str) -> tuple[str, ...]:
    raw = m._get(key, (list,), "a list of strings", [])
    found = []
    for i, item in enumerate(raw):
        if not isinstance(item, str):
            m.problems.append(f"{m._at(key)}[{i}]: expected a string, got {_show(item)}")
        elif not re.fullmatch(pattern, item):
            m.problems.append(f"{m._at(key)}[{i}]: {item!r} {rule}")
        else:
            found.append(item)
    return tuple(dict.fromkeys(found))


# --- the deployer project's config (deployer/, run once per Google Cloud project) ------------------

DEPLOYER_NAMESPACE = "cloudrun-tasks-deployer"
DEFAULT_POOL_ID = "github"
DEFAULT_PROVIDER_ID = "github"
DEFAULT_DEPLOY_ACCOUNT_ID = "pulumi-deployer"
DEFAULT_PREVIEW_ACCOUNT_ID = "pulumi-previewer"
DEFAULT_DEPLOY_BRANCH = "main"
# deployEnvironments has no default: which GitHub environments may deploy to a project is a decision
# per project (dev's deployer must not accept prod's jobs, nor prod's dev's), never a guess.

DEPLOYER_KEYS = (
    "repository",
    "deployBranch",
    "deployEnvironments",
    "poolId",
    "providerId",
    "serviceAccountId",
    "previewServiceAccountId",
)

_OWNER = r"[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}"
_REPO_NAME = r"[A-Za-z0-9._-]{1,100}"
_IDENTITY_ID = r"[a-z0-9-]{4,32}"
_BRANCH_PART = r"[A-Za-z0-9_][A-Za-z0-9._-]*"
# Narrower than GitHub's own rule (any name up to 255 characters): the name ends a principalSet member
# after a ':' separator (components/deployer.py), so it keeps to characters with no meaning there.
_ENVIRONMENT = r"[A-Za-z0-9_.-]{1,255}"

REPOSITORY_RULE = (
    "is not a GitHub repository in owner/repo form (owner: 1-39 letters, digits and single inner"
    " hyphens; repo: 1-100 letters, digits, '.', '_', '-')"
)
IDENTITY_ID_RULE = "must be 4-32 lowercase letters, digits and hyphens, not starting with 'gcp-' (reserved by Google)"
BRANCH_RULE = "is not a branch name (letters, digits, '.', '_', '-', and '/' between parts; no '..')"
ENVIRONMENT_RULE = (
    "is not a GitHub environment name this stack accepts (1-255 letters, digits, '.', '_', '-'; spelled"
    " exactly as the workflow's `environment:` names it)"
)
ENVIRONMENTS_HINT = "set it with `pulumi config set --path 'deployEnvironments[0]' <environment>`"


def repository_problem(value: str) -> str | None:
    owner, slash, repo = value.partition("/")
    valid = slash and re.fullmatch(_OWNER, owner) and re.fullmatch(_REPO_NAME, repo) and repo not in (".", "..")
    return None if valid else f"{value!r} {REPOSITORY_RULE}"


def identity_id_problem(value: str) -> str | None:
    """A Workload Identity pool or provider id."""
    valid = re.fullmatch(_IDENTITY_ID, value) and not value.startswith("gcp-")
    return None if valid else f"{value!r} {IDENTITY_ID_RULE}"


def service_account_id_problem(value: str) -> str | None:
    return None if re.fullmatch(SERVICE_ACCOUNT_ID_PATTERN, value) else f"{value!r} {SERVICE_ACCOUNT_ID_RULE}"


def branch_problem(value: str) -> str | None:
    valid = all(re.fullmatch(_BRANCH_PART, part) for part in value.split("/")) and ".." not in value
    return None if valid else f"{value!r} {BRANCH_RULE}"


def environment_problem(value: str) -> str | None:
    return None if re.fullmatch(_ENVIRONMENT, value) else f"{value!r} {ENVIRONMENT_RULE}"


def deploy_environments_problems(raw: str | None) -> list[str]:
    """Every problem with the deployEnvironments value as the CLI passes it (JSON text of a list)."""
    key = "deployEnvironments"
    if raw is None:
        return [f"{key}: missing; the GitHub environments whose jobs may deploy to this project; {ENVIRONMENTS_HINT}"]
    value = _decode(raw)
    if not isinstance(value, list) or not value:
        return [
            f"{key}: expected a non-empty list of GitHub environment names, got {_show(value)}; {ENVIRONMENTS_HINT}"
        ]
    problems: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            problems.append(f"{key}[{index}]: expected a GitHub environment name, got {_show(item)}")
        elif (found := environment_problem(item)) is not None:
            problems.append(f"{key}[{index}]: {found}")
        elif item in value[:index]:
            problems.append(f"{key}[{index}]: {item!r} is listed twice")
    return problems


@dataclass(frozen=True)
class DeployerSettings:
    """The deployer project's config, validated (`load_deployer_settings`)."""

    project: str
    repository: str  # "owner/repo", as GitHub spells it
    deploy_branch: str
    # Jobs in these GitHub environments, on deploy_branch, may impersonate the deployer.
    deploy_environments: tuple[str, ...]
    pool_id: str
    provider_id: str
    account_id: str
    preview_account_id: str


def load_deployer_settings(config: Mapping[str, str]) -> DeployerSettings:
    """The deployer project's settings from the raw config map the CLI passes, or SettingsError."""
    problems: list[str] = []
    project = config.get("gcp:project", "")
    if not project:
        problems.append("gcp:project: missing; set it with `pulumi config set gcp:project <project-id>`")
    elif not re.fullmatch(PROJECT_ID_PATTERN, project):
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
    environments_problems = deploy_environments_problems(values.get("deployEnvironments"))
    problems.extend(environments_problems)
    settings = DeployerSettings(
        project=project,
        repository=checked("repository", "", repository_problem) if repository else "",
        deploy_branch=checked("deployBranch", DEFAULT_DEPLOY_BRANCH, branch_problem),
        deploy_environments=() if environments_problems else tuple(json.loads(values["deployEnvironments"])),
        pool_id=checked("poolId", DEFAULT_POOL_ID, identity_id_problem),
        provider_id=checked("providerId", DEFAULT_PROVIDER_ID, identity_id_problem),
        account_id=checked("serviceAccountId", DEFAULT_DEPLOY_ACCOUNT_ID, service_account_id_problem),
        preview_account_id=checked("previewServiceAccountId", DEFAULT_PREVIEW_ACCOUNT_ID, service_account_id_problem),
    )
    if settings.preview_account_id == settings.account_id:
        problems.append(
            f"previewServiceAccountId: {settings.preview_account_id!r} is also serviceAccountId; the read-only"
            " preview account must be another account than the deployer"
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


def secret_config_keys() -> frozenset[str]:
    """The full config keys the CLI marks secret (for `load_settings(..., secret_keys=...)`).

    A language host passes them in PULUMI_CONFIG_SECRET_KEYS or hands them to `set_all_config`, which keeps
    them in-process; Pulumi's public getters read one and ask about the other key by key.
    """
    from pulumi.runtime import config as runtime_config

    in_process = {key for key in stack_config() if runtime_config.is_config_secret(key)}
    return frozenset({*runtime_config.get_config_secret_keys_env(), *in_process})
