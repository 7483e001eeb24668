"""Verify the Google-signed OIDC ID token Cloud Tasks puts in each request's Authorization header.

Fully managed Cloud Run verifies the token itself (and strips its signature), so this is off by default. It is
for platforms that do not: Cloud Run for Anthos/Knative, a public service, local mode with the emulator.
`TokenVerifier.verify` blocks while it fetches the signing certs: call it from a thread (`run_in_threadpool`).
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from google.auth import crypt, exceptions, jwt

from contract.handler_env import GOOGLE_CERTS_URL

__all__ = ["GOOGLE_CERTS_URL", "GOOGLE_ISSUERS", "Identity", "TokenRejected", "TokenVerifier", "VerifierUnavailable"]

GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")
DEFAULT_MAX_AGE = 300  # seconds to keep certs served without Cache-Control: max-age
MIN_REFETCH_INTERVAL = 30  # seconds; an unknown kid triggers at most one fetch per interval
FETCH_TIMEOUT = 5

# jwt.decode raises MalformedError/InvalidValue (both ValueError) and says what failed only in the message,
# which quotes the token: map it, never pass it on. Anything else (bad segments, TypeError from a non-numeric
# exp) is "malformed token". Its alg and kid errors cannot occur: _signing_key_id checks both first.
_REASONS = (
    ("Token expired", "token expired"),
    ("Token used too early", "token not yet valid (iat in the future)"),
    ("wrong audience", "wrong audience"),
    ("Could not verify token signature", "bad signature"),
    ("does not contain required claim", "token lacks iat or exp"),
)


@dataclass(frozen=True)
class Identity:
    email: str
    subject: str
    claims: Mapping[str, Any]


class TokenRejected(Exception):
    """The caller's fault: `status` is 401 (no/invalid/expired token, wrong audience or issuer) or 403 (valid
    token, but the email is not an allowed invoker or not verified). `reason` is a short sentence safe to return
    to the caller (never the token itself)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


class VerifierUnavailable(Exception):
    """Our fault, transient: the certs could not be fetched or parsed. The handler answers 503 so Cloud Tasks
    retries."""


def _urllib_fetch(url: str) -> tuple[bytes, Mapping[str, str]]:
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as response:  # raises OSError on HTTP >= 400
        return response.read(), dict(response.headers.items())


def _max_age(headers: Mapping[str, str]) -> int:
    cache_control = next((v for k, v in headers.items() if k.lower() == "cache-control"), "")
    match = re.search(r"max-age=(\d+)", cache_control)
    return int(match[1]) if match else DEFAULT_MAX_AGE


def _parse_certs(body: bytes) -> dict[str, str]:
    """{kid: PEM}, each PEM loaded once here so a bad cert is our 503, not the caller's 401."""
    certs = json.loads(body)
    if not isinstance(certs, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in certs.items()):
        raise ValueError("certs are not a JSON object of strings")
    for pem in certs.values():
        crypt.RSAVerifier.from_string(pem)  # type: ignore[no-untyped-call]  # ValueError if unparseable
    return certs


def _only_collection(value: Collection[str], name: str) -> frozenset[str]:
    """A bare str is a Collection too, and `in` on it would match substrings: refuse it."""
    if isinstance(value, str):
        raise TypeError(f"{name} must be a collection of strings, not a str")
    return frozenset(value)


class TokenVerifier:
    """Checks signature, audience, expiry, issuer and invoker email of Google-signed ID tokens.

    An empty `allowed_emails` refuses every token (403): verification on means someone must be named.
    Emails are compared case-insensitively. `now` drives the certs cache only: google-auth checks `exp`/`iat`
    against the wall clock and offers no way to inject one.

    Certs are cached for the response's max-age (300 s without one). A token whose kid is not cached causes
    a refetch (key rotation), but at most once per 30 s, so random kids cannot make us hammer the endpoint.
    When a refresh fails while a cached set exists, the stale set is simply kept (and retried no sooner than
    30 s later): Google's keys overlap for days, and failing every task on a blip would be worse. Only with
    nothing cached does a fetch failure raise VerifierUnavailable. A custom `fetch` should raise OSError.
    """

    def __init__(
        self,
        *,
        allowed_emails: Collection[str],
        certs_url: str = GOOGLE_CERTS_URL,
        issuers: Collection[str] = GOOGLE_ISSUERS,
        clock_skew_seconds: int = 10,
        fetch: Callable[[str], tuple[bytes, Mapping[str, str]]] | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._allowed = frozenset(e.lower() for e in _only_collection(allowed_emails, "allowed_emails"))
        self._issuers = _only_collection(issuers, "issuers")
        self._certs_url = certs_url
        self._skew = clock_skew_seconds
        self._fetch = fetch or _urllib_fetch
        self._now = now
        self._lock = threading.Lock()  # held during a fetch too: concurrent misses wait for one fetch
        self._certs: dict[str, str] | None = None
        self._expires_at = 0.0
        self._fetched_at = float("-inf")

    def verify(self, authorization: str | None, audience: str | Collection[str]) -> Identity:
        """The caller's identity, or TokenRejected (401/403), or VerifierUnavailable (certs unreachable)."""
        token = _bearer_token(authorization)
        kid = _signing_key_id(token)
        pem = self._cert_for(kid)
        audiences = [audience] if isinstance(audience, str) else list(audience)
        try:
            claims = jwt.decode(  # type: ignore[no-untyped-call]
                token, certs={kid: pem}, audience=audiences, clock_skew_in_seconds=self._skew
            )
        except (exceptions.GoogleAuthError, ValueError, TypeError) as err:  # TypeError: e.g. a string `exp`
            raise TokenRejected(401, _reason(err)) from None
        return self._identity(claims)

    def _identity(self, claims: Mapping[str, Any]) -> Identity:
        if claims.get("iss") not in self._issuers:
            raise TokenRejected(401, "wrong issuer")
        email = claims.get("email")
        if not isinstance(email, str) or email.lower() not in self._allowed:
            raise TokenRejected(403, "caller is not an allowed invoker")
        if claims.get("email_verified") is not True:
            raise TokenRejected(403, "caller email is not verified")
        return Identity(email=email, subject=str(claims.get("sub", "")), claims=MappingProxyType(dict(claims)))

    def _cert_for(self, kid: str) -> str:
        """The PEM for `kid`, refetching when the cache expired, or for a kid not seen (rate-limited)."""
        with self._lock:
            now = self._now()
            if (
                self._certs is None
                or now >= self._expires_at
                or (kid not in self._certs and now - self._fetched_at >= MIN_REFETCH_INTERVAL)
            ):
                self._refresh(now)
            assert self._certs is not None  # _refresh raised otherwise
            pem = self._certs.get(kid)
        if pem is None:
            raise TokenRejected(401, "unknown signing key")
        return pem

    def _refresh(self, now: float) -> None:
        """Fetch the certs (lock held). Failure raises only when there is no earlier set to fall back on."""
        self._fetched_at = now
        try:
            body, headers = self._fetch(self._certs_url)
            self._certs, self._expires_at = _parse_certs(body), now + _max_age(headers)
        except (OSError, ValueError) as err:
            if self._certs is None:
                raise VerifierUnavailable(f"cannot load signing certs from {self._certs_url}: {err}") from err
            self._expires_at = max(self._expires_at, now + MIN_REFETCH_INTERVAL)


def _bearer_token(authorization: str | None) -> str:
    parts = (authorization or "").split(" ")
    if len(parts) != 2 or parts[0].lower() != "bearer" or not parts[1]:
        raise TokenRejected(401, "expected an Authorization: Bearer <token> header")
    return parts[1]


def _signing_key_id(token: str) -> str:
    """The header's kid, after insisting on RS256 (what Google signs with, and all the certs can verify)."""
    try:
        header = jwt.decode_header(token)  # type: ignore[no-untyped-call]
    except (exceptions.GoogleAuthError, ValueError, TypeError):
        raise TokenRejected(401, "malformed token") from None
    if header.get("alg") != "RS256":
        raise TokenRejected(401, "unsupported signing algorithm")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise TokenRejected(401, "token has no key id")
    return kid


def _reason(err: Exception) -> str:
    message = str(err)
    return next((reason for fragment, reason in _REASONS if fragment in message), "malformed token")
