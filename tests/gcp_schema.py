"""Offline schema check for pulumi-gcp resource inputs.

Why this exists: the unit tests run the Pulumi program under
``pulumi.runtime.set_mocks``, and the mocks accept *any* inputs. The real GCP
provider does not: it rejects unknown properties, missing required ones,
output-only properties and wrongly typed values, but only at preview/up time.
This module is the nearest offline substitute. It validates the inputs of a
registered resource *as the engine sees them* (the camelCase dict the mock
monitor deserialises from ``RegisterResourceRequest.object``) against the Args
classes that pulumi-gcp generates from the provider schema.

Everything is derived from pulumi-gcp and the pulumi SDK metadata: the type
token is resolved through the resource-module registry pulumi-gcp registers
with ``pulumi.runtime.rpc``; engine names come from the ``pulumi.getter(name=...)``
metadata on ``@pulumi.input_type`` classes; types come from the Args
``__init__`` annotations; output-only properties are the ones whose generated
docstring starts with "(Output)" (also "(Output, Beta)", "(Output, Deprecated)").

Wire-format notes: protobuf ``Struct`` has only double numbers, so ints arrive
as integral floats (``3.0``) and are accepted where an int is expected; secrets
arrive wrapped in a signature dict and are unwrapped; unknown values (preview)
are accepted anywhere.
"""

from __future__ import annotations

import collections.abc
import functools
import importlib
import inspect
import re
import sys
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi import _types
from pulumi.output import Unknown
from pulumi.runtime import rpc

_PACKAGE = "gcp"
_OUTPUT_ONLY = re.compile(r"^\(Output(,[^)]*)?\)")
_SCALARS: dict[type, str] = {str: "str", int: "int", float: "float", bool: "bool"}


@dataclass(frozen=True)
class _Prop:
    hint: Any  # normalised: scalar type, Args class, list[...], dict[str, ...], tuple of alternatives, Any
    required: bool
    output_only: bool


def schema_problems(type_token: str, inputs: Mapping[str, Any]) -> list[str]:
    """Problems with `inputs` for the pulumi-gcp resource `type_token`; [] when none.

    `type_token` is e.g. "gcp:cloudtasks/queue:Queue"; `inputs` as the engine sees them (camelCase keys).
    """
    args_cls = _resource_args_class(type_token)
    if args_cls is None:
        return []
    return _check_object(args_cls, inputs, "", type_token)


# --- type token -> Args class ------------------------------------------------


@functools.cache
def _resource_args_class(type_token: str) -> type | None:
    """The ``...Args`` class for a gcp token; None for other packages; ValueError if unresolvable."""
    parts = type_token.split(":")
    if parts[0] != _PACKAGE:
        return None
    if len(parts) != 3:
        raise ValueError(f"malformed pulumi-gcp type token {type_token!r}")
    importlib.import_module("pulumi_gcp")  # registers all gcp resource modules with the runtime
    module = rpc.get_resource_module(_PACKAGE, parts[1], "")
    mod_info = getattr(module, "mod_info", None) or {}
    class_name = mod_info.get("classes", {}).get(type_token)
    if class_name is None:
        raise ValueError(f"{type_token!r} is not a resource registered by pulumi_gcp")
    args_cls = getattr(importlib.import_module(mod_info["fqn"]), f"{class_name}Args", None)
    if args_cls is None or not _types.is_input_type(args_cls):
        raise ValueError(f"no @pulumi.input_type {class_name}Args in {mod_info['fqn']} for {type_token!r}")
    return args_cls


# --- Args class -> schema ----------------------------------------------------


@functools.cache
def _schema(cls: type) -> dict[str, _Prop]:
    """Engine name -> property description for an ``@pulumi.input_type`` class."""
    engine_names = _types.input_type_py_to_pulumi_names(cls)
    globalns = vars(sys.modules[cls.__module__])
    localns = {"Output": pulumi.Output, "T": type(None)}  # pulumi.Input's forward ref
    hints = typing.get_type_hints(cls.__init__, globalns=globalns, localns=localns)
    params = inspect.signature(cls.__init__).parameters
    return {
        engine_names[name]: _Prop(
            hint=_normalise(hints[name]),
            required=param.default is inspect.Parameter.empty,
            output_only=_is_output_only(cls, name),
        )
        for name, param in params.items()
        if param.kind is inspect.Parameter.KEYWORD_ONLY
    }


def _is_output_only(cls: type, python_name: str) -> bool:
    """pulumi-gcp starts the docs of output-only nested properties with "(Output)"."""
    doc = inspect.getdoc(getattr(cls, python_name)) or ""
    return bool(_OUTPUT_ONLY.match(doc))


def _normalise(hint: Any) -> Any:
    """Strip Input/Optional/ArgsDict wrappers, leaving what a plain value must match."""
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        members = [a for a in typing.get_args(hint) if not _is_wrapper(a)]
        if any(_types.is_input_type(a) for a in members):
            members = [a for a in members if not typing.is_typeddict(a)]
        unique = list(dict.fromkeys(_normalise(a) for a in members))
        return unique[0] if len(unique) == 1 else tuple(unique)  # a tuple means "any of"
    if origin in (collections.abc.Sequence, list):
        return list[_normalise(typing.get_args(hint)[0])]
    if origin in (collections.abc.Mapping, dict):
        return dict[str, _normalise(typing.get_args(hint)[1])]
    return hint


def _is_wrapper(member: Any) -> bool:
    """Union members that only exist to accept Awaitables, Outputs or None."""
    origin = typing.get_origin(member) or member
    return member is type(None) or origin in (collections.abc.Awaitable, pulumi.Output)


# --- value checking ----------------------------------------------------------


def _check_object(cls: type, value: Mapping[str, Any], path: str, what: str) -> list[str]:
    schema = _schema(cls)
    problems: list[str] = []
    for key, item in value.items():
        where = _join(path, key)
        prop = schema.get(key)
        if prop is None:
            problems.append(f"{where}: unknown property for {what}")
        elif prop.output_only:
            problems.append(f"{where}: output-only property must not be set")
        else:
            problems += _check_value(item, prop.hint, where)
    for key, prop in schema.items():
        if prop.required and value.get(key) is None:
            problems.append(f"{_join(path, key)}: required property missing")
    return problems


def _check_value(value: Any, hint: Any, path: str) -> list[str]:
    value = _unwrap_secret(value)
    if value is None or _is_unknown(value) or hint is Any:
        return []
    if isinstance(hint, tuple):
        return _check_union(value, hint, path)
    origin = typing.get_origin(hint)
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {_describe(value)}"]
        return [p for i, v in enumerate(value) for p in _check_value(v, typing.get_args(hint)[0], f"{path}[{i}]")]
    if origin is dict:
        if not isinstance(value, Mapping):
            return [f"{path}: expected a map, got {_describe(value)}"]
        return [p for k, v in value.items() for p in _check_value(v, typing.get_args(hint)[1], _join(path, k))]
    if _types.is_input_type(hint) or typing.is_typeddict(hint):
        if not isinstance(value, Mapping):
            return [f"{path}: expected an object, got {_describe(value)}"]
        return _check_object(hint, value, path, hint.__name__) if _types.is_input_type(hint) else []
    if hint in _SCALARS:
        return [] if _scalar_matches(value, hint) else [f"{path}: expected {_SCALARS[hint]}, got {_describe(value)}"]
    if isinstance(hint, type) and not isinstance(value, hint):  # e.g. pulumi.Asset / pulumi.Archive
        return [f"{path}: expected {hint.__name__}, got {_describe(value)}"]
    return []


def _check_union(value: Any, members: tuple[Any, ...], path: str) -> list[str]:
    results = [_check_value(value, member, path) for member in members]
    if any(not problems for problems in results):
        return []
    return min(results, key=len)


def _scalar_matches(value: Any, expected: type) -> bool:
    if isinstance(value, bool) or expected is bool:
        return isinstance(value, bool) and expected is bool
    if expected is int:  # the wire only has doubles, so 3 arrives as 3.0
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if expected is float:
        return isinstance(value, (int, float))
    return isinstance(value, expected)


def _unwrap_secret(value: Any) -> Any:
    return rpc.unwrap_rpc_secret(value) if rpc.is_rpc_secret(value) else value


def _is_unknown(value: Any) -> bool:
    return isinstance(value, Unknown) or (isinstance(value, str) and value == rpc.UNKNOWN)


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return "dict"
    if isinstance(value, list):
        return "list"
    return f"{type(value).__name__} {value!r}"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
