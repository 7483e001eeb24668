"""Hand-built validator arguments, the way pulumi-policy's own tests build them.

Props go through the SDK's own `unknown_checking_proxy`, exactly as the analyzer hands them to a validator, so
an unknown sentinel placed in a test raises `UnknownValueError` on access just as it does during preview.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from pulumi_policy import (
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    StackValidationArgs,
)
from pulumi_policy.proxy import (
    UNKNOWN_ARRAY_VALUE,
    UNKNOWN_BOOLEAN_VALUE,
    UNKNOWN_NUMBER_VALUE,
    UNKNOWN_OBJECT_VALUE,
    UNKNOWN_STRING_VALUE,
    unknown_checking_proxy,
)

__all__ = [
    "UNKNOWN_ARRAY",
    "UNKNOWN_BOOL",
    "UNKNOWN_NUMBER",
    "UNKNOWN_OBJECT",
    "UNKNOWN_STRING",
    "Reported",
    "check",
    "options",
    "resource_args",
    "stack_args",
    "stack_resource",
]

UNKNOWN_STRING = UNKNOWN_STRING_VALUE
UNKNOWN_BOOL = UNKNOWN_BOOLEAN_VALUE
UNKNOWN_NUMBER = UNKNOWN_NUMBER_VALUE
UNKNOWN_ARRAY = UNKNOWN_ARRAY_VALUE
UNKNOWN_OBJECT = UNKNOWN_OBJECT_VALUE


def options(parent: str | None = None, protect: bool = False, ignore_changes: list[str] | None = None) -> Any:
    return PolicyResourceOptions(protect, ignore_changes or [], None, [], PolicyCustomTimeouts(0, 0, 0), [], parent)


def urn_for(resource_type: str, name: str, stack: str = "test") -> str:
    return f"urn:pulumi:{stack}::cloudrun-tasks::{resource_type}::{name}"


def resource_args(
    resource_type: str, props: Mapping[str, Any], name: str = "res", config: Mapping[str, Any] | None = None
) -> ResourceValidationArgs:
    proxied = unknown_checking_proxy(copy.deepcopy(dict(props)))
    return ResourceValidationArgs(
        resource_type, proxied, urn_for(resource_type, name), name, options(), None, dict(config or {})
    )


class Reported:
    """A report_violation that records (message, urn) pairs."""

    def __init__(self) -> None:
        self.violations: list[tuple[str, str | None]] = []

    def __call__(self, message: str, urn: str | None = None) -> None:
        self.violations.append((message, urn))

    @property
    def messages(self) -> list[str]:
        return [message for message, _ in self.violations]


Validator = Callable[[Any, Any], None]


def check(
    validator: Validator,
    resource_type: str,
    props: Mapping[str, Any],
    name: str = "res",
    config: Mapping[str, Any] | None = None,
) -> list[str]:
    """The messages a resource validator reports for one hand-built resource."""
    reported = Reported()
    validator(resource_args(resource_type, props, name, config), reported)
    return reported.messages


def stack_resource(
    resource_type: str,
    name: str,
    props: Mapping[str, Any],
    property_dependencies: Mapping[str, list[PolicyResource]] | None = None,
) -> PolicyResource:
    return PolicyResource(
        resource_type,
        unknown_checking_proxy(copy.deepcopy(dict(props))),
        urn_for(resource_type, name),
        name,
        options(),
        None,
        None,
        [d for deps in (property_dependencies or {}).values() for d in deps],
        dict(property_dependencies or {}),
    )


def stack_args(resources: list[PolicyResource], config: Mapping[str, Any] | None = None) -> StackValidationArgs:
    return StackValidationArgs(resources, dict(config or {}))
