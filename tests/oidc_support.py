"""Real RS256 signing keys, a Google-style certs endpoint on loopback, and ID tokens for tests.

Shared by the handler's OIDC tests and its real-server tests.
"""

from __future__ import annotations

import datetime
import functools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

AUDIENCE = "https://handler-abc123-ew.a.run.app"
INVOKER = "tasks-invoker@demo-project.iam.gserviceaccount.com"


@dataclass(frozen=True)
class Key:
    private_pem: bytes
    cert_pem: str


def make_key(name: str) -> Key:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=14))
        .sign(private, hashes.SHA256())
    )
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return Key(private_pem, cert.public_bytes(serialization.Encoding.PEM).decode())


@dataclass
class CertsServer:
    """Serves {kid: PEM} like https://www.googleapis.com/oauth2/v1/certs, counting the requests."""

    certs: dict[str, str]
    cache_control: str | None = "public, max-age=300, must-revalidate, no-transform"
    status: int = 200
    body: bytes | None = None  # served instead of the certs when set
    requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/oauth2/v1/certs"

    def start(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.requests += 1
                body = server.body if server.body is not None else json.dumps(server.certs).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                if server.cache_control is not None:
                    self.send_header("Cache-Control", server.cache_control)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()

    def stop(self) -> None:
        """Close the listening socket: from now on connections are refused."""
        assert self._httpd is not None
        self._httpd.shutdown()
        self._httpd.server_close()


@functools.cache
def _signer(private_pem: bytes) -> crypt.RSASigner:
    return crypt.RSASigner.from_string(private_pem)  # loading a key takes ~40 ms: once per key


def mint(key: Key, kid: str = "k1", **overrides: Any) -> str:
    """A Google-style ID token for the invoker, signed by `key` under `kid`; None overrides drop a claim."""
    now = int(time.time())
    claims = {
        "aud": AUDIENCE,
        "azp": "109876543210987654321",
        "email": INVOKER,
        "email_verified": True,
        "exp": now + 3600,
        "iat": now,
        "iss": "https://accounts.google.com",
        "sub": "109876543210987654321",
    } | overrides
    return jwt.encode(_signer(key.private_pem), {k: v for k, v in claims.items() if v is not None}, key_id=kid).decode()
