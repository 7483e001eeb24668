"""Reading props through the SDK's unknown-checking proxy, and the duration format the rules compare."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from policy_args import UNKNOWN_ARRAY, UNKNOWN_BOOL, UNKNOWN_NUMBER, UNKNOWN_OBJECT, UNKNOWN_STRING
from pulumi_policy.proxy import UnknownValueError, unknown_checking_proxy

from guardrails.properties import (
    MISSING,
    UNKNOWN,
    DurationError,
    duration_seconds,
    elements,
    is_unknown,
    read,
    show,
)

PROPS = {
    "template": {"serviceAccount": "run@p.iam.gserviceaccount.com", "timeout": UNKNOWN_STRING, "labels": None},
    "metadata": {"annotations": {"run.googleapis.com/ingress": "internal"}},
    "rateLimits": UNKNOWN_OBJECT,
    "members": ["user:a@example.com", UNKNOWN_STRING, "group:b@example.com"],
    "urls": UNKNOWN_ARRAY,
    "enabled": UNKNOWN_BOOL,
    "count": UNKNOWN_NUMBER,
}


@pytest.fixture(params=["through the SDK proxy", "plain dict"])
def props(request: pytest.FixtureRequest) -> Any:
    # The analyzer always proxies; the plain form guards validators run on props built without it.
    return unknown_checking_proxy(PROPS) if request.param == "through the SDK proxy" else PROPS


def test_the_sdk_proxy_raises_on_unknowns_which_is_what_read_guards_against() -> None:
    template = unknown_checking_proxy(PROPS)["template"]
    with pytest.raises(UnknownValueError):
        template.get("timeout")


@pytest.mark.parametrize(
    ("path", "keys", "expected"),
    [
        ("template.serviceAccount", (), "run@p.iam.gserviceaccount.com"),
        ("metadata.annotations", ("run.googleapis.com/ingress",), "internal"),
        ("template.missing", (), MISSING),
        ("template.labels", (), MISSING),  # null is unset
        ("template.serviceAccount.deeper", (), MISSING),  # a string is not an object
        ("template.timeout", (), UNKNOWN),
        ("rateLimits.maxDispatchesPerSecond", (), UNKNOWN),  # inside an unknown object
        ("urls", (), UNKNOWN),
        ("enabled", (), UNKNOWN),
        ("count", (), UNKNOWN),
    ],
)
def test_read_gives_the_value_missing_or_unknown(props: Any, path: str, keys: tuple[str, ...], expected: Any) -> None:
    assert read(props, path, *keys) == expected


def test_elements_mark_each_unknown_item_and_keep_walking(props: Any) -> None:
    assert list(elements(read(props, "members"))) == ["user:a@example.com", UNKNOWN, "group:b@example.com"]


@pytest.mark.parametrize("value", [UNKNOWN, MISSING, "a string", 3])
def test_elements_of_something_that_is_not_a_list_are_none(value: Any) -> None:
    assert list(elements(value)) == []


@pytest.mark.parametrize(
    ("value", "known"), [(UNKNOWN_STRING, False), (UNKNOWN_OBJECT, False), ("04da6b54", True), (None, True)]
)
def test_is_unknown_recognises_only_the_engine_sentinels(value: Any, known: bool) -> None:
    assert is_unknown(value) is not known


@pytest.mark.parametrize(
    ("text", "seconds"), [("10s", 10.0), ("0.5s", 0.5), ("0s", 0.0), ("0.100s", 0.1), ("3600s", 3600.0)]
)
def test_durations_in_seconds_form_parse(text: str, seconds: float) -> None:
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1s", '"-1s" is negative'),
        ("10", '"10" is not a duration in seconds (such as "10s" or "0.5s")'),
        ("1m", '"1m" is not a duration in seconds (such as "10s" or "0.5s")'),
        ("PT10S", '"PT10S" is not a duration in seconds (such as "10s" or "0.5s")'),
        ("10 s", '"10 s" is not a duration in seconds (such as "10s" or "0.5s")'),
        (10, '10 is not a duration in seconds (such as "10s" or "0.5s")'),
    ],
)
def test_anything_else_is_a_duration_error_saying_what_is_wrong(value: Any, message: str) -> None:
    with pytest.raises(DurationError) as error:
        duration_seconds(value)
    assert str(error.value) == message


@given(st.decimals(min_value=0, max_value=10**9, places=9, allow_nan=False, allow_infinity=False))
def test_every_non_negative_seconds_value_round_trips(seconds: Decimal) -> None:
    assert duration_seconds(f"{seconds:f}s") == pytest.approx(float(seconds))


@pytest.mark.parametrize(("value", "shown"), [(5.0, "5"), (0.5, "0.5"), ("x", '"x"'), (True, "True")])
def test_show_quotes_values_as_messages_print_them(value: Any, shown: str) -> None:
    assert show(value) == shown
