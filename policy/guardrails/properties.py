"""Reading resource properties that may be unknown during preview, and the value formats the rules compare.

How pulumi-policy 1.21 hands over unknowns (pulumi_policy/proxy.py, policy.py): the engine encodes a value that
is not known until the update runs (an output of another resource, e.g. a new service's URL) as one of seven
sentinel strings (`UNKNOWN_STRING_VALUE`, `UNKNOWN_BOOLEAN_VALUE`, ... in `pulumi_policy.proxy`), and the SDK
wraps `props` in `unknown_checking_proxy`: reading such a value raises `pulumi_policy.proxy.UnknownValueError`.
Unset properties are simply missing keys. If that exception escapes a validator, the SDK gives up on the whole
policy for that resource (one advisory "can't run policy ... during preview" note), so one unknown field would
hide violations in every other field. `read` catches it per value instead: an unknown value skips only the
check that needs it, and is never a violation by itself.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

from pulumi_policy import proxy


class Absent(enum.Enum):
    """Why `read` has no value to give."""

    MISSING = "missing"  # not set (or null): the provider's default applies
    UNKNOWN = "unknown"  # set, but computed: known only once the update runs


MISSING: Final = Absent.MISSING
UNKNOWN: Final = Absent.UNKNOWN

_SENTINELS = frozenset(
    {
        proxy.UNKNOWN_BOOLEAN_VALUE,
        proxy.UNKNOWN_NUMBER_VALUE,
        proxy.UNKNOWN_STRING_VALUE,
        proxy.UNKNOWN_ARRAY_VALUE,
        proxy.UNKNOWN_ASSET_VALUE,
        proxy.UNKNOWN_ARCHIVE_VALUE,
        proxy.UNKNOWN_OBJECT_VALUE,
    }
)


def is_unknown(value: Any) -> bool:
    """True for the engine's unknown sentinels (props built without the SDK's proxy still carry them)."""
    return isinstance(value, str) and value in _SENTINELS


def read(props: Mapping[str, Any], path: str, *keys: str) -> Any:
    """The value at a dotted path such as "template.serviceAccount", or MISSING, or UNKNOWN.

    `keys` follow the path verbatim, for keys that hold dots: read(props, "metadata.annotations", "a.b/c").
    """
    value: Any = props
    for key in [*path.split("."), *keys]:
        if not isinstance(value, Mapping):
            return MISSING
        try:
            value = value[key]
        except KeyError:
            return MISSING
        except proxy.UnknownValueError:
            return UNKNOWN
        if value is None:
            return MISSING
        if is_unknown(value):
            return UNKNOWN
    return value


def elements(value: Any) -> Iterator[Any]:
    """The items of a list property, each a value or UNKNOWN; nothing for a value that is not a list."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        return
    # By index, so that one unknown item stands for itself and does not end the walk.
    for index in range(len(value)):
        try:
            item = value[index]
        except proxy.UnknownValueError:
            yield UNKNOWN
            continue
        yield UNKNOWN if is_unknown(item) else item


def is_number(value: Any) -> bool:
    """Numbers arrive as floats (protobuf Struct); a bool is not a number here."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_whole_number(value: Any) -> bool:
    return is_number(value) and float(value).is_integer()


def show(value: Any) -> str:
    """A value as a message quotes it: 5.0 as 5, strings in quotes."""
    if is_whole_number(value):
        return str(int(value))
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


# google.protobuf.Duration in JSON form, as the Cloud Tasks and Cloud Run APIs take it: seconds with an "s".
_DURATION = re.compile(r"(?P<sign>-?)(?P<seconds>\d+(?:\.\d{1,9})?)s")


class DurationError(ValueError):
    """A duration that is not "<seconds>s" (the message says what is wrong, for the violation)."""


def duration_seconds(value: Any) -> float:
    """Seconds in a duration such as "10s" or "0.5s"; DurationError if it is not one, or is negative."""
    match = _DURATION.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise DurationError(f'{show(value)} is not a duration in seconds (such as "10s" or "0.5s")')
    if match["sign"]:
        raise DurationError(f"{show(value)} is negative")
    return float(match["seconds"])
