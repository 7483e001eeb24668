"""What an HTTP task is sent as: the task's own HttpRequest, reshaped by its queue's `http_target`.

Queue-level routing (target.py HttpTarget / UriOverride; cloud-tasks.md 3.3) applies at dispatch time to every
HTTP task of the queue, existing and future, so an UpdateQueue changes where pending tasks go:

* `uri_override`: scheme, host, port (0 clears it), path and query replace the task URL's parts. Enforce mode
  ALWAYS (the default) replaces them outright; IF_NOT_EXISTS fills in only the parts the task URL lacks
  (an empty URL lacks all; a path of "" or "/" counts as absent).
* `http_method`: replaces the task's method; a body-less method (GET...) drops the task body.
* `header_overrides`: set or replace headers (case-insensitively).
* `oidc_token` / `oauth_token`: replace the task's authorization.

Validation follows the same docs: URLs must be http(s) and at most 2083 characters; a body only with POST, PUT
or PATCH; headers under 80 KB; queue-level tokens need both the account and the audience (or scope). A missing
task URL and a scheme other than http(s) get Cloud Tasks' own texts (errors.py); the other texts are ours.
Cloud Tasks also refuses a token on a plain-http URL ("HttpRequest.url must start with 'https://' for request
with HttpRequest.authorization_header", googleapis/nodejs-tasks#353); the emulator does not, since local mode
sends OIDC tokens to a handler on http://127.0.0.1.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from google.cloud import tasks_v2

from contract import cloud_tasks as limits
from localcloud.emulator.errors import URL_REQUIRED_MESSAGE, URL_SCHEME_MESSAGE, invalid_argument

__all__ = [
    "DEFAULT_OAUTH_SCOPE",
    "OAuthAuth",
    "OidcAuth",
    "OutgoingRequest",
    "TargetOverride",
    "TaskRequest",
    "UriOverride",
    "parse_http_target",
    "parse_task_request",
    "route",
]

DEFAULT_OAUTH_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
BODYLESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
_METHODS = {1: "POST", 2: "GET", 3: "HEAD", 4: "PUT", 5: "DELETE", 6: "PATCH", 7: "OPTIONS"}  # HttpMethod values
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_SCHEMES = {
    int(tasks_v2.UriOverride.Scheme.SCHEME_UNSPECIFIED): "https",  # "Scheme unspecified. Defaults to HTTPS."
    int(tasks_v2.UriOverride.Scheme.HTTP): "http",
    int(tasks_v2.UriOverride.Scheme.HTTPS): "https",
}
_IF_NOT_EXISTS = int(tasks_v2.UriOverride.UriOverrideEnforceMode.IF_NOT_EXISTS)
_ENFORCE_MODES = {0, 1, 2}  # UNSPECIFIED (= ALWAYS), IF_NOT_EXISTS, ALWAYS


@dataclass(frozen=True)
class OidcAuth:
    service_account_email: str
    audience: str  # "" = the final task URL


@dataclass(frozen=True)
class OAuthAuth:
    service_account_email: str
    scope: str


Authorization = OidcAuth | OAuthAuth


@dataclass(frozen=True)
class TaskRequest:
    """A task's own HttpRequest, validated; `method` is an upper-case HTTP method name."""

    url: str
    method: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    auth: Authorization | None


@dataclass(frozen=True)
class UriOverride:
    """Queue-level URL parts; None = not overridden."""

    scheme: str | None = None
    host: str | None = None
    port: int | None = None
    path: str | None = None
    query: str | None = None
    if_not_exists: bool = False


@dataclass(frozen=True)
class TargetOverride:
    """A queue's `http_target`, validated."""

    uri: UriOverride | None = None
    method: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    auth: Authorization | None = None


@dataclass(frozen=True)
class OutgoingRequest:
    """The request to send, before Cloud Tasks' own headers are added."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    auth: Authorization | None


# ----- parsing and validation (CreateTask / CreateQueue / UpdateQueue) -----


def _method_name(value: int, field: str) -> str | None:
    if value == 0:
        return None
    name = _METHODS.get(value)
    if name is None:
        raise invalid_argument(f"{field}: unknown HTTP method {value}")
    return name


def _check_headers(pairs: list[tuple[str, str]], field: str) -> tuple[tuple[str, str], ...]:
    size = 0
    for key, value in pairs:
        if not _HEADER_NAME_RE.fullmatch(key):
            raise invalid_argument(f"{field}: invalid header name {key[:80]!r}")
        if "\r" in value or "\n" in value:
            raise invalid_argument(f"{field}: header {key!r} has a line break in its value")
        size += len(key.encode()) + len(value.encode())
    if size >= limits.MAX_HEADERS_BYTES:
        raise invalid_argument(f"{field}: headers take {size} bytes; they must be less than 80KB")
    return tuple(pairs)


def _check_url(url: str, field: str) -> None:
    if not url.lower().startswith(("http://", "https://")):
        raise invalid_argument(URL_SCHEME_MESSAGE)
    if len(url) > limits.MAX_URL_LENGTH:
        raise invalid_argument(f"{field} is {len(url)} characters long; the maximum is {limits.MAX_URL_LENGTH}")
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port
    except ValueError as error:
        raise invalid_argument(f'{field} "{url[:120]}" is not a valid URL: {error}') from None
    if not parts.hostname:
        raise invalid_argument(f'{field} "{url[:120]}" has no host')


def _oidc(token: Any, field: str, *, need_audience: bool) -> OidcAuth:
    if not token.service_account_email:
        raise invalid_argument(f"{field}.service_account_email is required")
    if need_audience and not token.audience:
        raise invalid_argument(f"{field}.audience is required for a queue-level OIDC token")
    return OidcAuth(token.service_account_email, token.audience)


def _oauth(token: Any, field: str, *, need_scope: bool) -> OAuthAuth:
    if not token.service_account_email:
        raise invalid_argument(f"{field}.service_account_email is required")
    if need_scope and not token.scope:
        raise invalid_argument(f"{field}.scope is required for a queue-level OAuth token")
    return OAuthAuth(token.service_account_email, token.scope or DEFAULT_OAUTH_SCOPE)


def _authorization(pb: Any, field: str, *, queue_level: bool) -> Authorization | None:
    if pb.HasField("oidc_token"):
        return _oidc(pb.oidc_token, f"{field}.oidc_token", need_audience=queue_level)
    if pb.HasField("oauth_token"):
        return _oauth(pb.oauth_token, f"{field}.oauth_token", need_scope=queue_level)
    return None


def parse_task_request(request: tasks_v2.HttpRequest, *, url_optional: bool) -> TaskRequest:
    """Validate a task's HttpRequest. `url_optional`: the queue overrides the URI, so the task may omit it."""
    pb = tasks_v2.HttpRequest.pb(request)
    if pb.url:
        _check_url(pb.url, "HttpRequest.url")
    elif not url_optional:
        raise invalid_argument(URL_REQUIRED_MESSAGE)
    method = _method_name(pb.http_method, "HttpRequest.http_method") or "POST"
    if pb.body and method in BODYLESS_METHODS:
        raise invalid_argument(f"HttpRequest.body is only allowed with POST, PUT or PATCH, not {method}")
    headers = _check_headers(sorted(pb.headers.items()), "HttpRequest.headers")
    return TaskRequest(pb.url, method, headers, bytes(pb.body), _authorization(pb, "HttpRequest", queue_level=False))


def _parse_uri_override(pb: Any) -> UriOverride:
    field = "http_target.uri_override"
    if pb.HasField("host") and not pb.host:
        raise invalid_argument(f"{field}.host cannot be an empty string")
    if pb.HasField("port") and not 0 <= pb.port <= 65535:
        raise invalid_argument(f"{field}.port must be a positive integer of at most 65535 (0 clears it), got {pb.port}")
    if pb.HasField("scheme") and pb.scheme not in _SCHEMES:
        raise invalid_argument(f"{field}.scheme: unknown value {pb.scheme}")
    if pb.uri_override_enforce_mode not in _ENFORCE_MODES:
        raise invalid_argument(f"{field}.uri_override_enforce_mode: unknown value {pb.uri_override_enforce_mode}")
    path = pb.path_override.path if pb.HasField("path_override") else None
    if path and not path.startswith("/"):
        raise invalid_argument(f'{field}.path_override.path "{path[:120]}" must start with "/"')
    return UriOverride(
        scheme=_SCHEMES[pb.scheme] if pb.HasField("scheme") else None,
        host=pb.host if pb.HasField("host") else None,
        port=pb.port if pb.HasField("port") else None,
        path=path,
        query=pb.query_override.query_params if pb.HasField("query_override") else None,
        if_not_exists=pb.uri_override_enforce_mode == _IF_NOT_EXISTS,
    )


def parse_http_target(target: tasks_v2.HttpTarget) -> TargetOverride:
    """Validate a queue's http_target."""
    pb = tasks_v2.HttpTarget.pb(target)
    pairs = [(o.header.key, o.header.value) for o in pb.header_overrides]
    return TargetOverride(
        uri=_parse_uri_override(pb.uri_override) if pb.HasField("uri_override") else None,
        method=_method_name(pb.http_method, "http_target.http_method"),
        headers=_check_headers(pairs, "http_target.header_overrides"),
        auth=_authorization(pb, "http_target", queue_level=True),
    )


# ----- applying the queue's target at dispatch -----


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def override_url(url: str, uri: UriOverride) -> str:
    """The task URL with the queue's URI override applied (see the module docstring for the modes)."""
    parts = urllib.parse.urlsplit(url)
    scheme, host, port, path, query = parts.scheme.lower(), parts.hostname or "", parts.port, parts.path, parts.query

    def wanted(task_has_it: bool) -> bool:
        return not (uri.if_not_exists and task_has_it)

    if uri.scheme is not None and wanted(bool(scheme)):
        scheme = uri.scheme
    if uri.host is not None and wanted(bool(host)):
        host = uri.host
    if uri.port is not None and wanted(port is not None):
        port = uri.port or None
    if uri.path is not None and wanted(path not in ("", "/")):
        path = uri.path
    if uri.query is not None and wanted(bool(query)):
        query = uri.query
    netloc = _format_host(host) + (f":{port}" if port else "")
    return urllib.parse.urlunsplit((scheme or "https", netloc, path, query, ""))


def _set_header(headers: dict[str, str], key: str, value: str) -> None:
    for existing in [k for k in headers if k.lower() == key.lower()]:
        del headers[existing]
    headers[key] = value


def route(task: TaskRequest, target: TargetOverride | None) -> OutgoingRequest:
    """The request for `task` after its queue's http_target overrides."""
    headers = dict(task.headers)
    if target is None:
        return OutgoingRequest(task.method, task.url, headers, task.body, task.auth)
    url = override_url(task.url, target.uri) if target.uri is not None else task.url
    method = target.method or task.method
    body = b"" if method in BODYLESS_METHODS else task.body
    for key, value in target.headers:
        _set_header(headers, key, value)
    return OutgoingRequest(method, url, headers, body, target.auth or task.auth)
