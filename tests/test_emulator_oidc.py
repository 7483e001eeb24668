"""The emulator's OIDC issuer and key endpoints: real keys, real HTTP, verified by google-auth and handler.oidc."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import jwt
from google.auth.transport.requests import Request
from google.oauth2 import id_token
from jwt.exceptions import InvalidAudienceError  # PyJWT: google-auth's JWKS path

from handler.oidc import TokenVerifier
from localcloud.emulator.http import OidcHttpServer
from localcloud.emulator.oidc import GOOGLE_ISSUER, TokenIssuer

AUD = "http://127.0.0.1:8080/tasks/process"
EMAIL = "tasks-invoker@demo-project.iam.gserviceaccount.com"
OTHER_EMAIL = "someone-else@demo-project.iam.gserviceaccount.com"


@pytest.fixture(scope="module")
def issuer() -> TokenIssuer:
    return TokenIssuer()


@pytest.fixture(scope="module")
def server(issuer: TokenIssuer) -> Iterator[OidcHttpServer]:
    with OidcHttpServer(issuer) as server:
        yield server


def get(url: str, method: str = "GET") -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers.items()), json.loads(response.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, dict(err.headers.items()), json.loads(err.read())


def test_google_auth_accepts_token_with_every_claim(issuer: TokenIssuer, server: OidcHttpServer) -> None:
    claims = id_token.verify_token(issuer.mint(EMAIL, AUD), Request(), audience=AUD, certs_url=server.certs_url)
    assert claims["aud"] == AUD
    assert claims["email"] == EMAIL
    assert claims["email_verified"] is True
    assert claims["iss"] == GOOGLE_ISSUER
    assert claims["sub"] == claims["azp"]
    assert len(claims["sub"]) == 21 and claims["sub"].isdigit()
    assert claims["exp"] - claims["iat"] == 3600
    assert abs(claims["iat"] - time.time()) < 60
    again = jwt.decode(issuer.mint(EMAIL, "other"), verify=False)
    assert again["sub"] == claims["sub"]  # stable for the same account
    assert jwt.decode(issuer.mint(OTHER_EMAIL, AUD), verify=False)["sub"] != claims["sub"]


def test_google_auth_accepts_token_against_jwks(issuer: TokenIssuer, server: OidcHttpServer) -> None:
    """The PyJWT path: it rejects a JWK set with a wrong alg, so this proves ours is valid."""
    claims = id_token.verify_token(issuer.mint(EMAIL, AUD), Request(), audience=AUD, certs_url=server.jwks_url)
    assert (claims["email"], claims["aud"]) == (EMAIL, AUD)


def test_jwks_and_pem_certs_are_the_same_key(issuer: TokenIssuer, server: OidcHttpServer) -> None:
    _, _, jwks = get(server.jwks_url)
    [key] = jwks["keys"]
    assert {k: key[k] for k in ("kty", "alg", "use", "kid")} == {
        "kty": "RSA",
        "alg": "RS256",
        "use": "sig",
        "kid": issuer.kid,
    }
    assert "=" not in key["n"] + key["e"]
    _, _, certs = get(server.certs_url)
    public_key = x509.load_pem_x509_certificate(certs[issuer.kid].encode()).public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    numbers = public_key.public_numbers()
    assert base64.urlsafe_b64decode(key["n"] + "==") == numbers.n.to_bytes(256, "big")
    assert base64.urlsafe_b64decode(key["e"] + "==") == numbers.e.to_bytes(3, "big")


@pytest.mark.parametrize(("which", "error"), [("certs_url", ValueError), ("jwks_url", InvalidAudienceError)])
def test_wrong_audience_rejected(
    issuer: TokenIssuer, server: OidcHttpServer, which: str, error: type[Exception]
) -> None:
    with pytest.raises(error, match=r"(?i)audience"):
        id_token.verify_token(
            issuer.mint(EMAIL, AUD), Request(), audience="https://elsewhere", certs_url=getattr(server, which)
        )


def test_other_issuers_key_rejected(issuer: TokenIssuer, server: OidcHttpServer) -> None:
    other = TokenIssuer()
    with pytest.raises(ValueError, match="Certificate for key id"):
        id_token.verify_token(other.mint(EMAIL, AUD), Request(), audience=AUD, certs_url=server.certs_url)
    other.kid = issuer.kid  # claims the first issuer's key id, still signed with its own key
    with pytest.raises(ValueError, match="Could not verify token signature"):
        id_token.verify_token(other.mint(EMAIL, AUD), Request(), audience=AUD, certs_url=server.certs_url)


def test_handler_token_verifier_accepts_token(issuer: TokenIssuer, server: OidcHttpServer) -> None:
    verifier = TokenVerifier(allowed_emails={EMAIL}, certs_url=server.certs_url)
    identity = verifier.verify("Bearer " + issuer.mint(EMAIL, AUD), AUD)
    assert identity.email == EMAIL
    assert identity.subject == jwt.decode(issuer.mint(EMAIL, AUD), verify=False)["sub"]


def test_token_minted_two_hours_ago_is_expired() -> None:
    old = TokenIssuer(clock=lambda: time.time() - 7200)
    with OidcHttpServer(old) as server, pytest.raises(ValueError, match="Token expired"):
        id_token.verify_token(old.mint(EMAIL, AUD), Request(), audience=AUD, certs_url=server.certs_url)


def test_key_documents_are_cacheable_json(server: OidcHttpServer) -> None:
    assert server.url.startswith("http://127.0.0.1:")
    for url in (server.certs_url, server.jwks_url):
        status, headers, _ = get(url)
        assert status == 200
        assert headers["Content-Type"] == "application/json"
        assert headers["Cache-Control"] == "public, max-age=3600"


def test_discovery_document(issuer: TokenIssuer, server: OidcHttpServer) -> None:
    status, _, doc = get(server.url + "/.well-known/openid-configuration")
    assert status == 200
    assert doc["issuer"] == issuer.issuer == GOOGLE_ISSUER
    assert doc["jwks_uri"] == server.jwks_url
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    assert TokenIssuer(issuer="http://127.0.0.1:9").openid_configuration("http://x/")["issuer"] == "http://127.0.0.1:9"


def test_unknown_path_and_wrong_method(server: OidcHttpServer) -> None:
    assert get(server.url + "/nope")[0] == 404
    status, headers, body = get(server.certs_url, method="POST")
    assert (status, headers["Allow"], body) == (405, "GET", {"error": "method not allowed"})


def test_minted_token_header(issuer: TokenIssuer) -> None:
    header = jwt.decode_header(issuer.mint(EMAIL, AUD))
    assert header == {"alg": "RS256", "kid": issuer.kid, "typ": "JWT"}


def test_stop_closes_the_socket(issuer: TokenIssuer) -> None:
    server = OidcHttpServer(issuer).start()
    assert get(server.certs_url)[0] == 200
    server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.certs_url, timeout=2)
