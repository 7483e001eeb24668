"""handler.oidc against real RSA signatures and a real certs endpoint on loopback.

Tokens are signed with keys generated here and google-auth's own signer; the verifier fetches the certs over HTTP
with its default urllib fetch. Token times are real (google-auth checks exp/iat against the wall clock); the
injected clock drives only the certs cache.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import google.auth.transport.requests
import pytest
from google.oauth2 import id_token
from oidc_support import AUDIENCE, INVOKER, CertsServer, Key, make_key, mint

from handler.oidc import (
    GOOGLE_CERTS_URL,
    GOOGLE_ISSUERS,
    Identity,
    TokenRejected,
    TokenVerifier,
    VerifierUnavailable,
)


@pytest.fixture(scope="module")
def keys() -> dict[str, Key]:
    return {kid: make_key(kid) for kid in ("k1", "k2", "k3")}


@pytest.fixture
def server(keys: dict[str, Key]) -> Iterator[CertsServer]:
    certs_server = CertsServer(certs={"k1": keys["k1"].cert_pem})
    certs_server.start()
    yield certs_server
    certs_server.stop()


class Clock:
    """Cache time, moved by hand."""

    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(server: CertsServer, clock: Clock) -> TokenVerifier:
    return TokenVerifier(allowed_emails={INVOKER}, certs_url=server.url, now=clock)


def rejected(verifier: TokenVerifier, token: str, audience: Any = AUDIENCE) -> TokenRejected:
    with pytest.raises(TokenRejected) as caught:
        verifier.verify(f"Bearer {token}", audience)
    assert token not in caught.value.reason
    return caught.value


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


# --- valid tokens -------------------------------------------------------------------------------------------------


def test_valid_token_gives_the_identity(verifier: TokenVerifier, keys: dict[str, Key], server: CertsServer) -> None:
    assert server.requests == 0, "constructing a verifier fetches nothing"
    identity = verifier.verify(f"Bearer {mint(keys['k1'])}", AUDIENCE)
    assert isinstance(identity, Identity)
    assert (identity.email, identity.subject) == (INVOKER, "109876543210987654321")
    assert identity.claims["aud"] == AUDIENCE
    assert identity.claims["iss"] == "https://accounts.google.com"
    with pytest.raises(TypeError):
        identity.claims["email"] = "someone@else"  # type: ignore[index]


def test_constants_match_google() -> None:
    assert GOOGLE_CERTS_URL == "https://www.googleapis.com/oauth2/v1/certs"
    assert GOOGLE_ISSUERS == ("https://accounts.google.com", "accounts.google.com")


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_scheme_is_case_insensitive(verifier: TokenVerifier, keys: dict[str, Key], scheme: str) -> None:
    assert verifier.verify(f"{scheme} {mint(keys['k1'])}", AUDIENCE).email == INVOKER


@pytest.mark.parametrize("issuer", GOOGLE_ISSUERS)
def test_both_google_issuers_are_accepted(verifier: TokenVerifier, keys: dict[str, Key], issuer: str) -> None:
    assert verifier.verify(f"Bearer {mint(keys['k1'], iss=issuer)}", AUDIENCE).email == INVOKER


def test_audience_list_accepts_a_token_matching_any(verifier: TokenVerifier, keys: dict[str, Key]) -> None:
    identity = verifier.verify(f"Bearer {mint(keys['k1'])}", ["https://other.example", AUDIENCE])
    assert identity.email == INVOKER
    assert rejected(verifier, mint(keys["k1"]), ["https://other.example", "https://x.example"]).status == 401


def test_allowed_emails_compare_case_insensitively(server: CertsServer, keys: dict[str, Key]) -> None:
    verifier = TokenVerifier(allowed_emails=[INVOKER.upper()], certs_url=server.url)
    assert verifier.verify(f"Bearer {mint(keys['k1'])}", AUDIENCE).email == INVOKER


# --- 401: the token is not good -----------------------------------------------------------------------------------


def test_expired_token_is_401(verifier: TokenVerifier, keys: dict[str, Key]) -> None:
    now = int(time.time())
    error = rejected(verifier, mint(keys["k1"], iat=now - 7200, exp=now - 3600))
    assert (error.status, error.reason) == (401, "token expired")


@pytest.mark.parametrize(("skew", "accepted"), [(10, True), (0, False)])
def test_expiry_allows_the_clock_skew(server: CertsServer, keys: dict[str, Key], skew: int, accepted: bool) -> None:
    verifier = TokenVerifier(allowed_emails={INVOKER}, certs_url=server.url, clock_skew_seconds=skew)
    now = int(time.time())
    token = mint(keys["k1"], iat=now - 3600, exp=now - 3)
    if accepted:
        assert verifier.verify(f"Bearer {token}", AUDIENCE).email == INVOKER
    else:
        assert rejected(verifier, token).reason == "token expired"


def test_token_issued_in_the_future_is_401(verifier: TokenVerifier, keys: dict[str, Key]) -> None:
    now = int(time.time())
    error = rejected(verifier, mint(keys["k1"], iat=now + 3600, exp=now + 7200))
    assert error.status == 401
    assert "not yet valid" in error.reason


def test_wrong_audience_is_401(verifier: TokenVerifier, keys: dict[str, Key]) -> None:
    error = rejected(verifier, mint(keys["k1"], aud="https://attacker.example"))
    assert (error.status, error.reason) == (401, "wrong audience")


def test_wrong_issuer_is_401(verifier: TokenVerifier, keys: dict[str, Key]) -> None:
    error = rejected(verifier, mint(keys["k1"], iss="https://evil.example"))
    assert (error.status, error.reason) == (401, "wrong issuer")


def test_token_without_exp_is_401(verifier: TokenVerifier, keys: dict[str, Key]) -> None:
    assert rejected(verifier, mint(keys["k1"], exp=None)).status == 401


def test_non_numeric_exp_is_401_not_a_crash(verifier: TokenVerifier, keys: dict[str, Key]) -> None:
    error = rejected(verifier, mint(keys["k1"], exp="tomorrow"))
    assert (error.status, error.reason) == (401, "malformed token")


def test_signature_by_another_key_under_a_served_kid_is_401(verifier: TokenVerifier, keys: dict[str, Key]) -> None:
    error = rejected(verifier, mint(keys["k2"], kid="k1"))  # k1's cert is served; k2's key signed
    assert (error.status, error.reason) == (401, "bad signature")


def test_tampered_payload_is_401(verifier: TokenVerifier, keys: dict[str, Key]) -> None:
    header, _, signature = mint(keys["k1"]).split(".")
    payload = _b64(
        {"aud": AUDIENCE, "email": "attacker@evil.example", "email_verified": True, "iss": GOOGLE_ISSUERS[0]}
    )
    assert rejected(verifier, f"{header}.{payload}.{signature}").reason == "bad signature"


def test_kid_not_served_is_401(verifier: TokenVerifier, keys: dict[str, Key]) -> None:
    error = rejected(verifier, mint(keys["k2"], kid="k2"))
    assert (error.status, error.reason) == (401, "unknown signing key")


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "none", "kid": "k1"},
        {"alg": "HS256", "kid": "k1"},
        {"alg": "ES256", "kid": "k1"},
        {"alg": "RS256"},
        {"alg": "RS256", "kid": ""},
    ],
)
def test_other_algorithms_and_missing_kid_are_401(
    verifier: TokenVerifier, keys: dict[str, Key], header: dict[str, str]
) -> None:
    _, payload, signature = mint(keys["k1"]).split(".")
    error = rejected(verifier, f"{_b64(header)}.{payload}.{signature}")
    assert error.status == 401
    assert error.reason in ("unsupported signing algorithm", "token has no key id")


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Bearer  x.y.z", "Bearer a b", "Token abc", "Bearerabc"],
)
def test_missing_or_malformed_header_is_401(verifier: TokenVerifier, authorization: str | None) -> None:
    with pytest.raises(TokenRejected) as caught:
        verifier.verify(authorization, AUDIENCE)
    assert caught.value.status == 401
    assert "Bearer" in caught.value.reason


@pytest.mark.parametrize(
    "token", ["garbage", "a.b.c", "a.b", "x.y.z.w", "€€€.€.€", f"{_b64({'alg': 'RS256'})[:-3]}.e.e"]
)
def test_garbage_token_is_401_malformed(verifier: TokenVerifier, token: str) -> None:
    error = rejected(verifier, token)
    assert (error.status, error.reason) == (401, "malformed token")


def test_reasons_never_quote_the_token(verifier: TokenVerifier, keys: dict[str, Key]) -> None:
    now = int(time.time())
    tokens = [
        mint(keys["k1"], iat=now - 7200, exp=now - 3600),
        mint(keys["k1"], aud="https://attacker.example"),
        mint(keys["k2"], kid="k1"),
        mint(keys["k1"], email="nobody@example.com"),
        mint(keys["k1"], exp="tomorrow"),
        "not-a-token.at-all.really",
    ]
    for token in tokens:
        with pytest.raises(TokenRejected) as caught:
            verifier.verify(f"Bearer {token}", AUDIENCE)
        for segment in token.split("."):
            assert segment not in str(caught.value), caught.value
        assert len(caught.value.reason) < 60


# --- 403: a good token from the wrong caller ----------------------------------------------------------------------


def test_email_not_allowed_is_403(verifier: TokenVerifier, keys: dict[str, Key]) -> None:
    error = rejected(verifier, mint(keys["k1"], email="someone-else@demo-project.iam.gserviceaccount.com"))
    assert (error.status, error.reason) == (403, "caller is not an allowed invoker")


def test_token_without_email_is_403(verifier: TokenVerifier, keys: dict[str, Key]) -> None:
    assert rejected(verifier, mint(keys["k1"], email=None)).status == 403


@pytest.mark.parametrize("verified", [False, None, "true"])
def test_unverified_email_is_403(verifier: TokenVerifier, keys: dict[str, Key], verified: Any) -> None:
    error = rejected(verifier, mint(keys["k1"], email_verified=verified))
    assert (error.status, error.reason) == (403, "caller email is not verified")


def test_empty_allow_list_refuses_a_valid_token(server: CertsServer, keys: dict[str, Key]) -> None:
    verifier = TokenVerifier(allowed_emails=(), certs_url=server.url)
    with pytest.raises(TokenRejected) as caught:
        verifier.verify(f"Bearer {mint(keys['k1'])}", AUDIENCE)
    assert caught.value.status == 403


def test_a_bare_string_allow_list_is_refused(server: CertsServer) -> None:
    with pytest.raises(TypeError):  # `in` on a str would accept any substring of it
        TokenVerifier(allowed_emails=INVOKER, certs_url=server.url)


# --- the certs cache ----------------------------------------------------------------------------------------------


def test_certs_are_fetched_once_while_fresh(
    verifier: TokenVerifier, keys: dict[str, Key], server: CertsServer, clock: Clock
) -> None:
    verifier.verify(f"Bearer {mint(keys['k1'])}", AUDIENCE)
    clock.t += 299  # max-age=300
    verifier.verify(f"Bearer {mint(keys['k1'])}", AUDIENCE)
    assert server.requests == 1
    clock.t += 1
    verifier.verify(f"Bearer {mint(keys['k1'])}", AUDIENCE)
    assert server.requests == 2


def test_max_age_zero_refetches_every_time(verifier: TokenVerifier, keys: dict[str, Key], server: CertsServer) -> None:
    server.cache_control = "max-age=0"
    for _ in range(3):
        verifier.verify(f"Bearer {mint(keys['k1'])}", AUDIENCE)
    assert server.requests == 3


@pytest.mark.parametrize(("cache_control", "lifetime"), [(None, 300), ("public, max-age=20", 20)])
def test_lifetime_comes_from_max_age_or_defaults_to_300(
    verifier: TokenVerifier,
    keys: dict[str, Key],
    server: CertsServer,
    clock: Clock,
    cache_control: str | None,
    lifetime: int,
) -> None:
    server.cache_control = cache_control
    verifier.verify(f"Bearer {mint(keys['k1'])}", AUDIENCE)
    clock.t += lifetime - 1
    verifier.verify(f"Bearer {mint(keys['k1'])}", AUDIENCE)
    assert server.requests == 1
    clock.t += 1
    verifier.verify(f"Bearer {mint(keys['k1'])}", AUDIENCE)
    assert server.requests == 2


def test_key_rotation_refetches_once_then_accepts_the_new_key(
    verifier: TokenVerifier, keys: dict[str, Key], server: CertsServer, clock: Clock
) -> None:
    verifier.verify(f"Bearer {mint(keys['k1'])}", AUDIENCE)
    server.certs["k2"] = keys["k2"].cert_pem
    clock.t += 30  # cache still fresh (max-age=300); the last fetch is 30 s old
    assert verifier.verify(f"Bearer {mint(keys['k2'], kid='k2')}", AUDIENCE).email == INVOKER
    assert server.requests == 2
    verifier.verify(f"Bearer {mint(keys['k2'], kid='k2')}", AUDIENCE)
    verifier.verify(f"Bearer {mint(keys['k1'])}", AUDIENCE)
    assert server.requests == 2


def test_new_kid_right_after_a_fetch_waits_for_the_refetch_interval(
    verifier: TokenVerifier, keys: dict[str, Key], server: CertsServer, clock: Clock
) -> None:
    verifier.verify(f"Bearer {mint(keys['k1'])}", AUDIENCE)
    server.certs["k2"] = keys["k2"].cert_pem
    clock.t += 29
    assert rejected(verifier, mint(keys["k2"], kid="k2")).reason == "unknown signing key"
    assert server.requests == 1
    clock.t += 1
    assert verifier.verify(f"Bearer {mint(keys['k2'], kid='k2')}", AUDIENCE).email == INVOKER
    assert server.requests == 2


def test_random_kids_cause_at_most_one_refetch_per_30_seconds(
    verifier: TokenVerifier, keys: dict[str, Key], server: CertsServer, clock: Clock
) -> None:
    verifier.verify(f"Bearer {mint(keys['k1'])}", AUDIENCE)
    for expected_requests in (2, 3, 4):
        clock.t += 30
        for _ in range(25):
            error = rejected(verifier, mint(keys["k3"], kid=uuid.uuid4().hex))
            assert (error.status, error.reason) == (401, "unknown signing key")
            clock.t += 1  # 25 attempts spread over 25 s: still inside the 30 s window
        assert server.requests == expected_requests
        clock.t -= 25


def test_concurrent_first_use_fetches_once(verifier: TokenVerifier, keys: dict[str, Key], server: CertsServer) -> None:
    tokens = [mint(keys["k1"]) for _ in range(16)]
    barrier = threading.Barrier(len(tokens))

    def verify(token: str) -> Identity:
        barrier.wait()
        return verifier.verify(f"Bearer {token}", AUDIENCE)

    with ThreadPoolExecutor(len(tokens)) as pool:
        identities = list(pool.map(verify, tokens))
    assert {identity.email for identity in identities} == {INVOKER}
    assert server.requests == 1


# --- certs endpoint failures --------------------------------------------------------------------------------------


def test_certs_server_down_at_first_use_is_unavailable(
    verifier: TokenVerifier, keys: dict[str, Key], server: CertsServer
) -> None:
    server.stop()
    with pytest.raises(VerifierUnavailable):
        verifier.verify(f"Bearer {mint(keys['k1'])}", AUDIENCE)
    server.start()  # a new port; the fixture's teardown stops it


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, None),
        (404, b"not found"),
        (200, b"<html>captive portal</html>"),
        (200, b'["not", "an", "object"]'),
        (200, b'{"k1": 42}'),
        (200, b'{"k1": "-----BEGIN CERTIFICATE-----\\nbm9wZQ==\\n-----END CERTIFICATE-----\\n"}'),
    ],
)
def test_unusable_certs_response_is_unavailable(
    verifier: TokenVerifier, keys: dict[str, Key], server: CertsServer, status: int, body: bytes | None
) -> None:
    server.status, server.body = status, body
    with pytest.raises(VerifierUnavailable):
        verifier.verify(f"Bearer {mint(keys['k1'])}", AUDIENCE)
    server.status, server.body = 200, None
    assert verifier.verify(f"Bearer {mint(keys['k1'])}", AUDIENCE).email == INVOKER, "failures are not cached"


def test_stale_certs_keep_verifying_when_the_server_goes_down(
    verifier: TokenVerifier, keys: dict[str, Key], server: CertsServer, clock: Clock
) -> None:
    server.cache_control = "max-age=60"
    verifier.verify(f"Bearer {mint(keys['k1'])}", AUDIENCE)
    server.stop()
    clock.t += 3600
    assert verifier.verify(f"Bearer {mint(keys['k1'])}", AUDIENCE).email == INVOKER
    assert rejected(verifier, mint(keys["k2"], kid="k1")).reason == "bad signature", "stale certs still verify"
    server.start()


def test_failed_refresh_keeps_the_stale_set_and_retries_after_30_seconds(
    verifier: TokenVerifier, keys: dict[str, Key], server: CertsServer, clock: Clock
) -> None:
    server.cache_control = "max-age=0"
    verifier.verify(f"Bearer {mint(keys['k1'])}", AUDIENCE)
    server.status = 503
    for _ in range(5):
        assert verifier.verify(f"Bearer {mint(keys['k1'])}", AUDIENCE).email == INVOKER
    assert server.requests == 2, "one failed refresh, then the stale set without hammering"
    clock.t += 30
    server.status = 200
    verifier.verify(f"Bearer {mint(keys['k1'])}", AUDIENCE)
    assert server.requests == 3


# --- compatibility with google-auth's own verifier -----------------------------------------------------------------


def test_google_auth_verify_token_accepts_the_same_certs_and_token(
    verifier: TokenVerifier, keys: dict[str, Key], server: CertsServer
) -> None:
    token = mint(keys["k1"])
    claims = id_token.verify_token(
        token, google.auth.transport.requests.Request(), audience=AUDIENCE, certs_url=server.url
    )
    assert claims == dict(verifier.verify(f"Bearer {token}", AUDIENCE).claims)
    with pytest.raises(ValueError, match="wrong audience"):
        id_token.verify_token(
            token, google.auth.transport.requests.Request(), audience="https://x.example", certs_url=server.url
        )
