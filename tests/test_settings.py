"""Tests for components/settings.py: raw CLI config map -> frozen `Settings` or `SettingsError`.

The rejection table below is the spec of the rules: every row is one bad input, the config path the
problem must name, a fragment of the rule or value, and exactly one problem (so no rule masks or
duplicates another).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from components.settings import (
    DEFAULT_IMAGE,
    NAMESPACE,
    PROBE_KEYS,
    PROBES_KEYS,
    PROJECT_KEYS,
    QUEUE_KEYS,
    RATE_LIMIT_KEYS,
    RETRY_KEYS,
    SERVICE_KEYS,
    VPC_KEYS,
    Duration,
    Ingress,
    ProbeSettings,
    QueueSettings,
    RateLimits,
    RetryPolicy,
    SecretEnv,
    ServiceSettings,
    Settings,
    SettingsError,
    VpcEgress,
    load_settings,
    secret_config_keys,
)
from contract.cloud_tasks import MIN_DISPATCHES_PER_SECOND, TASK_RETENTION_S

# --- builder ------------------------------------------------------------------------------------

DROP = object()  # an override value that removes the key from the config map


@dataclasses.dataclass(frozen=True)
class Replace:
    """An override that replaces the baseline value instead of being deep-merged into it."""

    value: Any


BASE_GCP = {"project": "my-tasks-dev", "region": "europe-west1"}
BASE_PROJECT: dict[str, Any] = {"queues": {"default": {}}}

RATE = "queues.default.rateLimits.maxDispatchesPerSecond"
CONCURRENCY = "queues.default.rateLimits.maxConcurrentDispatches"
RETRY = "queues.default.retry"
SA_RULE = "is not a service account id"
GOOD_SA = "serviceAccount:api@my-tasks-dev.iam.gserviceaccount.com"


def deep_merge(base: Any, override: Any) -> Any:
    """`override` merged into `base`: objects merge key by key, DROP deletes, anything else replaces."""
    if isinstance(override, Replace):
        return override.value
    if not (isinstance(base, dict) and isinstance(override, dict)):
        return override
    merged = dict(base)
    for key, value in override.items():
        if value is DROP:
            merged.pop(key, None)
        else:
            merged[key] = deep_merge(base.get(key), value) if key in base else _unwrap(value)
    return merged


def _unwrap(value: Any) -> Any:
    if isinstance(value, Replace):
        return value.value
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items() if v is not DROP}
    return value


def encode(value: Any) -> str:
    """A config value as the CLI passes it: strings as they are, everything else as JSON text."""
    return value if isinstance(value, str) else json.dumps(value)


def config(
    *, gcp: Mapping[str, Any] | None = None, raw: Mapping[str, str] | None = None, **overrides: Any
) -> dict[str, str]:
    """The baseline config map with `overrides` (project keys, Python values) deep-merged in.

    `gcp={"project": DROP}` edits gcp keys; `raw` adds entries verbatim (other namespaces, odd text).
    """
    gcp_values = deep_merge(BASE_GCP, dict(gcp or {}))
    project_values = deep_merge(BASE_PROJECT, overrides)
    cfg = {f"gcp:{k}": v for k, v in gcp_values.items()}
    cfg.update({f"{NAMESPACE}:{k}": encode(v) for k, v in project_values.items()})
    cfg.update(raw or {})
    return cfg


def load(cfg: Mapping[str, str], stack: str = "dev") -> Settings:
    return load_settings(cfg, stack)


def problems_of(cfg: Mapping[str, str], stack: str = "dev") -> tuple[str, ...]:
    with pytest.raises(SettingsError) as raised:
        load_settings(cfg, stack)
    return raised.value.problems


def path_of(problem: str) -> str:
    """The config path a problem names: everything before the first ': '."""
    return problem.partition(": ")[0]


def test_builder_encodes_like_the_cli() -> None:
    cfg = config(
        namePrefix="acme",
        deletionProtection=False,
        service={"cpu": "2"},
        queues={"default": {"rateLimits": {"maxDispatchesPerSecond": 900}}, "emails": {}},
        raw={"other:thing": "x"},
    )
    assert cfg == {
        "gcp:project": "my-tasks-dev",
        "gcp:region": "europe-west1",
        "cloudrun-tasks:namePrefix": "acme",
        "cloudrun-tasks:deletionProtection": "false",
        "cloudrun-tasks:service": '{"cpu": "2"}',
        "cloudrun-tasks:queues": '{"default": {"rateLimits": {"maxDispatchesPerSecond": 900}}, "emails": {}}',
        "other:thing": "x",
    }
    assert config(queues=Replace({"x": {}}))["cloudrun-tasks:queues"] == '{"x": {}}'
    assert "cloudrun-tasks:queues" not in config(queues=DROP)
    assert "gcp:project" not in config(gcp={"project": DROP})


# --- rejection table ----------------------------------------------------------------------------


def case(case_id: str, path: str, fragment: str, *, stack: str = "dev", **overrides: Any) -> Any:
    return pytest.param(overrides, stack, path, fragment, id=case_id)


def rate(value: Any) -> dict[str, Any]:
    return {"default": {"rateLimits": {"maxDispatchesPerSecond": value}}}


def rate_limits(**values: Any) -> dict[str, Any]:
    return {"default": {"rateLimits": values}}


def retry(**values: Any) -> dict[str, Any]:
    return {"default": {"retry": values}}


def queue(**values: Any) -> dict[str, Any]:
    return {"default": values}


BAD_SA_IDS = {
    "too-short": "abc12",
    "too-long": "a" * 31,
    "uppercase": "Tasks-invoker",
    "trailing-hyphen": "tasks-invoker-",
    "leading-digit": "1tasks-invoker",
}

BAD_MEMBERS = {
    "no-prefix": ("api@x.iam.gserviceaccount.com", "has no member type prefix; use one of user:"),
    "allUsers": ("allUsers", "'allUsers' is public"),
    "allAuthenticatedUsers": ("allAuthenticatedUsers", "'allAuthenticatedUsers' is public"),
    "prefixed-allUsers": ("user:allUsers", "'user:allUsers' is public"),
    "sa-not-email": ("serviceAccount:not-an-email", "serviceAccount members need an email address"),
    "domain-empty": ("domain:", "nothing after the 'domain:' prefix"),
    "not-a-string": (5, "expected an IAM member string, got number 5"),
}

NOT_A_DURATION = "is not a duration in Cloud Tasks form"

REJECTED = [
    # rate limits
    case("rate-0", RATE, "0 would never dispatch", queues=rate(0)),
    case("rate-negative", RATE, "-1 is below the minimum of 1/86400 (one dispatch a day)", queues=rate(-1)),
    case("rate-above-500", RATE, "500.5 is above the maximum of 500", queues=rate(500.5)),
    case("rate-string", RATE, 'expected a number, got string "10" (write it unquoted', queues=rate("10")),
    case("rate-bool", RATE, "expected a number, got boolean true", queues=rate(True)),
    case("rate-infinite", RATE, "inf is not a finite number", queues=rate(math.inf)),
    case("rate-nan", RATE, "nan is not a finite number", queues=rate(math.nan)),
    case(
        "rate-huge-int",
        RATE,
        "is above the maximum of 500",
        queues=rate(10**400),
    ),
    case(
        "concurrency-0",
        CONCURRENCY,
        "0 is below the minimum of 1 (Cloud Tasks limit)",
        queues=rate_limits(maxConcurrentDispatches=0),
    ),
    case(
        "concurrency-5001",
        CONCURRENCY,
        "5001 is above the maximum of 5000",
        queues=rate_limits(maxConcurrentDispatches=5001),
    ),
    case(
        "concurrency-fraction",
        CONCURRENCY,
        "expected a whole number, got number 2.5",
        queues=rate_limits(maxConcurrentDispatches=2.5),
    ),
    # retry
    case("maxAttempts-minus-2", f"{RETRY}.maxAttempts", "-2 is below the minimum of -1", queues=retry(maxAttempts=-2)),
    case(
        "maxAttempts-string",
        f"{RETRY}.maxAttempts",
        'expected a whole number, got string "5"',
        queues=retry(maxAttempts="5"),
    ),
    case(
        "maxDoublings-negative",
        f"{RETRY}.maxDoublings",
        "-1 is below the minimum of 0 (must not be negative)",
        queues=retry(maxDoublings=-1),
    ),
    case(
        "minBackoff-above-maxBackoff",
        f"{RETRY}.minBackoff",
        "10s is above maxBackoff 5s",
        queues=retry(minBackoff="10s", maxBackoff="5s"),
    ),
    case(
        "unbounded-retries",
        RETRY,
        "maxAttempts -1 with maxRetryDuration 0s",
        queues=retry(maxAttempts=-1, maxRetryDuration="0s"),
    ),
    case(
        "unbounded-retries-by-default-duration",
        RETRY,
        "maxAttempts -1 with maxRetryDuration 0s",
        queues=retry(maxAttempts=-1),
    ),
    # duration form
    *[
        case(f"duration-{name}", f"{RETRY}.minBackoff", f"{value!r} {NOT_A_DURATION}", queues=retry(minBackoff=value))
        for name, value in {
            "no-unit": "10",
            "space": "10 s",
            "minutes": "1m",
            "negative": "-1s",
            "fraction-no-unit": "1.5",
            "ten-decimals": "0.0000000001s",
            "empty": "",
        }.items()
    ],
    case(
        "duration-number", f"{RETRY}.minBackoff", "10 is a number; a duration is a string", queues=retry(minBackoff=10)
    ),
    case(
        "duration-a-bare-number-says-what-to-write",
        "queues.default.dispatchDeadline",
        'is a number; a duration is a string with an "s" suffix: write "120s"',
        queues=queue(dispatchDeadline=120),
    ),
    case(
        "duration-a-bare-decimal-says-what-to-write",
        f"{RETRY}.minBackoff",
        'write "0.5s"',
        queues=retry(minBackoff=0.5),
    ),
    case(
        "duration-trailing-newline",
        "queues.default.dispatchDeadline",
        NOT_A_DURATION,
        queues=queue(dispatchDeadline="60s\n"),
    ),
    # deadlines and timeouts
    case(
        "deadline-14s",
        "queues.default.dispatchDeadline",
        "14s is below the minimum of 15s",
        queues=queue(dispatchDeadline="14s"),
    ),
    case(
        "deadline-1801s",
        "queues.default.dispatchDeadline",
        "1801s is above the maximum of 1800s",
        queues=queue(dispatchDeadline="1801s"),
    ),
    case(
        "timeout-below-deadline",
        "service.timeout",
        "300s is below queues.slow.dispatchDeadline 600s",
        queues=Replace({"fast": {"dispatchDeadline": "60s"}, "slow": {"dispatchDeadline": "600s"}}),
        service={"timeout": "300s"},
    ),
    case("timeout-3601s", "service.timeout", "3601s is above the maximum of 3600s", service={"timeout": "3601s"}),
    case(
        "timeout-set-but-queues-missing",
        "queues",
        "missing",
        queues=DROP,
        service={"timeout": "300s"},
    ),
    # logging
    case(
        "ratio-negative",
        "queues.default.logSamplingRatio",
        "-0.1 is below the minimum of 0",
        queues=queue(logSamplingRatio=-0.1),
    ),
    case(
        "ratio-above-1",
        "queues.default.logSamplingRatio",
        "1.1 is above the maximum of 1",
        queues=queue(logSamplingRatio=1.1),
    ),
    # queue keys
    case("key-underscore", "queues.my_queue", "letters, digits and hyphens", queues=Replace({"my_queue": {}})),
    case("key-dot", "queues.q.1", "letters, digits and hyphens", queues=Replace({"q.1": {}})),
    case("key-empty", "queues.", "letters, digits and hyphens (1-100)", queues=Replace({"": {}})),
    case("key-101-chars", "queues." + "q" * 101, "(1-100)", queues=Replace({"q" * 101: {}})),
    case(
        "key-too-long-with-prefix",
        "queues." + "q" * 84,
        "84 characters is too long; with namePrefix 'tasks-dev' and the random suffix",
        queues=Replace({"q" * 84: {}}),
    ),
    case(
        "key-dead-letters",
        "queues.dead-letters",
        "the queue name 'dead-letters' is reserved for the stack's own dead-letter queue"
        " (<namePrefix>-dead-letters-<6 hex>, which the stack always creates); choose another name",
        queues={"dead-letters": {}},
    ),
    case(
        "key-trailing-newline",
        'queues."default\\n"',  # a control character is shown escaped, so the problem stays on one line
        "letters, digits and hyphens",
        queues=Replace({"default\n": {}}),
    ),
    # service accounts
    *[
        case(f"invoker-sa-{name}", "invokerServiceAccountId", f"{value!r} {SA_RULE}", invokerServiceAccountId=value)
        for name, value in BAD_SA_IDS.items()
    ],
    *[
        case(
            f"runtime-sa-{name}",
            "service.serviceAccountId",
            f"{value!r} {SA_RULE}",
            service={"serviceAccountId": value},
        )
        for name, value in BAD_SA_IDS.items()
    ],
    case(
        "invoker-is-derived-runtime",
        "invokerServiceAccountId",
        "'tasks-dev-run' is also service.serviceAccountId",
        invokerServiceAccountId="tasks-dev-run",
    ),
    case(
        "invoker-is-explicit-runtime",
        "invokerServiceAccountId",
        "'shared-sa' is also service.serviceAccountId",
        invokerServiceAccountId="shared-sa",
        service={"serviceAccountId": "shared-sa"},
    ),
    # unknown keys, at every level
    case("unknown-top-level", "queus", "unknown key; allowed keys are namePrefix,", queus={"default": {}}),
    case("unknown-service", "service.imagee", "unknown key; allowed keys are name, image,", service={"imagee": "x"}),
    case(
        "unknown-queue", "queues.default.rateLimit", "unknown key; allowed keys are path,", queues=queue(rateLimit={})
    ),
    case(
        "unknown-burst-is-output-only",
        "queues.default.rateLimits.maxBurstSize",
        "unknown key; allowed keys are maxDispatchesPerSecond, maxConcurrentDispatches",
        queues=rate_limits(maxBurstSize=10),
    ),
    case(
        "unknown-retry", f"{RETRY}.maxAttempt", "unknown key; allowed keys are maxAttempts,", queues=retry(maxAttempt=5)
    ),
    # wrong types
    case("queues-list", "queues", "expected an object of one or more queues, got list", queues=["default"]),
    case("service-string", "service", 'expected an object, got string "fast"', service="fast"),
    case(
        "queue-string", "queues.default", 'expected an object, got string "fast"', queues=Replace({"default": "fast"})
    ),
    case("enqueuers-string", "enqueuers", "expected a list of IAM members, got string", enqueuers=GOOD_SA),
    case("env-list", "service.env", "expected an object of NAME: value strings, got list", service={"env": ["A=1"]}),
    case(
        "flag-string",
        "queues.default.queueLevelRouting",
        'expected true or false, got string "yes"',
        queues=queue(queueLevelRouting="yes"),
    ),
    case(
        "deletionProtection-yes",
        "deletionProtection",
        'expected true or false, got string "yes"',
        deletionProtection="yes",
    ),
    case(
        "deletionProtection-number", "deletionProtection", "expected true or false, got number 1", deletionProtection=1
    ),
    case(
        "service-empty-list",
        "service",
        "expected an object, got list []",
        service=[],
    ),
    case(
        "retry-false",
        RETRY,
        "expected an object, got boolean false",
        queues={"default": {"retry": False}},
    ),
    # ingress
    case(
        "ingress-internal",
        "service.ingress",
        "'internal' is not one of INGRESS_TRAFFIC_INTERNAL_ONLY",
        service={"ingress": "internal"},
    ),
    # IAM members, top level and per queue
    *[
        case(f"enqueuer-{name}", "enqueuers[0]", fragment, enqueuers=[member])
        for name, (member, fragment) in BAD_MEMBERS.items()
    ],
    *[
        case(f"queue-enqueuer-{name}", "queues.default.enqueuers[0]", fragment, queues=queue(enqueuers=[member]))
        for name, (member, fragment) in BAD_MEMBERS.items()
    ],
    case("enqueuer-index", "enqueuers[1]", "'allUsers' is public", enqueuers=[GOOD_SA, "allUsers"]),
    # operators: the enqueuers' grammar and rules
    *[
        case(f"operator-{name}", "operators[0]", fragment, operators=[member])
        for name, (member, fragment) in BAD_MEMBERS.items()
    ],
    case("operators-string", "operators", "expected a list of IAM members, got string", operators=GOOD_SA),
    # gcp keys
    case(
        "project-missing", "gcp:project", "missing; set it with `pulumi config set gcp:project", gcp={"project": DROP}
    ),
    case("project-empty", "gcp:project", "missing", gcp={"project": ""}),
    case(
        "project-invalid", "gcp:project", "'My_Project' is not a Google Cloud project id", gcp={"project": "My_Project"}
    ),
    case("region-missing", "gcp:region", "missing; set it with `pulumi config set gcp:region", gcp={"region": DROP}),
    case("region-invalid", "gcp:region", "'Europe' is not a region such as europe-west1", gcp={"region": "Europe"}),
    # queues as a whole
    case("queues-missing", "queues", "missing; configure at least one queue", queues=DROP),
    case("queues-empty", "queues", "expected an object of one or more queues, got object", queues=Replace({})),
    case(
        "defaultQueue-unknown",
        "defaultQueue",
        "'emails' is not one of the configured queues (default)",
        defaultQueue="emails",
    ),
    # name prefix
    case(
        "prefix-21-chars",
        "namePrefix",
        "'tasks-abcdefghijklmno' must be 2-20 lowercase",
        namePrefix="tasks-abcdefghijklmno",
    ),
    case(
        "prefix-uppercase",
        "namePrefix",
        "'Tasks' must be 2-20 lowercase",
        namePrefix="Tasks",
    ),
    case(
        "prefix-derived-from-long-stack",
        "namePrefix",
        "(derived from stack 'a-very-long-stack-name'; set namePrefix)",
        stack="a-very-long-stack-name",
    ),
    case(
        "prefix-one-letter",
        "namePrefix",
        "must be",
        namePrefix="a",
    ),
    # service sizing
    case(
        "min-above-max-instances",
        "service.minInstances",
        "5 is above maxInstances 2",
        service={"minInstances": 5, "maxInstances": 2},
    ),
    case(
        "maxInstances-0",
        "service.maxInstances",
        "0 is below the minimum of 1",
        service={"maxInstances": 0},
    ),
    case(
        "concurrency-1001",
        "service.concurrency",
        "1001 is above the maximum of 1000",
        service={"concurrency": 1001},
    ),
    case("cpu-3", "service.cpu", "'3' is not one of 1, 2, 4, 6, 8", service={"cpu": "3"}),
    case(
        "memory-MB", "service.memory", "'512MB' is not a memory size such as 512Mi or 2Gi", service={"memory": "512MB"}
    ),
    case("memory-64Mi", "service.memory", "64Mi is below the minimum of 128Mi", service={"memory": "64Mi"}),
    case("memory-33Gi", "service.memory", "33Gi is above the maximum of 32Gi", service={"memory": "33Gi"}),
    case(
        "memory-8Gi-cpu-1",
        "service.cpu",
        "1 is too few for memory 8Gi; Cloud Run needs at least 2 CPUs above 4Gi",
        service={"memory": "8Gi", "cpu": "1"},
    ),
    case(
        "memory-10Gi-cpu-2",
        "service.cpu",
        "2 is too few for memory 10Gi; Cloud Run needs at least 4 CPUs above 8Gi",
        service={"memory": "10Gi", "cpu": "2"},
    ),
    case(
        "cpu-4-memory-1Gi",
        "service.memory",
        "1Gi is too little for 4 CPUs; Cloud Run needs at least 2Gi",
        service={"memory": "1Gi", "cpu": "4"},
    ),
    # env
    case(
        "env-PORT", "service.env.PORT", "reserved; Cloud Run or this stack sets it", service={"env": {"PORT": "9000"}}
    ),
    case("env-TASKS_QUEUES", "service.env.TASKS_QUEUES", "reserved", service={"env": {"TASKS_QUEUES": "{}"}}),
    case("env-K_SERVICE", "service.env.K_SERVICE", "reserved", service={"env": {"K_SERVICE": "x"}}),
    case("env-bad-name", "service.env.1X", "not an environment variable name", service={"env": {"1X": "v"}}),
    case(
        "env-number-value",
        "service.env.X",
        "expected a string, got number 5 (quote numbers and booleans)",
        service={"env": {"X": 5}},
    ),
]


@pytest.mark.parametrize(("overrides", "stack", "path", "fragment"), REJECTED)
def test_rejected(overrides: dict[str, Any], stack: str, path: str, fragment: str) -> None:
    problems = problems_of(config(**overrides), stack)
    assert [path_of(p) for p in problems] == [path], problems
    assert fragment in problems[0]


def test_rejection_ids_are_unique() -> None:
    ids = [p.id for p in REJECTED]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(
    ("overrides", "stack", "fragment"),
    [
        pytest.param({"namePrefix": "Tasks"}, "dev", "'Tasks' must be 2-20 lowercase", id="explicit"),
        pytest.param(
            {}, "a-very-long-stack-name", "(derived from stack 'a-very-long-stack-name'; set namePrefix)", id="derived"
        ),
        pytest.param({}, "---", "'tasks-' (derived from stack '---'; set namePrefix)", id="derived-empty"),
    ],
)
def test_bad_name_prefix_is_the_one_problem_and_says_how_to_fix(
    overrides: dict[str, Any], stack: str, fragment: str
) -> None:
    # Names derived from a bad prefix are not reported again: the user never set them.
    problems = problems_of(config(**overrides), stack)
    assert [path_of(p) for p in problems] == ["namePrefix"]
    assert fragment in problems[0]


@hyp_settings(max_examples=150, deadline=None)
@given(st.from_regex(r"[a-z]([-a-z0-9]{0,18}[a-z0-9])", fullmatch=True))
def test_every_valid_prefix_derives_valid_names(prefix: str) -> None:
    derived = load(config(namePrefix=prefix))
    # Given explicitly, the derived names go through the same checks as any configured name.
    explicit = load(
        config(
            namePrefix=prefix,
            invokerServiceAccountId=derived.invoker_service_account_id,
            service={"name": derived.service.name, "serviceAccountId": derived.service.service_account_id},
        )
    )
    assert explicit == derived


def test_every_problem_is_reported_together() -> None:
    cfg = config(
        gcp={"region": DROP},
        enqueuers=["allUsers"],
        service={"cpu": "3"},
        queues={"default": {"rateLimits": {"maxDispatchesPerSecond": 0}}, "emails": {"retry": {"maxDoublings": -1}}},
    )
    with pytest.raises(SettingsError) as raised:
        load(cfg)
    problems = raised.value.problems
    assert isinstance(problems, tuple)
    assert sorted(path_of(p) for p in problems) == sorted(
        ["gcp:region", "enqueuers[0]", "service.cpu", RATE, "queues.emails.retry.maxDoublings"]
    )
    message = str(raised.value)
    assert message.startswith("invalid stack configuration:\n  - ")
    assert all(f"  - {p}" in message for p in problems)
    assert isinstance(raised.value, ValueError)


# --- acceptance and defaults -----------------------------------------------------------------------


def test_baseline_loads_with_every_default() -> None:
    s = load(config())
    assert (s.project, s.location, s.name_prefix) == ("my-tasks-dev", "europe-west1", "tasks-dev")
    assert s.deletion_protection is True
    assert s.invoker_service_account_id == "tasks-dev-invoker"
    assert s.queue("default").enqueuers == ()
    assert s.default_queue == "default"
    assert s.warnings == ()
    assert s.service == ServiceSettings(
        name="tasks-dev-handler",
        image="us-docker.pkg.dev/cloudrun/container/hello",
        manage_image=True,
        ingress=Ingress.INTERNAL_ONLY,
        timeout=Duration(Decimal("600")),
        min_instances=0,
        max_instances=10,
        concurrency=80,
        cpu="1",
        memory="512Mi",
        service_account_id="tasks-dev-run",
        env=(),
        cpu_always_allocated=False,
        startup_cpu_boost=True,
        startup_probe=ProbeSettings(initial_delay_seconds=0, period_seconds=10, timeout_seconds=1, failure_threshold=3),
        liveness_probe=ProbeSettings(
            initial_delay_seconds=0, period_seconds=10, timeout_seconds=1, failure_threshold=3
        ),
        secret_env=(),
        vpc=None,
    )
    assert s.labels == (("managed-by", "cloudrun-tasks"), ("stack", "dev"))
    assert s.service.image == DEFAULT_IMAGE
    assert s.service.ingress.value == "INGRESS_TRAFFIC_INTERNAL_ONLY"
    assert s.queues == (
        QueueSettings(
            key="default",
            path="/tasks/default",
            dispatch_deadline=Duration(Decimal("600")),
            queue_level_routing=False,
            log_sampling_ratio=1.0,
            rate_limits=RateLimits(max_dispatches_per_second=500.0, max_concurrent_dispatches=800),
            retry=RetryPolicy(
                max_attempts=100,
                max_retry_duration=Duration(Decimal("0")),
                min_backoff=Duration(Decimal("0.1")),
                max_backoff=Duration(Decimal("3600")),
                max_doublings=16,
            ),
            enqueuers=(),
        ),
    )
    assert s.queue("default") is s.queues[0]


def test_explicit_values_are_kept() -> None:
    s = load(
        config(
            namePrefix="acme",
            deletionProtection=False,
            invokerServiceAccountId="acme-caller",
            service={
                "name": "worker",
                "image": "europe-docker.pkg.dev/p/r/worker:1",
                "manageImage": False,
                "ingress": "INGRESS_TRAFFIC_ALL",
                "timeout": "1200s",
                "minInstances": 1,
                "maxInstances": 4,
                "concurrency": 8,
                "cpu": "2",
                "memory": "2Gi",
                "serviceAccountId": "acme-worker",
                "env": {"MODE": "worker", "LEVEL": "debug"},
                "secretEnv": {
                    "DB_PASSWORD": "db-password",
                    "API_KEY": "projects/other-proj/secrets/api-key/versions/4",
                },
                "cpuAlwaysAllocated": True,
                "startupCpuBoost": False,
                "probes": {
                    "startup": {
                        "initialDelaySeconds": 5,
                        "periodSeconds": 5,
                        "timeoutSeconds": 2,
                        "failureThreshold": 6,
                    },
                    "liveness": {
                        "initialDelaySeconds": 60,
                        "periodSeconds": 30,
                        "timeoutSeconds": 5,
                        "failureThreshold": 2,
                    },
                },
                "vpc": {
                    "network": "projects/host-proj/global/networks/shared",
                    "subnetwork": "projects/host-proj/regions/europe-west1/subnetworks/tasks",
                    "egress": "ALL_TRAFFIC",
                    "networkTags": ["tasks", "egress-nat", "tasks"],
                },
            },
            queues={
                "default": {
                    "path": "/work",
                    "dispatchDeadline": "900s",
                    "queueLevelRouting": True,
                    "logSamplingRatio": 0.25,
                    "rateLimits": {"maxDispatchesPerSecond": 5, "maxConcurrentDispatches": 20},
                    "retry": {
                        "maxAttempts": 5,
                        "maxRetryDuration": "3600s",
                        "minBackoff": "1s",
                        "maxBackoff": "60s",
                        "maxDoublings": 3,
                    },
                }
            },
        )
    )
    assert (s.name_prefix, s.deletion_protection, s.invoker_service_account_id) == ("acme", False, "acme-caller")
    assert s.service == ServiceSettings(
        name="worker",
        image="europe-docker.pkg.dev/p/r/worker:1",
        manage_image=False,
        ingress=Ingress.ALL,
        timeout=Duration(Decimal("1200")),
        min_instances=1,
        max_instances=4,
        concurrency=8,
        cpu="2",
        memory="2Gi",
        service_account_id="acme-worker",
        env=(("MODE", "worker"), ("LEVEL", "debug")),
        cpu_always_allocated=True,
        startup_cpu_boost=False,
        startup_probe=ProbeSettings(initial_delay_seconds=5, period_seconds=5, timeout_seconds=2, failure_threshold=6),
        liveness_probe=ProbeSettings(
            initial_delay_seconds=60, period_seconds=30, timeout_seconds=5, failure_threshold=2
        ),
        secret_env=(
            SecretEnv(name="DB_PASSWORD", secret="db-password", project=None, version="latest"),
            SecretEnv(name="API_KEY", secret="api-key", project="other-proj", version="4"),
        ),
        vpc=VpcEgress(
            network="projects/host-proj/global/networks/shared",
            subnetwork="projects/host-proj/regions/europe-west1/subnetworks/tasks",
            egress="ALL_TRAFFIC",
            network_tags=("tasks", "egress-nat"),
        ),
    )
    q = s.queue("default")
    assert (q.path, str(q.dispatch_deadline), q.queue_level_routing, q.log_sampling_ratio) == (
        "/work",
        "900s",
        True,
        0.25,
    )
    assert q.rate_limits == RateLimits(5.0, 20)
    assert isinstance(q.rate_limits.max_dispatches_per_second, float)
    assert q.retry == RetryPolicy(5, Duration.of(3600), Duration.of(1), Duration.of(60), 3)


def test_null_means_default() -> None:
    s = load(config(queues={"default": {"retry": None, "rateLimits": {"maxDispatchesPerSecond": None}}}))
    assert s.queue("default").retry.max_attempts == 100
    assert s.queue("default").rate_limits.max_dispatches_per_second == 500.0


@pytest.mark.parametrize(("raw", "expected"), [("false", False), ("true", True)])
def test_deletion_protection_flag(raw: str, expected: bool) -> None:
    assert load(config(raw={"cloudrun-tasks:deletionProtection": raw})).deletion_protection is expected


def test_timeout_defaults_to_the_longest_dispatch_deadline() -> None:
    s = load(config(queues=Replace({"a": {"dispatchDeadline": "120s"}, "b": {"dispatchDeadline": "900s"}})))
    assert str(s.service.timeout) == "900s"


def test_timeout_equal_to_the_longest_deadline_is_accepted() -> None:
    s = load(config(queues=queue(dispatchDeadline="900s"), service={"timeout": "900.0s"}))
    assert s.service.timeout.seconds == 900


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        ({"maxInstances": 3}, 240),
        ({"maxInstances": 1, "concurrency": 1}, 1),
        ({"maxInstances": 100}, 1000),  # capacity 8000, capped at Cloud Tasks' default 1000
    ],
)
def test_max_concurrent_dispatches_defaults_to_service_capacity(service: dict[str, Any], expected: int) -> None:
    s = load(config(service=service))
    assert s.queue("default").rate_limits.max_concurrent_dispatches == expected
    assert s.warnings == ()


@pytest.mark.parametrize(
    ("stack", "prefix"),
    [("dev", "tasks-dev"), ("Feature_X.1", "tasks-feature-x-1"), ("--prod--", "tasks-prod")],
)
def test_name_prefix_and_names_derive_from_the_stack(stack: str, prefix: str) -> None:
    s = load(config(), stack)
    assert s.name_prefix == prefix
    assert s.invoker_service_account_id == f"{prefix}-invoker"
    assert s.service.service_account_id == f"{prefix}-run"
    assert s.service.name == f"{prefix}-handler"


def test_queue_key_limit_depends_on_the_name_prefix() -> None:
    # 100 - len("acme") - 6 (suffix) - 2 (hyphens) = 88
    assert load(config(namePrefix="acme", queues=Replace({"q" * 88: {}}))).queues[0].key == "q" * 88
    problems = problems_of(config(namePrefix="acme", queues=Replace({"q" * 89: {}})))
    assert problems == (
        f"queues.{'q' * 89}: 89 characters is too long; with namePrefix 'acme' and the random suffix"
        " the queue id must stay within 100 (at most 88)",
    )


def test_default_queue_is_the_first_in_config_order() -> None:
    s = load(config(queues=Replace({"zeta": {}, "alpha": {}, "mid": {}})))
    assert [q.key for q in s.queues] == ["zeta", "alpha", "mid"]
    assert s.default_queue == "zeta"
    assert [q.path for q in s.queues] == ["/tasks/zeta", "/tasks/alpha", "/tasks/mid"]


def test_default_queue_can_be_chosen() -> None:
    assert load(config(queues={"emails": {}}, defaultQueue="emails")).default_queue == "emails"


def test_enqueuers_are_the_union_of_top_level_and_queue_level() -> None:
    a = "serviceAccount:a@my-tasks-dev.iam.gserviceaccount.com"
    g = "group:team@example.com"
    u = "user:dev@example.com"
    s = load(config(enqueuers=[a, g, a], queues={"default": {"enqueuers": [u, g, u]}, "other": {}}))
    assert s.queue("default").enqueuers == (a, g, u)
    assert s.queue("other").enqueuers == (a, g)


@pytest.mark.parametrize(
    "member",
    [
        "domain:example.com",
        "principal://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/pool/subject/s",
        "principalSet://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/pool/*",
    ],
)
def test_non_email_member_types_are_accepted(member: str) -> None:
    assert load(config(enqueuers=[member])).queue("default").enqueuers == (member,)


def test_fractional_rate_is_accepted() -> None:
    assert load(config(queues=rate(0.5))).queue("default").rate_limits.max_dispatches_per_second == 0.5


def test_unlimited_attempts_with_a_bounded_retry_duration_are_accepted() -> None:
    policy = load(config(queues=retry(maxAttempts=-1, maxRetryDuration="86400s"))).queue("default").retry
    assert (policy.max_attempts, str(policy.max_retry_duration)) == (-1, "86400s")


def pick(settings: Settings, dotted: str) -> Any:
    """`settings` followed along `dotted` attribute names; a leading `q` is the default queue."""
    head, *rest = dotted.split(".")
    value = settings.queue("default") if head == "q" else getattr(settings, head)
    for name in rest:
        value = getattr(value, name)
    return value


def accept(case_id: str, dotted: str, expected: Any, **overrides: Any) -> Any:
    return pytest.param(overrides, dotted, expected, id=case_id)


ACCEPTED = [
    accept("rate-500", "q.rate_limits.max_dispatches_per_second", 500.0, queues=rate(500)),
    accept(
        "concurrency-1", "q.rate_limits.max_concurrent_dispatches", 1, queues=rate_limits(maxConcurrentDispatches=1)
    ),
    accept(
        "concurrency-5000",
        "q.rate_limits.max_concurrent_dispatches",
        5000,
        queues=rate_limits(maxConcurrentDispatches=5000),
        service={"maxInstances": 1000, "concurrency": 5},
    ),
    accept("ratio-0", "q.log_sampling_ratio", 0.0, queues=queue(logSamplingRatio=0)),
    accept("ratio-1", "q.log_sampling_ratio", 1.0, queues=queue(logSamplingRatio=1)),
    accept("deadline-15s", "q.dispatch_deadline", Duration.of(15), queues=queue(dispatchDeadline="15s")),
    accept("deadline-1800s", "service.timeout", Duration.of(1800), queues=queue(dispatchDeadline="1800s")),
    accept("timeout-3600s", "service.timeout", Duration.of(3600), service={"timeout": "3600s"}),
    accept("attempts-0", "q.retry.max_attempts", 0, queues=retry(maxAttempts=0, maxRetryDuration="420s")),
    accept(
        "attempts-unlimited-420s",
        "q.retry.max_attempts",
        -1,
        queues=retry(maxAttempts=-1, maxRetryDuration="420s"),
    ),
    accept(
        "retry-duration-31-days",
        "q.retry.max_retry_duration",
        Duration.of(TASK_RETENTION_S),
        queues=retry(maxRetryDuration=f"{TASK_RETENTION_S}s"),
    ),
    accept("backoff-equal", "q.retry.min_backoff", Duration.of(5), queues=retry(minBackoff="5s", maxBackoff="5s")),
    accept(
        "nine-decimals",
        "q.retry.min_backoff",
        Duration.of("1E-9"),
        queues=retry(minBackoff="0.000000001s", maxRetryDuration="3600s"),
    ),
    accept("instances-1000", "service.max_instances", 1000, service={"maxInstances": 1000, "concurrency": 1000}),
    accept("min-equals-max", "service.min_instances", 3, service={"minInstances": 3, "maxInstances": 3}),
    accept("memory-128Mi", "service.memory", "128Mi", service={"memory": "128Mi"}),
    accept("memory-4Gi-cpu-1", "service.memory", "4Gi", service={"memory": "4Gi", "cpu": "1"}),
    accept("memory-32Gi-cpu-8", "service.memory", "32Gi", service={"memory": "32Gi", "cpu": "8"}),
    accept("cpu-4-memory-2Gi", "service.cpu", "4", service={"memory": "2Gi", "cpu": "4"}),
    accept("prefix-20-chars", "invoker_service_account_id", "a" * 20 + "-invoker", namePrefix="a" * 20),
    accept("sa-6-chars", "invoker_service_account_id", "abc123", invokerServiceAccountId="abc123"),
    accept("sa-30-chars", "invoker_service_account_id", "a" * 30, invokerServiceAccountId="a" * 30),
    accept("key-upper-digit-hyphen", "default_queue", "Q-1", queues=Replace({"Q-1": {}})),
    accept("env-underscore-empty", "service.env", (("_X1", ""),), service={"env": {"_X1": ""}}),
]


@pytest.mark.parametrize(("overrides", "dotted", "expected"), ACCEPTED)
def test_accepted(overrides: dict[str, Any], dotted: str, expected: Any) -> None:
    assert pick(load(config(**overrides)), dotted) == expected


@pytest.mark.parametrize(
    ("duration", "text"),
    [
        (Duration.of("0.1"), "0.1s"),
        (Duration.of(3600), "3600s"),
        (Duration.of(1.5), "1.5s"),
        (Duration.of(0), "0s"),
        (Duration(Decimal("10.500")), "10.5s"),
        (Duration(Decimal("1E+2")), "100s"),
        (Duration(Decimal("0.000000001")), "0.000000001s"),
    ],
)
def test_duration_text(duration: Duration, text: str) -> None:
    assert str(duration) == text


def test_capacity_warning_names_the_queue_but_loads() -> None:
    s = load(
        config(
            service={"maxInstances": 1, "concurrency": 10},
            queues={
                "default": {"rateLimits": {"maxConcurrentDispatches": 10}},
                "bulk": {"rateLimits": {"maxConcurrentDispatches": 11}},
            },
        )
    )
    assert s.warnings == (
        "queues.bulk.rateLimits.maxConcurrentDispatches: 11 is above what the service takes at once"
        " (10 = maxInstances x concurrency); the excess is answered with 429 and retried with backoff",
    )
    assert s.queue("bulk").rate_limits.max_concurrent_dispatches == 11
    assert s.queue("default").rate_limits.max_concurrent_dispatches == 10


# --- other namespaces, immutability -------------------------------------------------------------


def test_keys_of_other_namespaces_are_ignored() -> None:
    noisy = config(raw={"gcp:zone": "europe-west1-b", "other:thing": "{not json", "aws:region": "x", "plain": "y"})
    assert load(noisy) == load(config())


def test_settings_are_frozen() -> None:
    s = load(config(enqueuers=[GOOD_SA]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.project = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.service.cpu = "8"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.queues[0].rate_limits.max_dispatches_per_second = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.queues[0].retry.min_backoff.seconds = Decimal(1)  # type: ignore[misc]
    with pytest.raises(AttributeError, match="append"):
        s.queue("default").enqueuers.append("user:x@example.com")  # type: ignore[attr-defined]


# --- properties ---------------------------------------------------------------------------------

PROPERTY = hyp_settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(st.floats(min_value=MIN_DISPATCHES_PER_SECOND, max_value=500))
def test_any_rate_in_range_is_stored_exactly(value: float) -> None:
    stored = load(config(queues=rate(value))).queue("default").rate_limits.max_dispatches_per_second
    assert stored == value
    assert math.copysign(1, stored) == 1


@PROPERTY
@given(
    st.one_of(
        st.floats(max_value=MIN_DISPATCHES_PER_SECOND, exclude_max=True, allow_nan=False, allow_infinity=False),
        st.floats(min_value=500, exclude_min=True, allow_nan=False, allow_infinity=False),
    )
)
def test_any_rate_out_of_range_is_rejected(value: float) -> None:
    problems = problems_of(config(queues=rate(value)))
    assert [path_of(p) for p in problems] == [RATE]


@st.composite
def duration_texts(draw: st.DrawFn, high: int) -> str:
    whole = draw(st.integers(min_value=0, max_value=high))
    fraction = draw(st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=9).map(lambda f: "." + f)))
    if whole == high:
        fraction = "." + "0" * (len(fraction) - 1) if fraction else ""
    return f"{whole}{fraction}s"


@PROPERTY
@given(duration_texts(int(TASK_RETENTION_S)))
def test_durations_round_trip(text: str) -> None:
    loaded = load(config(queues=retry(maxRetryDuration=text))).queue("default").retry.max_retry_duration
    assert loaded.seconds == Decimal(text[:-1])
    # The canonical text is itself a valid duration that loads back to the same value.
    again = load(config(queues=retry(maxRetryDuration=str(loaded)))).queue("default").retry.max_retry_duration
    assert again == loaded
    assert str(again) == str(loaded)


@PROPERTY
@given(duration_texts(1800).filter(lambda t: Decimal(t[:-1]) >= 15))
def test_dispatch_deadlines_in_range_round_trip(text: str) -> None:
    s = load(config(queues=queue(dispatchDeadline=text), service={"timeout": "3600s"}))
    assert s.queue("default").dispatch_deadline == Duration(Decimal(text[:-1]))


SCHEMA_KEYS = sorted(
    {*PROJECT_KEYS, *SERVICE_KEYS, *QUEUE_KEYS, *RATE_LIMIT_KEYS, *RETRY_KEYS, *PROBES_KEYS, *PROBE_KEYS, *VPC_KEYS}
    | {"default"}
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["10s", "0.5s", "1Gi", "4", GOOD_SA, "allUsers", "INGRESS_TRAFFIC_ALL"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(SCHEMA_KEYS) | st.text(max_size=6), children, max_size=5)
    ),
    max_leaves=20,
)

FUZZ_TARGETS = {
    "queues": lambda v: config(queues=Replace(v)),
    "service": lambda v: config(service=Replace(v)),
    "enqueuers": lambda v: config(enqueuers=v),
    "deletionProtection": lambda v: config(deletionProtection=v),
    "namePrefix": lambda v: config(namePrefix=encode(v)),
    "queues.default": lambda v: config(queues=Replace({"default": v})),
    "queues.default.retry": lambda v: config(queues={"default": {"retry": Replace(v)}}),
    "queues.default.rateLimits": lambda v: config(queues={"default": {"rateLimits": Replace(v)}}),
    "service.env": lambda v: config(service={"env": Replace(v)}),
    "service.secretEnv": lambda v: config(service={"secretEnv": Replace(v)}),
    "service.probes": lambda v: config(service={"probes": Replace(v)}),
    "service.probes.startup": lambda v: config(service={"probes": {"startup": Replace(v)}}),
    "service.vpc": lambda v: config(service={"vpc": Replace(v)}),
    "labels": lambda v: config(labels=v),
}


@hyp_settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(FUZZ_TARGETS)), json_values)
def test_arbitrary_values_load_or_raise_settings_error(target: str, value: Any) -> None:
    try:
        s = load(FUZZ_TARGETS[target](value))
    except SettingsError as error:
        assert error.problems
        assert all(isinstance(p, str) and ": " in p for p in error.problems)
    else:
        assert isinstance(s, Settings)
        assert s.queues


# --- defect 6: service.env names and values the stack cannot accept ---------------------------------


def env_case(case_id: str, name: str, value: str, fragment: str) -> Any:
    return pytest.param(name, value, fragment, id=case_id)


STACK_OWNED = "the stack owns every TASKS_* name"
LOADER = "is a loader variable"
TRUST = "sets the service's credentials or the certificates it trusts"
CONTROL = "control character"

BAD_ENV = [
    env_case("tasks-verify-oidc", "TASKS_VERIFY_OIDC", "false", STACK_OWNED),
    env_case("tasks-certs-url", "TASKS_OIDC_CERTS_URL", "http://127.0.0.1:9/certs", STACK_OWNED),
    env_case("tasks-audience", "TASKS_OIDC_AUDIENCE", "https://other.example", "reserved"),
    env_case("tasks-any", "TASKS_FUTURE_SETTING", "1", STACK_OWNED),
    env_case("ld-preload", "LD_PRELOAD", "/tmp/evil.so", LOADER),
    env_case("ld-library-path", "LD_LIBRARY_PATH", "/tmp", LOADER),
    env_case("pythonpath", "PYTHONPATH", "/tmp", LOADER),
    env_case("pythonhome", "PYTHONHOME", "/tmp", LOADER),
    env_case("pythonstartup", "PYTHONSTARTUP", "/tmp/x.py", LOADER),
    env_case("adc-key-file", "GOOGLE_APPLICATION_CREDENTIALS", "/tmp/key.json", TRUST),
    env_case("cloudsdk", "CLOUDSDK_CORE_ACCOUNT", "me@example.com", TRUST),
    env_case("metadata-host", "GCE_METADATA_HOST", "127.0.0.1:9", TRUST),
    env_case("metadata-ip", "GCE_METADATA_IP", "127.0.0.1:9", TRUST),
    env_case("metadata-root", "GCE_METADATA_ROOT", "127.0.0.1:9", TRUST),
    env_case("ssl-cert-file", "SSL_CERT_FILE", "/tmp/ca.pem", TRUST),
    env_case("ssl-cert-dir", "SSL_CERT_DIR", "/tmp", TRUST),
    env_case("requests-ca", "REQUESTS_CA_BUNDLE", "/tmp/ca.pem", TRUST),
    env_case("curl-ca", "CURL_CA_BUNDLE", "/tmp/ca.pem", TRUST),
    env_case("grpc-roots", "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", "/tmp/ca.pem", TRUST),
    env_case("nul", "MODE", "a\x00b", f"{CONTROL} U+0000 at position 1"),
    env_case("newline", "MODE", "a\nb", f"{CONTROL} U+000A at position 1"),
    env_case("tab", "MODE", "\tx", f"{CONTROL} U+0009 at position 0"),
    env_case("escape", "MODE", "x\x1b[31m", f"{CONTROL} U+001B at position 1"),
    env_case("del", "MODE", "x\x7f", f"{CONTROL} U+007F at position 1"),
]


@pytest.mark.parametrize(("name", "value", "fragment"), BAD_ENV)
def test_env_refuses_stack_loader_and_trust_names_and_control_characters(name: str, value: str, fragment: str) -> None:
    problems = problems_of(config(service={"env": {name: value}}))
    assert [path_of(p) for p in problems] == [f"service.env.{name}"], problems
    assert fragment in problems[0], problems[0]


@pytest.mark.parametrize(
    "env",
    [
        {"LDAP_URL": "ldap://x"},  # LD_ is the loader's prefix, not LD
        {"MY_TASKS_MODE": "on"},  # TASKS_ only as a prefix
        {"GREETING": "grüß dich, 世界 ✓"},  # any printable text
        {"SPACED": "a b  c"},
        {"EMPTY": ""},
        {"HTTPS_PROXY": "http://proxy.internal:3128"},
    ],
)
def test_env_accepts_other_names_and_printable_values(env: dict[str, str]) -> None:
    assert load(config(service={"env": env})).service.env == tuple(env.items())


# --- defect 7: enqueuer members, each kind against its grammar --------------------------------------


def member_case(case_id: str, member: str, fragment: str) -> Any:
    return pytest.param(member, fragment, id=case_id)


WHITESPACE = "has whitespace or a control character"
REFUSED_MEMBERS = [
    member_case("domain-newline-allUsers", "domain:example.com\nallUsers", WHITESPACE),
    member_case("domain-space-allUsers", "domain: allUsers", WHITESPACE),
    member_case("domain-star", "domain:*", "domain members need a DNS domain"),
    member_case("domain-no-dot", "domain:localhost", "domain members need a DNS domain"),
    member_case("principal-space", "principal: ", WHITESPACE),
    member_case("trailing-space", "user:alex@example.com ", WHITESPACE),
    member_case("tab-inside", "user:alex\t@example.com", WHITESPACE),
    member_case("public-all", "principalSet://goog/public:all", "is public"),
    member_case(
        "org-wide-service-accounts",
        "principalSet://cloudresourcemanager.googleapis.com/organizations/123/type/ServiceAccount",
        "every service account of an organization",
    ),
    member_case(
        "folder-wide-service-accounts",
        "principalSet://cloudresourcemanager.googleapis.com/folders/123/type/ServiceAccount",
        "every service account of a folder",
    ),
    member_case(
        "project-wide-service-accounts",
        "principalSet://cloudresourcemanager.googleapis.com/projects/123/type/ServiceAccount",
        "every service account of a project",
    ),
    member_case("user-no-domain", "user:alex", "user members need an email address"),
    member_case("user-two-ats", "user:a@b@example.com", "user members need an email address"),
    member_case("group-empty", "group:", "group members need an email address"),
    member_case("sa-bad-domain", "serviceAccount:api@-x.example.com", "serviceAccount members need an email address"),
    member_case(
        "workload-project-id-not-number",
        "principal://iam.googleapis.com/projects/my-proj/locations/global/workloadIdentityPools/github/subject/x",
        "not a principal identifier",
    ),
    member_case(
        "workload-empty-subject",
        "principal://iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/github/subject/",
        "not a principal identifier",
    ),
    member_case(
        "workload-regional",
        "principalSet://iam.googleapis.com/projects/123/locations/europe-west1/workloadIdentityPools/github/*",
        "not a principal identifier",
    ),
    member_case(
        "workload-short-pool",
        "principalSet://iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/gh/*",
        "not a principal identifier",
    ),
    member_case(
        "workload-set-nothing",
        "principalSet://iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/github/",
        "not a principal identifier",
    ),
    member_case(
        "workforce-attribute-no-value",
        "principalSet://iam.googleapis.com/locations/global/workforcePools/contractors/attribute.team/",
        "not a principal identifier",
    ),
    member_case("goog-subject-not-email", "principal://goog/subject/alex", "not a principal identifier"),
    member_case("goog-group-deny-form", "principalSet://goog/group/admins@example.com", "not a principal identifier"),
    member_case("unknown-prefix", "deleted:user:alex@example.com?uid=1", "has no member type prefix"),
    member_case("prefix-case", "User:alex@example.com", "has no member type prefix"),
]


@pytest.mark.parametrize(("member", "fragment"), REFUSED_MEMBERS)
def test_enqueuer_members_are_refused_unless_they_follow_their_grammar(member: str, fragment: str) -> None:
    problems = problems_of(config(enqueuers=[member]))
    assert [path_of(p) for p in problems] == ["enqueuers[0]"], problems
    assert fragment in problems[0], problems[0]
    assert "\n" not in problems[0]


ACCEPTED_MEMBERS = [
    "user:alex@example.com",
    "user:first.last+tag@sub.example.co.uk",
    "group:admins@example.com",
    "serviceAccount:api@my-project.iam.gserviceaccount.com",
    "serviceAccount:my-project.svc.id.goog[jobs/worker]",
    "domain:example.com",
    "domain:xn--bcher-kva.example",
    "principal://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/github"
    "/subject/repo:acme/app:ref:refs/heads/main",
    "principal://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools"
    "/my-project.svc.id.goog/subject/ns/jobs/sa/worker",
    "principal://iam.googleapis.com/locations/global/workforcePools/altostrat-contractors/subject/raha@altostrat.com",
    "principal://goog/subject/alex@example.com",
    "principalSet://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/github/group/ops",
    "principalSet://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/github"
    "/attribute.repository/acme/app",
    "principalSet://iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/github/*",
    "principalSet://iam.googleapis.com/locations/global/workforcePools/altostrat-contractors/group/admins@altostrat.com",
    "principalSet://iam.googleapis.com/locations/global/workforcePools/altostrat-contractors/attribute.department/sales",
    "principalSet://iam.googleapis.com/locations/global/workforcePools/altostrat-contractors/*",
]


@pytest.mark.parametrize("member", ACCEPTED_MEMBERS)
def test_enqueuer_members_in_their_grammar_are_accepted(member: str) -> None:
    assert load(config(queues=queue(enqueuers=[member]))).queue("default").enqueuers == (member,)


# --- defect 8: rates Cloud Tasks can run ----------------------------------------------------------

ONE_A_DAY = 1 / 86400


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        pytest.param(5e-324, "5e-324 is below the minimum of 1/86400 (one dispatch a day)", id="denormal"),
        pytest.param(1e-6, "1e-06 is below the minimum of 1/86400 (one dispatch a day)", id="one-a-fortnight"),
        pytest.param(ONE_A_DAY * 0.999, "is below the minimum of 1/86400", id="just-below"),
        pytest.param(-1, "-1 is below the minimum of 1/86400", id="negative"),
        pytest.param(0, "0 would never dispatch", id="zero"),
    ],
)
def test_rate_below_one_dispatch_a_day_is_refused(value: float, fragment: str) -> None:
    problems = problems_of(config(queues=rate(value)))
    assert [path_of(p) for p in problems] == [RATE], problems
    assert fragment in problems[0], problems[0]


def test_one_dispatch_a_day_is_the_lowest_rate() -> None:
    assert load(config(queues=rate(ONE_A_DAY))).queue("default").rate_limits.max_dispatches_per_second == ONE_A_DAY


# --- defect 9: a retry window that outlasts IAM propagation -----------------------------------------


@pytest.mark.parametrize(
    ("retry_config", "window"),
    [
        pytest.param(
            {"maxAttempts": 5, "minBackoff": "1s", "maxBackoff": "60s", "maxDoublings": 3}, "15s", id="old-dev-default"
        ),
        pytest.param({"maxAttempts": 1}, "0s", id="one-attempt"),
        pytest.param({"maxAttempts": 0}, "0s", id="zero-attempts"),
        pytest.param({"maxAttempts": 5}, "1.5s", id="cloud-tasks-backoff-five-attempts"),
        pytest.param({"maxAttempts": -1, "maxRetryDuration": "60s"}, "60s", id="unlimited-attempts-60s"),
        pytest.param({"maxAttempts": 5, "maxRetryDuration": "300s"}, "300s", id="duration-outlasts-attempts"),
        pytest.param(
            {"maxAttempts": 10, "minBackoff": "10s", "maxBackoff": "30s", "maxRetryDuration": "5s"},
            "240s",
            id="attempts-outlast-duration",
        ),
    ],
)
def test_retry_window_below_iam_propagation_is_refused(retry_config: dict[str, Any], window: str) -> None:
    problems = problems_of(config(queues=retry(**retry_config)))
    assert [path_of(p) for p in problems] == [RETRY], problems
    assert f"retried for {window} after its first attempt" in problems[0], problems[0]
    assert "less than the 420s new IAM bindings can take to apply" in problems[0]
    assert "maxAttempts" in problems[0] and "maxBackoff" in problems[0] and "maxRetryDuration" in problems[0]


@pytest.mark.parametrize(
    "retry_config",
    [
        pytest.param({}, id="cloud-tasks-defaults"),
        pytest.param({"maxAttempts": 1, "maxRetryDuration": "420s"}, id="exactly-420s"),
        pytest.param({"maxAttempts": 15, "minBackoff": "1s", "maxBackoff": "60s", "maxDoublings": 3}, id="dev-default"),
        pytest.param({"maxAttempts": -1, "maxRetryDuration": "86400s"}, id="a-day"),
    ],
)
def test_retry_window_at_least_iam_propagation_is_accepted(retry_config: dict[str, Any]) -> None:
    assert load(config(queues=retry(**retry_config))).queue("default").retry


def test_every_stack_file_outlasts_iam_propagation() -> None:
    from harness import stack_file_config

    for stack in ("dev", "prod"):
        assert load_settings(stack_file_config(stack), stack).queues


# --- the production keys: CPU, probes, secrets, VPC egress, labels ----------------------------------


def probe(kind: str, **values: Any) -> dict[str, Any]:
    return {"probes": {kind: values}}


STARTUP = "service.probes.startup"
LIVENESS = "service.probes.liveness"
SECRET_RULE_TEXT = "is not a Secret Manager secret"

PRODUCTION_REJECTED = [
    case(
        "cpuAlwaysAllocated-string",
        "service.cpuAlwaysAllocated",
        'expected true or false, got string "yes"',
        service={"cpuAlwaysAllocated": "yes"},
    ),
    case(
        "startupCpuBoost-number",
        "service.startupCpuBoost",
        "expected true or false, got number 1",
        service={"startupCpuBoost": 1},
    ),
    # probes
    case(
        "startup-period-0",
        f"{STARTUP}.periodSeconds",
        "0 is below the minimum of 1",
        service=probe("startup", periodSeconds=0),
    ),
    case(
        "startup-period-241",
        f"{STARTUP}.periodSeconds",
        "241 is above the maximum of 240 (Cloud Run startup probe",
        service=probe("startup", periodSeconds=241),
    ),
    case(
        "startup-delay-241",
        f"{STARTUP}.initialDelaySeconds",
        "241 is above the maximum of 240",
        service=probe("startup", initialDelaySeconds=241),
    ),
    case(
        "startup-delay-negative",
        f"{STARTUP}.initialDelaySeconds",
        "-1 is below the minimum of 0",
        service=probe("startup", initialDelaySeconds=-1),
    ),
    case(
        "startup-timeout-above-period",
        f"{STARTUP}.timeoutSeconds",
        "11 is above periodSeconds 10",
        service=probe("startup", timeoutSeconds=11),
    ),
    case(
        "startup-threshold-0",
        f"{STARTUP}.failureThreshold",
        "0 is below the minimum of 1",
        service=probe("startup", failureThreshold=0),
    ),
    case(
        "startup-budget",
        STARTUP,
        "periodSeconds x failureThreshold is 250s, above the 240s",
        service=probe("startup", failureThreshold=25),
    ),
    case(
        "startup-budget-with-delay",
        STARTUP,
        "is 241s, above the 240s",
        service=probe("startup", initialDelaySeconds=1, periodSeconds=60, failureThreshold=4),
    ),
    case(
        "liveness-period-3601",
        f"{LIVENESS}.periodSeconds",
        "3601 is above the maximum of 3600 (Cloud Run liveness",
        service=probe("liveness", periodSeconds=3601),
    ),
    case(
        "liveness-delay-3601",
        f"{LIVENESS}.initialDelaySeconds",
        "3601 is above the maximum of 3600",
        service=probe("liveness", initialDelaySeconds=3601),
    ),
    case(
        "liveness-timeout-above-period",
        f"{LIVENESS}.timeoutSeconds",
        "31 is above periodSeconds 30",
        service=probe("liveness", periodSeconds=30, timeoutSeconds=31),
    ),
    case(
        "liveness-period-string",
        f"{LIVENESS}.periodSeconds",
        'expected a whole number, got string "10"',
        service=probe("liveness", periodSeconds="10"),
    ),
    case(
        "probe-readiness",
        "service.probes.readiness",
        "unknown key; allowed keys are startup, liveness",
        service={"probes": {"readiness": {}}},
    ),
    case(
        "probe-success-threshold",
        f"{STARTUP}.successThreshold",
        "unknown key; allowed keys are initialDelaySeconds",
        service=probe("startup", successThreshold=1),
    ),
    # secretEnv
    case(
        "secret-env-list",
        "service.secretEnv",
        "expected an object of NAME: secret strings, got list",
        service={"secretEnv": ["DB=db"]},
    ),
    case(
        "secret-env-bad-name",
        "service.secretEnv.1X",
        "not an environment variable name",
        service={"secretEnv": {"1X": "db"}},
    ),
    case("secret-env-reserved", "service.secretEnv.PORT", "reserved", service={"secretEnv": {"PORT": "db"}}),
    case(
        "secret-env-stack-owned",
        "service.secretEnv.TASKS_KEY",
        "the stack owns every TASKS_* name",
        service={"secretEnv": {"TASKS_KEY": "db"}},
    ),
    case(
        "secret-env-loader",
        "service.secretEnv.LD_PRELOAD",
        "is a loader variable",
        service={"secretEnv": {"LD_PRELOAD": "db"}},
    ),
    case(
        "secret-env-trust",
        "service.secretEnv.GOOGLE_APPLICATION_CREDENTIALS",
        "credentials",
        service={"secretEnv": {"GOOGLE_APPLICATION_CREDENTIALS": "sa-key"}},
    ),
    case(
        "secret-env-also-plain",
        "service.secretEnv.DB",
        "also set in service.env",
        service={"env": {"DB": "x"}, "secretEnv": {"DB": "db"}},
    ),
    case(
        "secret-env-number",
        "service.secretEnv.DB",
        "expected a string naming a secret, got number 5",
        service={"secretEnv": {"DB": 5}},
    ),
    *[
        case(
            f"secret-ref-{name}",
            "service.secretEnv.DB",
            f"{ref!r} {SECRET_RULE_TEXT}",
            service={"secretEnv": {"DB": ref}},
        )
        for name, ref in {
            "empty": "",
            "space": "db password",
            "version-0": "db:0",
            "version-word": "db:v1",
            "two-versions": "db:latest:1",
            "path-with-colon": "projects/other-proj/secrets/db:3",
            "short-with-versions": "db/versions/3",
            "bad-project": "projects/My_Proj/secrets/db",
            "path-version-0": "projects/other-proj/secrets/db/versions/0",
            "id-256": "s" * 256,
            "dot": "db.password",
        }.items()
    ],
    # vpc
    case("vpc-empty", "service.vpc", "set network, subnetwork or both", service={"vpc": {}}),
    case("vpc-string", "service.vpc", 'expected an object, got string "default"', service={"vpc": "default"}),
    case(
        "vpc-bad-network",
        "service.vpc.network",
        "'Bad_Net' is not a VPC network",
        service={"vpc": {"network": "Bad_Net"}},
    ),
    case(
        "vpc-network-path-typo",
        "service.vpc.network",
        "is not a VPC network",
        service={"vpc": {"network": "projects/host-proj/networks/shared"}},
    ),
    case(
        "vpc-bad-subnetwork",
        "service.vpc.subnetwork",
        "is not a subnetwork",
        service={"vpc": {"subnetwork": "projects/host-proj/subnetworks/s"}},
    ),
    case(
        "vpc-subnetwork-other-region",
        "service.vpc.subnetwork",
        "is in us-central1; Direct VPC egress needs",
        service={"vpc": {"subnetwork": "projects/host-proj/regions/us-central1/subnetworks/tasks"}},
    ),
    case(
        "vpc-egress",
        "service.vpc.egress",
        "'ALL' is not one of PRIVATE_RANGES_ONLY, ALL_TRAFFIC",
        service={"vpc": {"network": "default", "egress": "ALL"}},
    ),
    case(
        "vpc-tags-string",
        "service.vpc.networkTags",
        'expected a list of network tags, got string "tasks"',
        service={"vpc": {"network": "default", "networkTags": "tasks"}},
    ),
    case(
        "vpc-tag-uppercase",
        "service.vpc.networkTags[1]",
        'string "Tasks" is not a network tag',
        service={"vpc": {"network": "default", "networkTags": ["ok", "Tasks"]}},
    ),
    case(
        "vpc-tag-64",
        "service.vpc.networkTags[0]",
        "is not a network tag",
        service={"vpc": {"network": "default", "networkTags": ["t" * 64]}},
    ),
    case(
        "vpc-tag-number",
        "service.vpc.networkTags[0]",
        "number 5 is not a network tag",
        service={"vpc": {"network": "default", "networkTags": [5]}},
    ),
    case(
        "vpc-connector",
        "service.vpc.connector",
        "unknown key; allowed keys are network, subnetwork",
        service={"vpc": {"network": "default", "connector": "c"}},
    ),
    # labels
    case("labels-list", "labels", "expected an object of key: value strings, got list", labels=["team"]),
    case("label-key-uppercase", "labels.Team", "'Team' is not a label key", labels={"Team": "x"}),
    case("label-key-digit-first", "labels.1team", "starts with a lowercase letter", labels={"1team": "x"}),
    case("label-key-empty", "labels.", "'' is not a label key (1-63", labels={"": "x"}),
    case("label-key-64", "labels." + "k" * 64, "is not a label key", labels={"k" * 64: "x"}),
    case("label-key-dot", "labels.a.b", "'a.b' is not a label key", labels={"a.b": "x"}),
    case(
        "label-value-uppercase",
        "labels.team",
        "the value 'Payments' is not a label value (0-63",
        labels={"team": "Payments"},
    ),
    case("label-value-64", "labels.team", "is not a label value", labels={"team": "v" * 64}),
    case("label-value-space", "labels.team", "is not a label value", labels={"team": "a b"}),
    case("label-value-number", "labels.cost", "expected a string, got number 1234", labels={"cost": 1234}),
    case(
        "label-managed-by",
        "labels.managed-by",
        "set by the stack (managed-by: cloudrun-tasks)",
        labels={"managed-by": "terraform"},
    ),
    case("label-stack", "labels.stack", "set by the stack (stack: dev)", labels={"stack": "prod"}),
    case(
        "labels-63",
        "labels",
        "63 labels and the stack's 2 (managed-by, stack) are more than the 64",
        labels={f"l{n}": "x" for n in range(63)},
    ),
]


@pytest.mark.parametrize(("overrides", "stack", "path", "fragment"), PRODUCTION_REJECTED)
def test_production_keys_rejected(overrides: dict[str, Any], stack: str, path: str, fragment: str) -> None:
    problems = problems_of(config(**overrides), stack)
    assert [path_of(p) for p in problems] == [path], problems
    assert fragment in problems[0], problems[0]


def test_production_rejection_ids_are_unique() -> None:
    ids = [p.id for p in PRODUCTION_REJECTED + REJECTED]
    assert len(ids) == len(set(ids))


PRODUCTION_ACCEPTED = [
    accept("cpu-always", "service.cpu_always_allocated", True, service={"cpuAlwaysAllocated": True}),
    accept("no-boost", "service.startup_cpu_boost", False, service={"startupCpuBoost": False}),
    accept(
        "startup-budget-240",
        "service.startup_probe",
        ProbeSettings(initial_delay_seconds=0, period_seconds=240, timeout_seconds=240, failure_threshold=1),
        service=probe("startup", periodSeconds=240, timeoutSeconds=240, failureThreshold=1),
    ),
    accept(
        "startup-delay-and-budget-240",
        "service.startup_probe",
        ProbeSettings(initial_delay_seconds=40, period_seconds=10, timeout_seconds=1, failure_threshold=20),
        service=probe("startup", initialDelaySeconds=40, failureThreshold=20),
    ),
    accept(
        "liveness-no-budget",
        "service.liveness_probe",
        ProbeSettings(initial_delay_seconds=3600, period_seconds=3600, timeout_seconds=3600, failure_threshold=1000),
        service=probe(
            "liveness", initialDelaySeconds=3600, periodSeconds=3600, timeoutSeconds=3600, failureThreshold=1000
        ),
    ),
    *[
        accept(
            f"secret-{name}", "service.secret_env", (SecretEnv("DB", *expected),), service={"secretEnv": {"DB": ref}}
        )
        for name, (ref, expected) in {
            "id": ("db-password", ("db-password", None, "latest")),
            "id-latest": ("db:latest", ("db", None, "latest")),
            "id-version": ("db_2:12", ("db_2", None, "12")),
            "path": ("projects/other-proj/secrets/db", ("db", "other-proj", "latest")),
            "path-number": ("projects/123456789012/secrets/DB/versions/latest", ("DB", "123456789012", "latest")),
            "path-version": ("projects/other-proj/secrets/S-1_x/versions/7", ("S-1_x", "other-proj", "7")),
            "id-255": ("s" * 255, ("s" * 255, None, "latest")),
        }.items()
    ],
    accept(
        "vpc-network-only",
        "service.vpc",
        VpcEgress(network="default", subnetwork=None, egress="PRIVATE_RANGES_ONLY", network_tags=()),
        service={"vpc": {"network": "default"}},
    ),
    accept(
        "vpc-subnetwork-only",
        "service.vpc",
        VpcEgress(network=None, subnetwork="tasks-europe-west1", egress="PRIVATE_RANGES_ONLY", network_tags=()),
        service={"vpc": {"subnetwork": "tasks-europe-west1"}},
    ),
    accept("vpc-null", "service.vpc", None, service={"vpc": None}),
    accept(
        "labels-merged-sorted",
        "labels",
        (("cost-center", "cc-1"), ("managed-by", "cloudrun-tasks"), ("stack", "dev"), ("team", "")),
        labels={"team": "", "cost-center": "cc-1"},
    ),
    accept(
        "labels-international",
        "labels",
        (("managed-by", "cloudrun-tasks"), ("stack", "dev"), ("équipe", "paiements"), ("チーム", "決済")),
        labels={"チーム": "決済", "équipe": "paiements"},
    ),
    accept("labels-62", "labels", 64, labels={f"l{n}": "x" for n in range(62)}),
    accept("label-key-63", "labels", 3, labels={"k" * 63: "v" * 63}),
]


@pytest.mark.parametrize(("overrides", "dotted", "expected"), PRODUCTION_ACCEPTED)
def test_production_keys_accepted(overrides: dict[str, Any], dotted: str, expected: Any) -> None:
    value = pick(load(config(**overrides)), dotted)
    assert (len(value) if isinstance(expected, int) and not isinstance(expected, bool) else value) == expected


@pytest.mark.parametrize(
    ("stack", "label"),
    [("dev", "dev"), ("Feature_X.1", "feature_x-1"), ("prod", "prod"), ("a" * 70, "a" * 63)],
)
def test_stack_label_is_the_stack_name_made_label_safe(stack: str, label: str) -> None:
    s = load(config(namePrefix="tasks"), stack)
    assert dict(s.labels)["stack"] == label


# --- secret config values never reach plain text ---------------------------------------------------


def test_a_secret_service_key_may_not_feed_plain_env() -> None:
    cfg = config(service={"env": {"MODE": "worker"}, "secretEnv": {"DB": "db"}})
    with pytest.raises(SettingsError) as raised:
        load_settings(cfg, "dev", secret_keys={f"{NAMESPACE}:service"})
    assert [path_of(p) for p in raised.value.problems] == ["service.env"]
    assert "is a secret config value" in raised.value.problems[0]
    assert "service.secretEnv" in raised.value.problems[0]
    assert "worker" not in str(raised.value)


@pytest.mark.parametrize(
    ("secret_keys", "overrides"),
    [
        pytest.param({f"{NAMESPACE}:service"}, {"service": {"secretEnv": {"DB": "db"}}}, id="secret-service-no-env"),
        pytest.param({f"{NAMESPACE}:queues"}, {"service": {"env": {"MODE": "x"}}}, id="other-key-secret"),
        pytest.param({"gcp:project"}, {"service": {"env": {"MODE": "x"}}}, id="gcp-key-secret"),
        pytest.param((), {"service": {"env": {"MODE": "x"}}, "labels": {"team": "a"}}, id="nothing-secret"),
    ],
)
def test_secret_keys_that_feed_no_plain_text_are_fine(secret_keys: Any, overrides: dict[str, Any]) -> None:
    assert load_settings(config(**overrides), "dev", secret_keys=secret_keys).service


def test_a_secret_labels_key_is_refused() -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(config(labels={"team": "a"}), "dev", secret_keys={f"{NAMESPACE}:labels"})
    assert [path_of(p) for p in raised.value.problems] == ["labels"]


def test_secret_config_keys_come_from_the_environment_and_from_set_all_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import contextvars

    from pulumi.runtime import config as runtime_config

    monkeypatch.setenv("PULUMI_CONFIG_SECRET_KEYS", json.dumps([f"{NAMESPACE}:labels"]))
    monkeypatch.delenv("PULUMI_CONFIG", raising=False)

    def in_process() -> frozenset[str]:
        runtime_config.set_all_config(
            {f"{NAMESPACE}:service": "{}", f"{NAMESPACE}:queues": "{}"}, secret_keys=[f"{NAMESPACE}:service"]
        )
        return secret_config_keys()

    # A fresh context, so the config set here does not leak into other tests.
    assert contextvars.copy_context().run(in_process) == {f"{NAMESPACE}:labels", f"{NAMESPACE}:service"}
    monkeypatch.delenv("PULUMI_CONFIG_SECRET_KEYS")
    assert contextvars.copy_context().run(in_process) == {f"{NAMESPACE}:service"}


# --- the retry window law ---------------------------------------------------------------------------


@PROPERTY
@given(
    attempts=st.integers(0, 400),
    min_backoff=st.sampled_from([0.0, 1e-9, 0.1, 0.37, 1.0, 5.0, 60.0]),
    max_backoff=st.sampled_from([0.5, 1.0, 30.0, 60.0, 3600.0]),
    doublings=st.integers(0, 40),
)
def test_time_of_attempt_is_the_sum_of_the_backoffs_before_it(
    attempts: int, min_backoff: float, max_backoff: float, doublings: int
) -> None:
    from contract.retry import RetryPolicy as LawPolicy
    from contract.retry import backoff_delay, time_of_attempt

    policy = LawPolicy(max_attempts=attempts, min_backoff=min_backoff, max_backoff=max_backoff, max_doublings=doublings)
    expected = sum(backoff_delay(policy, n) for n in range(1, attempts))
    assert time_of_attempt(policy, attempts) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_time_of_attempt_is_closed_form_for_the_largest_attempt_limit() -> None:
    from contract.retry import RetryPolicy as LawPolicy
    from contract.retry import retry_window

    huge = LawPolicy(max_attempts=2**31 - 1, min_backoff=1e-9, max_backoff=1e-9, max_doublings=0)
    assert retry_window(huge) == pytest.approx((2**31 - 2) * 1e-9)


def test_the_redis_url_secret_follows_the_secret_reference_forms() -> None:
    with pytest.raises(SettingsError) as raised:
        load(config(service={"idempotencyRedisUrlSecret": "redis://10.0.0.3:6379"}))
    (problem,) = raised.value.problems
    assert problem.startswith("service.idempotencyRedisUrlSecret: 'redis://10.0.0.3:6379' ")
    settings = load(config(service={"idempotencyRedisUrlSecret": "projects/shared/secrets/redis-url"}))
    assert [(e.name, e.project, e.secret, e.version) for e in settings.service.secret_env] == [
        ("TASKS_IDEMPOTENCY_REDIS_URL", "shared", "redis-url", "latest")
    ]


# --- operators: who works the dead-letter queue ------------------------------------------------------


def test_operators_are_read_in_order_without_repeats_and_default_to_none() -> None:
    user, group = "user:oncall@example.com", "group:tasks-ops@example.com"
    assert load(config()).operators == ()
    assert load(config(operators=[user, group, user, GOOD_SA])).operators == (user, group, GOOD_SA)


def test_a_queue_key_only_like_the_dead_letter_key_is_a_queue_like_any_other() -> None:
    # Only the exact key would collide (the dead-letter queue's resources are named after it).
    s = load(config(queues={"dead-letters-2": {}, "Dead-Letters": {}}))
    assert [q.key for q in s.queues] == ["default", "dead-letters-2", "Dead-Letters"]


# --- warnings: retry limits that make the handler guess the final attempt ------------------------------

GUESS = "the handler cannot tell whether a failing attempt is the last one"


def final_attempt_warnings(s: Settings) -> list[str]:
    return [w for w in s.warnings if GUESS in w]


@pytest.mark.parametrize(
    "retry_config",
    [
        pytest.param({}, id="cloud-tasks-defaults"),  # 100 attempts, no duration
        pytest.param({"maxAttempts": 15, "minBackoff": "1s", "maxBackoff": "60s", "maxDoublings": 3}, id="dev-default"),
        # Attempt 20 comes at least 6553.5s (0.1s doubled 16 times, summed) after the first, past the hour.
        pytest.param({"maxAttempts": 20, "maxRetryDuration": "3600s"}, id="duration-used-up-by-the-last-attempt"),
        # Attempt 5 of 100s, 200s, 400s, 800s backoffs comes at exactly 1500s: used up, the count decides.
        pytest.param(
            {"maxAttempts": 5, "minBackoff": "100s", "maxBackoff": "3600s", "maxRetryDuration": "1500s"},
            id="used-up-exactly-at-the-last-attempt",
        ),
    ],
)
def test_no_warning_where_the_handler_can_always_tell(retry_config: dict[str, Any]) -> None:
    assert load(config(queues=retry(**retry_config))).warnings == ()


def test_a_duration_that_outlasts_the_attempt_limit_warns_with_key_values_and_what_to_do() -> None:
    s = load(config(queues=retry(maxAttempts=10, maxRetryDuration="3600s")))
    assert s.warnings == (
        "queues.default.retry.maxRetryDuration: 3600s outlasts maxAttempts 10 (attempt 10 may come 51.1s after"
        " the first): from attempt 10 on, until the backoff schedule alone passes it, the handler cannot tell"
        " whether a failing attempt is the last one (Cloud Tasks sends no header with the first attempt's time)"
        " except for tasks whose producer set X-Tasks-Not-Before (taskclient does; gcloud does not); it then"
        " records a provisional dead letter and asks for a retry, losing nothing but leaving a record to sort"
        " out; set maxRetryDuration to 0s to decide by attempts alone, or create this queue's tasks with"
        " taskclient",
    )


def test_a_duration_one_backoff_past_the_last_attempt_warns() -> None:
    # Attempt 5 at 1500s (as above), the duration a moment later: attempts 5 and on may come before it is up.
    s = load(config(queues=retry(maxAttempts=5, minBackoff="100s", maxBackoff="3600s", maxRetryDuration="1501s")))
    (warning,) = s.warnings
    assert warning.startswith("queues.default.retry.maxRetryDuration: 1501s outlasts maxAttempts 5 (attempt 5")
    assert "from attempt 5 on" in warning


def test_unlimited_attempts_with_a_duration_warn_and_say_to_bound_the_attempts() -> None:
    s = load(config(queues=retry(maxAttempts=-1, maxRetryDuration="86400s")))
    (warning,) = s.warnings
    assert warning.startswith(
        "queues.default.retry.maxRetryDuration: 86400s with maxAttempts -1 (unlimited) ends retries by time alone:"
    )
    assert GUESS in warning and "X-Tasks-Not-Before (taskclient does; gcloud does not)" in warning
    assert "set maxAttempts to a number and maxRetryDuration to 0s to decide by attempts alone" in warning
    assert "or create this queue's tasks with taskclient" in warning


def test_one_warning_per_queue_that_makes_the_handler_guess() -> None:
    s = load(
        config(
            queues={
                "default": {},
                "timed": {"retry": {"maxAttempts": -1, "maxRetryDuration": "86400s"}},
                "counted": {"retry": {"maxAttempts": 30, "maxRetryDuration": "3600s"}},
                "both": {"retry": {"maxAttempts": 3, "maxRetryDuration": "3600s"}},
            }
        )
    )
    assert [w.partition(":")[0] for w in s.warnings] == [
        "queues.timed.retry.maxRetryDuration",
        "queues.both.retry.maxRetryDuration",
    ]


def test_the_shipped_stacks_warn_exactly_where_the_handler_must_guess() -> None:
    """dev's emails queue retries for an hour past its 10 attempts (at 51.1s), prod's reports queue for a day with
    unlimited attempts: both leave gcloud-created tasks to a guess, so both warn. The other queues decide by
    attempts alone."""
    from harness import stack_file_config

    shown = {
        stack: [w.partition(":")[0] for w in final_attempt_warnings(load_settings(stack_file_config(stack), stack))]
        for stack in ("dev", "prod")
    }
    assert shown == {"dev": ["queues.emails.retry.maxRetryDuration"], "prod": ["queues.reports.retry.maxRetryDuration"]}
