"""Google-style OIDC ID tokens, as Cloud Tasks attaches to HTTP tasks with an `oidc_token`.

Tokens are RS256 JWTs signed with a key generated per `TokenIssuer` (per emulator run; a durable emulator
saves it in its data dir and signs with it again after a restart, see store.py), carrying the claims
Google puts in a service account's ID token. By default `iss` is Google's own issuer, so verifiers that pin
it (google-auth's `verify_oauth2_token`, `handler.oidc.TokenVerifier`) accept the tokens: point their certs
URL at `OidcHttpServer` (localcloud.emulator.http), which serves this issuer's keys. Its discovery document
reports the configured issuer all the same, even though it is not the URL it is served from.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import secrets
import time
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

__all__ = ["CERTS_PATH", "DISCOVERY_PATH", "GOOGLE_ISSUER", "JWKS_PATH", "TokenIssuer", "subject_id"]

GOOGLE_ISSUER = "https://accounts.google.com"
CERTS_PATH = "/oauth2/v1/certs"  # {kid: x509 PEM}, like https://www.googleapis.com/oauth2/v1/certs
JWKS_PATH = "/oauth2/v3/certs"  # JWK set, like https://www.googleapis.com/oauth2/v3/certs
DISCOVERY_PATH = "/.well-known/openid-configuration"


def subject_id(email: str) -> str:
    """A stable 21-digit id for `email`, standing in for the account's numeric unique id (Google's `sub`)."""
    digest = int.from_bytes(hashlib.sha256(email.lower().encode()).digest(), "big")
    return str(10**20 + digest % (9 * 10**20))


def _rsa_private_key(pem: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"the saved signing key is a {type(key).__name__}, not an RSA key")
    return key


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class TokenIssuer:
    """Mints Google-style OIDC ID tokens with a key generated per instance (per emulator run)."""

    def __init__(
        self,
        *,
        issuer: str = GOOGLE_ISSUER,
        lifetime_seconds: int = 3600,
        clock: Callable[[], float] = time.time,
        signing_key: tuple[bytes, str] | None = None,
    ) -> None:
        """`signing_key`: (PKCS#8 PEM, kid) of a key from an earlier run (`saved_key()`), so that a verifier
        holding that run's certs keeps accepting the tokens; by default a new key and kid."""
        self.issuer = issuer
        self._lifetime = lifetime_seconds
        self._clock = clock
        if signing_key is None:
            self.kid = secrets.token_hex(20)  # Google's kids are 40 hex digits too
            self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            self.kid = signing_key[1]
            self._key = _rsa_private_key(signing_key[0])
        self._signer = crypt.RSASigner(self._key, key_id=self.kid)  # type: ignore[no-untyped-call]
        self._cert_pem = self._self_signed_cert()

    def mint(self, service_account_email: str, audience: str) -> str:
        """An ID token for the service account, as Cloud Tasks sends it to `audience`."""
        now = int(self._clock())
        subject = subject_id(service_account_email)
        claims = {
            "aud": audience,
            "azp": subject,
            "email": service_account_email,
            "email_verified": True,
            "exp": now + self._lifetime,
            "iat": now,
            "iss": self.issuer,
            "sub": subject,
        }
        token: bytes = jwt.encode(self._signer, claims, key_id=self.kid)  # type: ignore[no-untyped-call]
        return token.decode()

    def saved_key(self) -> tuple[bytes, str]:
        """(the private key as unencrypted PKCS#8 PEM, the kid): what `signing_key` takes to sign as this issuer."""
        pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return pem, self.kid

    def pem_certs(self) -> dict[str, str]:
        """{kid: self-signed x509 certificate PEM}: Google's v1 certs format."""
        return {self.kid: self._cert_pem}

    def jwks(self) -> dict[str, Any]:
        """The public key as a JWK set: Google's v3 certs format."""
        numbers = self._key.public_key().public_numbers()
        key = {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid}
        return {"keys": [key | {"n": _b64url_uint(numbers.n), "e": _b64url_uint(numbers.e)}]}

    def openid_configuration(self, base_url: str) -> dict[str, Any]:
        """The discovery document, with the key endpoints under `base_url` (there is no authorization flow)."""
        return {
            "issuer": self.issuer,
            "jwks_uri": base_url.rstrip("/") + JWKS_PATH,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "claims_supported": ["aud", "azp", "email", "email_verified", "exp", "iat", "iss", "sub"],
        }

    def _self_signed_cert(self) -> str:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"localcloud OIDC {self.kid}")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=14))
            .sign(self._key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM).decode()
